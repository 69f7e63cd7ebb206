"""Which per-class score row the post-processing thresholds: the CAS, the transition weights, or both fused.

ECM's weight-transition head turns the CAS into per-class foreground weights ``W = sigmoid(conv1x1(CAS))``; other
WTAL methods threshold such an attention/actionness signal instead of the CAS. :func:`score_rows` makes the
choice once, on the host, before any kernel runs, so all kernels post-process the chosen ``[C, T]`` rows
unchanged (docs/design.md §5, steps 1–6):

- ``cas``: the CAS itself (the published behaviour).
- ``weights``: W itself. W lies in (0, 1), so the kernels' step-1 normalization ``(W − relu(min)) / (relu(max) −
  relu(min))`` is exactly the per-row min-max stretch of W.
- ``fused``: ``F = (norm(CAS) + norm(W)) / 2`` per class row, ``norm`` being the step-1 normalization (over the
  video's valid snippets). ``norm(W)`` spans exactly [0, 1]; ``norm(CAS)`` has max 1 when the CAS max is positive
  and keeps its negative values (relu(min) = 0 for a row that dips below 0). The two maxima need not fall on the
  same snippet, so max F can be below 1, and min F can be negative or above 0. The kernels' step-1
  normalization is therefore *not* the identity on F: they score ``(F − relu(min F)) / (relu(max F) −
  relu(min F))`` (divisor 1 when ≤ 0), i.e. the fused row stretched again so that its maximum is 1. That
  second stretch is part of the definition of ``fused`` (the streaming runtime applies it causally too).

The video scores (class filter, γ term of the segment score) stay softmax(score_pre) for every source.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ecm_edge.config import CHOICES
from ecm_edge.errors import EcmEdgeError
from ecm_edge.kernels.reference import normalize_rows

SCORE_SOURCES: tuple[str, ...] = CHOICES["post.score_source"]


def check_score_source(source: str) -> str:
    if source not in SCORE_SOURCES:
        raise EcmEdgeError(f"unknown score source {source!r}; post.score_source is one of {', '.join(SCORE_SOURCES)}")
    return source


def missing_weights_message(source: str, where: str, rebuild: str = "re-export the model with this version "
                            "(`ecm-edge export`, or `ecm-edge predict --save-raw` for raw predictions)") -> str:
    """The error text when ``source`` needs transition weights that ``where`` does not provide; ``rebuild`` says
    how to make artifacts that have them."""
    return (f"post.score_source={source} needs the weight-transition output, but {where} has none (it was made "
            f"before ecm-edge shipped the `weights` output); {rebuild}, or use --set post.score_source=cas")


def fuse_rows(cas: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The ``fused`` score of one video: mean of the normalized CAS and the normalized W, ``[C, T]``."""
    return 0.5 * (normalize_rows(cas) + normalize_rows(weights))


def score_rows(cas: Any, weights: Any, source: str, lengths: Any = None, where: str = "the model") -> Any:
    """The rows to post-process for ``source``: ``cas`` and ``weights`` as given (arrays ``[N, C, Tmax]``
    zero-padded after ``lengths``, lists of ``[C, T_i]``, or device arrays), ``fused`` as a host float32 array
    of the same layout. ``weights`` may be None only for ``cas``; ``where`` names the model or file in the
    error."""
    check_score_source(source)
    if source == "cas":
        return cas
    if weights is None:
        raise EcmEdgeError(missing_weights_message(source, where))
    if source == "weights":
        return weights
    return _fused_batch(_host(cas), _host(weights), lengths)


def _host(array: Any) -> Any:
    if hasattr(array, "copy_to_host"):
        return array.copy_to_host()
    return array


def _fused_batch(cas: Any, weights: Any, lengths: Any) -> Any:
    if isinstance(cas, (list, tuple)):
        return [fuse_rows(c, w).astype(np.float32) for c, w in zip(cas, weights, strict=True)]
    cas, weights = np.asarray(cas), np.asarray(weights)
    if cas.shape != weights.shape:
        raise EcmEdgeError(f"weights must have the shape of cas {list(cas.shape)}, got {list(weights.shape)}")
    if cas.ndim == 2:
        return fuse_rows(cas, weights).astype(np.float32)
    n, _, t_max = cas.shape
    lengths = np.full(n, t_max) if lengths is None else np.broadcast_to(np.asarray(lengths, dtype=np.int64), (n,))
    fused = np.zeros(cas.shape, dtype=np.float32)
    for v in range(n):
        t = int(lengths[v])
        fused[v, :, :t] = fuse_rows(cas[v, :, :t], weights[v, :, :t])
    return fused
