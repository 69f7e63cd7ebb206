"""Input checks shared by all post-processing kernels: one padded batch, or a clear error naming the video and the value.

Every kernel receives a :class:`VideoBatch`: the CAS padded to ``[N, C, Tmax]`` with per-video lengths, the
video scores on the host, and per-video frame counts and time bases. The CAS may stay on a CUDA device (any
object with ``__cuda_array_interface__``); only the CUDA kernels accept that, and it checks such a CAS for
NaN/Inf on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ecm_edge.errors import EcmEdgeError
from ecm_edge.kernels.params import PostParams


@dataclass(frozen=True)
class VideoBatch:
    """Checked inputs of one batched post-processing call."""

    cas: Any  # [N, C, Tmax] float32/float64: a host ndarray, or a CUDA device array when on_device
    lengths: np.ndarray  # int64 [N]: valid snippets per video (1 ≤ length ≤ Tmax)
    video_scores: np.ndarray  # float64 [N, C] on the host
    num_frames: np.ndarray  # int64 [N]: frames each CAS row is interpolated to (≥ 1)
    fps: np.ndarray  # float64 [N]: frames per second (NaN when the time base does not use it)
    duration: np.ndarray  # float64 [N]: seconds (NaN when the time base does not use it)
    on_device: bool = False
    video_ids: tuple[str, ...] | None = None

    @property
    def num_videos(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.video_scores.shape[1])

    def describe(self, video: int) -> str:
        return describe_video(video, self.video_ids)


def describe_video(video: int, video_ids: Sequence[str] | None) -> str:
    if video_ids is not None and 0 <= video < len(video_ids):
        return f"video {video} ({video_ids[video]!r})"
    return f"video {video}"


def is_device_array(obj: object) -> bool:
    """True for CUDA device memory (numba, the numba simulator, torch, cupy ...), False for host arrays."""
    if isinstance(obj, np.ndarray):
        return False
    return bool(getattr(obj, "__cuda_ndarray__", False)) or hasattr(obj, "__cuda_array_interface__")


def kept_pairs(video_scores: np.ndarray, class_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(video, class) of every class whose video score reaches the class threshold, video-major."""
    videos, classes = np.nonzero(video_scores >= class_threshold)
    return videos.astype(np.int64), classes.astype(np.int64)


def prepare_batch(cas: Any, video_scores: Any, *, num_frames: Any, fps: Any = None, duration: Any = None,
                  lengths: Any = None, params: PostParams, video_ids: Sequence[str] | None = None,
                  allow_device: bool = False) -> VideoBatch:
    """Check and pad the inputs of ``localize_batch``; raise :class:`EcmEdgeError` naming what is wrong."""
    ids = tuple(str(v) for v in video_ids) if video_ids is not None else None
    if is_device_array(cas):
        if not allow_device:
            raise EcmEdgeError("the CAS is a CUDA device array, which only kernels='cuda' reads; "
                               "copy it to the host first or use kernels='cuda'")
        padded, shape, on_device = cas, _device_shape(cas), True
    else:
        padded, default_lengths = _host_cas(cas)
        shape, on_device = padded.shape, False
        if lengths is None:
            lengths = default_lengths
    n_videos, n_classes, t_max = shape
    if ids is not None and len(ids) != n_videos:
        raise EcmEdgeError(f"{len(ids)} video ids for {n_videos} videos")
    lengths_arr = _per_video_ints(t_max if lengths is None else lengths, n_videos, "lengths")
    for v in np.flatnonzero((lengths_arr < 1) | (lengths_arr > t_max)):
        raise EcmEdgeError(f"{describe_video(int(v), ids)}: length {lengths_arr[v]} must be between 1 and "
                           f"the padded CAS length {t_max}")
    scores = _host_scores(video_scores, (n_videos, n_classes), ids)
    frames = _per_video_ints(num_frames, n_videos, "num_frames")
    for v in np.flatnonzero(frames < 1):
        raise EcmEdgeError(f"{describe_video(int(v), ids)}: num_frames must be at least 1, got {frames[v]}")
    fps_arr = _time_base(fps, n_videos, "fps", required=params.time_base == "fps", ids=ids)
    duration_arr = _time_base(duration, n_videos, "duration", required=params.time_base == "duration", ids=ids)
    if not on_device:
        check_finite_cas(padded, lengths_arr, ids)
    return VideoBatch(padded, lengths_arr, scores, frames, fps_arr, duration_arr, on_device, ids)


def check_finite_cas(cas: np.ndarray, lengths: np.ndarray, video_ids: Sequence[str] | None = None) -> None:
    """Raise naming the first video whose CAS (within its length) holds NaN or Inf."""
    if cas.size == 0 or (np.isfinite(cas.min()) and np.isfinite(cas.max())):  # NaN propagates through both
        return
    for v in range(cas.shape[0]):
        bad = ~np.isfinite(cas[v, :, : lengths[v]])
        if bad.any():
            c, t = np.argwhere(bad)[0]
            raise EcmEdgeError(f"{describe_video(v, video_ids)}: the CAS holds {cas[v, c, t]} at class {c}, "
                               f"snippet {t}; the network output must be finite (check the features and model)")


