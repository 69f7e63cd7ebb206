"""The CUDA kernels: numba ``@cuda.jit`` kernels, one launch sequence for a whole batch of videos and classes.

Every frame of every kept (video, class) row gets a thread; the stages, in launch order:

1. ``row_stats``: per CAS row (all classes, so NaN/Inf anywhere is caught on the device): relu(min), the
   normalization divisor, and a non-finite flag.
2. ``interpolate``: normalize + interpolate each frame (the input row can be any [N, C, T] score array), store
   ``max(value, 0)`` for the prefix sum and the frame's *level*, the number of thresholds it passes.
3. ``prefix_scan``: per row, an inclusive block scan over tiles with a running carry: Q, the prefix sum.
4. ``count_runs`` / ``find_runs``: per (row, threshold), run starts (level > k after level ≤ k) are counted;
   then an exclusive prefix sum of the start flags gives each run its id, and starts and ends are written to
   their slots. The host reads the counts once (to size the proposal arrays).
5. ``score_runs``: OIC per run from prefix sums (the outer mass is the overlap with neighbouring runs).
6. ``nms_order`` / ``nms_mask`` / ``nms_sweep``: per row, proposals ranked by score (ties by proposal order),
   a suppression bitmask (bit j of row i: IoU(i, j) ≥ threshold, j ranked after i), swept on the device.
7. ``gather``: one [M, 4] array (score, start, end, kept) copied to the host.

Arithmetic matches the CPU kernels and the reference to the bit where it decides runs: products that feed
positions, values and outer windows are rounded on their own (``dmul_rn``), never fused into an FMA; in ``ecm``
mode the interpolation is OpenCV's float32 one, each float32 operation rounded on its own (``fmul_rn``,
``fadd_rn``, ``fsub_rn``). Pairs with more proposals than ``MAX_DEVICE_NMS`` get their NMS on the host, from the
CPU kernels' ``threshold_nms``. The CAS may be a device array (anything with ``__cuda_array_interface__``): it
is read in place, on the caller's stream (``ecm_edge.kernels.streams``). Importing this module needs neither
numba-cuda nor a GPU.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import numpy as np

from ecm_edge.environment import cuda_gpu_visible, cuda_simulator_enabled
from ecm_edge.errors import EcmEdgeError, import_optional
from ecm_edge.kernels.detections import empty_detections, make_detections
from ecm_edge.kernels.inputs import VideoBatch, is_device_array, kept_pairs
from ecm_edge.kernels.params import PostParams
from ecm_edge.kernels.streams import is_numba_stream, to_numba_stream

THREADS = 256  # threads per block on a GPU (a power of two: the block scans and reductions halve it)
MAX_BLOCKS = 65535  # per grid dimension; grid-stride loops cover anything beyond
# The simulator runs a Python thread per CUDA thread: tiny grids keep it usable (and exercise the tile carries
# and grid-stride loops that large inputs take on a GPU).
SIMULATOR_THREADS = 4
SIMULATOR_BLOCKS = 2
MAX_DEVICE_NMS = 8192  # proposals of one (video, class) up to which NMS runs on the device (bitmask: M²/8 bytes)
FRAME_BUDGET = 1 << 25  # frames per launch sequence (~300 MB of scratch); bigger batches run in groups


def _cuda() -> Any:
    return import_optional("numba.cuda", "numba-cuda", "the CUDA post-processing kernels",
                           "pip install 'ecm-edge[cuda]', or use kernels='cpu'")


def require_cuda() -> Any:
    """``numba.cuda``, with a GPU (or the simulator), or an error saying what to use instead."""
    cuda = _cuda()
    if not cuda_simulator_enabled() and not cuda_gpu_visible():
        raise EcmEdgeError("kernels='cuda' needs a visible CUDA GPU and none was found; use kernels='cpu' "
                           "(or 'auto'), or set NUMBA_ENABLE_CUDASIM=1 to run the kernels in numba's simulator")
    return cuda


def threads_per_block() -> int:
    return SIMULATOR_THREADS if cuda_simulator_enabled() else THREADS


def _grid(items: int) -> int:
    """Blocks for ``items`` blocks' worth of work (grid-stride loops take the rest)."""
    return max(1, min(items, SIMULATOR_BLOCKS if cuda_simulator_enabled() else MAX_BLOCKS))


