"""The state of the slot-array causal post-processing (docs/design.md §7), shared by its CPU and CUDA kernels.

Many streams run at once, each in a *slot*: every array below has the slot as its first axis, so one kernel call
advances the streams it is given and leaves the others alone. What one stream's
``ecm_edge.runtime.online.OnlinePostProcessor`` keeps in Python objects is kept here in fixed-size tables:

- scorer: the last ``horizon`` CAS columns ``ring [S, H, C]`` (and, for the ``weights`` / ``fused`` score sources,
  the transition weights and the fused columns), each also as a per-class sorted window ``[S, C, H]`` that gives
  the top-k values and the running min / max without a scan;
- warm-up: the held columns ``[S, W, C]`` with their times;
- tracker: the normalized columns ``values [S, H, C]``; per class and activation threshold the open candidate
  ``[S, C, J]``; per class the pending candidates ``[S, C, P]`` (closed, waiting for their outer window) and the
  emitted segments that can still suppress a new one ``[S, C, E]``.

Capacities P and E are fixed per processor (:func:`pending_capacity`, :func:`segment_capacity`). The kernels write
emitted events as two record arrays (integers and floats, :data:`RECORD_INT_FIELDS`, :data:`RECORD_FLOAT_FIELDS`)
whose key columns order them exactly as one ``OnlinePostProcessor`` per stream would (:func:`event_order`).
Imports neither numba nor the runtime.
"""

from __future__ import annotations

import math
from collections import namedtuple
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ecm_edge.errors import ConfigError, DataError

SOURCES = ("cas", "weights", "fused")  # post.score_source, by the code the kernels receive (its index)
SOURCE_WEIGHTS = SOURCES.index("weights")
SOURCE_FUSED = SOURCES.index("fused")
# Kept segments are dropped once they end this many seconds before every live candidate of the stream starts (the
# reference's margin: the `ecm` IoU convention's +1 makes segments up to one second apart overlap).
FORGET_MARGIN_S = 1.0

KIND_OPEN = 0  # record kinds; within one column the segment_open alerts come before the segments
KIND_SEGMENT = 1
RECORD_INT_FIELDS = ("slot", "kind", "cls", "threshold", "step", "closed")
RECORD_FLOAT_FIELDS = ("key", "start", "end", "score", "now")
(R_SLOT, R_KIND, R_CLASS, R_THRESHOLD, R_STEP, R_CLOSED) = range(len(RECORD_INT_FIELDS))
(R_KEY, R_START, R_END, R_SCORE, R_NOW) = range(len(RECORD_FLOAT_FIELDS))

OVERFLOW_PENDING = 0  # columns of the per-slot overflow counters
OVERFLOW_SEGMENTS = 1

# No run of a stream is longer than this many columns (years at the head's rate of a few columns per second);
# it bounds how many pending candidates the outer-window rule can keep at once (pending_capacity).
MAX_RUN_COLUMNS = 2**31
# A candidate closed at column c with last column c − 1 and length L is ready at int(c − 1 + λ·L) − 1; it is still
# pending after column t only if λ·L ≥ (t − c) + READY_MARGIN.
READY_MARGIN = 3


@dataclass(frozen=True)
class CausalParams:
    """The numbers the kernels read: ``ecm_edge.runtime.online.OnlineParams`` in plain fields (the runtime builds
    them), plus the table capacities. ``thresholds`` are float32, as the reference tracker compares them."""

    num_classes: int
    horizon: int
    warmup: int
    topk_ratio: float
    thresholds: np.ndarray
    oic_lambda: float
    gamma: float
    class_threshold: float
    nms_iou: float
    iou_offset: float
    emit_open: bool
    source: int  # index into SOURCES
    pending_capacity: int
    segment_capacity: int

    @property
    def num_thresholds(self) -> int:
        return int(self.thresholds.size)

    @property
    def uses_weights(self) -> bool:
        return self.source != 0

    @property
    def fused(self) -> bool:
        return self.source == SOURCES.index("fused")


def pending_per_threshold(oic_lambda: float, warmup: int) -> int:
    """How many candidates of one (class, threshold) can be pending at once, at most.

    During the warm-up nothing is emitted, and runs of one threshold close at least two columns apart: at most
    ``ceil(W / 2)``. Afterwards a candidate stays pending only while its right outer window arrives: the k-th
    most recently closed one, closed d_k columns ago, must be at least ``(d_k + 3) / λ`` long, and being disjoint
    the runs push d_k up geometrically (by a factor 1 + 1/λ), so runs no longer than :data:`MAX_RUN_COLUMNS`
    leave a few dozen at most. Plus one closed in the current column and one closed by a flush.
    """
    after_warmup, distance = 0, 0.0
    while oic_lambda > 0:
        length = (distance + READY_MARGIN) / oic_lambda
        if length > MAX_RUN_COLUMNS:
            break
        after_warmup += 1
        distance += length + 1
    return max(math.ceil(warmup / 2), after_warmup) + 2


