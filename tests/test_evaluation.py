"""Detection mAP: the vectorized evaluator against a plain loop transcription of ActivityNet's evaluator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecm_edge.data.annotations import Annotations, VideoAnnotation, load_activitynet_json, load_ambiguous
from ecm_edge.errors import ConfigError, DataError
from ecm_edge.evaluation import (
    EvalResult,
    detections_to_results,
    evaluate_detections,
    find_ambiguous_file,
    load_prediction_table,
    load_predictions,
    parse_iou_range,
    write_predictions,
)

THUMOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "thumos14"
TOL = 1e-6


# ------------------------------------------------------------------------------------------ the loop oracle


def loop_tiou(seg: tuple[float, float], gt: tuple[float, float]) -> float:
    inter = max(0.0, min(seg[1], gt[1]) - max(seg[0], gt[0]))
    union = (seg[1] - seg[0]) + (gt[1] - gt[0]) - inter
    return inter / union if union > 0 else 0.0


def loop_interpolated_ap(precision: list[float], recall: list[float]) -> float:
    """ActivityNet's ``interpolated_prec_rec``, line by line."""
    mprec = [0.0, *precision, 0.0]
    mrec = [0.0, *recall, 1.0]
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mprec[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def loop_class_ap(gts: list[tuple[str, float, float]], preds: list[tuple[str, float, float, float]],
                  thresholds: list[float]) -> list[float]:
    """``compute_average_precision_detection`` for one class, as a straightforward loop (stable sorts)."""
    if not preds:
        return [0.0] * len(thresholds)
    order = np.argsort(-np.array([p[3] for p in preds]), kind="mergesort")
    locked = [set() for _ in thresholds]
    tp = np.zeros((len(thresholds), len(preds)))
    for rank, i in enumerate(order):
        vid, start, end, _ = preds[i]
        candidates = [(j, loop_tiou((start, end), (gs, ge))) for j, (gv, gs, ge) in enumerate(gts) if gv == vid]
        candidates.sort(key=lambda jc: (-jc[1], jc[0]))
        for t, thr in enumerate(thresholds):
            for j, iou in candidates:
                if iou < thr:
                    break
                if j in locked[t]:
                    continue
                tp[t, rank] = 1
                locked[t].add(j)
                break
    aps = []
    for t in range(len(thresholds)):
        tp_cum = np.cumsum(tp[t])
        precision = tp_cum / np.arange(1, len(preds) + 1)
        aps.append(loop_interpolated_ap(list(precision), list(tp_cum / len(gts))))
    return aps


def loop_evaluate(results: dict, gt: Annotations, thresholds: list[float],
                  ambiguous: dict[str, np.ndarray] | None = None) -> dict[str, list[float]]:
    """Per-class AP of every class with ground truth; detections on ambiguous spans removed first."""
    per_class = {}
    for name in gt.class_names:
        gts = [(vid, float(s), float(e)) for vid, v in gt.videos.items()
               for (s, e), lab in zip(v.segments, v.labels, strict=True) if lab == name]
        if not gts:
            continue
        preds = []
        for vid, dets in results.items():
            for d in dets:
                if d["label"] != name:
                    continue
                s, e = float(d["segment"][0]), float(d["segment"][1])
                spans = ambiguous.get(vid, []) if ambiguous else []
                if any(min(e, a1) - max(s, a0) > 0 for a0, a1 in spans):
                    continue
                preds.append((vid, s, e, float(d["score"])))
        per_class[name] = loop_class_ap(gts, preds, thresholds)
    return per_class


def assert_matches_oracle(result: EvalResult, oracle: dict[str, list[float]]) -> None:
    assert set(result.per_class) == set(oracle)
    for name, aps in oracle.items():
        np.testing.assert_allclose(result.per_class[name], aps, atol=TOL, rtol=0)
    expected_map = np.mean(list(oracle.values()), axis=0)
    np.testing.assert_allclose(result.map, expected_map, atol=TOL, rtol=0)
    assert result.average == pytest.approx(float(np.mean(expected_map)), abs=TOL)


# ------------------------------------------------------------------------------------------ helpers


def make_gt(videos: dict[str, list[tuple[float, float, str]]], subset: str = "test",
            class_names: list[str] | None = None) -> Annotations:
    return Annotations({vid: VideoAnnotation(vid, subset, np.array([(s, e) for s, e, _ in segs], float).reshape(-1, 2),
                                             [lab for _, _, lab in segs]) for vid, segs in videos.items()},
                       list(class_names or []))


def det(label: str, score: float, start: float, end: float) -> dict:
    return {"label": label, "score": score, "segment": [start, end]}


# ------------------------------------------------------------------------------------------ hand-computed cases


def test_perfect_detection_gives_ap_one():
    gt = make_gt({"v": [(0, 10, "A")]})
    result = evaluate_detections({"v": [det("A", 0.9, 0, 10)]}, gt, [0.5])
    assert result.map == [1.0]
    assert result.per_class == {"A": [1.0]}


def test_duplicate_after_true_positive_keeps_ap_one():
    gt = make_gt({"v": [(0, 10, "A")]})
    result = evaluate_detections({"v": [det("A", 0.9, 0, 10), det("A", 0.8, 0, 10)]}, gt, [0.5])
    assert result.map == [1.0]  # precision 1, 1/2 at recall 1, 1: the envelope keeps 1


def test_false_positive_first_then_two_hits():
    gt = make_gt({"v": [(0, 10, "A"), (20, 30, "A")]})
    preds = {"v": [det("A", 0.9, 50, 60), det("A", 0.8, 0, 10), det("A", 0.7, 20, 30)]}
    # precision 0, 1/2, 2/3 at recall 0, 1/2, 1 → envelope 2/3 at both recall steps → AP 2/3
    assert evaluate_detections(preds, gt, [0.5]).map[0] == pytest.approx(2 / 3, abs=1e-12)


def test_threshold_is_inclusive():
    gt = make_gt({"v": [(0, 10, "A")]})
    result = evaluate_detections({"v": [det("A", 0.9, 0, 5)]}, gt, [0.5, 0.6])  # tIoU exactly 0.5
    assert result.map == [1.0, 0.0]


def test_prediction_takes_the_ground_truth_with_highest_iou():
    # p1 overlaps A by 7/13 and B by 9/11: it must take B, leaving A for p2 (tIoU 1).
    gt = make_gt({"v": [(0, 10, "A"), (4, 14, "A")]})
    preds = {"v": [det("A", 0.9, 3, 13), det("A", 0.8, 0, 10)]}
    assert evaluate_detections(preds, gt, [0.5]).map == [1.0]


def test_matched_ground_truth_falls_through_to_next_candidate():
    gt = make_gt({"v": [(0, 10, "A"), (2, 12, "A")]})
    preds = {"v": [det("A", 0.9, 0, 10), det("A", 0.8, 0, 10)]}  # second takes (2, 12) at tIoU 8/12
    assert evaluate_detections(preds, gt, [0.5, 0.7]).map == [1.0, 0.5]


def test_equal_iou_goes_to_the_lower_ground_truth_index():
    # p1 overlaps both by tIoU 0.2; it takes the first, so p2 (exactly on the second) is a hit too.
    gt = make_gt({"v": [(0, 2, "A"), (4, 6, "A")]})
    preds = {"v": [det("A", 0.9, 1, 5), det("A", 0.8, 4, 6)]}
    assert evaluate_detections(preds, gt, [0.2]).map == [1.0]


def test_equal_scores_keep_input_order():
    gt = make_gt({"v": [(0, 10, "A")]})
    hit, miss = det("A", 0.5, 0, 10), det("A", 0.5, 30, 40)
    assert evaluate_detections({"v": [hit, miss]}, gt, [0.5]).map == [1.0]
    assert evaluate_detections({"v": [miss, hit]}, gt, [0.5]).map == [0.5]


def test_class_without_predictions_counts_as_zero_and_absent_class_is_not_averaged():
    gt = make_gt({"v": [(0, 10, "A"), (20, 30, "B")]}, class_names=["A", "B", "C"])
    result = evaluate_detections({"v": [det("A", 0.9, 0, 10)]}, gt, [0.5])
    assert result.per_class == {"A": [1.0], "B": [0.0]}
    assert result.map == [0.5]


def test_detection_in_video_without_that_class_is_false_positive():
    gt = make_gt({"v": [(0, 10, "A")], "w": [(0, 10, "B")]})
    preds = {"w": [det("A", 0.9, 0, 10)], "v": [det("A", 0.8, 0, 10)]}
    result = evaluate_detections(preds, gt, [0.5])
    assert result.per_class["A"] == [0.5]


def test_zero_length_segments_never_match():
    gt = make_gt({"v": [(5, 5, "A"), (0, 10, "A")]})
    result = evaluate_detections({"v": [det("A", 0.9, 5, 5)]}, gt, [0.1])
    assert result.map == [0.0]


def test_empty_predictions_give_zero():
    gt = make_gt({"v": [(0, 10, "A")]})
    result = evaluate_detections({}, gt, [0.3, 0.5])
    assert result.map == [0.0, 0.0] and result.num_predictions == 0


# ------------------------------------------------------------------------------------------ THUMOS14 protocol


def test_detection_overlapping_ambiguous_span_is_removed():
    gt = make_gt({"v": [(0, 10, "A")]})
    preds = {"v": [det("A", 0.9, 20, 25), det("A", 0.8, 0, 10)]}
    assert evaluate_detections(preds, gt, [0.5]).map == [0.5]
    result = evaluate_detections(preds, gt, [0.5], ambiguous={"v": np.array([[22.0, 30.0]])})
    assert result.map == [1.0]
    assert result.num_ambiguous_removed == 1 and result.num_predictions == 1


def test_detection_touching_ambiguous_span_is_kept():
    gt = make_gt({"v": [(0, 10, "A")]})
    preds = {"v": [det("A", 0.9, 20, 25), det("A", 0.8, 0, 10)]}
    result = evaluate_detections(preds, gt, [0.5], ambiguous={"v": np.array([[25.0, 30.0]]),
                                                               "other": np.array([[0.0, 100.0]])})
    assert result.map == [0.5] and result.num_ambiguous_removed == 0


# ------------------------------------------------------------------------------------------ property tests


@st.composite
def scenarios(draw):
    """Small worlds on a coarse time grid, so equal scores and equal tIoU happen often."""
    videos = [f"v{i}" for i in range(draw(st.integers(1, 3)))]
    classes = ["A", "B", "C"][: draw(st.integers(1, 3))]
    grid = st.integers(0, 20).map(lambda x: x / 2)

    def segment():
        return st.tuples(grid, st.integers(0, 8).map(lambda x: x / 2)).map(lambda sl: (sl[0], sl[0] + sl[1]))

    gt = {}
    for vid in videos:
        segs = draw(st.lists(st.tuples(segment(), st.sampled_from(classes)), max_size=5))
        gt[vid] = [(s, e, c) for (s, e), c in segs]
    if not any(gt.values()):
        gt[videos[0]] = [(0.0, 2.0, classes[0])]
    results = {}
    for vid in draw(st.permutations(videos)):
        dets = draw(st.lists(st.tuples(segment(), st.sampled_from(classes), st.integers(0, 5)), max_size=12))
        results[vid] = [det(c, score / 5, s, e) for (s, e), c, score in dets]
    thresholds = draw(st.lists(st.sampled_from([0.1, 0.25, 1 / 3, 0.5, 0.6, 2 / 3, 0.75, 1.0]),
                               min_size=1, max_size=4, unique=True))
    ambiguous = {vid: np.array([draw(segment())]) for vid in videos if draw(st.booleans())}
    return make_gt(gt, class_names=classes), results, thresholds, ambiguous


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_vectorized_equals_loop_oracle(scenario):
    gt, results, thresholds, _ = scenario
    assert_matches_oracle(evaluate_detections(results, gt, thresholds), loop_evaluate(results, gt, thresholds))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_vectorized_equals_loop_oracle_with_ambiguous_spans(scenario):
    gt, results, thresholds, ambiguous = scenario
    result = evaluate_detections(results, gt, thresholds, ambiguous=ambiguous)
    assert_matches_oracle(result, loop_evaluate(results, gt, thresholds, ambiguous))


@settings(max_examples=60, deadline=None)
@given(scenarios())
def test_map_lies_in_unit_interval_and_perfect_predictions_score_one(scenario):
    gt, results, thresholds, _ = scenario
    result = evaluate_detections(results, gt, thresholds)
    assert all(0.0 <= m <= 1.0 for m in result.map)
    perfect = {vid: [det(lab, 1.0, s, e) for (s, e), lab in zip(v.segments, v.labels, strict=True) if e > s]
               for vid, v in gt.videos.items()}
    if all(e > s for v in gt.videos.values() for s, e in v.segments):
        assert evaluate_detections(perfect, gt, thresholds).map == [1.0] * len(thresholds)


def synthetic_thumos_predictions(gt: Annotations, count: int, seed: int) -> dict:
    """Detections near ground truth (jittered) plus background ones, across all classes."""
    rng = np.random.default_rng(seed)
    segments = [(vid, s, e, lab) for vid, v in gt.videos.items()
                for (s, e), lab in zip(v.segments, v.labels, strict=True)]
    results: dict[str, list] = {vid: [] for vid in gt.videos}
    for _ in range(count):
        vid, s, e, lab = segments[rng.integers(len(segments))]
        if rng.random() < 0.3:
            lab = gt.class_names[rng.integers(len(gt.class_names))]
        length = (e - s) * rng.uniform(0.3, 2.0)
        start = max(0.0, s + rng.normal(0, 2.0))
        results[vid].append(det(lab, round(float(rng.random()), 3), start, start + length))
    return results


def test_real_thumos14_ground_truth_matches_loop_oracle():
    gt_file = THUMOS / "gt.json"
    if not gt_file.is_file():
        pytest.skip(f"THUMOS14 annotations not found at {THUMOS} (shared data folder beside the repository)")
    gt = load_activitynet_json(gt_file).subset("test")
    results = synthetic_thumos_predictions(gt, 3000, seed=0)
    thresholds = parse_iou_range("0.1:0.7:0.1")
    ambiguous = load_ambiguous(find_ambiguous_file(gt_file))
    result = evaluate_detections(results, gt, thresholds, ambiguous=ambiguous)
    assert_matches_oracle(result, loop_evaluate(results, gt, thresholds, ambiguous))
    assert result.num_ambiguous_removed > 0
    assert len(result.per_class) == 20 and result.num_ground_truth == 3311


# ------------------------------------------------------------------------------------------ subset and unknowns


def test_subset_restricts_ground_truth_and_unknown_video_is_an_error():
    gt = make_gt({"t": [(0, 10, "A")]})
    gt.videos["train1"] = VideoAnnotation("train1", "train", np.array([[0.0, 5.0]]), ["B"])
    result = evaluate_detections({"t": [det("A", 0.9, 0, 10)]}, gt, [0.5], subset="test")
    assert result.per_class == {"A": [1.0]}
    preds = {"t": [det("A", 0.9, 0, 10)], "train1": [det("B", 0.9, 0, 5)], "x": [det("A", 0.1, 0, 1)]}
    with pytest.raises(DataError, match=r"2 detection\(s\) of video\(s\) not in the ground-truth subset 'test'"):
        evaluate_detections(preds, gt, [0.5], subset="test")
    result = evaluate_detections(preds, gt, [0.5], subset="test", ignore_unknown=True)
    assert result.map == [1.0] and result.num_predictions == 1
    assert any("dropped 2 detection(s)" in w for w in result.warnings)


def test_empty_subset_is_an_error_naming_the_subsets():
    gt = make_gt({"t": [(0, 10, "A")]})
    with pytest.raises(DataError, match="no video in subset 'validation'; its subsets: test"):
        evaluate_detections({}, gt, [0.5], subset="validation")


def test_unknown_label_is_an_error_or_counted_warning():
    gt = make_gt({"v": [(0, 10, "A")]})
    preds = {"v": [det("A", 0.9, 0, 10), det("Zumba", 0.95, 0, 10), det("Zumba", 0.9, 1, 2)]}
    with pytest.raises(DataError, match=r"2 detection\(s\) with label\(s\) not among the ground-truth .*'Zumba'"):
        evaluate_detections(preds, gt, [0.5])
    result = evaluate_detections(preds, gt, [0.5], ignore_unknown=True)
    assert result.map == [1.0]
    assert result.warnings and "2 detection(s)" in result.warnings[0]


def test_known_class_without_ground_truth_in_subset_is_reported():
    gt = make_gt({"v": [(0, 10, "A")]}, class_names=["A", "B"])
    result = evaluate_detections({"v": [det("A", 0.9, 0, 10), det("B", 0.9, 0, 10)]}, gt, [0.5])
    assert result.map == [1.0] and result.num_predictions == 1 and result.num_unscored == 1
    assert result.warnings == []


def test_videos_missing_from_predictions_are_warned_about():
    gt = make_gt({"v": [(0, 10, "A")], "w": [(0, 10, "A")]})
    result = evaluate_detections({"v": [det("A", 0.9, 0, 10)]}, gt, [0.5])
    assert result.map == [0.5]
    assert result.warnings == ["1 of 2 evaluated video(s) have no entry in the predictions (e.g. 'w'), so their "
                               "ground truth counts as missed; restrict the ground truth with a subset if the "
                               "predictions cover only part of it"]
    assert evaluate_detections({"v": [det("A", 0.9, 0, 10)], "w": []}, gt, [0.5]).warnings == []


@pytest.mark.parametrize(("results", "message"), [
    ({"v": [{"label": "A", "score": 0.5}]}, "video 'v', detection 0 lacks key.*segment"),
    ({"v": [{"segment": [0, 1], "score": 0.5}]}, "lacks key.*label"),
    ({"v": [det("A", 0.5, 0, 1), {"label": "A", "segment": [0, 1]}]}, "detection 1 lacks key.*score"),
    ({"v": [det("A", 0.5, 4, 2)]}, "video 'v' has a detection that ends before it starts"),
    ({"v": [det("A", 0.5, -5, -1)]}, r"video 'v' has a detection with a negative time \(\[-5.0, -1.0\]\)"),
    ({"v": [det("A", 0.5, 0, 1), det("A", 0.5, -3, 2)]}, r"negative time \(\[-3.0, 2.0\]\).*1 such detection"),
    ({"v": [det("A", "high", 0, 1)]}, "video 'v': score must be a number"),
    ({"v": [det("A", float("nan"), 0, 1)]}, "score must be finite"),
    ({"v": [{"label": "A", "score": 0.5, "segment": [0]}]}, "segment must be \\[start, end\\] with two numbers"),
    ({"v": [det("A", 0.5, 0, None)]}, "segment must be finite"),
    ({"v": [det("A", 0.5, 0, "x")]}, "video 'v': segment must be \\[start, end\\] with two numbers"),
    ({"v": [det("A", 0.5, 0, 1), {"label": "A", "score": 0.5, "segment": "12"}]}, "got '12'"),
    ({"v": [det(3, 0.5, 0, 1)]}, "'label' must be a class name"),
    ({"v": {"label": "A"}}, "must map to a list of detections"),
])
def test_malformed_predictions_are_clear_errors(results, message):
    gt = make_gt({"v": [(0, 10, "A")]})
    with pytest.raises(DataError, match=message):
        evaluate_detections(results, gt, [0.5])


def test_numeric_strings_are_read_like_annotation_files():
    gt = make_gt({"v": [(0, 10, "A")]})
    result = evaluate_detections({"v": [{"label": "A", "score": "0.9", "segment": ["0", "10.0"]}]}, gt, [0.5])
    assert result.map == [1.0]


# ------------------------------------------------------------------------------------------ IoU ranges


@pytest.mark.parametrize(("text", "expected"), [
    ("0.1:0.7:0.1", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),
    ("0.5:0.95:0.05", [round(0.5 + 0.05 * i, 2) for i in range(10)]),
    ("0.3,0.5,0.7", [0.3, 0.5, 0.7]),
    ("0.5", [0.5]),
])
def test_parse_iou_range(text, expected):
    assert parse_iou_range(text) == pytest.approx(expected, abs=1e-12)
    assert len(parse_iou_range(text)) == len(expected)


@pytest.mark.parametrize("text", ["", "0.1:0.7", "a,b", "0:0.5:0.1", "0.5:0.7:0", "1.5"])
def test_parse_iou_range_rejects(text):
    with pytest.raises(ConfigError):
        parse_iou_range(text)


# ------------------------------------------------------------------------------------------ files and formats


def test_write_then_load_predictions_round_trip(tmp_path):
    results = {"v": [det("A", np.float32(0.5), np.float64(1.0), 2.5)], "w": []}
    path = write_predictions(tmp_path / "out" / "pred.json", results)
    document = json.loads(path.read_text())
    assert document["version"] == "VERSION 1.3" and document["external_data"] == {}
    assert load_predictions(path) == {"v": [det("A", 0.5, 1.0, 2.5)], "w": []}
    table = load_prediction_table(path)
    assert (table.videos, table.video.tolist(), table.labels) == (["v", "w"], [0], ["A"])
    assert (table.start.tolist(), table.end.tolist(), table.score.tolist()) == ([1.0], [2.5], [0.5])
    assert [p.name for p in path.parent.iterdir()] == ["pred.json"]


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "is not valid JSON"),
    ('{"version": "x"}', "top-level 'results' mapping"),
    ('{"results": {"v": [{"label": "A", "score": 1, "segment": [3, 1]}]}}', "pred.json: video 'v' has a detection"),
])
def test_load_predictions_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "pred.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_predictions(path)
    with pytest.raises(DataError, match=message):
        load_prediction_table(path)
    with pytest.raises(DataError, match="does not exist"):
        load_predictions(tmp_path / "missing.json")


