"""``ecm-edge demo`` end to end on a reduced size: every stage runs for real, a re-run reuses, --fresh redoes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from ecm_edge.cli.main import cli
from ecm_edge.demo import STAGES

pytest.importorskip("torch", reason="the demo trains and exports ECM, which needs torch")
pytest.importorskip("onnx", reason="the demo exports ONNX")

# Large enough to learn: at 60 epochs the held-out mAP@0.5 is about 0.36 (average 0.35); after one epoch it is
# about 0.06 (average 0.12), so the floors below fail for a model that learned nothing.
ARGS = ["--videos", "24", "--epochs", "60", "--seed", "3"]
SHORT_TRAINING = ["--videos", "24", "--epochs", "2", "--seed", "3"]
MIN_MAP_AT_05, MIN_AVERAGE_MAP = 0.25, 0.25
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(args: list[str]):
    result = CliRunner().invoke(cli, ["demo", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _stage_lines(output: str) -> dict[str, str]:
    lines = {}
    for line in output.splitlines():
        match = re.match(r"\[\d/\d\] (\w+)\s+(.*)", line)
        if match:
            lines[match.group(1)] = match.group(2)
    return lines


def test_demo_runs_end_to_end_then_reuses_then_redoes_with_fresh(tmp_path):
    out = tmp_path / "demo"
    first = _run(["-o", str(out), *ARGS])

    lines = _stage_lines(first)
    assert list(lines) == list(STAGES)
    assert not any(text.startswith("reused") for text in lines.values())
    data = out / "data"
    assert len(list((data / "videos").glob("*.avi"))) == 24
    assert (data / "gt.json").is_file() and (data / "extract.json").is_file()
    features = list((data / "features").rglob("*.npy"))
    assert len(features) == 48  # rgb + flow per video
    assert np.load(features[0]).shape[1] == 128
    assert (out / "train" / "model.safetensors").is_file()
    evaluation = json.loads((out / "eval" / "eval.json").read_text())
    assert len(evaluation["map"]) == 7 and evaluation["iou"][4] == 0.5
    assert evaluation["map"][4] >= MIN_MAP_AT_05 and evaluation["average"] >= MIN_AVERAGE_MAP, evaluation
    for name in ("ecm.onnx", "ecm.fp16.onnx", "ecm.int8.onnx", "ecm.stream.onnx", "agreement.json"):
        assert (out / "export" / name).is_file(), name
    agreement = json.loads((out / "export" / "agreement.json").read_text())
    assert agreement["fp32"]["max_abs_cas"] == 0.0
    assert 0.0 < agreement["fp16"]["max_abs_cas"] < 0.05
    assert 0.0 < agreement["int8"]["max_abs_cas"] < 1.0
    stream = json.loads((out / "stream" / "stream.json").read_text())
    events = [json.loads(line) for line in (out / "stream" / "events.jsonl").read_text().splitlines()]
    segments = [e for e in events if e["type"] == "segment"]
    assert stream["snippets"] > 20 and stream["segments"] == len(segments)
    assert first.count("    segment  ") == len(segments)  # printed live, one line per event
    points = json.loads((out / "train" / "operating_points.json").read_text())
    assert (out / "export" / "operating_points.json").is_file()  # the export carries them to the stream
    alerts = [e for e in events if e["type"] == "alert"]
    assert stream["alerts"] == len(alerts) == sum(d.get("alert", False) for d in stream["detections"])
    assert all(a["score"] >= points["classes"].get(a["label"], {}).get("min_score", points["global_min_score"])
               for a in alerts)
    assert first.count("    alert    ") == len(alerts)

    report = (out / "report.md").read_text()
    assert re.search(r"\| mAP \(%\) \|( [\d.]+ \|){8}", report)
    assert "| int8 |" in report and "| stage | seconds |" in report
    assert "### Alerts: operating points" in report and "### The streamed video:" in report
    assert "![timeline" in report and "(timeline.png)" in report
    image = (out / "timeline.png").read_bytes()
    assert image.startswith(PNG_SIGNATURE) and len(image) > 10_000
    assert str(out) in first and "next:" in first

    mtime = (out / "train" / "model.safetensors").stat().st_mtime_ns
    second = _run(["-o", str(out), *ARGS])
    assert all(text.startswith("reused") for text in _stage_lines(second).values())
    assert f"{len(STAGES)} of {len(STAGES)} stages reused" in second
    assert (out / "train" / "model.safetensors").stat().st_mtime_ns == mtime

    changed = _run(["-o", str(out), *SHORT_TRAINING])
    reused = {name for name, text in _stage_lines(changed).items() if text.startswith("reused")}
    assert reused == {"videos", "features"}  # other epochs: training and everything after it run again

    fresh = _run(["-o", str(out), *SHORT_TRAINING, "--fresh"])
    assert not any(text.startswith("reused") for text in _stage_lines(fresh).values())
    assert (out / "train" / "model.safetensors").stat().st_mtime_ns != mtime
    assert (out / "timeline.png").read_bytes().startswith(PNG_SIGNATURE)


def test_demo_refuses_too_few_videos_for_its_classes(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path / "d"), "--videos", "3"])
    assert result.exit_code != 0
    assert "at least two videos per class" in str(result.exception)
