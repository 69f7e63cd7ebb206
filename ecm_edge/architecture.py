"""The ECM pre-stream's architecture, defined once for every executor (docs/design.md §3).

The pre-stream maps features ``[T, D]`` to a class activation sequence (CAS) ``[T, C]``::

    conv1       Conv1d D→H, kernel KERNEL_SIZE, zero padding PADDING, bias → LeakyReLU(LEAKY_SLOPE)
    conv2       Conv1d H→H, kernel KERNEL_SIZE, zero padding PADDING, bias → LeakyReLU(LEAKY_SLOPE)
                → Dropout(DROPOUT)
    classifier  Conv1d H→C, kernel POINTWISE_KERNEL, no bias → CAS (raw logits)
    transition  Conv1d C→C, kernel POINTWISE_KERNEL, bias → sigmoid → per-class foreground weights W
    video score = softmax over classes of the mean of the top-k CAS values over time, k = :func:`topk_count`
                  clipped to the clip length by :func:`clipped_topk`

Three executors run it and read their constants from here: the torch module (``ecm_edge.train.model.ECM``), the
ONNX export wrappers around it (``ecm_edge.export.onnx_export``) and the torch-free numpy head
(``ecm_edge.runtime.head``); the artifact manifests (``ecm_edge.manifest``) publish the streaming contract that
follows from :data:`RECEPTIVE_RADIUS`. ``LEAKY_SLOPE`` and ``DROPOUT`` are the defaults of the configurable
``model.leaky_slope`` / ``model.dropout``; the kernel sizes, the layer count and the top-k rule are fixed.

This module imports neither torch nor numpy, so the torch-free runtime reads it too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

_N = TypeVar("_N")  # an int, or a graph value (a 0-d tensor) during ONNX export

TEMPORAL_CONVS = 2
"""Temporal convolutions in Φ (conv1, conv2); the classifier and the transition are pointwise."""

KERNEL_SIZE = 3
"""Kernel size of each temporal convolution, in snippets (odd, so that a column has a centre)."""

PADDING = KERNEL_SIZE // 2
"""Zero padding on each side of a temporal convolution: the offline pass keeps the length T ("same" padding)."""

POINTWISE_KERNEL = 1
"""Kernel size of the classifier (H→C) and of the weight transition (C→C): one column in, one column out."""

CLASSIFIER_BIAS = False
"""The classifier has no bias; the post-stream scores its aggregated features with the same rows."""

TRANSITION_BIAS = True
"""The weight transition ``W = sigmoid(conv1x1(CAS))`` has a bias."""

LEAKY_SLOPE = 0.01
"""Negative slope of the LeakyReLU after each temporal convolution (default of ``model.leaky_slope``)."""

DROPOUT = 0.5
"""Dropout probability after the second activation, training only (default of ``model.dropout``)."""

RECEPTIVE_RADIUS = TEMPORAL_CONVS * (KERNEL_SIZE // 2)
"""The CAS of snippet t depends on snippets t − RECEPTIVE_RADIUS … t + RECEPTIVE_RADIUS: each temporal convolution
widens the dependency by ``KERNEL_SIZE // 2`` on each side, the pointwise layers by nothing. A stream's CAS column
is final once snippet t + RECEPTIVE_RADIUS has arrived."""

STREAM_WINDOW = 2 * RECEPTIVE_RADIUS + 1
"""Snippets a valid-padding (unpadded) window needs to produce one CAS column: the streaming graph's minimum
window and the window the streaming head feeds per new snippet."""

HEAD_TENSORS: tuple[str, ...] = ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "classifier.weight")
"""State-dict names of the pre-stream's tensors (the torch module's parameter names), the CAS path."""

TRANSITION_TENSORS: tuple[str, ...] = ("transition.weight", "transition.bias")
"""State-dict names of the weight transition; optional in deploy weights written before it was shipped."""


def topk_count(length: int, ratio: float) -> int:
    """k of the top-k video score for ``length`` snippets and ratio r: ``max(1, int(length · r))``.

    Training and the offline graph fix it once from ``data.t_fixed`` (the reference's rule); the causal stream
    applies it to the columns in its horizon.
    """
    return max(1, int(length * ratio))


def clipped_topk(k: _N, length: _N, minimum: Callable[[_N, _N], _N] = min) -> _N:
    """The k a clip of ``length`` snippets uses: ``minimum(length, k)``, so clips shorter than k pool them all.

    ``minimum`` is ``min`` for Python ints; the ONNX export passes ``torch.minimum`` so that the rule stays a
    graph operation on the dynamic length.
    """
    return minimum(length, k)
