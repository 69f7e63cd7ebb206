"""``ecm-edge eval`` as a user runs it: real files in tmp_path, exit codes 0 / 1 / 2, the --json shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ecm_edge.cli.main import main
from ecm_edge.data.annotations import load_activitynet_json
from ecm_edge.evaluation import evaluate_detections, load_predictions, write_predictions

THUMOS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "thumos14"

GT = {"database": {
    "v1": {"subset": "test", "annotations": [{"segment": ["0", "10"], "label": "Jump"},
                                             {"segment": [20, 30], "label": "Run"}]},
    "v2": {"subset": "test", "annotations": [{"segment": [5, 15], "label": "Jump"}]},
    "t1": {"subset": "train", "annotations": [{"segment": [0, 4], "label": "Run"}]},
}}
PRED = {
    "v1": [{"label": "Jump", "score": 0.9, "segment": [0, 10]}, {"label": "Run", "score": 0.8, "segment": [20, 25]},
           {"label": "Run", "score": 0.3, "segment": [40, 45]}],
    "v2": [{"label": "Jump", "score": 0.7, "segment": [5, 14]}],
}


def run_main(*args: str, capsys) -> tuple[int, str, str]:
    """The real entry point in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def run_subprocess(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecm_edge", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(GT))
    return write_predictions(tmp_path / "pred.json", PRED), gt


def test_json_output_is_pure_json_with_the_documented_shape(files):
    pred, gt = files
    done = run_subprocess("eval", "--pred", str(pred), "--gt", str(gt), "--subset", "test", "--iou", "0.5:0.7:0.1",
                          "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert {"iou", "map", "average", "per_class"} <= set(payload)
    assert payload["iou"] == pytest.approx([0.5, 0.6, 0.7])
    # Jump: both hits at every threshold (tIoU 1 and 0.9). Run: one hit at tIoU 0.5 only, then a miss.
    assert payload["per_class"] == {"Jump": [1.0, 1.0, 1.0], "Run": [1.0, 0.0, 0.0]}
    assert payload["map"] == pytest.approx([1.0, 0.5, 0.5])
    assert payload["average"] == pytest.approx(2 / 3)
    assert payload["num_predictions"] == 4 and payload["num_ground_truth"] == 3


def test_table_output_in_percent(files, capsys):
    pred, gt = files
    code, out, _ = run_main("eval", "--pred", str(pred), "--gt", str(gt), "--subset", "test", "--iou", "0.5,0.6",
                            "--per-class", capsys=capsys)
    assert code == 0
    assert "| 0.50 | 100.00 |" in out and "| 0.60 | 50.00 |" in out and "| avg | 75.00 |" in out
    assert "| Run | 100.00 | 0.00 | 50.00 |" in out
    assert "4 detections, 3 ground-truth segments" in out


def test_positional_prediction_file_and_config_thresholds(files, capsys):
    pred, gt = files
    code, out, _ = run_main("eval", str(pred), "--gt", str(gt), "--subset", "test", "--json",
                            "--set", "eval.iou_thresholds=[0.6]", capsys=capsys)
    assert code == 0 and json.loads(out)["map"] == [0.5]
    code, out, _ = run_main("eval", str(pred), "--gt", str(gt), "--subset", "test", "--json", capsys=capsys)
    assert json.loads(out)["iou"] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])


def test_without_subset_other_videos_count_and_are_warned_about(files, capsys):
    pred, gt = files
    code, out, err = run_main("eval", "--pred", str(pred), "--gt", str(gt), "--iou", "0.5", "--json", capsys=capsys)
    assert code == 0
    assert json.loads(out)["per_class"]["Run"] == [0.5]  # t1's Run segment is missed
    assert "1 of 3 evaluated video(s) have no entry in the predictions (e.g. 't1')" in err


