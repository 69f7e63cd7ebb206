"""The ECM head run incrementally, for many streams at once: each new snippet costs one column of work.

The CAS of snippet t depends on snippets t−2 … t+2 only (two k=3 convolutions with zero padding, then a 1×1
classifier), so it is final once snippet t+2 has arrived. The layer shapes, the slope and that radius are
:mod:`ecm_edge.architecture`'s (``KERNEL_SIZE``, ``PADDING``, ``LEAKY_SLOPE``, ``RECEPTIVE_RADIUS``,
``STREAM_WINDOW``); the numbers in this text are their current values. A stream lives in a *slot* of a head
(:class:`SlotHead`: ``push_many(slots, features) -> cas per slot``, ``flush_many(slots)``); the streaming engine
(``ecm_edge.runtime.engine``) allocates the slots. Two heads keep that contract:

- :class:`BatchedColumnHead` (deploy folders, torch-free): the per-layer weights are read from
  ``model.safetensors`` with ``safetensors.numpy`` and each layer evaluates exactly one new column per snippet
  (conv1: one 3-tap window → one hidden column; conv2: one window of hidden columns → one column; classifier).
  Per slot it keeps the last two input columns and the last two hidden columns. The offline graph zero-pads the
  *input* of conv1 and the *hidden* input of conv2, so a stream starts with one zero input column and one zero
  hidden column, and a flush appends one zero column to each at the end: the streamed CAS equals the full
  offline pass column for column, the first two and the last two included. The new columns of all slots are
  stacked into one matrix product per layer: one stream at a time, each column re-reads every layer's weights
  (memory-bound); stacked, the weights are read once per call for all streams.
- :class:`BatchedWindowHead` (exported graphs on ONNX Runtime / TensorRT): the exported streaming graph maps
  valid-padding windows ``features [B, W, D]`` to the CAS of their ``W − 4`` centre columns; every slot's new
  5-snippet windows go into one call (about twice the work of a column, still independent of the history). The
  padded borders — the first two and the last two columns — come from the full graph on the first / last four
  snippets, which sees exactly the zero padding of the offline pass.

:class:`ColumnHead` and :class:`WindowHead` are those heads with one slot (:class:`StreamingHead`, the one-stream
contract the benchmarks and the torch plugin use). :func:`full_cas` is the offline pass in numpy (the oracle of
the tests and the "recompute everything" baseline of the benchmark).

Both heads also give the transition weights ``W = sigmoid(conv1x1(CAS))`` of the columns their last call
returned (``last_transition_weights``), for the ``weights`` and ``fused`` score sources: from the
``transition.*`` tensors of the deploy weights, or from the graphs' ``weights`` output. Artifacts that predate
that output give None there.
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



class SlotHead(Protocol):
    """What the stream engine needs from a head: many streams, each in a slot (an index the engine allocates).

    :class:`BatchedColumnHead` (numpy, deploy weights) and :class:`BatchedWindowHead` (exported graphs) keep
    it; one slot is the one-stream case."""

    feature_dim: int
    num_classes: int

    def reset(self, slot: int) -> None:
        """Start a new stream in ``slot``."""
        ...

    def push_many(self, slots: Sequence[int], features: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Append snippets ``[N_i, D]`` to each slot's stream; each slot's CAS columns that became final."""
        ...

    def flush_many(self, slots: Sequence[int]) -> list[np.ndarray]:
        """End each slot's stream: its remaining columns (zero padding at the end); the slots start afresh."""
        ...

    def last_transition_weights(self) -> list[np.ndarray | None]:
        """Per slot of the last call, the transition weights of its columns (None without them)."""
        ...

    def close(self) -> None:
        """Release what the head holds (engine sessions)."""
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
    """One stream's numpy head (:class:`StreamingHead`): a :class:`BatchedColumnHead` with one slot."""

    def __init__(self, weights: HeadWeights):
        self.weights = weights
        self.feature_dim, self.num_classes = weights.feature_dim, weights.num_classes
        self._batched = BatchedColumnHead(weights)
        self.reset()

    def reset(self) -> None:
        self._batched.reset(0)

    def push(self, features: np.ndarray) -> np.ndarray:
        return self._batched.push_many([0], [features])[0]

    def flush(self) -> np.ndarray:
        return self._batched.flush_many([0])[0]

    def last_transition_weights(self) -> np.ndarray | None:
        return self._batched.last_transition_weights()[0]

    def close(self) -> None:
        """Nothing to release: the weights are plain arrays."""


