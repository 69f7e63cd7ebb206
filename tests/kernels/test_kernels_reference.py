"""The reference post-processing itself: interpolation vs OpenCV, the published quirks, NMS, parameters.

(OpenCV's own arithmetic, reproduced bit for bit in ``ecm`` mode by all kernels: tests/kernels/test_kernels_ecm.py.)"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ecm_edge.config import CHOICES, PostConfig, load_config
from ecm_edge.errors import ConfigError
from ecm_edge.kernels import DETECTION_DTYPE, PostParams, compare_detections, make_detections
from ecm_edge.kernels.params import MODES, TIME_BASES
from ecm_edge.kernels.reference import (
    class_proposals,
    interpolate,
    interpolate_row,
    interval_iou,
    nms,
    normalize_rows,
    oic_score,
    outer_reach,
    outer_window,
    run_score,
    suppresses,
)
from ecm_edge.kernels.score_rows import SCORE_SOURCES


@pytest.mark.parametrize(("length", "frames"), [(750, 6000), (750, 21_737), (10, 3), (100, 100), (7, 14),
                                                (5, 1), (1, 10), (750, 375), (3, 2), (16_875, 324_000)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_interpolation_matches_cv2_resize_within_its_float32_positions(length, frames, dtype):
    """cv2.resize (INTER_LINEAR) has the clean mode's geometry but rounds positions to float32.

    Its position error is at most half a float32 ulp of the position (< T · 2⁻²⁴), its weights are rounded to
    float32 too: the values differ by at most (T · 2⁻²⁴ + 2⁻²²) times the largest step between neighbours
    (plus float32 rounding of the output for float32 input).
    """
    row = np.random.default_rng(length).normal(0, 1, length).astype(dtype)
    ours = interpolate_row(row.astype(np.float64), frames)
    theirs = cv2.resize(row[:, None], (1, frames), interpolation=cv2.INTER_LINEAR)[:, 0].astype(np.float64)
    step = np.abs(np.diff(row.astype(np.float64))).max(initial=0.0)
    tolerance = (length * 2.0**-24 + 2.0**-22) * max(step, np.abs(row).max()) + np.abs(row).max() * 2.0**-23
    assert np.abs(ours - theirs).max() <= tolerance


def test_interpolation_is_exact_half_pixel_geometry():
    row = np.array([0.0, 1.0, 4.0])
    # 3 → 6 samples: positions (j + 0.5)/2 − 0.5 = −0.25 (clamped), 0.25, 0.75, 1.25, 1.75, 2.25 (clamped)
    assert interpolate_row(row, 6).tolist() == [0.0, 0.25, 0.75, 1.75, 3.25, 4.0]
    assert interpolate_row(row, 1).tolist() == [1.0]  # the middle
    assert interpolate_row(np.array([2.0]), 4).tolist() == [2.0] * 4


def test_normalization_uses_relu_of_min_and_max():
    cas = np.array([[-2.0, 0.0, 4.0], [1.0, 2.0, 3.0], [-3.0, -2.0, -1.0], [5.0, 5.0, 5.0]])
    out = normalize_rows(cas)
    assert out[0].tolist() == [-0.5, 0.0, 1.0]  # min⁺ = 0, Δ = 4
    assert out[1].tolist() == [0.0, 0.5, 1.0]  # min⁺ = 1, Δ = 2
    assert out[2].tolist() == [-3.0, -2.0, -1.0]  # Δ = 0 → 1
    assert out[3].tolist() == [0.0, 0.0, 0.0]


def test_ecm_mode_drops_a_lone_first_frame_and_clean_mode_keeps_it():
    row = np.array([0.5, 0.0, 0.0, 0.3, 0.0])
    ecm = class_proposals(row, 0.5, PostParams(mode="ecm", act_thresholds=[0.4]))
    clean = class_proposals(row, 0.5, PostParams(mode="clean", act_thresholds=[0.4]))
    assert ecm[0].size == 0
    assert clean[0].tolist() == [0] and clean[1].tolist() == [0]
    both = class_proposals(row, 0.5, PostParams(mode="ecm", act_thresholds=[0.2]))
    assert both[0].tolist() == [0, 3]  # frame 0 counts when another frame survives too


def test_values_equal_to_the_threshold_survive_and_zero_never_does():
    row = np.array([0.0, 0.2, 0.2, 0.0, 0.1])
    starts, ends, _ = class_proposals(row, 0.0, PostParams(mode="clean", act_thresholds=[0.0, 0.2]))
    assert list(zip(starts.tolist(), ends.tolist(), strict=True)) == [(1, 2), (4, 4), (1, 2)]


def test_oic_outer_window_is_the_published_asymmetric_one():
    row = np.zeros(20)
    row[5:10] = 1.0  # run [5, 9], len 5: λ·len = 2
    row[3] = 0.5  # left window [int(5 − 2), 4] = [3, 4]
    row[11] = 0.5  # right window [10, min(20, int(9 + 2)) − 1] = [10, 10]: frame 11 stays outside
    params = PostParams(oic_lambda=0.4, gamma=0.0)
    assert outer_reach(5, 9, 0.4) == (3, 11)
    assert outer_window(5, 9, 0.4, 0, 20).tolist() == [3, 4, 10]
    assert outer_window(5, 9, 0.4, 4, 10).tolist() == [4]  # clipped to [lo, hi), as the stream's history
    assert run_score(row, 5, 9, 0.0, params) == pytest.approx(1.0 - 0.5 / 3)
    assert oic_score(0.75, 0.25, 0.5, 0.2) == pytest.approx(0.6)


def test_pixel_iou_on_seconds_and_true_iou():
    ecm, clean = PostParams(mode="ecm").iou_offset, PostParams(mode="clean").iou_offset
    assert (ecm, clean) == (1.0, 0.0)
    # [0, 1] and [1.5, 2.5] s are disjoint, but the published +1 convention overlaps them
    assert interval_iou(0.0, 1.0, np.array([1.5]), np.array([2.5]), ecm)[0] == pytest.approx(0.5 / 3.5)
    assert interval_iou(0.0, 1.0, np.array([1.5]), np.array([2.5]), clean)[0] == 0.0
    assert interval_iou(0.0, 2.0, np.array([1.0]), np.array([3.0]), clean)[0] == pytest.approx(1 / 3)


def test_nms_keeps_below_threshold_and_breaks_ties_by_proposal_order():
    start, end = np.array([0.0, 0.0, 10.0, 0.5]), np.array([2.0, 2.0, 12.0, 2.0])
    score = np.array([0.9, 0.9, 0.5, 0.8])
    assert nms(start, end, score, 0.6, 0.0) == [0, 2]
    assert nms(start, end, score, 1.01, 0.0) == [0, 1, 3, 2]  # IoU 1 < 1.01: all kept
    assert nms(start, end, score, 1.0, 0.0) == [0, 3, 2]  # IoU 1 reaches 1.0: 1 suppressed, 3 (IoU 0.75) kept
    near = np.array([0.9, 0.9 + 1e-12, 0.5, 0.8])  # equal up to the 2⁻²⁰ ranking resolution: a tie
    assert nms(start, end, near, 0.6, 0.0) == [0, 2]
    assert suppresses(np.array([0.59, 0.6, 0.61]), 0.6).tolist() == [False, True, True]


def test_the_mode_switch_selects_each_published_quirk():
    ecm, clean = PostParams(mode="ecm"), PostParams(mode="clean")
    assert (ecm.iou_offset, ecm.drops_lone_first_frame, ecm.opencv_interpolation) == (1.0, True, True)
    assert (clean.iou_offset, clean.drops_lone_first_frame, clean.opencv_interpolation) == (0.0, False, False)
    row = np.array([0.0, 0.3, 1.0])
    assert interpolate(row, 7, clean).tolist() == interpolate_row(row, 7).tolist()
    expected = cv2.resize(row.astype(np.float32)[None], (7, 1), interpolation=cv2.INTER_LINEAR)[0]
    assert interpolate(row, 7, ecm).tolist() == expected.astype(np.float64).tolist()


def test_params_defaults_and_choices_come_from_the_config_schema():
    defaults, schema = PostParams(), PostConfig()
    for name in ("mode", "class_threshold", "oic_lambda", "gamma", "nms_iou", "time_base"):
        assert getattr(defaults, name) == getattr(schema, name), name
    assert np.array_equal(defaults.act_thresholds, schema.act_thresholds)
    assert defaults == PostParams.from_config(schema)
    assert MODES is CHOICES["post.mode"]  # the same tuple: read from the schema, not repeated
    assert TIME_BASES is CHOICES["post.time_base"]
    assert SCORE_SOURCES is CHOICES["post.score_source"]
    assert CHOICES["stream.mode"] == CHOICES["post.mode"]


def test_kernel_names_are_the_config_choices():
    from ecm_edge.cli.postprocess import KERNEL_CHOICES
    from ecm_edge.postprocess import KERNELS

    assert set(CHOICES["post.kernels"]) == {"auto", *KERNELS}
    assert KERNEL_CHOICES is CHOICES["post.kernels"]


def test_params_from_config_are_the_exact_arange():
    thumos = PostParams.from_config(load_config("thumos14").post)
    assert np.array_equal(thumos.act_thresholds, np.arange(0.01, 0.2, 0.025)) and thumos.act_thresholds.size == 8
    anet = PostParams.from_config(load_config("activitynet13").post)
    assert np.array_equal(anet.act_thresholds, np.arange(0, 0.175, 0.025)) and anet.act_thresholds.size == 7
    assert (anet.mode, anet.time_base, anet.class_threshold, anet.oic_lambda, anet.gamma, anet.nms_iou) == (
        "ecm", "duration", 0.05, 0.5, 0.45, 0.7)
    assert thumos.replace(mode="clean").mode == "clean" and thumos == PostParams.from_config(
        load_config("thumos14").post)


@pytest.mark.parametrize(("change", "message"), [
    ({"act_thresh_step": -0.025, "act_thresh_start": 0.2, "act_thresh_stop": 0.0}, "ascending"),
    ({"act_thresh_start": -0.1}, "non-negative"),
    ({"act_thresh_start": 0.3}, "no activation threshold"),
    ({"act_thresh_step": 0.0}, "must not be 0"),
    ({"mode": "published"}, "post.mode"),
    ({"oic_lambda": -1.0}, "oic_lambda"),
])
def test_bad_post_parameters_are_config_errors(change, message):
    post = load_config("thumos14").post
    for key, value in change.items():
        setattr(post, key, value)
    with pytest.raises(ConfigError, match=message):
        PostParams.from_config(post)


def test_compare_detections_names_the_difference():
    a = make_detections(np.array([0, 0]), np.array([1, 2]), np.array([0.0, 1.0]), np.array([1.0, 2.0]),
                        np.array([0.5, 0.9]))
    assert a.dtype == DETECTION_DTYPE and a["score"].tolist() == [0.9, 0.5]  # per video by score
    assert compare_detections(a, a.copy()) is None
    b = a.copy()
    b["end"][0] += 0.04
    assert "end" in compare_detections(b, a)
    c = a.copy()
    c["score"][1] += 1e-3
    assert "score" in compare_detections(c, a)
    assert "1 detections instead of 2" in compare_detections(a[:1], a)