def test_negative_times_in_ground_truth_files_are_refused(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"database": {"v": {"subset": "test", "annotations": [
        {"segment": [0, 2], "label": "A"}, {"segment": ["-0.5", "3"], "label": "A"}]}}}))
    with pytest.raises(DataError, match=r"gt.json: video 'v', annotation 1: segment has a negative time "
                                        r"\(\[-0.5, 3.0\]\)"):
        load_activitynet_json(gt)
    ambiguous = tmp_path / "Ambiguous_test.txt"
    ambiguous.write_text("v 1.0 2.0\nv -2 -1\n")
    with pytest.raises(DataError, match=r"Ambiguous_test.txt:2: video 'v': segment has a negative time"):
        load_ambiguous(ambiguous)
    ambiguous.write_text("v 0 0.5\n")  # starting at 0 is fine
    assert load_ambiguous(ambiguous)["v"].tolist() == [[0.0, 0.5]]


def test_negative_times_in_a_wtalc_folder_are_refused(tmp_path):
    from ecm_edge.data.annotations import load_wtalc_reduced

    arrays = {"videoname": np.array([b"v"]), "subset": np.array([b"test"]), "duration": np.array([10.0]),
              "classlist": np.array([b"A"]), "labels": np.array([["A"]], dtype=object),
              "segments": np.array([[[-1.0, 2.0]]])}
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array, allow_pickle=True)
    with pytest.raises(DataError, match=r"video 'v', segment 0: segment has a negative time"):
        load_wtalc_reduced(tmp_path)


