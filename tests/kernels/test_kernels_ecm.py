"""``ecm`` mode interpolates as the published code's ``cv2.resize`` does, bit for bit, in all kernels.

OpenCV's INTER_LINEAR on a one-row float32 image (``modules/imgproc/src/resize.cpp``): source step
``1 / (N / T)`` in float64, position ``float32((j + 0.5) · step − 0.5)``, float32 weights and a float32 sum
without fused multiply-add (``ecm_edge.kernels.reference.interpolate_opencv``). The float64 contract of ``clean``
mode floors some positions differently (just below a whole number in float64, the whole number in float32),
which can move a run by a frame. The rows compared are the normalized rows rounded to float32, what the kernels
interpolate in ``ecm`` mode and what the published code hands to OpenCV.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_kernels_oracle import oracle_detections

from ecm_edge.config import load_config
from ecm_edge.environment import cuda_gpu_visible, cuda_simulator_enabled
from ecm_edge.kernels import PostParams, compare_detections
from ecm_edge.kernels.reference import interpolate, interpolate_row, normalize_rows, opencv_scale
from ecm_edge.postprocess import available_kernels, localize_batch

KERNELS = ["numpy", "cpu", "cuda"]
ECM = PostParams(mode="ecm")

# (T, N) where some interpolation position floors differently in float32 and float64 (found by search):
# upsampling, downsampling (T > N), THUMOS14-like T = 750, and long rows whose float32 positions are coarse.
FLOOR_DIFFERS = [(7, 55), (10, 78), (37, 285), (250, 198), (250, 998), (750, 550), (750, 3490), (750, 5350),
                 (2048, 16402)]
EDGES = [(1, 9), (2, 1), (3, 3), (5, 2), (6, 12), (750, 375), (16, 5)]  # one snippet, one frame, T = N, halving
RANDOM = [(int(t), int(n)) for t, n in zip(np.random.default_rng(2024).integers(1, 800, 12),
                                           np.random.default_rng(2025).integers(1, 7000, 12), strict=True)]
CASES = FLOOR_DIFFERS + EDGES + RANDOM


pytestmark = pytest.mark.usefixtures("fast_cuda_simulator")


def need(kernels: str) -> None:
    if kernels not in available_kernels():
        pytest.skip(f"kernels {kernels!r} unavailable here (cuda needs a GPU or NUMBA_ENABLE_CUDASIM=1)")


def cv2_upsample(row32: np.ndarray, frames: int) -> np.ndarray:
    return cv2.resize(row32[None], (frames, 1), interpolation=cv2.INTER_LINEAR)[0]


def positive_cas(length: int, seed: int) -> np.ndarray:
    """A CAS row with a positive minimum: normalized to [0, 1], so every interpolated value is ≥ 0 (the CUDA
    accessor reads them back from the kernel's clipped prefix input)."""
    return np.random.default_rng(seed).uniform(0.5, 3.0, length)


def upsampled(kernels: str, cas_row: np.ndarray, frames: int) -> np.ndarray:
    """The ``ecm`` mode's interpolated row of one CAS row, as ``kernels`` compute it (float64)."""
    normalized = normalize_rows(cas_row[None])[0]
    if kernels == "numpy":
        return interpolate(normalized, frames, ECM)
    if kernels == "cpu":
        from ecm_edge.kernels import cpu

        row = normalized.astype(np.float32).astype(np.float64)  # what localize_cpu interpolates in ecm mode
        scale = cpu.interpolation_scale(row.size, frames, True)
        return np.array([cpu.sample(row, j, scale, True) for j in range(frames)])
    return cuda_upsampled(cas_row, frames)


def cuda_upsampled(cas_row: np.ndarray, frames: int) -> np.ndarray:
    """The CUDA ``interpolate`` kernel's values for one non-negative normalized row (its ``prefix`` input holds
    ``max(value, 0)`` per frame before the scan)."""
    from numba import cuda

    from ecm_edge.kernels.cuda import kernels, threads_per_block

    threads = threads_per_block()
    k = kernels(threads)
    one = np.zeros(1, dtype=np.int64)
    cas = cuda.to_device(cas_row.astype(np.float32)[None, None])
    low, delta, bad = cuda.device_array(1), cuda.device_array(1), cuda.device_array(1, np.int32)
    lengths = cuda.to_device(np.array([cas_row.size]))
    k.row_stats[1, threads](cas, lengths, low, delta, bad)
    prefix = cuda.device_array(frames + 1)
    levels = cuda.device_array(frames, np.int16)
    k.interpolate[(2, 1), threads](cas, lengths, cuda.to_device(np.array([frames])), cuda.to_device(one),
                                   cuda.to_device(one), cuda.to_device(one), low, delta,
                                   cuda.to_device(np.array([0.5])), True, prefix, levels)
    return prefix.copy_to_host()[1:]


@pytest.mark.parametrize("kernels", KERNELS)
def test_ecm_interpolation_is_cv2_resize_bit_for_bit(kernels):
    need(kernels)
    simulated = kernels == "cuda" and cuda_simulator_enabled()
    for index, (length, frames) in enumerate(CASES):
        if simulated and frames > 3000:
            continue  # a Python thread per CUDA thread: the long rows run on a GPU (the gpu test below)
        assert_upsampled_like_cv2(kernels, length, frames, seed=index)


def assert_upsampled_like_cv2(kernels: str, length: int, frames: int, seed: int) -> None:
    cas_row = positive_cas(length, seed).astype(np.float32).astype(np.float64)
    expected = cv2_upsample(normalize_rows(cas_row[None])[0].astype(np.float32), frames)
    found = upsampled(kernels, cas_row, frames)
    assert found.dtype == np.float64 and np.array_equal(found.astype(np.float32), found), (length, frames)
    assert found.astype(np.float32).tobytes() == expected.tobytes(), (length, frames)


def test_the_hand_picked_pairs_do_floor_differently():
    for length, frames in FLOOR_DIFFERS:
        exact = (np.arange(frames) + 0.5) * (length / frames) - 0.5
        rounded = ((np.arange(frames) + 0.5) * opencv_scale(length, frames) - 0.5).astype(np.float32)
        inside = (exact > 0) & (exact < length - 1)
        assert np.any((np.floor(rounded) != np.floor(exact)) & inside), (length, frames)


# (T, N, j, k): frame j of N reads x = k − 2⁻ⁿ in float64 but k in float32 (OpenCV), with T = 7 small enough for
# the CUDA simulator and T = 750 as THUMOS14.
FLOOR_FRAMES = [(7, 55, 27, 3), (750, 5350, 53, 7)]


def floor_case(length: int, k: int) -> np.ndarray:
    """A CAS ``[1, 2, T]`` whose rows rise from 0 at snippet k − 1 to a 0.5 plateau at snippet k, with the maximum
    1 later (normalization keeps the values as they are)."""
    cas = np.full((1, 2, length), -1.0, dtype=np.float32)
    cas[0, :, k - 1] = 0.0
    cas[0, :, k : length - 1] = 0.5
    cas[0, :, length - 1] = 1.0
    return cas


@pytest.mark.parametrize(("length", "frames", "frame", "k"), FLOOR_FRAMES)
def test_ecm_and_clean_interpolation_differ_where_positions_floor_differently(length, frames, frame, k):
    row = normalize_rows(floor_case(length, k)[0])[0]
    assert interpolate_row(row, frames)[frame] < 0.5  # 0 · (1 − f) + 0.5 · f with f just below 1
    assert interpolate(row, frames, ECM)[frame] == 0.5  # position k: the plateau's first value
    assert cv2_upsample(row.astype(np.float32), frames)[frame] == np.float32(0.5)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize(("length", "frames", "frame", "k"), FLOOR_FRAMES)
def test_ecm_detections_are_those_of_a_pipeline_calling_cv2_resize(kernels, length, frames, frame, k):
    """The run at θ = 0.5 starts at that frame in ecm mode, a frame later in clean mode: all kernels follow
    the cv2.resize pipeline in ecm mode and the float64 contract in clean mode."""
    need(kernels)
    if kernels == "cuda" and cuda_simulator_enabled() and frames > 1000:
        pytest.skip("too many frames for the CUDA simulator (the gpu tests below run the benchmark set)")
    cas, scores, fps = floor_case(length, k), np.array([[0.9, 0.6]]), 30.0
    params = {mode: PostParams(mode=mode, act_thresholds=[0.25, 0.5]) for mode in ("ecm", "clean")}
    expected = {mode: oracle_detections(cas, scores, num_frames=frames, fps=fps, params=params[mode])
                for mode in params}
    assert frame / fps in expected["ecm"]["start"] and frame / fps not in expected["clean"]["start"]
    for mode in ("ecm", "clean"):
        found = localize_batch(cas, scores, num_frames=frames, fps=fps, params=params[mode], kernels=kernels)
        assert compare_detections(found, expected[mode]) is None, (mode, compare_detections(found, expected[mode]))


@pytest.fixture(scope="module")
def thumos_like():
    from ecm_edge.bench.postprocess import thumos_like_inputs

    inputs = thumos_like_inputs()
    params = PostParams.from_config(load_config("thumos14").post)
    assert params.mode == "ecm"
    expected = oracle_detections(inputs.cas, inputs.video_scores, num_frames=inputs.num_frames, fps=inputs.fps,
                                 params=params)
    return inputs, params, expected


@pytest.mark.parametrize("kernels", ["numpy", "cpu"])
def test_ecm_gives_the_cv2_pipelines_detections_on_every_benchmark_video(kernels, thumos_like):
    """All 210 THUMOS14-like videos of ``ecm-edge bench postprocess``, against the oracle that calls cv2.resize."""
    inputs, params, expected = thumos_like
    real_timelines = inputs.source.startswith("THUMOS14 test videos")  # else synthetic ones (no shared data)
    assert inputs.num_videos == 210 and len(expected) == (13_209 if real_timelines else 6_409)
    found = localize_batch(inputs.cas, inputs.video_scores, num_frames=inputs.num_frames, fps=inputs.fps,
                           params=params, kernels=kernels)
    assert compare_detections(found, expected) is None, compare_detections(found, expected)


def test_ecm_cuda_gives_the_cv2_pipelines_detections_on_benchmark_videos(thumos_like):
    """The CUDA simulator on the shortest benchmark video (a GPU runs them all: the gpu test below)."""
    need("cuda")
    inputs, params, _ = thumos_like
    videos = np.argsort(inputs.num_frames, kind="stable")[:1]
    rows, scores = inputs.cas[videos], inputs.video_scores[videos]
    timing = {"num_frames": inputs.num_frames[videos], "fps": inputs.fps[videos], "params": params}
    expected = oracle_detections(rows, scores, **timing)
    assert len(expected) > 0
    found = localize_batch(rows, scores, kernels="cuda", **timing)
    assert compare_detections(found, expected) is None, compare_detections(found, expected)


@pytest.mark.parametrize("kernels", KERNELS)
def test_ecm_saturates_normalized_values_beyond_float32(kernels):
    """A relu(max) of 1e-300 stretches the negative snippets to −1e300, beyond float32: the ecm row saturates at
    −float32 max (an infinity would make NaN next to a zero weight), and all kernels agree with the oracle."""
    need(kernels)
    cas = np.array([[[-1.0, 1e-300, 1e-300, -1.0, 0.5e-300, -2.0]]])
    params = PostParams(mode="ecm", class_threshold=0.0)
    expected = oracle_detections(cas, [[0.5]], num_frames=23, fps=10.0, params=params)
    found = localize_batch(cas, [[0.5]], num_frames=23, fps=10.0, params=params, kernels=kernels)
    assert len(expected) > 0 and np.isfinite(found["score"]).all()
    assert compare_detections(found, expected) is None, compare_detections(found, expected)


# ---- on a real GPU (pytest -m gpu; scripts/gpu_check.sh) -------------------------------------------------------


needs_gpu = pytest.mark.skipif(not cuda_gpu_visible(), reason="no CUDA GPU visible")


@pytest.mark.gpu
@needs_gpu
def test_ecm_cuda_interpolation_is_cv2_resize_bit_for_bit_on_a_gpu():
    """Every case, long rows included, through the compiled kernel: ``fmul_rn``/``fadd_rn`` keep the float32
    arithmetic free of fused multiply-adds."""
    for index, (length, frames) in enumerate(CASES):
        assert_upsampled_like_cv2("cuda", length, frames, seed=index)


@pytest.mark.gpu
@needs_gpu
def test_ecm_cuda_gives_the_cv2_pipelines_detections_on_every_benchmark_video_on_a_gpu(thumos_like):
    inputs, params, expected = thumos_like
    found = localize_batch(inputs.cas, inputs.video_scores, num_frames=inputs.num_frames, fps=inputs.fps,
                           params=params, kernels="cuda")
    assert compare_detections(found, expected) is None, compare_detections(found, expected)
