"""scripts/recipe_study.py on the small preset with tiny sizes: a run is trained and scored through the CLI,
recorded as one JSON line, skipped when asked again, and reported and plotted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the study trains ECM")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "recipe_study.py"
# the thumos14 configs on the small preset's features (D = 256), shrunk to seconds per run
TINY = ["data.feature_dim=256", "data.t_fixed=32", "train.epochs=2", "train.batch_size=8"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def study(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("study")
    results = work / "results.jsonl"
    done = study("--work", str(work), "--results", str(results), "--preset", "small", "--hidden", "16",
                 "--sets", "d05", "--seeds", "16", "--recipes", "fast", "lite", "--extra", *TINY)
    return work, results, done


def test_each_run_is_one_json_line_with_its_curve_and_test_map(recorded):
    work, results, done = recorded
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(line["set"], line["seed"], line["recipe"], line["hidden"]) for line in lines] == [
        ("d05", 16, "fast", 16), ("d05", 16, "lite", 16)]
    for line in lines:
        assert line["epochs"] == 2 and len(line["val_map50"]) == len(line["val_avg"]) == 2
        assert 0 <= line["test_map50"] <= 100 and 0 <= line["test_avg"] <= 100
        assert "model.hidden_dim=16" in line["overrides"] and "train.seed=16" in line["overrides"]
    assert json.loads((work / "data" / "d05" / "synth.json").read_text())["settings"]["difficulty"] == 0.5


def test_recorded_runs_are_skipped_and_reported(recorded, tmp_path):
    work, results, _ = recorded
    before = results.read_text()
    again = study("--work", str(work), "--results", str(results), "--preset", "small", "--hidden", "16",
                  "--sets", "d05", "--seeds", "16", "--recipes", "fast", "lite", "--extra", *TINY)
    assert again.returncode == 0 and "0 to go" in again.stderr
    assert results.read_text() == before
    png = tmp_path / "curves.png"
    shown = study("--results", str(results), "--hidden", "16", "--recipes", "paper", "lite", "fast",
                  "--report", "--plot", str(png))  # reading the results needs no work folder
    assert shown.returncode == 0, shown.stderr
    rows = [row for row in shown.stdout.splitlines() if row.startswith("| d05")]
    assert [row.split("|")[2].strip() for row in rows] == ["lite", "fast"]  # recipes in the order asked
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    other_width = study("--results", str(results), "--hidden", "2048", "--report")
    assert "| d05" not in other_width.stdout  # a run counts at its own hidden size only


def test_running_the_study_needs_a_work_folder(tmp_path):
    refused = study("--results", str(tmp_path / "results.jsonl"), "--sets", "d05")
    assert refused.returncode == 2 and "--work is required" in refused.stderr
    assert not (tmp_path / "results.jsonl").exists()