def pending_capacity(num_thresholds: int, oic_lambda: float, warmup: int) -> int:
    """Pending candidates per (slot, class): :func:`pending_per_threshold` for every threshold. A bound, not a
    guess: this table never overflows."""
    return num_thresholds * pending_per_threshold(oic_lambda, warmup)


def segment_capacity(num_thresholds: int, oic_lambda: float, horizon: int) -> int:
    """Emitted segments kept per (slot, class) for NMS.

    The reference keeps a segment until it ends before every live candidate of its stream starts (less one
    second), so how many stay depends on how long candidates live: without bound for a class that never
    falls below a threshold. A candidate no longer than the horizon lives at most ``(1 + λ) · H`` columns (its
    run, then its outer window), and one threshold emits at most one segment per two columns (a run and the
    column that ends it); plus one per threshold for a column's own emissions. A stream that keeps more
    overflows the table: the oldest segment is dropped and counted (``SlotPostProcessor`` reports it).
    """
    return math.ceil((1 + oic_lambda) * horizon / 2) + num_thresholds


def state_shapes(params: CausalParams, slots: int) -> dict[str, tuple[tuple[int, ...], type]]:
    """Every state array by name: shape (slot axis first) and dtype. Arrays a score source does not use get a
    length-1 horizon axis."""
    s, h, c, j = slots, params.horizon, params.num_classes, params.num_thresholds
    hw = h if params.uses_weights else 1
    hf = h if params.fused else 1
    w = max(1, params.warmup)
    p, e = params.pending_capacity, params.segment_capacity
    f4, f8, i8 = np.float32, np.float64, np.int64
    return {
        # per slot: columns of the stream, the scorer's count, the tracker's last index, the last column's end
        "columns": ((s,), i8), "seen": ((s,), i8), "tracker_index": ((s,), i8), "last_end": ((s,), f8),
        "has_scores": ((s,), i8), "held_wide": ((s, 2), i8), "overflow": ((s, 2), i8),
        "last_scores": ((s, c), f8),
        "ring": ((s, h, c), f4), "ring_w": ((s, hw, c), f4), "ring_f": ((s, hf, c), f4),
        "sorted": ((s, c, h), f4), "sorted_w": ((s, c, hw), f4), "sorted_f": ((s, c, hf), f4),
        "values": ((s, h, c), f4),
        "held": ((s, w, c), f8), "held_w": ((s, w, c), f8), "held_times": ((s, w, 3), f8),
        "open_first": ((s, c, j), i8), "open_sum": ((s, c, j), f8), "open_start": ((s, c, j), f8),
        "pend_count": ((s, c), i8), "pend_first": ((s, c, p), i8), "pend_last": ((s, c, p), i8),
        "pend_ready": ((s, c, p), i8), "pend_closed": ((s, c, p), i8), "pend_threshold": ((s, c, p), i8),
        "pend_sum": ((s, c, p), f8), "pend_start": ((s, c, p), f8), "pend_end": ((s, c, p), f8),
        "emit_count": ((s, c), i8), "emit_start": ((s, c, e), f8), "emit_end": ((s, c, e), f8),
        # per (slot, class) scratch of one emission: the ready candidates' scores, ranking keys and order
        "scratch_score": ((s, c, p), f8), "scratch_key": ((s, c, p), f8), "scratch_order": ((s, c, p), i8),
        "scratch_min": ((s, c), f8), "scratch_means": ((s, c), f8),
    }


STATE_FIELDS: tuple[str, ...] = tuple(state_shapes(
    CausalParams(1, 1, 0, 1.0, np.zeros(1, np.float32), 0.0, 0.0, 0.0, 0.0, 0.0, False, 0, 1, 1), 1))
State = namedtuple("State", STATE_FIELDS)  # the state arrays by name, as the kernels take them (host or device)
KernelParams = namedtuple("KernelParams", ["horizon", "warmup", "topk_ratio", "thresholds", "oic_lambda", "gamma",
                                           "class_threshold", "nms_iou", "iou_offset", "emit_open", "source"])


def kernel_params(params: CausalParams, thresholds: object = None) -> KernelParams:
    """The scalars and thresholds the kernels read, as one tuple (``thresholds``: a device copy, for CUDA)."""
    if thresholds is None:
        thresholds = np.ascontiguousarray(params.thresholds, np.float32)
    return KernelParams(params.horizon, params.warmup, params.topk_ratio, thresholds, params.oic_lambda,
                        params.gamma, params.class_threshold, params.nms_iou, params.iou_offset,
                        params.emit_open, params.source)


CLEARED_ON_RESET: dict[str, float] = {  # what a slot's reset sets (everything else is written before it is read)
    "columns": 0, "seen": 0, "tracker_index": -1, "last_end": 0.0, "has_scores": 0, "held_wide": 0,
    "open_first": -1, "pend_count": 0, "emit_count": 0,
}


