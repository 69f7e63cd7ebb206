"""The command line as a user meets it: help on every level, exit codes 0 / 1 / 2, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from ecm_edge.cli.main import COMMANDS, LazyGroup, cli


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecm_edge", *args], capture_output=True, text=True, timeout=300)


def all_command_paths() -> list[tuple[str, ...]]:
    """Every command and sub-command, as argument tuples."""
    paths: list[tuple[str, ...]] = []

    def walk(command: click.Command, prefix: tuple[str, ...]) -> None:
        paths.append(prefix)
        if isinstance(command, click.Group):
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                walk(command.get_command(ctx, name), (*prefix, name))

    walk(cli, ())
    return paths


def test_every_registered_command_resolves():
    ctx = click.Context(cli)
    assert isinstance(cli, LazyGroup)
    for name in COMMANDS:
        assert cli.get_command(ctx, name) is not None, name


@pytest.mark.parametrize("path", all_command_paths(), ids=lambda p: " ".join(p) or "ecm-edge")
def test_help_on_every_level(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "--backend" not in result.output  # renamed options keep their former spelling as a hidden alias


def test_version_and_checks():
    version = run_cli("--version")
    assert version.returncode == 0 and "ecm-edge, version" in version.stdout
    report = run_cli("checks", "--json")
    assert report.returncode == 0
    data = json.loads(report.stdout)
    for key in ("python", "numpy", "numba", "numba-cuda", "torch", "onnx", "onnxruntime", "tensorrt",
                "cuda gpu", "cuda simulator"):
        assert key in data
    assert data["tensorrt"] == "not installed" or data["tensorrt"][0].isdigit()


def test_usage_errors_exit_2_with_a_suggestion():
    result = run_cli("chekcs")
    assert result.returncode == 2
    assert "Did you mean 'checks'?" in result.stderr
    assert run_cli("checks", "--no-such-option").returncode == 2


def test_runtime_errors_exit_1_with_one_line(tmp_path):
    result = run_cli("eval", "--pred", str(tmp_path / "missing.json"), "--gt", str(tmp_path / "gt.json"))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr


def test_synth_videos_flag_writes_a_video_set(tmp_path):
    out = tmp_path / "videos"
    result = run_cli("synth", "--videos", "-o", str(out), "--num-videos", "2", "--classes", "2",
                     "--duration", "8-9", "--size", "64x48")
    assert result.returncode == 0, result.stderr
    assert len(list((out / "videos").iterdir())) == 2
    gt = json.loads((out / "gt.json").read_text())["database"]
    assert len(gt) == 2 and all("duration" in v and "fps" in v for v in gt.values())
