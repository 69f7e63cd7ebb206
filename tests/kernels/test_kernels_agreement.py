"""All post-processing kernels give the reference's detections: property tests and edge cases.

The numpy reference must give the detections of an oracle that shares no code with it
(tests/kernels/test_kernels_oracle.py); ``cpu`` (numba) and ``cuda`` (numba CUDA, here in the simulator on small
inputs; tests/conftest.py turns it on) must return the reference's segments (video, class, frame bounds) with
scores within 1e-5, in both modes.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_kernels_oracle import oracle_detections

from ecm_edge.environment import cuda_simulator_enabled
from ecm_edge.errors import EcmEdgeError
from ecm_edge.kernels import DETECTION_DTYPE, PostParams, compare_detections
from ecm_edge.postprocess import available_kernels, localize, localize_batch

KERNELS = ["numpy", "cpu", "cuda"]
PARAMS = {mode: PostParams(mode=mode) for mode in ("ecm", "clean")}  # THUMOS14 constants
EXAMPLES = {"numpy": 60, "cpu": 150, "cuda": 10}  # the simulator runs a Python thread per CUDA thread


pytestmark = pytest.mark.usefixtures("fast_cuda_simulator")


def need(kernels: str) -> None:
    if kernels not in available_kernels():
        pytest.skip(f"kernels {kernels!r} unavailable here (cuda needs a GPU or NUMBA_ENABLE_CUDASIM=1)")


def detect(kernels: str, cas, scores, **kwargs) -> np.ndarray:
    kwargs.setdefault("params", PARAMS["ecm"])
    kwargs.setdefault("fps", 30.0)
    return localize_batch(cas, scores, kernels=kernels, **kwargs)


def expected_detections(kernels: str, cas, scores, **kwargs) -> np.ndarray:
    """What ``kernels`` must return: the independent oracle's detections for the reference, else the reference's."""
    kwargs.setdefault("params", PARAMS["ecm"])
    kwargs.setdefault("fps", 30.0)
    if kernels == "numpy":
        return oracle_detections(cas, scores, **kwargs)
    return detect("numpy", cas, scores, **kwargs)


def assert_same(kernels: str, cas, scores, **kwargs) -> np.ndarray:
    expected = expected_detections(kernels, cas, scores, **kwargs)
    found = detect(kernels, cas, scores, **kwargs)
    assert found.dtype == DETECTION_DTYPE
    assert compare_detections(found, expected) is None, compare_detections(found, expected)
    return expected


# ---- property tests ------------------------------------------------------------------------------------------

THUMOS_THRESHOLDS = PARAMS["ecm"].act_thresholds.tolist()
# Values that hit the thresholds exactly, or miss them by one rounding step: with a row whose max is 1 and
# min ≤ 0, normalization keeps values as they are, and num_frames == T keeps them through interpolation.
EXACT_VALUES = [0.0, -0.5, 1.0, *THUMOS_THRESHOLDS, *(np.nextafter(THUMOS_THRESHOLDS, -1.0).tolist()),
                *(np.nextafter(THUMOS_THRESHOLDS, 2.0).tolist())]


@st.composite
def batches(draw, max_videos: int, max_classes: int, max_snippets: int, max_frames: int) -> dict:
    videos = draw(st.integers(1, max_videos))
    classes = draw(st.integers(1, max_classes))
    lengths = draw(st.lists(st.integers(1, max_snippets), min_size=videos, max_size=videos))
    style = draw(st.sampled_from(["random", "plateaus", "exact"]))
    if style == "random":
        value = st.floats(-3.0, 3.0, allow_nan=False, allow_subnormal=False)
    elif style == "plateaus":
        value = st.sampled_from([-1.0, 0.0, 0.2, 0.5, 1.0])
    else:
        value = st.sampled_from(EXACT_VALUES)
    cas = np.zeros((videos, classes, max(lengths)), dtype=np.float64)
    for v, length in enumerate(lengths):
        cas[v, :, :length] = np.array(draw(st.lists(value, min_size=classes * length, max_size=classes * length)),
                                      dtype=np.float64).reshape(classes, length)
        if style == "exact":
            cas[v, :, 0] = 1.0
    if style == "exact":
        frames = np.array(lengths)
    else:
        frames = np.array(draw(st.lists(st.integers(1, max_frames), min_size=videos, max_size=videos)))
    scores = np.array(draw(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.6, 1.0]) | st.floats(0, 1),
                                    min_size=videos * classes, max_size=videos * classes))).reshape(videos, classes)
    by_duration = draw(st.booleans())
    params = PARAMS[draw(st.sampled_from(["ecm", "clean"]))]
    if by_duration:
        params = params.replace(time_base="duration")
    return {"cas": cas.astype(draw(st.sampled_from([np.float32, np.float64]))), "scores": scores,
            "num_frames": frames, "lengths": np.array(lengths), "params": params,
            "fps": draw(st.sampled_from([25.0, 29.97, 30.0])),
            "duration": frames / draw(st.sampled_from([24.0, 30.0])) if by_duration else None}


def check_batch(kernels: str, batch: dict) -> None:
    expected = assert_same(kernels, batch["cas"], batch["scores"], num_frames=batch["num_frames"],
                           lengths=batch["lengths"], params=batch["params"], fps=batch["fps"],
                           duration=batch["duration"])
    order = np.lexsort((-expected["score"], expected["video"]))
    assert np.array_equal(order, np.arange(len(expected))), "not sorted by video, then score descending"


@pytest.mark.parametrize("kernels", KERNELS)
def test_kernels_match_reference_on_random_inputs(kernels):
    """cpu and cuda against the reference; the reference against the independent oracle."""
    need(kernels)
    small = kernels == "cuda" and cuda_simulator_enabled()

    @settings(max_examples=EXAMPLES[kernels], deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(batch=batches(max_videos=2 if small else 4, max_classes=2 if small else 4,
                         max_snippets=6 if small else 30, max_frames=16 if small else 300))
    def check(batch):
        check_batch(kernels, batch)

    check()


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("mode", ["ecm", "clean"])
def test_kernels_match_reference_on_thumos_like_rows(kernels, mode):
    """Realistic rows (noise + plateaus, upsampled ~9×): many runs per threshold, NMS does real work."""
    need(kernels)
    rng = np.random.default_rng(7)
    simulated = kernels == "cuda" and cuda_simulator_enabled()
    videos, classes, snippets, upsample = (2, 1, 16, 3) if simulated else (6, 5, 200, 9)
    cas = rng.normal(-1.0, 0.8, (videos, classes, snippets)).astype(np.float32)
    cas[:, :, snippets // 4 : snippets // 2] += 3.0
    scores = rng.uniform(0.3, 0.9, (videos, classes))
    frames = rng.integers(snippets * upsample // 2, snippets * upsample * 3 // 2, videos)
    assert len(assert_same(kernels, cas, scores, num_frames=frames, params=PARAMS[mode])) > 0


# ---- edge cases ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("mode", ["ecm", "clean"])
def test_single_snippet_and_ragged_lengths(kernels, mode):
    """T = 1 gives a constant row (nothing survives normalization); the other video still counts."""
    need(kernels)
    cas = np.zeros((2, 1, 8), dtype=np.float32)
    cas[0, 0, 0] = 2.5
    cas[1, 0, :] = [-1, -1, 2, 3, 2, -1, -1, -1]
    expected = assert_same(kernels, cas, np.ones((2, 1)), num_frames=[7, 16], lengths=[1, 8], params=PARAMS[mode])
    assert set(expected["video"].tolist()) == {1}


@pytest.mark.parametrize("kernels", KERNELS)
def test_fewer_frames_than_snippets(kernels):
    need(kernels)
    rng = np.random.default_rng(3)
    cas = rng.normal(0, 1, (2, 3, 12)).astype(np.float32)
    expected = assert_same(kernels, cas, np.full((2, 3), 0.5), num_frames=[5, 1])
    assert len(expected) > 0


@pytest.mark.parametrize("kernels", KERNELS)
def test_zero_constant_rows_and_no_kept_class_give_nothing(kernels):
    need(kernels)
    cas = np.zeros((3, 2, 6), dtype=np.float32)
    cas[1] = 0.7  # constant positive: normalizes to 0
    cas[2] = -0.7  # constant negative: stays negative
    assert len(detect(kernels, cas, np.ones((3, 2)), num_frames=12)) == 0
    rng = np.random.default_rng(0)
    lively = rng.normal(0, 1, (2, 2, 6)).astype(np.float32)
    assert len(detect(kernels, lively, np.full((2, 2), 0.2499), num_frames=12)) == 0


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("mode", ["ecm", "clean"])
def test_row_above_threshold_only_at_first_frame(kernels, mode):
    """The published code drops a threshold whose only surviving frame is 0; clean mode keeps it."""
    need(kernels)
    cas = np.array([[[1.0, -1, -1, -1, -1, -1]]], dtype=np.float32)
    found = detect(kernels, cas, np.array([[0.8]]), num_frames=6, params=PARAMS[mode])
    if mode == "ecm":
        assert len(found) == 0
    else:
        assert len(found) == 1  # one proposal per threshold, all identical: NMS keeps one
        assert (found["start"][0], found["end"][0]) == (0.0, 1 / 30)
        assert found["score"][0] == pytest.approx(1.0 + 0.15 * 0.8)  # outer window empty: int(0 + 0.4) = 0


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("mode", ["ecm", "clean"])
def test_row_above_threshold_only_at_last_frame(kernels, mode):
    need(kernels)
    cas = np.array([[[-1.0, -1, -1, -1, -1, 1.0]]], dtype=np.float32)
    found = detect(kernels, cas, np.array([[0.8]]), num_frames=6, params=PARAMS[mode])
    assert len(found) == 1
    assert (found["start"][0], found["end"][0]) == (5 / 30, 6 / 30)
    # outer window: [max(0, int(5 − 0.4)), 4] = frame 4 (zeroed) and the right side empty: outer mean 0
    assert found["score"][0] == pytest.approx(1.0 + 0.15 * 0.8)


@pytest.mark.parametrize("kernels", KERNELS)
def test_three_hours_at_30_fps(kernels):
    """One class of a 3-hour video: 16,875 snippets interpolated to 324,000 frames."""
    need(kernels)
    if kernels == "cuda" and cuda_simulator_enabled():
        pytest.skip("324,000 frames are too many for the CUDA simulator; tests/kernels/test_kernels_gpu.py runs "
                    "this size on a real GPU")
    rng = np.random.default_rng(11)
    snippets = int(3 * 3600 / 0.64)
    cas = rng.normal(-1.5, 0.7, (1, 1, snippets))
    for start in rng.integers(0, snippets - 200, 40):
        cas[0, 0, start : start + rng.integers(5, 200)] += 4.0
    expected = assert_same(kernels, cas.astype(np.float32), np.array([[0.9]]), num_frames=324_000)
    assert len(expected) >= 20
    assert expected["end"].max() <= 10_800.0 + 1e-9


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_a_clear_error(kernels, bad):
    need(kernels)
    cas = np.zeros((3, 2, 5), dtype=np.float32)
    cas[2, 1, 3] = bad
    with pytest.raises(EcmEdgeError, match=r"video 2 \('c'\).*class 1"):
        detect(kernels, cas, np.full((3, 2), 0.5), num_frames=10, video_ids=["a", "b", "c"])
    scores = np.full((3, 2), 0.5)
    scores[1, 0] = bad
    with pytest.raises(EcmEdgeError, match="video 1"):
        detect(kernels, np.zeros((3, 2, 5), np.float32), scores, num_frames=10)


@pytest.mark.parametrize("kernels", KERNELS)
def test_bad_frame_counts_and_time_bases_are_clear_errors(kernels):
    need(kernels)
    cas = np.zeros((2, 1, 4), dtype=np.float32)
    with pytest.raises(EcmEdgeError, match="num_frames must be at least 1"):
        detect(kernels, cas, np.ones((2, 1)), num_frames=[4, 0])
    with pytest.raises(EcmEdgeError, match="needs duration"):
        detect(kernels, cas, np.ones((2, 1)), num_frames=4, params=PARAMS["ecm"].replace(time_base="duration"))
    with pytest.raises(EcmEdgeError, match="fps must be a positive number"):
        detect(kernels, cas, np.ones((2, 1)), num_frames=4, fps=[30.0, 0.0])
    with pytest.raises(EcmEdgeError, match="video_scores must have shape"):
        detect(kernels, cas, np.ones((2, 2)), num_frames=4)


@pytest.mark.parametrize("kernels", KERNELS)
def test_localize_one_video_and_list_input_agree_with_the_batch(kernels):
    need(kernels)
    rng = np.random.default_rng(5)
    rows = [rng.normal(0, 1, (2, t)).astype(np.float32) for t in (7, 4)]
    scores = np.array([[0.9, 0.3], [0.5, 0.8]])
    batch = detect(kernels, rows, scores, num_frames=[20, 9])
    single = localize(rows[1], scores[1], num_frames=9, fps=30.0, params=PARAMS["ecm"], kernels=kernels)
    second = batch[batch["video"] == 1].copy()
    second["video"] = 0
    assert len(second) > 0
    assert np.all(single["video"] == 0)
    assert compare_detections(single, second) is None
    assert compare_detections(batch, expected_detections(kernels, rows, scores, num_frames=[20, 9])) is None


def test_cuda_reads_device_arrays_on_a_given_stream():
    need("cuda")
    from numba import cuda

    rng = np.random.default_rng(9)
    cas = rng.normal(0, 1, (2, 2, 6)).astype(np.float32)
    scores = np.full((2, 2), 0.6)
    expected = detect("numpy", cas, scores, num_frames=[13, 8])
    assert len(expected) > 0
    stream = cuda.stream()
    found = detect("cuda", cuda.to_device(cas, stream=stream), cuda.to_device(scores, stream=stream),
                   num_frames=[13, 8], stream=stream)
    assert compare_detections(found, expected) is None
    one = localize(cuda.to_device(cas[1]), scores[1], num_frames=8, fps=30.0, params=PARAMS["ecm"],
                   kernels="cuda", stream=stream)
    assert compare_detections(one, detect("numpy", cas[1:], scores[1:], num_frames=[8])) is None
    with pytest.raises(EcmEdgeError, match="only kernels='cuda'"):
        detect("cpu", cuda.to_device(cas), scores, num_frames=8)


@pytest.mark.parametrize("mode", ["ecm", "clean"])
def test_cuda_host_nms_of_a_class_with_many_proposals(monkeypatch, mode):
    """Pairs with more proposals than the device bitmask takes get the CPU kernels' NMS on the host."""
    need("cuda")
    import ecm_edge.kernels.cuda as cuda_module

    host_nms, on_host = cuda_module._host_nms, []
    monkeypatch.setattr(cuda_module, "MAX_DEVICE_NMS", 3)
    monkeypatch.setattr(cuda_module, "_host_nms", lambda *args: on_host.append(1) or host_nms(*args))
    cas = np.random.default_rng(12).normal(0.0, 1.0, (2, 2, 9)).astype(np.float32)  # noise: many runs per class
    scores = np.array([[0.9, 0.6], [0.5, 0.3]])
    expected = detect("numpy", cas, scores, num_frames=[20, 14], params=PARAMS[mode])
    found = detect("cuda", cas, scores, num_frames=[20, 14], params=PARAMS[mode])
    assert len(on_host) >= 2 and len(expected) >= 4
    assert compare_detections(found, expected) is None, compare_detections(found, expected)


