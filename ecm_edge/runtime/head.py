"""The ECM head run incrementally: each new snippet costs one column of work, not a whole window.

The CAS of snippet t depends on snippets t−2 … t+2 only (two k=3 convolutions with zero padding, then a 1×1
classifier), so it is final once snippet t+2 has arrived. The layer shapes, the slope and that radius are
:mod:`ecm_edge.architecture`'s (``KERNEL_SIZE``, ``PADDING``, ``LEAKY_SLOPE``, ``RECEPTIVE_RADIUS``,
``STREAM_WINDOW``); the numbers in this text are their current values. Two ways to stream it, one contract
(:class:`StreamingHead`: ``push(features [N, D]) -> cas [M, C]``, ``flush() -> cas [M, C]``):

- :class:`ColumnHead` (the default for deploy folders, torch-free): the per-layer weights are read from
  ``model.safetensors`` with ``safetensors.numpy`` and each layer evaluates exactly one new column per snippet
  (conv1: one 3-tap window → one hidden column; conv2: one window of hidden columns → one column; classifier).
  It keeps the last two input columns and the last two hidden columns. The offline graph zero-pads the *input*
  of conv1 and the *hidden* input of conv2, so the stream starts with one zero input column and one zero hidden
  column, and :meth:`ColumnHead.flush` appends one zero column to each at the end: the streamed CAS equals the
  full offline pass column for column, the first two and the last two included.
- :class:`WindowHead` (for exported graphs on ONNX Runtime / TensorRT): the exported streaming graph maps a
  valid-padding window ``features [1, W, D]`` to the CAS of its ``W − 4`` centre columns. Each step runs a
  5-column window, which recomputes three conv1 columns and one conv2 column (about twice the work of
  :class:`ColumnHead`, still independent of the history length). The padded borders — the first two and the
  last two columns — come from the full graph on the first / last four snippets, which sees exactly the zero
  padding of the offline pass.

:class:`BatchedColumnHead` is :class:`ColumnHead` for many streams in one process: per-stream state in arrays over
slots, and every layer evaluated for all streams' new columns with one matrix product (the batched head of
``ecm_edge.runtime.engine.StreamEngine``).

:func:`full_cas` is the offline pass in numpy (the oracle of the tests and the "recompute everything" baseline of
the benchmark).

Both heads also give the transition weights ``W = sigmoid(conv1x1(CAS))`` of the columns their last ``push`` /
``flush`` returned (:meth:`last_transition_weights`), for the ``weights`` and ``fused`` score sources:
:class:`ColumnHead` from the ``transition.*`` tensors of the deploy weights, :class:`WindowHead` from the graphs'
``weights`` output. Heads whose artifacts predate that output return None there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ecm_edge.architecture import (
    HEAD_TENSORS,
    KERNEL_SIZE,
    LEAKY_SLOPE,
    PADDING,
    RECEPTIVE_RADIUS,
    STREAM_WINDOW,
    TRANSITION_TENSORS,
)
from ecm_edge.deploy_format import (
    check_deploy_meta,
    check_finite,
    deploy_paths,
    read_deploy_meta,
    verify_weights_hash,
)
from ecm_edge.errors import CheckpointError, DataError

log = logging.getLogger("ecm_edge")


class StreamingHead(Protocol):
    """What the streaming runtime needs from a head."""

    feature_dim: int
    num_classes: int

    def push(self, features: np.ndarray) -> np.ndarray:
        """Append snippets ``[N, D]``; return the CAS columns ``[M, C]`` that became final, in order."""
        ...

    def flush(self) -> np.ndarray:
        """End the stream: return the remaining CAS columns (zero padding at the end) and start afresh."""
        ...

    def reset(self) -> None: ...

    def last_transition_weights(self) -> np.ndarray | None:
        """The transition weights ``[M, C]`` of the columns the last ``push`` / ``flush`` returned, or None when
        the head's artifacts have no weight-transition output. It reads the last call's result and keeps it."""
        ...

    def close(self) -> None:
        """Release what the head holds (engine sessions); it is unusable afterwards."""
        ...


@dataclass(frozen=True)
class HeadWeights:
    """The pre-stream of ECM as plain arrays (float32)."""

    conv1_weight: np.ndarray  # [H, D, K], K = KERNEL_SIZE
    conv1_bias: np.ndarray  # [H]
    conv2_weight: np.ndarray  # [H, H, K]
    conv2_bias: np.ndarray  # [H]
    classifier_weight: np.ndarray  # [C, H] (the pointwise kernel squeezed)
    leaky_slope: float = LEAKY_SLOPE
    transition_weight: np.ndarray | None = None  # [C, C] (k=1 squeezed); None: not in the weights file
    transition_bias: np.ndarray | None = None  # [C]

    def transition(self, cas: np.ndarray) -> np.ndarray | None:
        """W = sigmoid(conv1x1(cas)) for CAS columns ``[M, C]``, or None without the transition tensors."""
        if self.transition_weight is None or self.transition_bias is None:
            return None
        logits = cas @ self.transition_weight.T + self.transition_bias
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    @property
    def feature_dim(self) -> int:
        return self.conv1_weight.shape[1]

    @property
    def hidden_dim(self) -> int:
        return self.conv1_weight.shape[0]

    @property
    def num_classes(self) -> int:
        return self.classifier_weight.shape[0]

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], leaky_slope: float = LEAKY_SLOPE, source: str = "weights"
                   ) -> HeadWeights:
        """Pick the head tensors out of an ECM state dict (torch-style names) and check their shapes."""
        missing = [k for k in HEAD_TENSORS if k not in state]
        if missing:
            raise CheckpointError(f"{source} lacks {', '.join(missing)}; it is not an ECM state dict written by "
                                  "ecm-edge (re-run `ecm-edge train` or pass the right folder)")
        w1, b1 = (np.ascontiguousarray(state[k], dtype=np.float32) for k in ("conv1.weight", "conv1.bias"))
        w2, b2 = (np.ascontiguousarray(state[k], dtype=np.float32) for k in ("conv2.weight", "conv2.bias"))
        wc = np.asarray(state["classifier.weight"], dtype=np.float32)
        wc = wc.reshape(wc.shape[0], -1)
        h = w1.shape[0]
        k = KERNEL_SIZE
        if (w1.ndim != 3 or w1.shape[2] != k or b1.shape != (h,) or w2.shape != (h, h, k) or b2.shape != (h,)
                or wc.shape[1] != h):
            raise CheckpointError(f"{source} has inconsistent head shapes: conv1 {w1.shape}, conv2 {w2.shape}, "
                                  f"classifier {wc.shape}; expected [H, D, {k}], [H, H, {k}], [C, H]")
        wt, bt = (state.get(k) for k in TRANSITION_TENSORS)
        if wt is not None and bt is not None:
            wt = np.asarray(wt, dtype=np.float32).reshape(wc.shape[0], -1)
            bt = np.asarray(bt, dtype=np.float32)
        else:
            wt = bt = None
        return cls(w1, b1, w2, b2, np.ascontiguousarray(wc), float(leaky_slope), wt, bt)

    @classmethod
    def random(cls, feature_dim: int, hidden_dim: int, num_classes: int, seed: int = 0,
               leaky_slope: float = LEAKY_SLOPE) -> HeadWeights:
        """Random weights with the fan-in scale of PyTorch's default init (benchmarks and tests)."""
        rng = np.random.default_rng(seed)

        def uniform(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
            bound = 1.0 / np.sqrt(fan_in)
            return rng.uniform(-bound, bound, shape).astype(np.float32)

        k = KERNEL_SIZE
        return cls(uniform((hidden_dim, feature_dim, k), k * feature_dim), uniform((hidden_dim,), k * feature_dim),
                   uniform((hidden_dim, hidden_dim, k), k * hidden_dim), uniform((hidden_dim,), k * hidden_dim),
                   uniform((num_classes, hidden_dim), hidden_dim), leaky_slope)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Torch-style names, the classifier with its pointwise kernel axis (as ``ECM.load_state_dict`` expects)."""
        return {"conv1.weight": self.conv1_weight, "conv1.bias": self.conv1_bias,
                "conv2.weight": self.conv2_weight, "conv2.bias": self.conv2_bias,
                "classifier.weight": self.classifier_weight[:, :, None]}


def load_head_weights(folder: str | Path) -> tuple[HeadWeights, dict[str, Any]]:
    """Read ``model.safetensors`` + ``model.json`` of a deploy folder without torch; returns weights and meta."""
    weights_path, meta_path = deploy_paths(folder)
    meta = read_deploy_meta(meta_path)
    check_deploy_meta(meta, meta_path)
    verify_weights_hash(weights_path, meta, meta_path)
    try:
        from safetensors import safe_open

        with safe_open(str(weights_path), framework="np") as f:  # tensor by tensor: no second copy of the file
            stored = set(f.keys())
            state = {name: f.get_tensor(name) for name in HEAD_TENSORS + TRANSITION_TENSORS if name in stored}
    except Exception as exc:
        raise CheckpointError(f"{weights_path} cannot be read ({type(exc).__name__}: {exc}); the file is "
                              "corrupted or was not written by ecm-edge") from None
    check_finite(state, weights_path)
    slope = float(meta.get("dims", {}).get("leaky_slope", LEAKY_SLOPE))
    weights = HeadWeights.from_state(state, slope, source=str(weights_path))
    classes = meta.get("class_names", [])
    if len(classes) != weights.num_classes:
        raise CheckpointError(f"{meta_path} lists {len(classes)} classes but {weights_path} scores "
                              f"{weights.num_classes}")
    return weights, meta


def _leaky(x: np.ndarray, slope: float) -> np.ndarray:
    return np.where(x >= 0, x, x * np.float32(slope))


def _windows(columns: np.ndarray) -> np.ndarray:
    """``[L, F]`` → ``[L − K + 1, K·F]``, K = KERNEL_SIZE: every K-column window flattened channel-major, tap-minor
    (like the [F, K] kernel of a temporal convolution)."""
    view = np.lib.stride_tricks.sliding_window_view(columns, KERNEL_SIZE, axis=0)  # [L − K + 1, F, K]
    return view.reshape(view.shape[0], -1)


def _zeros(columns: int, dim: int) -> np.ndarray:
    """``columns`` zero columns ``[columns, dim]``: a temporal convolution's zero padding."""
    return np.zeros((columns, dim), np.float32)


CONTEXT = KERNEL_SIZE - 1
"""Columns a layer keeps between calls: the left part of the next K-column window."""


class _ConvMatrices:
    """One matrix product per layer, ``windows [N, K·F] @ [H, K·F]ᵀ``, on views of the weights (no copies: a large
    head keeps its weights once)."""

    def __init__(self, w: HeadWeights):
        self.conv1 = w.conv1_weight.reshape(w.hidden_dim, -1).T
        self.conv2 = w.conv2_weight.reshape(w.hidden_dim, -1).T
        self.classifier = w.classifier_weight.T
        self.bias1, self.bias2, self.slope = w.conv1_bias, w.conv2_bias, w.leaky_slope

    def hidden(self, inputs: np.ndarray) -> np.ndarray:
        """conv1 + LeakyReLU over every valid K-window of input columns ``[L, D]`` → ``[L − K + 1, H]``."""
        return self.hidden_of_windows(_windows(inputs))

    def cas(self, hidden: np.ndarray) -> np.ndarray:
        """conv2 + LeakyReLU + classifier over every valid K-window of hidden columns → ``[L − K + 1, C]``."""
        return self.cas_of_windows(_windows(hidden))

    def hidden_of_windows(self, windows: np.ndarray) -> np.ndarray:
        """conv1 + LeakyReLU of flattened input windows ``[N, K·D]`` (from :func:`_windows`, of any number of
        streams stacked) → ``[N, H]``."""
        return _leaky(windows @ self.conv1 + self.bias1, self.slope)

    def cas_of_windows(self, windows: np.ndarray) -> np.ndarray:
        """conv2 + LeakyReLU + classifier of flattened hidden windows ``[N, K·H]`` → ``[N, C]``."""
        return _leaky(windows @ self.conv2 + self.bias2, self.slope) @ self.classifier


def full_cas(weights: HeadWeights, features: np.ndarray) -> np.ndarray:
    """The offline pass (zero padding at both ends): features ``[T, D]`` → CAS ``[T, C]``."""
    features = _check_features(features, weights.feature_dim)
    mats = _ConvMatrices(weights)
    pad_in, pad_hidden = _zeros(PADDING, weights.feature_dim), _zeros(PADDING, weights.hidden_dim)
    hidden = mats.hidden(np.concatenate([pad_in, features, pad_in]))
    return mats.cas(np.concatenate([pad_hidden, hidden, pad_hidden]))


def _check_features(features: np.ndarray, dim: int) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    if features.ndim == 1:
        features = features[None]
    if features.ndim != 2 or features.shape[1] != dim:
        raise DataError(f"features must be [N, {dim}] (snippets × feature dim of the model), got "
                        f"{list(features.shape)}; check that the extractor matches the artifacts")
    if not np.isfinite(features).all():
        raise DataError("features contain NaN or Inf; check the extractor or the feature file")
    return features


class ColumnHead:
    """Incremental ECM head in numpy: exactly one new column per layer per snippet."""

    def __init__(self, weights: HeadWeights):
        self.weights = weights
        self.feature_dim, self.num_classes = weights.feature_dim, weights.num_classes
        self._mats = _ConvMatrices(weights)
        self.reset()

    def reset(self) -> None:
        # PADDING zero columns each: conv1's padding before snippet 0, conv2's padding before hidden column 0
        self._inputs = _zeros(PADDING, self.feature_dim)
        self._hidden = _zeros(PADDING, self.weights.hidden_dim)
        self._received = 0
        self._last_cas = np.zeros((0, self.num_classes), np.float32)

    def push(self, features: np.ndarray) -> np.ndarray:
        features = _check_features(features, self.feature_dim)
        self._received += len(features)
        self._last_cas = self._advance(np.concatenate([self._inputs, features]), end=False)
        return self._last_cas

    def last_transition_weights(self) -> np.ndarray | None:
        return self.weights.transition(self._last_cas)

    def close(self) -> None:
        """Nothing to release: the weights are plain arrays."""

    def flush(self) -> np.ndarray:
        if self._received == 0:
            self._last_cas = np.zeros((0, self.num_classes), np.float32)
            return self._last_cas
        cas = self._advance(np.concatenate([self._inputs, _zeros(PADDING, self.feature_dim)]), end=True)
        self.reset()
        self._last_cas = cas
        return cas

    def _advance(self, inputs: np.ndarray, end: bool) -> np.ndarray:
        """Evaluate the windows that ``inputs`` (the kept columns + new ones) complete; keep the last K − 1 input
        and hidden columns, the context of the next window."""
        context = CONTEXT
        new_hidden = self._mats.hidden(inputs) if len(inputs) >= KERNEL_SIZE else inputs[:0, :0]
        self._inputs = inputs[-context:]
        parts = [self._hidden] + ([new_hidden] if len(new_hidden) else [])
        if end:
            parts.append(_zeros(PADDING, self.weights.hidden_dim))
        hidden = np.concatenate(parts)
        self._hidden = hidden[-context:]
        if len(hidden) < KERNEL_SIZE:
            return np.zeros((0, self.num_classes), np.float32)
        return self._mats.cas(hidden)


class BatchedColumnHead:
    """:class:`ColumnHead` for many streams at once: one matrix product per layer for all of them.

    A stream lives in a *slot*, an index into state arrays over slots that hold what :class:`ColumnHead` holds
    per stream: the last :data:`CONTEXT` input columns ``[S, CONTEXT, D]``, the last :data:`CONTEXT` hidden columns
    ``[S, CONTEXT, H]`` (right-aligned, with a count of the valid ones: a fresh stream holds only the one zero
    column of the left padding) and the snippets received. :meth:`push_many` stacks the windows that every
    slot's new columns complete, multiplies the stack with each layer's weights once (``_ConvMatrices``, the
    layer math :class:`ColumnHead` runs) and splits the result back per slot. One stream at a time, each column
    re-reads every layer's weights, so a large head is bound by memory bandwidth; stacked, the weights are read
    once per call for all streams.

    Each slot's columns equal :class:`ColumnHead`'s on the same snippets, the borders included, to float32
    rounding (the matrix library may sum a row in another order when the product has another number of rows).
    Slots are the caller's to allocate (``ecm_edge.runtime.engine.StreamEngine`` does); :meth:`reset` starts a
    stream in a slot and grows the arrays when the slot lies beyond them.
    """

    def __init__(self, weights: HeadWeights, capacity: int = 1):
        self.weights = weights
        self.feature_dim, self.num_classes = weights.feature_dim, weights.num_classes
        self._mats = _ConvMatrices(weights)
        self._inputs = np.zeros((0, CONTEXT, self.feature_dim), np.float32)
        self._hidden = np.zeros((0, CONTEXT, weights.hidden_dim), np.float32)
        self._input_count = np.zeros(0, np.int64)  # valid (right-aligned) columns of each slot's context
        self._hidden_count = np.zeros(0, np.int64)
        self._received = np.zeros(0, np.int64)
        self._grow(max(1, capacity))

    @property
    def capacity(self) -> int:
        """Slots the state arrays hold now (they grow on :meth:`reset`)."""
        return len(self._received)

    def received(self, slot: int) -> int:
        """Snippets the stream in ``slot`` has received since its last reset."""
        return int(self._received[self._checked(slot)])

    def reset(self, slot: int) -> None:
        """Start a new stream in ``slot``: the left zero padding only, nothing received."""
        if slot < 0:
            raise ValueError(f"slots are non-negative, got {slot}")
        if slot >= self.capacity:
            self._grow(max(slot + 1, 2 * self.capacity))
        self._inputs[slot] = 0.0
        self._hidden[slot] = 0.0
        self._input_count[slot] = self._hidden_count[slot] = PADDING
        self._received[slot] = 0

    def push_many(self, slots: Sequence[int], features: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Append ``features[i]`` (snippets ``[N_i, D]``, N_i ≥ 0) to the stream in ``slots[i]``; return each
        slot's CAS columns ``[M_i, C]`` that became final, in the order of ``slots``."""
        if len(slots) != len(features):
            raise ValueError(f"push_many got {len(slots)} slots but {len(features)} feature arrays")
        if len(set(slots)) != len(slots):
            raise ValueError(f"push_many got a slot more than once: {sorted(slots)}")
        columns = [_check_features(x, self.feature_dim) for x in features]
        for slot, x in zip(slots, columns, strict=True):
            self._received[self._checked(slot)] += len(x)
        return self._advance(list(slots), columns, end=False)

    def flush(self, slot: int) -> np.ndarray:
        """End the stream in ``slot``: its remaining CAS columns (zero padding at the end); the slot starts
        afresh."""
        return self.flush_many([slot])[0]

    def flush_many(self, slots: Sequence[int]) -> list[np.ndarray]:
        """:meth:`flush` for several slots with one product per layer; their columns in the order of ``slots``."""
        if len(set(slots)) != len(slots):
            raise ValueError(f"flush_many got a slot more than once: {sorted(slots)}")
        ended = [slot for slot in slots if self._received[self._checked(slot)] > 0]
        cas = dict(zip(ended, self._advance(ended, [_zeros(PADDING, self.feature_dim)] * len(ended), end=True),
                       strict=True))
        for slot in slots:
            self.reset(slot)
        return [cas.get(slot, np.zeros((0, self.num_classes), np.float32)) for slot in slots]

    def _advance(self, slots: list[int], new_inputs: list[np.ndarray], end: bool) -> list[np.ndarray]:
        """:meth:`ColumnHead._advance` for every slot at once: each layer's windows of all slots in one
        product; keep each slot's last :data:`CONTEXT` input and hidden columns."""
        inputs = [np.concatenate([self._context(self._inputs, self._input_count, s), x])
                  for s, x in zip(slots, new_inputs, strict=True)]
        new_hidden = self._layer(self._mats.hidden_of_windows, inputs, self.weights.hidden_dim)
        for slot, columns in zip(slots, inputs, strict=True):
            self._keep(self._inputs, self._input_count, slot, columns)
        end_pad = [_zeros(PADDING, self.weights.hidden_dim)] if end else []
        hidden = [np.concatenate([self._context(self._hidden, self._hidden_count, s), h, *end_pad])
                  for s, h in zip(slots, new_hidden, strict=True)]
        cas = self._layer(self._mats.cas_of_windows, hidden, self.num_classes)
        for slot, columns in zip(slots, hidden, strict=True):
            self._keep(self._hidden, self._hidden_count, slot, columns)
        return cas

    @staticmethod
    def _layer(layer: Callable[[np.ndarray], np.ndarray], columns: list[np.ndarray], out_dim: int
               ) -> list[np.ndarray]:
        """``layer`` on the valid K-windows of every slot's columns, stacked into one product, split back."""
        windows = [_windows(c) if len(c) >= KERNEL_SIZE else np.zeros((0, KERNEL_SIZE * c.shape[1]), np.float32)
                   for c in columns]
        counts = [len(w) for w in windows]
        if sum(counts) == 0:
            return [np.zeros((0, out_dim), np.float32) for _ in columns]
        return np.split(layer(np.concatenate(windows)), np.cumsum(counts)[:-1])

    @staticmethod
    def _context(state: np.ndarray, count: np.ndarray, slot: int) -> np.ndarray:
        """The valid context columns of ``slot``: the last ``count[slot]`` rows of its state."""
        return state[slot, CONTEXT - count[slot]:]

    @staticmethod
    def _keep(state: np.ndarray, count: np.ndarray, slot: int, columns: np.ndarray) -> None:
        """Store the last (up to) :data:`CONTEXT` of ``columns`` as the slot's context, right-aligned."""
        kept = min(len(columns), CONTEXT)
        state[slot, CONTEXT - kept:] = columns[len(columns) - kept:]
        count[slot] = kept

    def _checked(self, slot: int) -> int:
        if not 0 <= slot < self.capacity:
            raise ValueError(f"slot {slot} was never reset (capacity {self.capacity}); reset(slot) starts a stream")
        return slot

    def _grow(self, capacity: int) -> None:
        """Enlarge the state arrays to ``capacity`` slots, keeping the existing slots' state."""
        extra = capacity - self.capacity
        self._inputs = np.concatenate([self._inputs, np.zeros((extra, *self._inputs.shape[1:]), np.float32)])
        self._hidden = np.concatenate([self._hidden, np.zeros((extra, *self._hidden.shape[1:]), np.float32)])
        self._input_count = np.concatenate([self._input_count, np.full(extra, PADDING, np.int64)])
        self._hidden_count = np.concatenate([self._hidden_count, np.full(extra, PADDING, np.int64)])
        self._received = np.concatenate([self._received, np.zeros(extra, np.int64)])


class WindowRunner(Protocol):
    """An engine session exposing the two exported graphs (features ``[1, T, D]`` → CAS ``[1, T', C]``).

    ``last_weights``: the transition weights of the columns the last call returned (None when not available)."""

    last_weights: np.ndarray | None

    def stream_cas(self, window: np.ndarray) -> np.ndarray:
        """Valid-padding graph: ``[W, D]`` → CAS of the ``W − 2·RECEPTIVE_RADIUS`` centre columns."""
        ...

    def full_cas(self, features: np.ndarray) -> np.ndarray:
        """Offline graph with zero padding: ``[T, D]`` → ``[T, C]``."""
        ...


class WindowHead:
    """Incremental head through an exported graph: one STREAM_WINDOW-column valid window per new snippet."""

    def __init__(self, runner: WindowRunner, feature_dim: int, num_classes: int):
        self.runner = runner
        self.feature_dim, self.num_classes = feature_dim, num_classes
        self.reset()

    def reset(self) -> None:
        self._tail = _zeros(0, self.feature_dim)  # the last ≤ STREAM_WINDOW snippets
        self._received = 0
        self._weights: list[np.ndarray | None] = []

    def push(self, features: np.ndarray) -> np.ndarray:
        features = _check_features(features, self.feature_dim)
        out: list[np.ndarray] = []
        self._weights = []
        for column in features:
            self._tail = np.concatenate([self._tail, column[None]])[-STREAM_WINDOW:]
            self._received += 1
            if self._received == STREAM_WINDOW - 1:  # snippets 0..3 give the two padded first columns
                out.append(self._keep(self.runner.full_cas(self._tail), slice(None, RECEPTIVE_RADIUS)))
            elif self._received >= STREAM_WINDOW:
                out.append(self._keep(self.runner.stream_cas(self._tail), slice(None)))
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

    def _keep(self, cas: np.ndarray, rows: slice) -> np.ndarray:
        """``cas[rows]``, remembering the runner's transition weights of the same rows."""
        weights = getattr(self.runner, "last_weights", None)
        self._weights.append(None if weights is None else weights[rows])
        return cas[rows]

    def last_transition_weights(self) -> np.ndarray | None:
        if any(w is None for w in self._weights):
            return None
        if not self._weights:
            return np.zeros((0, self.num_classes), np.float32)
        return np.concatenate(self._weights)

    def close(self) -> None:
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()

    def flush(self) -> np.ndarray:
        received, tail = self._received, self._tail
        self.reset()
        if received == 0:
            return np.zeros((0, self.num_classes), np.float32)
        if received < STREAM_WINDOW - 1:  # nothing emitted yet: the full graph over the whole (short) stream
            return self._keep(self.runner.full_cas(tail), slice(None))
        return self._keep(self.runner.full_cas(tail[-(STREAM_WINDOW - 1):]), slice(-RECEPTIVE_RADIUS, None))


class FullPassRunner:
    """A :class:`WindowRunner` from any offline pass with zero padding (numpy, torch).

    The ``W − 4`` centre columns of a zero-padded pass over a window never see the padding, so they equal the
    valid-padding streaming graph's output. ``full_pass`` returns the CAS ``[T, C]``, or (CAS, transition
    weights) both ``[T, C]``.
    """

    def __init__(self, full_pass: Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, np.ndarray]]):
        self._full = full_pass
        self.last_weights: np.ndarray | None = None

    def full_cas(self, features: np.ndarray) -> np.ndarray:
        result = self._full(features)
        cas, weights = result if isinstance(result, tuple) else (result, None)
        self.last_weights = None if weights is None else np.asarray(weights, np.float32)
        return np.asarray(cas, np.float32)

    def stream_cas(self, window: np.ndarray) -> np.ndarray:
        cas = self.full_cas(window)[RECEPTIVE_RADIUS:-RECEPTIVE_RADIUS]
        if self.last_weights is not None:
            self.last_weights = self.last_weights[RECEPTIVE_RADIUS:-RECEPTIVE_RADIUS]
        return cas


class EngineRunner:
    """A :class:`WindowRunner` over the two exported graphs, each loaded by an inference engine
    (``ecm_edge.runtime.engines``: ``infer({"features": [1, T, D]}) -> {"cas": [1, T', C], ...}``); graphs
    exported before the ``weights`` output existed leave :attr:`last_weights` None."""

    def __init__(self, offline: Any, streaming: Any):
        self.offline, self.streaming = offline, streaming
        self.last_weights: np.ndarray | None = None

    def full_cas(self, features: np.ndarray) -> np.ndarray:
        return self._run(self.offline, features)

    def stream_cas(self, window: np.ndarray) -> np.ndarray:
        return self._run(self.streaming, window)

    def _run(self, engine: Any, features: np.ndarray) -> np.ndarray:
        outputs = engine.infer(features[None])
        weights = outputs.get("weights")
        self.last_weights = None if weights is None else np.asarray(weights[0], np.float32)
        return np.asarray(outputs["cas"][0], np.float32)

    def close(self) -> None:
        self.offline.close()
        self.streaming.close()