def test_detections_to_results_from_structured_array():
    dtype = [("video", np.int32), ("cls", np.int32), ("start", np.float64), ("end", np.float64),
             ("score", np.float32)]
    dets = np.array([(1, 0, 0.0, 10.0, 0.9), (1, 1, 2.0, 3.0, 0.5), (0, 1, 4.0, 8.0, 0.25)], dtype=dtype)
    results = detections_to_results(dets, ["a", "b", "c"], ["A", "B"])
    assert results == {"a": [det("B", 0.25, 4.0, 8.0)], "b": [det("A", pytest.approx(0.9), 0.0, 10.0),
                                                              det("B", 0.5, 2.0, 3.0)], "c": []}
    gt = make_gt({"a": [(4, 8, "B")], "b": [(0, 10, "A")], "c": []})
    assert evaluate_detections(results, gt, [0.5]).map == [0.75]
    with pytest.raises(DataError, match="video index 5"):
        detections_to_results(np.array([(5, 0, 0.0, 1.0, 0.1)], dtype=dtype), ["a"], ["A"])


def test_find_ambiguous_file(tmp_path):
    (tmp_path / "reduced").mkdir()
    (tmp_path / "reduced" / "Ambiguous_test.txt").write_text("v 1 2\n")
    assert find_ambiguous_file(tmp_path / "gt.json") == tmp_path / "reduced" / "Ambiguous_test.txt"
    assert find_ambiguous_file(tmp_path) == tmp_path / "reduced" / "Ambiguous_test.txt"
    with pytest.raises(DataError, match="--ambiguous"):
        find_ambiguous_file(tmp_path / "reduced" / "x" / "gt.json")