# ---- device arrays and streams -------------------------------------------------------------------------------


def device_view(array: Any) -> Any:
    """A numba device array over ``array``'s memory (no copy)."""
    cuda = require_cuda()
    if getattr(array, "__cuda_ndarray__", False):
        return array
    return cuda.as_cuda_array(array)


def copy_to_host(array: Any) -> np.ndarray:
    return device_view(array).copy_to_host()


class _InterfaceView:
    """Device memory described by a hand-made ``__cuda_array_interface__`` (a reshaped view)."""

    def __init__(self, interface: dict[str, Any], owner: Any):
        self.__cuda_array_interface__ = interface
        self._owner = owner


def add_batch_axis(array: Any) -> Any:
    """``[C, T]`` device array → ``[1, C, T]`` view of the same memory."""
    view = device_view(array)
    if len(view.shape) != 2:
        raise EcmEdgeError(f"localize takes one video's CAS [C, T], got a device array of shape {tuple(view.shape)}")
    if cuda_simulator_enabled():
        return view[None]
    interface = dict(view.__cuda_array_interface__)
    classes, length = (int(s) for s in interface["shape"])
    itemsize = np.dtype(interface["typestr"]).itemsize
    strides = interface.get("strides") or (length * itemsize, itemsize)
    interface.update(shape=(1, classes, length), strides=(classes * length * itemsize, *strides), stream=None)
    return _cuda().as_cuda_array(_InterfaceView(interface, view))


def as_stream(stream: Any) -> Any:
    """A numba stream: the given one, one wrapping a foreign stream (``ecm_edge.kernels.streams``), or the default
    stream when None."""
    cuda = require_cuda()
    if stream is None:
        return cuda.default_stream()
    if cuda_simulator_enabled() and not is_numba_stream(stream):
        raise EcmEdgeError("the CUDA simulator takes only numba streams (cuda.stream())")
    return to_numba_stream(cuda, stream)


# ---- the kernels (in ``cuda_kernels``, which imports numba.cuda) -----------------------------------------------


@functools.cache
def kernels(threads: int) -> SimpleNamespace:
    """The kernels for blocks of ``threads`` threads (a power of two), compiled at their first launch."""
    _cuda()
    from ecm_edge.kernels.cuda_kernels import build_kernels

    return build_kernels(threads)


# ---- the launch sequence -------------------------------------------------------------------------------------


def localize_cuda(batch: VideoBatch, params: PostParams, stream: Any = None) -> np.ndarray:
    """Detections of every video of a batch whose CAS is on the host or on the device."""
    cuda = require_cuda()
    threads = threads_per_block()
    k = kernels(threads)
    stream = as_stream(stream)
    pair_video, pair_class = kept_pairs(batch.video_scores, params.class_threshold)
    if pair_video.size == 0 and not batch.on_device:
        return empty_detections()
    cas = device_view(batch.cas) if batch.on_device else cuda.to_device(np.ascontiguousarray(batch.cas),
                                                                         stream=stream)
    rows = batch.num_videos * batch.num_classes
    low, delta = cuda.device_array(max(rows, 1), np.float64, stream=stream), \
        cuda.device_array(max(rows, 1), np.float64, stream=stream)
    bad = cuda.device_array(max(rows, 1), np.int32, stream=stream)
    if rows:
        k.row_stats[_grid(rows), threads, stream](cas, _upload(batch.lengths, stream), low, delta, bad)
    if batch.on_device:
        _raise_on_nonfinite(bad.copy_to_host(stream=stream)[:rows], batch, stream)
    parts = [_localize_pairs(k, threads, cas, batch, params, pair_video[group], pair_class[group], low, delta,
                             stream)
             for group in _pair_groups(batch.num_frames[pair_video])]
    return np.concatenate([empty_detections(), *parts]) if parts else empty_detections()


