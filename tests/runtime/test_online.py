"""Causal post-processing: horizon scores, online candidates against an offline oracle, NMS, timing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecm_edge.kernels.params import PostParams
from ecm_edge.kernels.reference import interval_iou
from ecm_edge.runtime.online import CausalScorer, OnlineParams, OnlinePostProcessor, SegmentTracker

STEP = 0.64
ROUNDING = 1e-3  # event times are rounded to milliseconds; IoUs recomputed from them move by less than this
THRESHOLDS = (0.1, 0.3, 0.5)


def params(horizon: int = 1000, topk_ratio: float = 0.125, warmup: int = 0, emit_open: bool = False,
           **post) -> OnlineParams:
    base = dict(class_threshold=0.0, act_thresholds=THRESHOLDS, oic_lambda=0.4, gamma=0.0, nms_iou=0.6,
                mode="clean")
    return OnlineParams(PostParams(**{**base, **post}), horizon, topk_ratio, warmup, emit_open)


def smooth_rows(rng: np.random.Generator, length: int, classes: int) -> np.ndarray:
    """Normalized-looking rows in [0, 1] with runs of activity, like a real CAS."""
    noise = rng.normal(size=(length + 8, classes))
    kernel = np.ones(9) / 9
    smooth = np.stack([np.convolve(noise[:, c], kernel, mode="valid") for c in range(classes)], axis=1)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return smooth.astype(np.float32)


def run_tracker(tracker: SegmentTracker, rows: np.ndarray, scores: np.ndarray) -> list[tuple[int, dict]]:
    """Feed rows one by one; returns (index at which the event came, event), flush events at len(rows)."""
    out = []
    for t, row in enumerate(rows):
        out += [(t, e) for e in tracker.update(row, scores, t * STEP, (t + 1) * STEP)]
    out += [(len(rows), e) for e in tracker.flush(scores)]
    return out


def offline_proposals(rows: np.ndarray, p: OnlineParams) -> list[tuple[int, int, int, float]]:
    """The offline oracle at snippet resolution: (class, first, last, OIC score) of every run at every θ."""
    found = []
    n = len(rows)
    post = p.post
    for c in range(rows.shape[1]):
        for theta in post.act_thresholds:
            kept = np.where(rows[:, c] >= theta, rows[:, c], 0.0)
            active = np.flatnonzero(kept > 0)
            if not len(active):
                continue
            for run in np.split(active, np.flatnonzero(np.diff(active) > 1) + 1):
                s, e, length = run[0], run[-1], len(run)
                outer_idx = list(range(max(0, int(s - post.oic_lambda * length)), s))
                outer_idx += list(range(e + 1, min(n, int(e + post.oic_lambda * length))))
                outer = kept[outer_idx].mean() if outer_idx else 0.0
                found.append((c, int(s), int(e), float(kept[run].mean() - outer)))
    return sorted(found)


def as_key(event: dict) -> tuple[int, int, int, float]:
    return (event["class"], round(event["start"] / STEP), round(event["end"] / STEP) - 1, event["score"])


def same_proposals(online: list[tuple], oracle: list[tuple]) -> bool:
    online, oracle = sorted(online), sorted(oracle)
    return len(online) == len(oracle) and all(
        a[:3] == b[:3] and abs(a[3] - b[3]) < 1e-4 for a, b in zip(online, oracle, strict=True))


def contains(oracle: list[tuple], key: tuple) -> bool:
    return any(key[:3] == o[:3] and abs(key[3] - o[3]) < 1e-4 for o in oracle)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), length=st.integers(1, 120))
def test_every_candidate_matches_the_offline_oracle(seed, length):
    """With NMS off, the online candidates are exactly the offline runs and OIC scores at every threshold."""
    rows = smooth_rows(np.random.default_rng(seed), length, 3)
    p = params(nms_iou=2.0)  # IoU never reaches 2: nothing suppressed
    events = run_tracker(SegmentTracker(p, ["a", "b", "c"]), rows, np.full(3, 1 / 3, np.float32))
    assert same_proposals([as_key(e) for _, e in events], offline_proposals(rows, p))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), mode=st.sampled_from(["clean", "ecm"]))
def test_nms_against_emitted_segments(seed, mode):
    rows = smooth_rows(np.random.default_rng(seed), 150, 2)
    p = params(mode=mode)
    events = [e for _, e in run_tracker(SegmentTracker(p, ["a", "b"]), rows, np.full(2, 0.5, np.float32))]
    oracle = offline_proposals(rows, p)
    keys = [as_key(e) for e in events]
    assert all(contains(oracle, key) for key in keys)
    assert len({key[:3] for key in keys}) == len(keys)
    for c in (0, 1):
        spans = np.array([(e["start"], e["end"]) for e in events if e["class"] == c]).reshape(-1, 2)
        for i, (s, e) in enumerate(spans):  # emitted segments of a class never overlap beyond the NMS IoU
            others = np.delete(spans, i, axis=0)
            iou = interval_iou(s, e, others[:, 0], others[:, 1], p.post.iou_offset)
            assert (iou < p.post.nms_iou + ROUNDING).all()
        for cls, first, last, score in oracle:  # every dropped candidate overlaps an emitted one
            if cls == c and not contains(keys, (cls, first, last, score)):
                iou = interval_iou(first * STEP, (last + 1) * STEP, spans[:, 0], spans[:, 1], p.post.iou_offset)
                assert (iou >= p.post.nms_iou - ROUNDING).any()


def test_segment_is_emitted_once_its_outer_window_has_arrived():
    rows = np.zeros((60, 1), np.float32)
    rows[20:30, 0] = 0.9  # a 10-snippet action: outer window [int(20 − 4), 19] ∪ [30, int(29 + 4) − 1]
    events = run_tracker(SegmentTracker(params(act_thresholds=(0.5,)), ["jump"]), rows, np.ones(1, np.float32))
    assert len(events) == 1
    arrived, event = events[0]
    assert arrived == 29 + 4 - 1
    assert event["type"] == "segment" and event["label"] == "jump" and event["class"] == 0
    assert event["start"] == pytest.approx(20 * STEP) and event["end"] == pytest.approx(30 * STEP)
    assert event["score"] == pytest.approx(0.9)
    assert event["latency"] == pytest.approx((arrived + 1) * STEP - 30 * STEP)


def test_open_segment_is_closed_at_flush():
    rows = np.zeros((25, 1), np.float32)
    rows[15:, 0] = 0.8
    events = run_tracker(SegmentTracker(params(act_thresholds=(0.5,)), ["run"]), rows, np.ones(1, np.float32))
    assert [t for t, _ in events] == [25]
    assert events[0][1]["end"] == pytest.approx(25 * STEP)


def test_class_filter_uses_the_causal_video_score():
    rows = np.zeros((40, 2), np.float32)
    rows[10:20] = 0.9
    scores = np.array([0.9, 0.1], np.float32)
    events = run_tracker(SegmentTracker(params(class_threshold=0.25), ["kept", "filtered"]), rows, scores)
    assert {e["label"] for _, e in events} == {"kept"}


def test_gamma_adds_the_video_score():
    rows = np.zeros((40, 1), np.float32)
    rows[10:20] = 0.9
    events = run_tracker(SegmentTracker(params(act_thresholds=(0.5,), gamma=0.5), ["x"]), rows,
                         np.full(1, 0.4, np.float32))
    assert events[0][1]["score"] == pytest.approx(0.9 + 0.5 * 0.4)


def test_segment_open_alert_when_enabled():
    rows = np.zeros((40, 1), np.float32)
    rows[10:20] = 0.9
    events = run_tracker(SegmentTracker(params(emit_open=True), ["x"]), rows, np.ones(1, np.float32))
    opens = [(t, e) for t, e in events if e["type"] == "segment_open"]
    assert [t for t, _ in opens] == [10] and opens[0][1]["start"] == pytest.approx(10 * STEP)
    assert all(t > 10 for t, e in events if e["type"] == "segment")


def test_causal_scores_over_the_horizon():
    rng = np.random.default_rng(0)
    cas = rng.normal(size=(70, 4)).astype(np.float32)
    horizon, ratio = 16, 0.3
    scorer = CausalScorer(4, horizon, ratio)
    for t, column in enumerate(cas):
        scores, normalized = scorer.push(column)
        window = cas[max(0, t - horizon + 1): t + 1]
        k = max(1, int(ratio * len(window)))  # the top fraction r of the horizon, as of a clip in training
        top = np.sort(window, axis=0)[-k:].mean(axis=0)
        expected = np.exp(top) / np.exp(top).sum()
        np.testing.assert_allclose(scores, expected, rtol=1e-5)
        high, low = np.maximum(window.max(0), 0), np.maximum(window.min(0), 0)
        delta = np.where(high - low > 0, high - low, 1.0)
        np.testing.assert_allclose(normalized, (column - low) / delta, rtol=1e-5, atol=1e-6)


def test_postprocessor_finds_an_injected_action_and_nothing_else():
    """End to end from raw CAS logits: one strong bump in class 1 becomes one segment of class 1."""
    rng = np.random.default_rng(7)
    cas = rng.normal(-2.0, 0.2, size=(200, 3)).astype(np.float32)
    cas[80:100, 1] += 6.0
    p = params(horizon=256, warmup=32, class_threshold=0.25, gamma=0.15, act_thresholds=(0.3, 0.5, 0.7))
    post = OnlinePostProcessor(p, ["a", "b", "c"])
    starts = np.arange(200) * STEP
    events = post.push(cas, starts, starts + STEP) + post.flush()
    segments = [e for e in events if e["type"] == "segment"]
    assert segments and {e["label"] for e in segments} == {"b"}
    best = max(segments, key=lambda e: e["score"])
    assert best["start"] == pytest.approx(80 * STEP) and best["end"] == pytest.approx(100 * STEP)


def test_params_from_config():
    from ecm_edge.config import load_config

    cfg = load_config("thumos14", ["stream.horizon=128"])
    p = OnlineParams.from_config(cfg)
    assert p.horizon == 128 and p.topk_ratio == 0.125 and p.warmup == 32 and p.post.mode == "clean"
    assert len(p.post.act_thresholds) == 8 and p.post.nms_iou == 0.6


def test_warmup_holds_early_segments_without_dropping_them():
    rows = np.zeros((60, 1), np.float32)
    rows[3:8, 0] = 0.9  # ready at index 8 + int(0.4 · 5) − 1 = 9, long before the warm-up ends
    events = run_tracker(SegmentTracker(params(act_thresholds=(0.5,), warmup=30), ["x"]), rows,
                         np.ones(1, np.float32))
    assert [t for t, _ in events] == [29]
    assert events[0][1]["start"] == pytest.approx(3 * STEP)
    short = run_tracker(SegmentTracker(params(act_thresholds=(0.5,), warmup=30), ["x"]), rows[:20],
                        np.ones(1, np.float32))
    assert [t for t, _ in short] == [20]  # a stream shorter than the warm-up: judged at the flush


def warmup_cas() -> np.ndarray:
    """One class: a faint ramp over columns 1–3, the real action over 6–8, all inside a 10-column warm-up."""
    cas = np.zeros((40, 1), np.float32)
    cas[:4, 0] = [0.05, 0.1, 0.2, 0.3]
    cas[6:9, 0] = 2.0
    return cas


@pytest.mark.parametrize("warmup", [10, 12])
def test_warmup_columns_are_normalized_together(warmup):
    """Normalized one by one, the ramp would be stretched by the min/max of its own few columns to 1 and
    become a segment; held back and normalized with the whole warm-up's statistics it stays faint."""
    cas = warmup_cas()
    starts = np.arange(len(cas)) * STEP
    post = OnlinePostProcessor(params(act_thresholds=(0.5,), warmup=warmup), ["x"])
    early = post.push(cas[:warmup - 1], starts[:warmup - 1], starts[:warmup - 1] + STEP)
    assert early == []  # nothing before the warm-up's last column
    events = early + post.push(cas[warmup - 1:], starts[warmup - 1:], starts[warmup - 1:] + STEP) + post.flush()
    assert [(e["start"], e["end"]) for e in events] == [(pytest.approx(6 * STEP), pytest.approx(9 * STEP))]

    scorer = CausalScorer(1, horizon=1000, topk_ratio=0.125)
    one_by_one = np.concatenate([scorer.push(column)[1] for column in cas[:4]])
    assert one_by_one[1:].min() == pytest.approx(1.0)  # what the warm-up avoids