@pytest.mark.parametrize(("args", "message"), [
    ((), "nothing to evaluate"),
    (("--pred", "{pred}"), "--gt is needed to score a prediction file"),
    (("--gt", "{gt}"), "--pred (or PRED) is needed"),
    (("--checkpoint", "run"), "--data is needed to predict and score"),
    (("--pred", "{pred}", "--gt", "{gt}", "--checkpoint", "run"), "choose one mode"),
    (("{pred}", "--pred", "{pred}", "--gt", "{gt}"), "give the prediction file once"),
    (("--pred", "{pred}", "--gt", "{gt}", "--split", "test"), "--split belongs to --checkpoint mode"),
    (("--pred", "{pred}", "--gt", "{gt}", "-o", "x.json"), "-o/--output belongs to --checkpoint mode"),
    (("--pred", "{pred}", "--gt", "{gt}", "--iou", "0.1:0.7"), "Invalid value for '--iou'"),
    (("--pred", "{pred}", "--gt", "{gt}", "--iou", "0,0.5"), "must lie in (0, 1]"),
    (("--pred", "{pred}", "--gt", "{gt}", "--protocol", "activitynet", "--ambiguous", "{gt}"),
     "--ambiguous only applies with --protocol thumos14"),
    (("--pred", "{pred}", "--gt", "{gt}", "--protocol", "thumos"), "Invalid value for '--protocol'"),
])
def test_usage_errors_exit_2_and_say_what_is_missing(files, capsys, args, message):
    pred, gt = files
    code, out, err = run_main("eval", *(a.format(pred=pred, gt=gt) for a in args), capsys=capsys)
    assert code == 2
    assert message in err and out == ""


def test_malformed_prediction_file_is_one_line_error_exit_1(files, tmp_path):
    _, gt = files
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": {"v1": [{"label": "Jump", "score": 0.5, "segment": [9, 3]}]}}))
    done = run_subprocess("eval", "--pred", str(bad), "--gt", str(gt))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "video 'v1' has a detection that ends before it starts" in done.stderr and "bad.json" in done.stderr


