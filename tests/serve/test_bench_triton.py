"""``ecm-edge bench triton`` without a usable server Python: a skipped section with its reason, never a number."""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pytest

from ecm_edge import serving
from ecm_edge.bench import PARTS
from ecm_edge.bench import triton as bench_triton


def test_part_is_registered():
    assert PARTS["triton"] == ("ecm_edge.bench.triton", "run")


def test_without_a_server_python_the_section_says_why_and_how(monkeypatch):
    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("this interpreter has NumPy < 2: the part would use it as the server's Python")
    monkeypatch.delenv(bench_triton.PYTHON_ENV, raising=False)
    monkeypatch.setattr(bench_triton, "NEEDS", {})  # the reason under test comes after the installed packages
    monkeypatch.setattr(bench_triton, "_find_server", lambda python: object())
    section = bench_triton.run(quick=True)
    assert "skipped" in section.title
    assert section.rows == [[section.rows[0][0]]] and section.rows[0][0].startswith("skipped: ")
    assert bench_triton.PYTHON_ENV in section.rows[0][0] and "NumPy" in section.rows[0][0]
    assert any(bench_triton.PYTHON_ENV in note for note in section.notes)
    assert "| skipped: " in section.to_markdown()


def test_a_named_python_that_cannot_serve_is_a_skip(monkeypatch, tmp_path):
    monkeypatch.setenv(bench_triton.PYTHON_ENV, str(tmp_path / "no-such-python"))
    monkeypatch.setattr(bench_triton, "NEEDS", {})
    monkeypatch.setattr(bench_triton, "_find_server", lambda python: object())
    section = bench_triton.run(quick=True)
    assert section.rows[0][0].startswith("skipped: ") and "no-such-python" in section.rows[0][0]


def test_no_server_binary_is_a_skip(monkeypatch):
    monkeypatch.setenv(bench_triton.PYTHON_ENV, sys.executable)
    monkeypatch.setattr(bench_triton, "NEEDS", {})
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    real_inspect = serving.inspect_python
    monkeypatch.setattr(serving, "inspect_python", lambda python: replace(real_inspect(python), pytriton=None))
    section = bench_triton.run(quick=True)
    assert section.rows[0][0].startswith("skipped: ") and "Triton server" in section.rows[0][0]