def test_a_stream_shorter_than_the_warmup_is_normalized_at_the_flush():
    cas = warmup_cas()[:9]
    starts = np.arange(len(cas)) * STEP
    post = OnlinePostProcessor(params(act_thresholds=(0.5,), warmup=30), ["x"])
    assert post.push(cas, starts, starts + STEP) == []
    events = post.flush()
    assert [(e["start"], e["end"]) for e in events] == [(pytest.approx(6 * STEP), pytest.approx(9 * STEP))]


def test_scorer_pushes_a_batch_like_columns_normalized_at_the_end():
    rng = np.random.default_rng(4)
    cas = rng.normal(size=(20, 3)).astype(np.float32)
    one, many = CausalScorer(3, 8, 0.25), CausalScorer(3, 8, 0.25)
    for column in cas[:-1]:
        one.push(column)
    scores_one, last = one.push(cas[-1])
    scores_many, batch = many.push(cas)
    np.testing.assert_allclose(scores_many, scores_one, rtol=1e-6)
    np.testing.assert_allclose(batch[-1], last, rtol=1e-6)
    window = cas[-8:]  # the horizon after the batch: every column is normalized with its statistics
    high, low = np.maximum(window.max(0), 0), np.maximum(window.min(0), 0)
    np.testing.assert_allclose(batch, (cas - low) / np.where(high > low, high - low, 1.0), rtol=1e-5, atol=1e-6)