def test_unknown_videos_fail_unless_ignored(files, tmp_path, capsys):
    _, gt = files
    extra = dict(PRED, t1=[{"label": "Run", "score": 0.5, "segment": [0, 4]}], zz=[])
    pred = write_predictions(tmp_path / "extra.json", extra)
    code, _, err = run_main("eval", "--pred", str(pred), "--gt", str(gt), "--subset", "test", capsys=capsys)
    assert code == 1
    assert "1 detection(s) of video(s) not in the ground-truth subset 'test'" in err and "--ignore-unknown" in err
    code, out, err = run_main("eval", "--pred", str(pred), "--gt", str(gt), "--subset", "test", "--iou", "0.5",
                              "--ignore-unknown", "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["map"] == [1.0]
    assert "dropped 1 detection(s)" in err
    assert json.loads(out)["warnings"][0].startswith("dropped 1 detection(s)")


def test_missing_files_are_errors_naming_them(files, tmp_path, capsys):
    pred, gt = files
    code, _, err = run_main("eval", "--pred", str(tmp_path / "nope.json"), "--gt", str(gt), capsys=capsys)
    assert code == 1 and "nope.json does not exist" in err
    code, _, err = run_main("eval", "--pred", str(pred), "--gt", str(gt), "--subset", "val", capsys=capsys)
    assert code == 1 and "no video in subset 'val'" in err


def test_thumos14_protocol_finds_ambiguous_file_in_reduced_folder(files, tmp_path, capsys):
    pred, gt = files
    code, _, err = run_main("eval", "--pred", str(pred), "--gt", str(gt), "--protocol", "thumos14", capsys=capsys)
    assert code == 1 and "--ambiguous" in err
    (tmp_path / "reduced").mkdir()
    (tmp_path / "reduced" / "Ambiguous_test.txt").write_text("v1 42.0 50.0\nv2 100 110\n")
    ranked_miss = dict(PRED, v1=[{**d, "score": 0.95} if d["segment"] == [40, 45] else d for d in PRED["v1"]])
    pred = write_predictions(tmp_path / "pred.json", ranked_miss)
    args = ("eval", "--pred", str(pred), "--gt", str(gt), "--subset", "test", "--iou", "0.5", "--json")
    code, out, _ = run_main(*args, capsys=capsys)
    assert json.loads(out)["per_class"]["Run"] == [0.5]  # the miss at 40-45 s now ranks before the hit
    code, out, _ = run_main(*args, "--protocol", "thumos14", capsys=capsys)
    payload = json.loads(out)
    assert code == 0 and payload["num_ambiguous_removed"] == 1 and payload["per_class"]["Run"] == [1.0]
    other = tmp_path / "amb.txt"
    other.write_text("v1 19 21\n")  # overlaps the Run hit: removed, so Run's only segment is missed
    code, out, _ = run_main(*args, "--ambiguous", str(other), capsys=capsys)  # implies the protocol
    assert json.loads(out)["per_class"]["Run"] == [0.0]


def test_real_thumos14_ground_truth_copied_as_predictions_scores_100(tmp_path, capsys):
    gt_file = THUMOS / "gt.json"
    if not gt_file.is_file():
        pytest.skip(f"THUMOS14 annotations not found at {THUMOS} (shared data folder beside the repository)")
    gt = load_activitynet_json(gt_file).subset("test")
    results = {vid: [{"label": lab, "score": 1.0, "segment": [float(s), float(e)]}
                     for (s, e), lab in zip(v.segments, v.labels, strict=True) if e > s]
               for vid, v in gt.videos.items()}
    zero_length = gt.num_segments - sum(map(len, results.values()))
    pred = write_predictions(tmp_path / "pred.json", results)
    code, out, _ = run_main("eval", "--pred", str(pred), "--gt", str(gt_file), "--subset", "test", "--json",
                            capsys=capsys)
    payload = json.loads(out)
    assert code == 0 and len(payload["per_class"]) == 20
    if zero_length == 0:
        assert payload["map"] == [1.0] * 7
    else:
        assert all(0.99 < m <= 1.0 for m in payload["map"])
    code, out, _ = run_main("eval", "--pred", str(pred), "--gt", str(gt_file), "--subset", "test", "--json",
                            "--protocol", "thumos14", capsys=capsys)
    assert code == 0 and json.loads(out)["num_ambiguous_removed"] > 0


def test_checkpoint_mode_predicts_scores_and_matches_file_mode(tmp_path, capsys):
    pytest.importorskip("torch", reason="--checkpoint mode runs the trained model with torch")
    inference = pytest.importorskip("ecm_edge.train.inference", reason="the model-side predict_dataset")
    import torch

    from ecm_edge.config import load_config
    from ecm_edge.data.synth import SynthSettings, generate_dataset
    from ecm_edge.train.deploy import save_deploy
    from ecm_edge.train.model import ECM, ECMDims

    overrides = ["data.feature_dim=32", "model.num_classes=4", "model.hidden_dim=16", "data.t_fixed=32",
                 "post.class_threshold=0.0"]
    generate_dataset(tmp_path / "data", SynthSettings.from_preset("small", num_classes=4, feature_dim=32,
                                                                  num_videos=9))
    cfg = load_config("small", overrides)
    torch.manual_seed(0)
    class_names = load_activitynet_json(tmp_path / "data" / "gt.json").class_names
    save_deploy(ECM(ECMDims.from_config(cfg)).eval(), class_names, cfg, tmp_path / "run")
    out_file = tmp_path / "pred.json"
    code, out, err = run_main("eval", "--checkpoint", str(tmp_path / "run"), "--data", str(tmp_path / "data"),
                              "--json", "-o", str(out_file), "--iou", "0.1,0.3", capsys=capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["iou"] == [0.1, 0.3] and payload["num_predictions"] > 0
    assert f"written to {out_file}" in err
    results, gt, _ = inference.predict_dataset(tmp_path / "run", tmp_path / "data", "test")
    assert load_predictions(out_file) == json.loads(json.dumps(results))
    assert payload["map"] == evaluate_detections(results, gt, [0.1, 0.3]).map
    code, out, _ = run_main("eval", "--pred", str(out_file), "--gt", str(tmp_path / "data" / "gt.json"),
                            "--subset", "test", "--iou", "0.1,0.3", "--json", capsys=capsys)
    assert json.loads(out)["map"] == payload["map"]


def test_negative_detection_times_are_one_line_and_exit_1(files, tmp_path, capsys):
    _, gt = files
    pred = write_predictions(tmp_path / "neg.json", {"v1": [{"label": "Jump", "score": 0.9, "segment": [-3, 2]}]})
    code, out, err = run_main("eval", str(pred), "--gt", str(gt), capsys=capsys)
    assert code == 1 and out == ""
    assert err.strip() == (f"error: {pred}: video 'v1' has a detection with a negative time ([-3.0, 2.0]); times "
                           "are seconds from the start of the video, so they must be >= 0; 1 such detection(s) in all")