def _host_cas(cas: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """A padded float array [N, C, Tmax] from an array or a list of [C, T_i] arrays, and list lengths."""
    if isinstance(cas, (list, tuple)):
        rows = [_float_array(np.asarray(x), f"cas[{i}]") for i, x in enumerate(cas)]
        for i, x in enumerate(rows):
            if x.ndim != 2 or x.shape[1] < 1:
                raise EcmEdgeError(f"cas[{i}] must be a [C, T] array with T ≥ 1, got shape {x.shape}")
            if x.shape[0] != rows[0].shape[0]:
                raise EcmEdgeError(f"cas[{i}] has {x.shape[0]} classes, cas[0] has {rows[0].shape[0]}")
        if not rows:
            return np.zeros((0, 0, 1), dtype=np.float32), np.zeros(0, dtype=np.int64)
        lengths = np.array([x.shape[1] for x in rows], dtype=np.int64)
        padded = np.zeros((len(rows), rows[0].shape[0], int(lengths.max())), dtype=np.result_type(*rows))
        for i, x in enumerate(rows):
            padded[i, :, : x.shape[1]] = x
        return padded, lengths
    array = _float_array(np.asarray(cas), "cas")
    if array.ndim != 3 or array.shape[2] < 1:
        raise EcmEdgeError(f"cas must be a padded [N, C, T] array with T ≥ 1 (or a list of [C, T] arrays), "
                           f"got shape {array.shape}")
    return array, None


def _float_array(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype in (np.float32, np.float64):
        return array
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    raise EcmEdgeError(f"{name} must hold floating-point scores, got dtype {array.dtype}")


def _device_shape(cas: Any) -> tuple[int, int, int]:
    interface = getattr(cas, "__cuda_array_interface__", None)
    if interface is not None:
        shape, dtype = tuple(int(s) for s in interface["shape"]), np.dtype(interface["typestr"])
    else:  # a numba (or simulated) device array
        shape, dtype = tuple(int(s) for s in cas.shape), np.dtype(cas.dtype)
    if len(shape) != 3 or shape[2] < 1:
        raise EcmEdgeError(f"a device CAS must be a padded [N, C, T] array with T ≥ 1, got shape {shape}")
    if dtype not in (np.float32, np.float64):
        raise EcmEdgeError(f"a device CAS must be float32 or float64, got {dtype}")
    return shape  # type: ignore[return-value]


def _host_scores(video_scores: Any, shape: tuple[int, int], ids: tuple[str, ...] | None) -> np.ndarray:
    if is_device_array(video_scores):
        from ecm_edge.kernels.cuda import copy_to_host

        video_scores = copy_to_host(video_scores)
    scores = np.asarray(video_scores, dtype=np.float64)
    if scores.shape != shape:
        raise EcmEdgeError(f"video_scores must have shape [N, C] = {list(shape)} to match the CAS, "
                           f"got {list(scores.shape)}")
    bad = ~np.isfinite(scores)
    if bad.any():
        v, c = np.argwhere(bad)[0]
        raise EcmEdgeError(f"{describe_video(int(v), ids)}: video score of class {c} is {scores[v, c]}; "
                           "video scores must be finite")
    return np.ascontiguousarray(scores)


def _per_video_ints(value: Any, n_videos: int, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim == 0:
        array = np.full(n_videos, array)
    if array.shape != (n_videos,):
        raise EcmEdgeError(f"{name} must be one value or one per video ({n_videos}), got shape {array.shape}")
    whole = np.issubdtype(array.dtype, np.integer) or (
        np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)) and np.all(array == np.round(array)))
    if not whole:
        raise EcmEdgeError(f"{name} must be whole numbers, got {array[:5].tolist()}")
    return array.astype(np.int64)


def _time_base(value: Any, n_videos: int, name: str, required: bool, ids: tuple[str, ...] | None) -> np.ndarray:
    if value is None:
        if required:
            raise EcmEdgeError(f"post.time_base needs {name} (seconds = frame / fps for 'fps', "
                               f"frame / num_frames · duration for 'duration'); pass {name}=...")
        return np.full(n_videos, np.nan)
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(n_videos, float(array))
    if array.shape != (n_videos,):
        raise EcmEdgeError(f"{name} must be one value or one per video ({n_videos}), got shape {array.shape}")
    if required:
        for v in np.flatnonzero(~(np.isfinite(array) & (array > 0))):
            raise EcmEdgeError(f"{describe_video(int(v), ids)}: {name} must be a positive number, got {array[v]}")
    return np.ascontiguousarray(array)