def test_result_json_and_table():
    gt = make_gt({"v": [(0, 10, "A")]})
    result = evaluate_detections({"v": [det("A", 0.9, 0, 5)]}, gt, [0.5, 0.6])
    payload = result.to_json()
    assert {"iou", "map", "average", "per_class"} <= set(payload)
    assert payload["average"] == 0.5 and json.loads(json.dumps(payload)) == payload
    table = result.format_table()
    assert "| 0.50 | 100.00 |" in table and "| 0.60 | 0.00 |" in table and "| avg | 50.00 |" in table


def test_evaluation_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; import ecm_edge.evaluation, ecm_edge.cli.eval; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


# ------------------------------------------------------------------------------------------ the benchmark part


def test_bench_part_runs_and_both_implementations_agree():
    from ecm_edge.bench import PARTS
    from ecm_edge.bench.eval import run

    assert PARTS["eval"] == ("ecm_edge.bench.eval", "run")
    section = run(quick=True)
    assert section.rows[0][0] == "loop (baseline)" and len(section.rows) >= 2
    for row in section.rows[1:]:
        assert str(row[-1]).startswith("yes"), row
        assert row[2] > 0 and row[3] > 0 and row[4] > 0
    assert "| vectorized | activitynet |" in section.to_markdown()


def test_bench_fallback_ground_truth_has_thumos14_size_and_loop_baseline_agrees():
    from ecm_edge.bench import eval as bench_eval

    gt = bench_eval.synthetic_ground_truth(np.random.default_rng(0))
    assert (len(gt.videos), gt.num_segments, len(gt.class_names)) == (210, 3311, 20)
    results = bench_eval.synthetic_detections(gt, 2000, np.random.default_rng(1))
    thresholds = [0.1, 0.5, 0.7]
    baseline = bench_eval.loop_evaluate(results, gt, thresholds)
    assert_matches_oracle(evaluate_detections(results, gt, thresholds), loop_evaluate(results, gt, thresholds))
    assert_matches_oracle(evaluate_detections(results, gt, thresholds), baseline)