def _pair_groups(pair_frames: np.ndarray) -> list[slice]:
    """Consecutive pairs in groups of at most FRAME_BUDGET frames (a bigger pair is a group alone)."""
    groups, start, frames = [], 0, 0
    for p, n in enumerate(pair_frames.tolist()):
        if p > start and frames + n > FRAME_BUDGET:
            groups.append(slice(start, p))
            start, frames = p, 0
        frames += n
    if start < len(pair_frames):
        groups.append(slice(start, len(pair_frames)))
    return groups


def _raise_on_nonfinite(bad: np.ndarray, batch: VideoBatch, stream: Any) -> None:
    stream.synchronize()
    rows = np.flatnonzero(bad)
    if rows.size:
        v, c = divmod(int(rows[0]), batch.num_classes)
        raise EcmEdgeError(f"{batch.describe(v)}: the CAS of class {c} holds NaN or Inf; the network output must "
                           "be finite (check the features and model)")


def _localize_pairs(k: SimpleNamespace, threads: int, cas: Any, batch: VideoBatch, params: PostParams,
                    pair_video: np.ndarray, pair_class: np.ndarray, low: Any, delta: Any, stream: Any) -> np.ndarray:
    """One launch sequence over a group of (video, class) pairs; returns their detections."""
    cuda = _cuda()
    num_pairs, num_thresholds = pair_video.size, params.act_thresholds.size
    segments = num_pairs * num_thresholds
    pair_frames = batch.num_frames[pair_video]
    frame_offsets = _offsets(pair_frames)
    frames = int(frame_offsets[-1])
    up = functools.partial(_upload, stream=stream)
    d_pair_video, d_pair_frames, d_frame_offsets = up(pair_video), up(pair_frames), up(frame_offsets)
    prefix = cuda.device_array(frames + num_pairs, np.float64, stream=stream)
    levels = cuda.device_array(frames, np.int16, stream=stream)
    grid = (_grid(min(_blocks(int(pair_frames.max()), threads), 1024)), _grid(num_pairs))
    k.interpolate[grid, threads, stream](cas, up(batch.lengths), up(batch.num_frames), d_pair_video,
                                         up(pair_class), d_frame_offsets, low, delta, up(params.act_thresholds),
                                         params.opencv_interpolation, prefix, levels)
    k.prefix_scan[_grid(num_pairs), threads, stream](d_frame_offsets, d_pair_frames, prefix)
    counts = up(np.zeros(segments, dtype=np.int32))
    k.count_runs[_grid(segments), threads, stream](levels, d_frame_offsets, d_pair_frames, num_thresholds,
                                                             params.drops_lone_first_frame, counts)
    proposal_offsets = _offsets(counts.copy_to_host(stream=stream))
    stream.synchronize()
    total = int(proposal_offsets[-1])
    if total == 0:
        return empty_detections()

    d_proposal_offsets = up(proposal_offsets)
    run_start = cuda.device_array(total, np.int64, stream=stream)
    run_end = cuda.device_array(total, np.int64, stream=stream)
    k.find_runs[_grid(segments), threads, stream](levels, d_frame_offsets, d_pair_frames, num_thresholds,
                                                            d_proposal_offsets, run_start, run_end)
    score, start_s, end_s = (cuda.device_array(total, np.float64, stream=stream) for _ in range(3))
    items = _grid(_blocks(total, threads))
    k.score_runs[items, threads, stream](prefix, d_frame_offsets, d_pair_frames, d_pair_video,
                                         up(batch.video_scores[pair_video, pair_class]), up(batch.fps),
                                         up(batch.duration), num_thresholds, d_proposal_offsets, params.oic_lambda,
                                         params.gamma, params.time_by_duration, run_start, run_end, score, start_s,
                                         end_s)

    pair_offsets = np.ascontiguousarray(proposal_offsets[::num_thresholds])
    pair_size = np.diff(pair_offsets)
    on_device = (pair_size <= MAX_DEVICE_NMS).astype(np.int8)
    words = np.where(on_device == 1, (pair_size + 63) // 64, 0)
    mask_offsets, removed_offsets = _offsets(pair_size * words), _offsets(words)
    d_pair_offsets, d_on_device, d_mask_offsets = up(pair_offsets), up(on_device), up(mask_offsets)
    order = cuda.device_array(total, np.int64, stream=stream)
    kept = cuda.device_array(total, np.int8, stream=stream)
    k.nms_order[items, threads, stream](score, d_pair_offsets, d_on_device, order, kept)
    mask = cuda.device_array(max(int(mask_offsets[-1]), 1), np.int64, stream=stream)
    if mask_offsets[-1] > 0:
        k.nms_mask[_grid(_blocks(int(mask_offsets[-1]), threads)), threads, stream](
            order, start_s, end_s, d_pair_offsets, d_mask_offsets, params.nms_iou,
            params.iou_offset, mask)
    removed = cuda.device_array(max(int(removed_offsets[-1]), 1), np.int64, stream=stream)
    k.nms_sweep[_grid(_blocks(num_pairs, threads)), threads, stream](
        mask, d_pair_offsets, d_mask_offsets, up(removed_offsets), d_on_device, removed, kept)
    out = cuda.device_array((total, 4), np.float64, stream=stream)
    k.gather[items, threads, stream](order, kept, score, start_s, end_s, out)
    result = out.copy_to_host(stream=stream)
    stream.synchronize()
    return _assemble(result, proposal_offsets, on_device, pair_video, pair_class, params)


def _assemble(result: np.ndarray, proposal_offsets: np.ndarray, on_device: np.ndarray, pair_video: np.ndarray,
              pair_class: np.ndarray, params: PostParams) -> np.ndarray:
    """Kept slots in (pair, NMS order); pairs too large for the device bitmask get their NMS here."""
    score, start_s, end_s = (np.ascontiguousarray(result[:, i]) for i in range(3))
    keep = result[:, 3] == 1
    num_thresholds = params.act_thresholds.size
    pair_offsets = proposal_offsets[::num_thresholds]
    slot_pair = np.repeat(np.arange(pair_video.size), np.diff(pair_offsets))
    rank = np.arange(result.shape[0]) - pair_offsets[slot_pair]
    for p in np.flatnonzero(on_device == 0):
        slots = proposal_offsets[p * num_thresholds : (p + 1) * num_thresholds + 1]
        a, b = slots[0], slots[-1]
        keep[a:b], rank[a:b] = _host_nms(start_s, end_s, score, slots, params)
    slots = np.flatnonzero(keep)
    slots = slots[np.lexsort((rank[slots], slot_pair[slots]))]
    pair = slot_pair[slots]
    return make_detections(pair_video[pair], pair_class[pair], start_s[slots], end_s[slots], score[slots])


def _host_nms(start_s: np.ndarray, end_s: np.ndarray, score: np.ndarray, slots: np.ndarray,
              params: PostParams) -> tuple[np.ndarray, np.ndarray]:
    """NMS of one pair on the host, by the CPU kernels' ``threshold_nms`` (its proposals, threshold by threshold,
    are ``slots[k] .. slots[k + 1] − 1``, in proposal order as the device wrote them): (kept, rank among kept)."""
    from ecm_edge.kernels.cpu import threshold_nms

    a, b = int(slots[0]), int(slots[-1])
    kept_order = np.empty(score.size, dtype=np.int64)
    kept = threshold_nms(start_s, end_s, score, np.ascontiguousarray(slots), params.nms_iou, params.iou_offset,
                         kept_order)
    rank = np.full(b - a, -1, dtype=np.int64)
    rank[kept_order[a : a + kept] - a] = np.arange(kept)
    return rank >= 0, rank


def _offsets(sizes: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)


def _blocks(items: int, threads: int) -> int:
    return max(1, -(-items // threads))


def _upload(array: np.ndarray, stream: Any) -> Any:
    return _cuda().to_device(np.ascontiguousarray(array), stream=stream)


__all__ = ["add_batch_axis", "as_stream", "copy_to_host", "is_device_array", "kernels", "localize_cuda",
           "require_cuda", "threads_per_block"]
