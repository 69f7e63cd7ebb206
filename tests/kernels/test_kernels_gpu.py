"""The CUDA post-processing kernels on a real GPU (``pytest -m gpu``; scripts/gpu_check.sh runs these).

Larger inputs than the simulator can take, device arrays in (numba and torch, strided views too), foreign
streams, the 3-hour video, and the host NMS fallback for a class with very many proposals.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecm_edge.environment import cuda_gpu_visible
from ecm_edge.errors import EcmEdgeError
from ecm_edge.kernels import PostParams, compare_detections
from ecm_edge.postprocess import localize, localize_batch

pytestmark = pytest.mark.gpu
PARAMS = {mode: PostParams(mode=mode) for mode in ("ecm", "clean")}


@pytest.fixture(scope="module", autouse=True)
def gpu():
    if not cuda_gpu_visible():
        pytest.skip("no CUDA GPU visible (run these on a GPU machine: scripts/gpu_check.sh)")


def both(cas, scores, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    kwargs.setdefault("params", PARAMS["ecm"])
    kwargs.setdefault("fps", 30.0)
    device_cas = kwargs.pop("device_cas", cas)
    expected = localize_batch(cas, scores, kernels="numpy", **kwargs)
    return localize_batch(device_cas, scores, kernels="cuda", **kwargs), expected


@pytest.mark.parametrize("mode", ["ecm", "clean"])
def test_thumos_like_batch_matches_the_reference(mode):
    from ecm_edge.bench.postprocess import thumos_like_inputs

    inputs = thumos_like_inputs(60, seed=1)
    found, expected = both(inputs.cas, inputs.video_scores, num_frames=inputs.num_frames, fps=inputs.fps,
                           params=PARAMS[mode])
    assert len(expected) > 1000
    assert compare_detections(found, expected) is None


def test_activitynet_time_base_and_thresholds_from_zero():
    rng = np.random.default_rng(4)
    cas = rng.normal(-0.5, 1.0, (40, 200, 100)).astype(np.float32)
    scores = rng.dirichlet(np.full(200, 0.05), 40)
    frames = rng.integers(600, 9000, 40)
    params = PostParams(mode="ecm", class_threshold=0.05, act_thresholds=np.arange(0, 0.175, 0.025),
                        oic_lambda=0.5, gamma=0.45, nms_iou=0.7, time_base="duration")
    found, expected = both(cas, scores, num_frames=frames, duration=frames / 30.0, params=params)
    assert len(expected) > 0
    assert compare_detections(found, expected) is None


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), videos=st.integers(1, 12), classes=st.integers(1, 6),
       snippets=st.integers(1, 120), upsample=st.floats(0.2, 30.0), mode=st.sampled_from(["ecm", "clean"]))
def test_random_batches_match_the_reference(seed, videos, classes, snippets, upsample, mode):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, snippets + 1, videos)
    cas = np.zeros((videos, classes, snippets), dtype=np.float32)
    for v, length in enumerate(lengths):
        cas[v, :, :length] = rng.normal(rng.uniform(-2, 1), rng.uniform(0.1, 2), (classes, length))
    scores = rng.uniform(0, 1, (videos, classes))
    frames = np.maximum(1, (lengths * upsample).astype(np.int64))
    found, expected = both(cas, scores, num_frames=frames, lengths=lengths, params=PARAMS[mode])
    assert compare_detections(found, expected) is None


def test_three_hours_at_30_fps():
    rng = np.random.default_rng(11)
    snippets = int(3 * 3600 / 0.64)
    cas = rng.normal(-1.5, 0.7, (1, 1, snippets))
    for start in rng.integers(0, snippets - 200, 40):
        cas[0, 0, start : start + rng.integers(5, 200)] += 4.0
    found, expected = both(cas.astype(np.float32), np.array([[0.9]]), num_frames=324_000)
    assert len(expected) >= 20
    assert compare_detections(found, expected) is None


def test_numba_device_arrays_on_a_numba_stream_and_a_raw_handle():
    from numba import cuda

    rng = np.random.default_rng(2)
    cas = rng.normal(-0.5, 1.0, (8, 5, 300)).astype(np.float32)
    scores = rng.uniform(0.2, 0.8, (8, 5))
    stream = cuda.stream()
    device_cas = cuda.to_device(cas, stream=stream)
    found, expected = both(cas, scores, num_frames=2500, device_cas=device_cas, stream=stream)
    assert compare_detections(found, expected) is None
    raw_handle = int(getattr(stream.handle, "value", stream.handle))
    again = localize_batch(device_cas, cuda.to_device(scores), num_frames=2500, fps=30.0, params=PARAMS["ecm"],
                           kernels="cuda", stream=raw_handle)
    assert compare_detections(again, expected) is None
    one = localize(device_cas[3], scores[3], num_frames=2500, fps=30.0, params=PARAMS["ecm"], kernels="cuda",
                   stream=stream)
    reference = localize(cas[3], scores[3], num_frames=2500, fps=30.0, params=PARAMS["ecm"], kernels="numpy")
    assert compare_detections(one, reference) is None


def test_torch_tensors_strided_views_and_torch_streams():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    rng = np.random.default_rng(3)
    cas_btc = rng.normal(-0.5, 1.0, (6, 400, 20)).astype(np.float32)  # an engine's [B, T, C] output
    scores = rng.uniform(0.1, 0.6, (6, 20))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        tensor = torch.from_numpy(cas_btc).cuda().permute(0, 2, 1)  # a strided [B, C, T] view, no copy
    found, expected = both(np.ascontiguousarray(cas_btc.transpose(0, 2, 1)), scores, num_frames=3000,
                           device_cas=tensor, stream=stream)
    assert compare_detections(found, expected) is None


def test_non_finite_device_input_is_caught_on_the_device():
    from numba import cuda

    cas = np.zeros((4, 3, 50), dtype=np.float32)
    cas[3, 1, 7] = np.inf
    with pytest.raises(EcmEdgeError, match=r"video 3 .*class 1"):
        localize_batch(cuda.to_device(cas), np.full((4, 3), 0.5), num_frames=500, fps=30.0,
                       params=PARAMS["ecm"], kernels="cuda")


def test_a_class_with_very_many_proposals_gets_its_nms_on_the_host(monkeypatch):
    import ecm_edge.kernels.cuda as cuda_module

    monkeypatch.setattr(cuda_module, "MAX_DEVICE_NMS", 50)
    rng = np.random.default_rng(8)
    cas = rng.normal(0.0, 1.0, (3, 2, 400)).astype(np.float32)  # noise: hundreds of runs per class
    found, expected = both(cas, np.full((3, 2), 0.5), num_frames=1200)
    assert compare_detections(found, expected) is None


def test_many_videos_run_in_frame_budget_groups(monkeypatch):
    import ecm_edge.kernels.cuda as cuda_module

    monkeypatch.setattr(cuda_module, "FRAME_BUDGET", 5000)
    rng = np.random.default_rng(6)
    cas = rng.normal(-0.5, 1.0, (30, 4, 200)).astype(np.float32)
    found, expected = both(cas, rng.uniform(0.2, 0.8, (30, 4)), num_frames=rng.integers(500, 4000, 30))
    assert compare_detections(found, expected) is None
