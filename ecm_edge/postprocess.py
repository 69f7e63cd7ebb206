"""Turn a CAS into segments: the public post-processing API over the three kernel sets (docs/design.md §5).

``localize`` handles one video, ``localize_batch`` many (ragged lengths allowed); both return the structured
array of :data:`ecm_edge.kernels.DETECTION_DTYPE` ``(video, cls, start, end, score)``, ordered by video and by
score descending. Kernels (``post.kernels``, the ``kernels=`` argument):

- ``numpy``: the reference, step by step as the published code; the oracle.
- ``cpu``: numba ``@njit`` kernels, parallel over (video, class) pairs.
- ``cuda``: numba ``@cuda.jit`` kernels; reads CUDA device arrays without a host copy, on the caller's stream.
- ``auto``: ``cuda`` when a CUDA GPU is visible, else ``cpu``.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ecm_edge.config import CHOICES
from ecm_edge.environment import cuda_gpu_visible, cuda_simulator_enabled
from ecm_edge.errors import EcmEdgeError
from ecm_edge.kernels.inputs import VideoBatch, is_device_array, prepare_batch
from ecm_edge.kernels.params import PostParams
from ecm_edge.kernels.score_rows import SCORE_SOURCES, score_rows

logger = logging.getLogger("ecm_edge")

# kernels name -> (module, function taking (VideoBatch, PostParams[, stream])). Add kernels with one line here
# and their name to post.kernels' CHOICES in ecm_edge.config (the names users may give: these and "auto").
KERNELS: dict[str, tuple[str, str]] = {
    "numpy": ("ecm_edge.kernels.reference", "localize_reference"),
    "cpu": ("ecm_edge.kernels.cpu", "localize_cpu"),
    "cuda": ("ecm_edge.kernels.cuda", "localize_cuda"),
}


def available_kernels() -> list[str]:
    """Kernels that can run here: always ``numpy`` and ``cpu``; ``cuda`` with a GPU or the CUDA simulator."""
    names = ["numpy", "cpu"]
    if cuda_gpu_visible() or (cuda_simulator_enabled() and _numba_cuda_installed()):
        names.append("cuda")
    return names


def resolve_kernels(kernels: str = "auto") -> str:
    """The concrete kernels for a name: ``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``."""
    if kernels == "auto":
        return "cuda" if cuda_gpu_visible() else "cpu"
    if kernels not in KERNELS:
        choices = CHOICES["post.kernels"]
        close = difflib.get_close_matches(kernels, choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise EcmEdgeError(f"unknown post-processing kernels {kernels!r}{hint}; choose {', '.join(choices)}")
    return kernels


def localize(cas: Any, video_scores: Any, *, num_frames: int, fps: float | None = None,
             duration: float | None = None, params: PostParams, kernels: str = "auto",
             stream: Any = None) -> np.ndarray:
    """Segments of one video from its CAS ``[C, T]`` (raw logits) and video scores ``[C]``.

    ``num_frames``: the frames the CAS rows are interpolated to; ``fps`` or ``duration`` (whichever
    ``params.time_base`` names) turns frames into seconds. Every detection has ``video == 0``.
    """
    if is_device_array(cas):
        from ecm_edge.kernels.cuda import add_batch_axis

        cas = add_batch_axis(cas)
    else:
        cas = np.asarray(cas)
        if cas.ndim != 2:
            raise EcmEdgeError(f"localize takes one video's CAS [C, T], got shape {cas.shape}; "
                               "use localize_batch for [N, C, T]")
        cas = cas[None]
    if is_device_array(video_scores):
        from ecm_edge.kernels.cuda import copy_to_host

        video_scores = copy_to_host(video_scores)
    scores = np.asarray(video_scores)
    if scores.ndim != 1:
        raise EcmEdgeError(f"localize takes one video's scores [C], got shape {scores.shape}")
    return localize_batch(cas, scores[None], num_frames=num_frames, fps=fps, duration=duration, params=params,
                          kernels=kernels, stream=stream)


def localize_batch(cas: Any, video_scores: Any, *, num_frames: Any, fps: Any = None, duration: Any = None,
                   params: PostParams, kernels: str = "auto", lengths: Any = None,
                   video_ids: Sequence[str] | None = None, stream: Any = None, weights: Any = None,
                   score_source: str = "cas", source_name: str = "the model") -> np.ndarray:
    """Segments of many videos at once.

    ``cas``: a zero-padded ``[N, C, Tmax]`` array with ``lengths`` [N] (default: all Tmax), a list of
    ``[C, T_i]`` arrays, or (kernels ``cuda``) a CUDA device array ``[N, C, Tmax]``. ``video_scores``
    ``[N, C]``. ``num_frames``, ``fps``, ``duration``: one value or one per video. ``video_ids`` only name
    videos in error messages. ``stream`` (cuda only): a numba stream, a raw ``CUstream`` handle, or an object
    with ``cuda_stream`` / ``__cuda_stream__``; the host kernels ignore it.

    ``score_source`` (``cas``, ``weights``, ``fused``; see :mod:`ecm_edge.kernels.score_rows`) picks the rows to
    threshold; ``weights`` (the transition weights, laid out like ``cas``) is needed for the last two, and
    ``source_name`` names their origin in the error when they are missing. The video scores are used as given.
    """
    name = resolve_kernels(kernels)
    rows = score_rows(cas, weights, score_source, lengths=lengths, where=source_name)
    batch = prepare_batch(rows, video_scores, num_frames=num_frames, fps=fps, duration=duration, lengths=lengths,
                          params=params, video_ids=video_ids, allow_device=name == "cuda")
    logger.debug("post-processing %d videos with the %s kernels", batch.num_videos, name)
    if name == "cuda":
        return _kernel_function(name)(batch, params, stream=stream)
    return _kernel_function(name)(batch, params)


def _kernel_function(name: str) -> Callable[..., np.ndarray]:
    module, function = KERNELS[name]
    return getattr(importlib.import_module(module), function)


def _numba_cuda_installed() -> bool:
    try:
        importlib.import_module("numba.cuda")
    except Exception:
        return False
    return True


__all__ = ["KERNELS", "SCORE_SOURCES", "PostParams", "VideoBatch", "available_kernels", "localize", "localize_batch",
           "resolve_kernels"]
