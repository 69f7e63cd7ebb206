"""The causal post-processing of many streams at once: one interface, three kernels (docs/design.md §7).

A :class:`SlotPostProcessor` holds N streams by *slot* (a small integer the caller assigns and reuses) and turns
each slot's CAS columns into the events its own :class:`~ecm_edge.runtime.online.OnlinePostProcessor` would
return for the same inputs: the same events in the same order (``emitted_at`` aside). ``stream.kernels`` picks
who computes them:

- ``numpy``: one ``OnlinePostProcessor`` per slot, the reference itself (the oracle of the others);
- ``cpu``: numba kernels over slot arrays (``ecm_edge.kernels.causal_cpu``), slots in parallel;
- ``cuda``: numba CUDA kernels (``ecm_edge.kernels.causal_cuda``), the state on the GPU, one block per slot; the
  columns may already be in device memory, and only the events come back;
- ``auto``: ``cuda`` when a CUDA GPU is visible, else ``cpu``.

The compiled kernels keep candidates and emitted segments in fixed-size tables per (slot, class)
(``ecm_edge.kernels.causal_state``): the pending table is sized by a bound and never overflows; a stream that
keeps more emitted segments than its table holds loses its oldest ones for NMS, which is counted
(:meth:`SlotPostProcessor.overflows`) and logged as an error that says what to change.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ecm_edge.config import CHOICES, Config
from ecm_edge.environment import cuda_gpu_visible
from ecm_edge.errors import ConfigError, DataError, EcmEdgeError
from ecm_edge.kernels.causal_state import (
    KIND_OPEN,
    OVERFLOW_PENDING,
    OVERFLOW_SEGMENTS,
    R_CLASS,
    R_END,
    R_KIND,
    R_NOW,
    R_SCORE,
    R_SLOT,
    R_START,
    SOURCES,
    CausalParams,
    check_finite,
    check_params,
    event_order,
    host_columns,
    pending_capacity,
    segment_capacity,
)
from ecm_edge.runtime import events as ev
from ecm_edge.runtime.online import OnlineParams, OnlinePostProcessor

log = logging.getLogger("ecm_edge")

KERNELS: tuple[str, ...] = tuple(k for k in CHOICES["stream.kernels"] if k != "auto")
TIMES = 3  # start, end, now of every column


def resolve_kernels(kernels: str) -> str:
    """``auto`` → ``cuda`` when a CUDA GPU is visible, else ``cpu``; anything else is checked and returned."""
    if kernels not in CHOICES["stream.kernels"]:
        raise ConfigError(f"stream.kernels must be one of {', '.join(CHOICES['stream.kernels'])}, got {kernels!r}")
    if kernels == "auto":
        return "cuda" if cuda_gpu_visible() else "cpu"
    return kernels


def causal_params(params: OnlineParams, num_classes: int, pending: int | None = None,
                  segments: int | None = None) -> CausalParams:
    """The kernels' numbers for ``params``; capacities default to ``causal_state``'s derivations."""
    post = params.post
    thresholds = np.asarray(post.act_thresholds, np.float32)
    result = CausalParams(
        num_classes=num_classes, horizon=max(1, params.horizon), warmup=params.warmup,
        topk_ratio=params.topk_ratio, thresholds=thresholds, oic_lambda=post.oic_lambda, gamma=post.gamma,
        class_threshold=post.class_threshold, nms_iou=post.nms_iou, iou_offset=post.iou_offset,
        emit_open=params.emit_open, source=SOURCES.index(params.score_source),
        pending_capacity=pending or pending_capacity(thresholds.size, post.oic_lambda, params.warmup),
        segment_capacity=segments or segment_capacity(thresholds.size, post.oic_lambda, max(1, params.horizon)))
    check_params(result)
    return result


class SlotPostProcessor:
    """Causal post-processing of many streams by slot; events per slot equal one ``OnlinePostProcessor``'s.

    ``capacity``: slots allocated up front (``reset`` grows them). ``pending_capacity`` / ``segment_capacity``:
    the compiled kernels' table sizes per (slot, class), by default derived from the parameters
    (``ecm_edge.kernels.causal_state``). Not thread-safe: one caller (the engine's tick) at a time.
    """

    def __init__(self, params: OnlineParams, class_names: Sequence[str], kernels: str = "numpy",
                 capacity: int = 1, pending_capacity: int | None = None, segment_capacity: int | None = None):
        self.params, self.class_names = params, list(class_names)
        self.kernels = resolve_kernels(kernels)
        self._joined: set[int] = set()
        if self.kernels == "numpy":
            self._backend: Any = _ReferenceSlots(params, self.class_names)
        else:
            causal = causal_params(params, len(self.class_names), pending_capacity, segment_capacity)
            self._backend = _CompiledSlots(causal, self.kernels, self.class_names)
        self._backend.grow(max(1, capacity))
        self._reported = np.zeros((self.capacity, 2), np.int64)

    @classmethod
    def from_config(cls, cfg: Config, class_names: Sequence[str], columns_per_snippet: float = 1.0,
                    capacity: int = 1) -> SlotPostProcessor:
        """The config's causal post-processing (``OnlineParams.from_config``) on ``stream.kernels``."""
        return cls(OnlineParams.from_config(cfg, columns_per_snippet), class_names, cfg.stream.kernels, capacity)

    @property
    def capacity(self) -> int:
        return self._backend.capacity

    def reset(self, slot: int) -> None:
        """A stream joins in ``slot`` (a fresh one, or one reused after ``flush``): its state starts afresh."""
        if slot < 0:
            raise DataError(f"stream slots are non-negative integers, got {slot}")
        if slot >= self.capacity:
            self._backend.grow(max(slot + 1, 2 * self.capacity))
            self._reported = np.concatenate([self._reported, np.zeros((self.capacity - len(self._reported), 2),
                                                                      np.int64)])
        self._backend.reset(slot)
        self._joined.add(slot)

    def push(self, slots: Sequence[int], cas: Sequence[Any] | Any, starts: Sequence[Sequence[float]],
             ends: Sequence[Sequence[float]], nows: Sequence[Sequence[float] | None] | None = None,
             weights: Sequence[Any | None] | None = None, stream: Any = None) -> list[list[ev.Event]]:
        """Each slot's new CAS columns ``[M_i, C]`` (final, in order; M_i may differ and be 0) with their start
        and end source times and, for latencies, when each became final (None: its end); ``weights``: their
        transition weights, needed for the ``weights`` / ``fused`` score sources. Returns each slot's events.

        ``cas`` may also be one ``[ΣM_i, C]`` array holding the slots' columns back to back. On the ``cuda``
        kernels the columns may be CUDA device arrays, read on ``stream`` (any form
        ``ecm_edge.kernels.streams`` takes); a single device array is read in place.
        """
        slots = self._check_slots(slots)
        counts = [len(s) for s in starts]
        nows = [None] * len(slots) if nows is None else list(nows)
        if not len(starts) == len(ends) == len(nows) == len(slots):
            raise DataError(f"push got {len(slots)} slots but {len(starts)} starts, {len(ends)} ends and "
                            f"{len(nows)} nows lists; give one of each per slot")
        columns = self._split(cas, counts, "cas")
        needs_weights = self.params.score_source != "cas"
        if needs_weights and (weights is None or any(w is None for w in weights)):
            raise EcmEdgeError(f"stream score source {self.params.score_source!r} needs the transition weights "
                               "of every column; the head gives none")
        weight_columns = self._split(weights, counts, "weights") if needs_weights else None
        times = [_times(s, e, n, i) for i, (s, e, n) in enumerate(zip(starts, ends, nows, strict=True))]
        whole = (None if isinstance(cas, (list, tuple)) else cas,
                 None if not needs_weights or isinstance(weights, (list, tuple)) else weights)
        events = self._backend.push(slots, columns, weight_columns, times, stream, whole)
        self._report_overflows(slots)
        return events

    def flush(self, slots: Sequence[int], nows: Sequence[float | None] | None = None,
              stream: Any = None) -> list[list[ev.Event]]:
        """End the streams in ``slots`` (``nows``: the source time each ends at, None: its last column's end):
        their remaining candidates become events and the slots start afresh (reusable, or ``reset`` later)."""
        slots = self._check_slots(slots)
        nows = [None] * len(slots) if nows is None else list(nows)
        if len(nows) != len(slots):
            raise DataError(f"flush got {len(slots)} slots but {len(nows)} nows; give one per slot")
        events = self._backend.flush(slots, nows, stream)
        self._report_overflows(slots)
        return events

    def overflows(self, slot: int) -> tuple[int, int]:
        """(pending candidates, emitted segments) the compiled kernels' tables could not keep for ``slot``
        since it was allocated; always (0, 0) on the ``numpy`` kernels."""
        return self._backend.overflows(slot)

    # -- checks ------------------------------------------------------------------------------------------------
    def _check_slots(self, slots: Sequence[int]) -> list[int]:
        slots = [int(s) for s in slots]
        unknown = [s for s in slots if s not in self._joined]
        if unknown:
            raise DataError(f"stream slots {unknown} have no stream; call reset(slot) when a stream joins")
        if len(set(slots)) != len(slots):
            raise DataError(f"a slot appears twice in one call ({slots}); push its columns together")
        return slots

    def _split(self, arrays: Any, counts: list[int], what: str) -> list[Any]:
        """Per-slot ``[M_i, C]`` arrays from a list of them or one ``[ΣM_i, C]`` array, shapes checked."""
        classes = len(self.class_names)
        if not isinstance(arrays, (list, tuple)):
            shape = tuple(arrays.shape)
            if len(shape) != 2 or shape != (sum(counts), classes):
                raise DataError(f"{what} is one array of shape {shape}; expected [{sum(counts)}, {classes}]: "
                                "every slot's columns back to back")
            bounds = np.concatenate([[0], np.cumsum(counts)])
            return [arrays[int(a):int(b)] for a, b in itertools.pairwise(bounds)]
        if len(arrays) != len(counts):
            raise DataError(f"{what} holds {len(arrays)} arrays for {len(counts)} slots; give one per slot")
        for i, (array, count) in enumerate(zip(arrays, counts, strict=True)):
            shape = tuple(array.shape)
            if shape != (count, classes):
                raise DataError(f"{what} of slot entry {i} has shape {shape}; expected [{count}, {classes}] "
                                "(one row per start/end time, one column per class)")
        return list(arrays)

    def _report_overflows(self, slots: list[int]) -> None:
        for slot in slots:
            counts = np.asarray(self._backend.overflows(slot), np.int64)
            new = counts - self._reported[slot]
            if new[OVERFLOW_SEGMENTS] > 0:
                log.error("stream slot %d: %d emitted segments no longer fitted its NMS table (%d per class) and "
                          "were dropped from it; its events may differ from one OnlinePostProcessor's from here "
                          "on. Give SlotPostProcessor a larger segment_capacity, or use stream.kernels=numpy.",
                          slot, new[OVERFLOW_SEGMENTS], self._backend.params.segment_capacity)
            if new[OVERFLOW_PENDING] > 0:
                log.error("stream slot %d: %d closed candidates did not fit its pending table (%d per class) and "
                          "were dropped; give SlotPostProcessor a larger pending_capacity, or use "
                          "stream.kernels=numpy.", slot, new[OVERFLOW_PENDING],
                          self._backend.params.pending_capacity)
            self._reported[slot] = counts


def _times(starts: Sequence[float], ends: Sequence[float], nows: Sequence[float] | None, entry: int) -> np.ndarray:
    """``[M, 3]`` float64 (start, end, now) of one slot's columns; ``now`` defaults to the end."""
    starts, ends = np.asarray(starts, np.float64), np.asarray(ends, np.float64)
    nows = ends if nows is None else np.asarray(nows, np.float64)
    if not starts.shape == ends.shape == nows.shape or starts.ndim != 1:
        raise DataError(f"slot entry {entry}: {starts.size} starts, {ends.size} ends and {nows.size} nows; give "
                        "one of each per column")
    return np.stack([starts, ends, nows], axis=1) if starts.size else np.zeros((0, TIMES), np.float64)


class _ReferenceSlots:
    """``numpy``: one ``OnlinePostProcessor`` per slot."""

    def __init__(self, params: OnlineParams, class_names: list[str]):
        self.params_online, self.class_names = params, class_names
        self._posts: list[OnlinePostProcessor] = []

    @property
    def capacity(self) -> int:
        return len(self._posts)

    def grow(self, capacity: int) -> None:
        self._posts += [OnlinePostProcessor(self.params_online, self.class_names)
                        for _ in range(capacity - len(self._posts))]

    def reset(self, slot: int) -> None:
        self._posts[slot] = OnlinePostProcessor(self.params_online, self.class_names)

    def push(self, slots: list[int], cas: list[Any], weights: list[Any] | None, times: list[np.ndarray],
             stream: Any, whole: tuple[Any, Any]) -> list[list[ev.Event]]:
        host = [host_columns(c) for c in cas]
        host_w = None if weights is None else [host_columns(w) for w in weights]
        check_finite(host, np.array(slots), "CAS")
        if host_w is not None:
            check_finite(host_w, np.array(slots), "transition-weight")
        return [self._posts[slot].push(host[i], t[:, 0], t[:, 1], t[:, 2],
                                       None if host_w is None else host_w[i])
                for i, (slot, t) in enumerate(zip(slots, times, strict=True))]

    def flush(self, slots: list[int], nows: list[float | None], stream: Any) -> list[list[ev.Event]]:
        return [self._posts[slot].flush(now) for slot, now in zip(slots, nows, strict=True)]

    def overflows(self, slot: int) -> tuple[int, int]:
        return 0, 0


class _CompiledSlots:
    """``cpu`` and ``cuda``: the slot-array kernels; records back, ordered and turned into events here."""

    def __init__(self, params: CausalParams, kernels: str, class_names: list[str]):
        self.params, self._class_names = params, class_names
        if kernels == "cpu":
            from ecm_edge.kernels.causal_cpu import CpuSlots

            self._slots: Any = CpuSlots(params)
        else:
            from ecm_edge.kernels.causal_cuda import CudaSlots

            self._slots = CudaSlots(params)

    @property
    def capacity(self) -> int:
        return self._slots.capacity

    def grow(self, capacity: int) -> None:
        self._slots.grow(capacity)

    def reset(self, slot: int) -> None:
        self._slots.reset(slot)

    def overflows(self, slot: int) -> tuple[int, int]:
        return self._slots.overflows(slot)

    def push(self, slots: list[int], cas: list[Any], weights: list[Any] | None, times: list[np.ndarray],
             stream: Any, whole: tuple[Any, Any]) -> list[list[ev.Event]]:
        counts = np.array([len(t) for t in times], np.int64)
        records = self._slots.push(np.array(slots, np.int64), counts, cas, weights,
                                   np.concatenate([*times, np.zeros((0, TIMES))]), stream, *whole)
        return self._events(slots, *records)

    def flush(self, slots: list[int], nows: list[float | None], stream: Any) -> list[list[ev.Event]]:
        now = np.array([np.nan if n is None else float(n) for n in nows], np.float64)
        return self._events(slots, *self._slots.flush(np.array(slots, np.int64), now, stream))

    def _events(self, slots: list[int], ints: np.ndarray, floats: np.ndarray) -> list[list[ev.Event]]:
        """Records in the reference's order, as events per slot (built only by ``ecm_edge.runtime.events``)."""
        out: dict[int, list[ev.Event]] = {slot: [] for slot in slots}
        names = self._class_names
        for r in event_order(ints, floats):
            slot, cls = int(ints[r, R_SLOT]), int(ints[r, R_CLASS])
            start, score = float(floats[r, R_START]), float(floats[r, R_SCORE])
            if ints[r, R_KIND] == KIND_OPEN:
                out[slot].append(ev.segment_open_event(cls, names[cls], start, score))
            else:
                end = float(floats[r, R_END])
                out[slot].append(ev.segment_event(cls, names[cls], start, end, score,
                                                  latency=max(0.0, float(floats[r, R_NOW]) - end)))
        return [out[slot] for slot in slots]


__all__ = ["KERNELS", "SlotPostProcessor", "causal_params", "resolve_kernels"]