class BatchedColumnHead:
    """The numpy head for many streams: one matrix product per layer for all of their new columns.

    State arrays over slots hold, per stream, the last :data:`CONTEXT` input columns ``[S, CONTEXT, D]``, the last
    :data:`CONTEXT` hidden columns ``[S, CONTEXT, H]`` (right-aligned, with a count of the valid ones: a fresh
    stream holds only the one zero column of the left padding) and the snippets received. :meth:`push_many`
    stacks the windows that every slot's new columns complete, multiplies the stack with each layer's weights
    once (``_ConvMatrices``) and splits the result back per slot.

    Each slot's columns equal the offline pass on its snippets, the borders included, to float32 rounding (the
    matrix library may sum a row in another order when the product has another number of rows). :meth:`reset`
    starts a stream in a slot and grows the arrays when the slot lies beyond them.
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
        self._last_cas: list[np.ndarray] = []
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
        self._last_cas = self._advance(list(slots), columns, end=False)
        return self._last_cas

    def last_transition_weights(self) -> list[np.ndarray | None]:
        """Per slot of the last :meth:`push_many` / :meth:`flush_many`, the transition weights of its columns
        (None when the deploy weights have no transition tensors)."""
        return [self.weights.transition(cas) for cas in self._last_cas]

    def close(self) -> None:
        """Nothing to release (numpy arrays only); here for the engine's head contract."""

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
        self._last_cas = [cas.get(slot, np.zeros((0, self.num_classes), np.float32)) for slot in slots]
        return self._last_cas

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

    def run_batch(self, graph: str, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One call of the ``offline`` or ``streaming`` graph on a batch ``[B, T, D]``: (CAS ``[B, T', C]``,
        transition weights of the same shape or None)."""
        ...


class WindowHead:
    """One stream through an exported graph (:class:`StreamingHead`): a :class:`BatchedWindowHead` with one
    slot."""

    def __init__(self, runner: WindowRunner, feature_dim: int, num_classes: int):
        self.runner = runner
        self.feature_dim, self.num_classes = feature_dim, num_classes
        self._batched = BatchedWindowHead(runner, feature_dim, num_classes)
        self.reset()

    def reset(self) -> None:
        self._batched.reset(0)

    def push(self, features: np.ndarray) -> np.ndarray:
        return self._batched.push_many([0], [features])[0]

    def flush(self) -> np.ndarray:
        return self._batched.flush_many([0])[0]

    def last_transition_weights(self) -> np.ndarray | None:
        return self._batched.last_transition_weights()[0]

    def close(self) -> None:
        self._batched.close()


class BatchedWindowHead:
    """:class:`WindowHead` for many streams: the windows of every slot's new snippets in one call of the
    streaming graph (its batch axis is dynamic), the padded borders in one call of the offline graph.

    Per slot it keeps what :class:`WindowHead` keeps (the last :data:`STREAM_WINDOW` snippets and a count);
    each slot's columns equal :class:`WindowHead`'s on the same snippets, to the engine's rounding at another
    batch size. The transition weights of the last call's columns come per slot from
    :meth:`last_transition_weights` (None when the graphs have no ``weights`` output).
    """

    def __init__(self, runner: WindowRunner, feature_dim: int, num_classes: int):
        self.runner = runner
        self.feature_dim, self.num_classes = feature_dim, num_classes
        self._tails: dict[int, np.ndarray] = {}
        self._received: dict[int, int] = {}
        self._last_weights: list[np.ndarray | None] = []

    def reset(self, slot: int) -> None:
        """Start a new stream in ``slot``."""
        if slot < 0:
            raise ValueError(f"slots are non-negative, got {slot}")
        self._tails[slot] = _zeros(0, self.feature_dim)
        self._received[slot] = 0

    def received(self, slot: int) -> int:
        return self._received[self._checked(slot)]

    def push_many(self, slots: Sequence[int], features: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Append ``features[i]`` (``[N_i, D]``) to the stream in ``slots[i]``; each slot's final CAS columns."""
        if len(slots) != len(features) or len(set(slots)) != len(slots):
            raise ValueError(f"push_many needs distinct slots, one feature array each; got slots {list(slots)} "
                             f"and {len(features)} arrays")
        windows: list[tuple[int, np.ndarray]] = []  # (position in slots, 5-snippet window) → one centre column
        borders: list[tuple[int, np.ndarray]] = []  # (position, first 4 snippets) → the two padded first columns
        order: list[list[tuple[str, int]]] = [[] for _ in slots]  # per slot, its columns' sources in order
        for i, (slot, x) in enumerate(zip(slots, features, strict=True)):
            tail, received = self._tails[self._checked(slot)], self._received[slot]
            for column in _check_features(x, self.feature_dim):
                tail = np.concatenate([tail, column[None]])[-STREAM_WINDOW:]
                received += 1
                if received == STREAM_WINDOW - 1:
                    order[i].append(("border", len(borders)))
                    borders.append((i, tail))
                elif received >= STREAM_WINDOW:
                    order[i].append(("window", len(windows)))
                    windows.append((i, tail))
            self._tails[slot], self._received[slot] = tail, received
        results = {"window": self._run("streaming", [w for _, w in windows], slice(None)),
                   "border": self._run("offline", [b for _, b in borders], slice(None, RECEPTIVE_RADIUS))}
        return self._assemble(order, results)

    def flush_many(self, slots: Sequence[int]) -> list[np.ndarray]:
        """End the streams in ``slots``: their last columns (the offline graph on each one's last snippets)."""
        order: list[list[tuple[str, int]]] = [[] for _ in slots]
        short: list[np.ndarray] = []  # streams shorter than the first border: their whole (short) pass
        tails: list[np.ndarray] = []
        for i, slot in enumerate(slots):
            tail, received = self._tails[self._checked(slot)], self._received[slot]
            self.reset(slot)
            if received == 0:
                continue
            if received < STREAM_WINDOW - 1:
                order[i].append(("short", len(short)))
                short.append(tail)
            else:
                order[i].append(("end", len(tails)))
                tails.append(tail[-(STREAM_WINDOW - 1):])
        results = {"end": self._run("offline", tails, slice(-RECEPTIVE_RADIUS, None)),
                   "short": [self._run("offline", [t], slice(None))[0] for t in short]}
        return self._assemble(order, results)

    def last_transition_weights(self) -> list[np.ndarray | None]:
        """Per slot of the last call, the transition weights of its columns (None without that output)."""
        return list(self._last_weights)

    def close(self) -> None:
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()

    def _run(self, graph: str, inputs: list[np.ndarray], rows: slice
             ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """The graph on the stacked inputs (all of one length); each item's ``rows`` of CAS and weights."""
        if not inputs:
            return []
        cas, weights = self.runner.run_batch(graph, np.stack(inputs))
        return [(cas[b, rows], None if weights is None else weights[b, rows]) for b in range(len(inputs))]

    def _assemble(self, order: list[list[tuple[str, int]]],
                  results: dict[str, list[tuple[np.ndarray, np.ndarray | None]]]) -> list[np.ndarray]:
        """Each slot's columns in order, and their transition weights for :meth:`last_transition_weights`."""
        cas_out, weights_out = [], []
        for parts in order:
            pieces = [results[kind][index] for kind, index in parts]
            cas_out.append(np.concatenate([p[0] for p in pieces]) if pieces
                           else np.zeros((0, self.num_classes), np.float32))
            if any(p[1] is None for p in pieces):
                weights_out.append(None)
            else:
                weights_out.append(np.concatenate([p[1] for p in pieces]) if pieces
                                   else np.zeros((0, self.num_classes), np.float32))
        self._last_weights = weights_out
        return cas_out

    def _checked(self, slot: int) -> int:
        if slot not in self._tails:
            raise ValueError(f"slot {slot} was never reset; reset(slot) starts a stream")
        return slot


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

    def run_batch(self, graph: str, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One pass per batch item (an offline pass takes one sequence)."""
        step = self.stream_cas if graph == "streaming" else self.full_cas
        cas, weights = [], []
        for item in features:
            cas.append(step(item))
            weights.append(self.last_weights)
        return np.stack(cas), None if any(w is None for w in weights) else np.stack(weights)


def batch_limit(engine: Any) -> int | None:
    """The largest batch an engine's artifact takes: a TensorRT engine's optimization profile records it in
    its manifest; ONNX graphs take any batch (None)."""
    profile = getattr(getattr(engine, "manifest", None), "source", {}).get("profile") or {}
    limits = [int(shape["max"][0]) for shape in profile.values()]
    return min(limits) if limits else None


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

    def run_batch(self, graph: str, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The graph's batch axis is dynamic: one engine call for the whole batch, or one per
        :func:`batch_limit` items where the engine's optimization profile caps it."""
        engine = self.streaming if graph == "streaming" else self.offline
        limit = batch_limit(engine) or len(features)
        cas, weights = [], []
        for first in range(0, len(features), limit):
            outputs = engine.infer(features[first:first + limit])
            cas.append(np.asarray(outputs["cas"], np.float32))
            weights.append(None if outputs.get("weights") is None else np.asarray(outputs["weights"], np.float32))
        return np.concatenate(cas), None if any(w is None for w in weights) else np.concatenate(weights)

    def run_streaming_graph_in(self, engine: Any) -> None:
        """From now on the streaming graph runs in ``engine`` (same ``infer`` contract); the one it replaces
        closes. The offline graph stays."""
        self.streaming.close()
        self.streaming = engine

    def _run(self, engine: Any, features: np.ndarray) -> np.ndarray:
        outputs = engine.infer(features[None])
        weights = outputs.get("weights")
        self.last_weights = None if weights is None else np.asarray(weights[0], np.float32)
        return np.asarray(outputs["cas"][0], np.float32)

    def close(self) -> None:
        self.offline.close()
        self.streaming.close()