def test_cuda_checks_device_input_for_non_finite_values_on_the_device():
    need("cuda")
    from numba import cuda

    cas = np.zeros((2, 3, 4), dtype=np.float32)
    cas[1, 2, 0] = np.nan
    with pytest.raises(EcmEdgeError, match=r"video 1 .*class 2"):
        detect("cuda", cuda.to_device(cas), np.full((2, 3), 0.5), num_frames=8, video_ids=["x", "y"])


def test_unknown_kernels_name_the_choices():
    with pytest.raises(EcmEdgeError, match="did you mean 'cpu'"):
        detect("cpux", np.zeros((1, 1, 2), np.float32), np.ones((1, 1)), num_frames=2)


def test_kernels_import_without_numba_cuda_and_cuda_then_says_what_is_missing():
    import subprocess

    code = (
        "import sys; sys.modules['numba.cuda'] = None\n"
        "import numpy as np\n"
        "from ecm_edge.errors import MissingDependencyError\n"
        "from ecm_edge.kernels import PostParams\n"
        "from ecm_edge.postprocess import available_kernels, localize_batch\n"
        "assert available_kernels() == ['numpy', 'cpu'], available_kernels()\n"
        "cas, scores = np.zeros((1, 1, 4), np.float32), np.ones((1, 1))\n"
        "localize_batch(cas, scores, num_frames=8, fps=30.0, params=PostParams(), kernels='cpu')\n"
        "try:\n"
        "    localize_batch(cas, scores, num_frames=8, fps=30.0, params=PostParams(), kernels='cuda')\n"
        "except MissingDependencyError as exc:\n"
        "    assert 'numba-cuda' in str(exc) and \"kernels='cpu'\" in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cuda_without_a_gpu_or_the_simulator_is_a_clear_error():
    import os
    import subprocess

    code = (
        "import numpy as np\n"
        "from ecm_edge.environment import cuda_gpu_visible\n"
        "from ecm_edge.errors import EcmEdgeError\n"
        "from ecm_edge.kernels import PostParams\n"
        "from ecm_edge.postprocess import localize_batch, resolve_kernels\n"
        "if cuda_gpu_visible(): raise SystemExit(77)\n"
        "assert resolve_kernels('auto') == 'cpu'\n"
        "try:\n"
        "    localize_batch(np.zeros((1, 1, 4), np.float32), np.ones((1, 1)), num_frames=8, fps=30.0,\n"
        "                   params=PostParams(), kernels='cuda')\n"
        "except EcmEdgeError as exc:\n"
        "    assert 'needs a visible CUDA GPU' in str(exc) and \"kernels='cpu'\" in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-c", code], env=env)
    if done.returncode == 77:
        pytest.skip("a CUDA GPU is visible here, so kernels='cuda' runs")
    assert done.returncode == 0