def record_capacity(params: CausalParams, updates: np.ndarray, pending: np.ndarray) -> np.ndarray:
    """Records one call can write per slot, at most: a ``segment_open`` per class per tracker update, and a
    segment per pending candidate, per candidate closed in an update (one per threshold) and per candidate
    closed by a flush. ``updates``: tracker updates per slot in the call; ``pending``: pending candidates per
    slot before it."""
    c, j = params.num_classes, params.num_thresholds
    return updates * c * (1 + j) + pending + c * j


def event_order(ints: np.ndarray, floats: np.ndarray) -> np.ndarray:
    """Indices that put records in the reference's event order: by slot, then column step; within a column the
    ``segment_open`` alerts by class, then the segments by ranking key descending, ties in the order the
    candidates closed (column, class, threshold)."""
    return np.lexsort((ints[:, R_THRESHOLD], ints[:, R_CLASS], ints[:, R_CLOSED], -floats[:, R_KEY],
                       ints[:, R_KIND], ints[:, R_STEP], ints[:, R_SLOT]))


def check_params(params: CausalParams) -> None:
    """Capacities that can hold at least one entry (a hand-made CausalParams may have less)."""
    if params.pending_capacity < 1 or params.segment_capacity < 1:
        raise ConfigError(f"pending and segment capacities must be at least 1, got {params.pending_capacity} "
                          f"and {params.segment_capacity}")


def host_columns(array: object) -> np.ndarray:
    """Columns in host memory, float32 or float64 as given (others as float64: numpy would compute in it)."""
    if not isinstance(array, np.ndarray) and hasattr(array, "__cuda_array_interface__"):
        from ecm_edge.kernels.cuda import copy_to_host

        array = copy_to_host(array)
    array = np.asarray(array)
    return array if array.dtype in (np.float32, np.float64) else array.astype(np.float64)


def no_records() -> tuple[np.ndarray, np.ndarray]:
    """Records (ints, floats) of a call that emitted nothing."""
    return np.zeros((0, len(RECORD_INT_FIELDS)), np.int64), np.zeros((0, len(RECORD_FLOAT_FIELDS)), np.float64)


def concatenate_records(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The records of several kernel calls (ints, floats), back to back."""
    if not parts:
        return no_records()
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def check_finite(columns: list[np.ndarray], slots: np.ndarray, what: str) -> None:
    for slot, column in zip(slots.tolist(), columns, strict=True):
        if not np.all(np.isfinite(column)):
            raise DataError(f"stream slot {slot}: the {what} columns hold NaN or Inf; the network output must be "
                            "finite (check the features and model)")



def dtype_groups(cas: list[np.ndarray], weights: list[np.ndarray] | None) -> list[np.ndarray]:
    """Entries grouped by (CAS dtype, weights dtype): the kernels are compiled per input dtype."""
    keys = [(c.dtype.str, "" if weights is None else weights[i].dtype.str) for i, c in enumerate(cas)]
    return [np.array([i for i, k in enumerate(keys) if k == key], np.int64) for key in dict.fromkeys(keys)]


class HostPart(NamedTuple):
    """The entries of one push whose columns share their dtypes, back to back: what one kernel call takes."""

    group: np.ndarray  # the entries' indices in the push's slots
    cas: np.ndarray  # [ΣM, C], float32 or float64
    weights: np.ndarray | None  # likewise, or None for the ``cas`` source
    times: np.ndarray  # [ΣM, 3]: start, end, now


def host_parts(slots: np.ndarray, counts: np.ndarray, cas: list, weights: list | None,
               times: np.ndarray) -> Iterator[HostPart]:
    """A push's per-slot columns (host or device memory) in host memory, all checked to be finite before the
    first part is given, then grouped by (CAS dtype, weights dtype): the kernels are compiled per input dtype.
    ``times`` holds the entries' rows back to back, ``counts[n]`` of them for entry n."""
    host = [host_columns(c) for c in cas]
    host_w = None if weights is None else [host_columns(w) for w in weights]
    check_finite(host, slots, "CAS")
    if host_w is not None:
        check_finite(host_w, slots, "transition-weight")
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    for group in dtype_groups(host, host_w):
        yield HostPart(group, np.concatenate([host[i] for i in group]),
                       None if host_w is None else np.concatenate([host_w[i] for i in group]),
                       np.concatenate([times[offsets[i]:offsets[i + 1]] for i in group]))


__all__ = [
    "CLEARED_ON_RESET",
    "FORGET_MARGIN_S",
    "KIND_OPEN",
    "KIND_SEGMENT",
    "RECORD_FLOAT_FIELDS",
    "RECORD_INT_FIELDS",
    "SOURCES",
    "SOURCE_FUSED",
    "SOURCE_WEIGHTS",
    "STATE_FIELDS",
    "CausalParams",
    "HostPart",
    "KernelParams",
    "State",
    "check_finite",
    "check_params",
    "concatenate_records",
    "event_order",
    "host_columns",
    "host_parts",
    "kernel_params",
    "no_records",
    "pending_capacity",
    "record_capacity",
    "segment_capacity",
    "state_shapes",
]
