"""The causal post-processing of many streams at once on a CUDA GPU (docs/design.md §7): the launches.

The slot arrays of ``ecm_edge.kernels.causal_state`` live in device memory for the processor's lifetime. A push
is one launch of ``push`` (``causal_cuda_kernels``): one block per slot it advances, threads over classes; a
flush one launch of ``flush``. A slot's reset is applied by the next launch that includes it. Columns may be
host arrays (uploaded) or device arrays (anything with ``__cuda_array_interface__``): one ``[ΣM, C]`` device
array is read in place, per-slot device arrays are gathered on the device; either is read on the caller's
stream (``ecm_edge.kernels.streams``). What comes back to the host: the emitted records, and per launched slot
its column and pending counts (to size the next call's record buffer) and its overflow counters.

Importing this module needs neither numba-cuda nor a GPU.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ecm_edge.environment import cuda_simulator_enabled
from ecm_edge.errors import DataError
from ecm_edge.kernels.causal_state import (
    RECORD_FLOAT_FIELDS,
    RECORD_INT_FIELDS,
    STATE_FIELDS,
    CausalParams,
    State,
    concatenate_records,
    host_parts,
    kernel_params,
    no_records,
    record_capacity,
    state_shapes,
)
from ecm_edge.kernels.cuda import _cuda, as_stream, device_view, require_cuda
from ecm_edge.kernels.inputs import is_device_array

THREADS = 32  # threads per block: one warp covers the classes of most datasets (C = 20 for THUMOS14)
SIMULATOR_THREADS = 4  # the simulator runs a Python thread per CUDA thread; few keep it usable
SUMMARY_FIELDS = 4  # per launched slot: columns, pending candidates, pending overflows, segment overflows
(S_COLUMNS, S_PENDING, S_OVERFLOW_PENDING, S_OVERFLOW_SEGMENTS) = range(SUMMARY_FIELDS)


def threads_per_block() -> int:
    return SIMULATOR_THREADS if cuda_simulator_enabled() else THREADS


@functools.cache
def kernels(threads: int) -> Any:
    """The kernels for blocks of ``threads`` threads, compiled at their first launch."""
    _cuda()
    from ecm_edge.kernels.causal_cuda_kernels import build_kernels

    return build_kernels(threads)


class CudaSlots:
    """The host side of the CUDA kernels: device state, host mirrors of the counts, launches, records back."""

    def __init__(self, params: CausalParams):
        self.cuda = require_cuda()
        self.params = params
        self.kp = kernel_params(params, self.cuda.to_device(np.ascontiguousarray(params.thresholds, np.float32)))
        self.state = self._allocate(0)
        self._columns = np.zeros(0, np.int64)  # host mirrors, refreshed by every launch's summary
        self._pending = np.zeros(0, np.int64)
        self._overflow = np.zeros((0, 2), np.int64)
        self._resets = np.zeros(0, np.int8)

    @property
    def capacity(self) -> int:
        return int(self._columns.size)

    def _allocate(self, slots: int) -> State:
        arrays = {name: self.cuda.device_array(shape, dtype) for name, (shape, dtype) in
                  state_shapes(self.params, slots).items()}
        arrays["overflow"] = self.cuda.to_device(np.zeros(state_shapes(self.params, slots)["overflow"][0], np.int64))
        return State(**arrays)

    def grow(self, capacity: int) -> None:
        bigger, old = self._allocate(capacity), self.capacity
        if old:
            for name in STATE_FIELDS:
                getattr(bigger, name)[:old].copy_to_device(getattr(self.state, name))
        self.state = bigger
        grown = capacity - old
        self._columns = np.concatenate([self._columns, np.zeros(grown, np.int64)])
        self._pending = np.concatenate([self._pending, np.zeros(grown, np.int64)])
        self._overflow = np.concatenate([self._overflow, np.zeros((grown, 2), np.int64)])
        self._resets = np.concatenate([self._resets, np.ones(grown, np.int8)])

    def reset(self, slot: int) -> None:
        self._resets[slot] = 1
        self._columns[slot] = self._pending[slot] = 0

    def overflows(self, slot: int) -> tuple[int, int]:
        return int(self._overflow[slot, 0]), int(self._overflow[slot, 1])

    def push(self, slots: np.ndarray, counts: np.ndarray, cas: list, weights: list | None, times: np.ndarray,
             stream: Any = None, whole_cas: Any = None, whole_weights: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Records of ``slots`` advanced by their columns (see ``causal_cpu.CpuSlots.push``); host columns of
        different dtypes run in one launch per dtype (the kernels compute in the input's precision)."""
        stream = as_stream(stream)
        on_device = [is_device_array(a) for a in [*cas, *(weights or []), whole_cas, whole_weights]]
        if any(on_device):
            columns = self._columns_on_device(cas, whole_cas, slots, "CAS", stream)
            w = None if weights is None else self._columns_on_device(weights, whole_weights, slots,
                                                                     "transition-weight", stream)
            return self._push(slots, counts, columns, w, times, stream)
        parts = []
        for part in host_parts(slots, counts, cas, weights, times):
            w = None if part.weights is None else self._upload(part.weights, stream)
            parts.append(self._push(slots[part.group], counts[part.group], self._upload(part.cas, stream), w,
                                    part.times, stream))
        return concatenate_records(parts)

    def _upload(self, array: np.ndarray, stream: Any) -> Any:
        return self.cuda.to_device(np.ascontiguousarray(array), stream=stream)

    def _push(self, slots: np.ndarray, counts: np.ndarray, columns: Any, weight_columns: Any, times: np.ndarray,
              stream: Any) -> tuple[np.ndarray, np.ndarray]:
        """One launch of ``push`` over ``slots`` with their columns ``[ΣM, C]`` on the device."""
        if weight_columns is None:
            weight_columns = self.cuda.to_device(np.zeros((0, columns.shape[1]), np.float32), stream=stream)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        updates = counts + np.where(self._columns[slots] < self.params.warmup, self._columns[slots], 0)
        up = functools.partial(self.cuda.to_device, stream=stream)
        launch = self._launch(slots, updates, stream)
        kernels(threads_per_block()).push[slots.size, threads_per_block(), stream](
            self.state, self.kp, up(slots), up(self._resets[slots]), up(offsets), columns,
            columns.dtype == np.float64, weight_columns, weight_columns.dtype == np.float64,
            up(np.ascontiguousarray(times, np.float64)), *launch)
        return self._finish(slots, *launch, stream)

    def flush(self, slots: np.ndarray, nows: np.ndarray, stream: Any = None) -> tuple[np.ndarray, np.ndarray]:
        stream = as_stream(stream)
        up = functools.partial(self.cuda.to_device, stream=stream)
        updates = np.where(self._columns[slots] < self.params.warmup, self._columns[slots], 0)
        launch = self._launch(slots, updates, stream)
        kernels(threads_per_block()).flush[slots.size, threads_per_block(), stream](
            self.state, self.kp, up(slots), up(self._resets[slots]), up(nows), *launch)
        return self._finish(slots, *launch, stream)

    def _launch(self, slots: np.ndarray, updates: np.ndarray, stream: Any) -> tuple[Any, ...]:
        """The record buffers (sized by ``causal_state.record_capacity``), the cursor and the summary."""
        total = int(record_capacity(self.params, updates, self._pending[slots]).sum())
        device = functools.partial(self.cuda.device_array, stream=stream)
        return (device((max(total, 1), len(RECORD_INT_FIELDS)), np.int64),
                device((max(total, 1), len(RECORD_FLOAT_FIELDS)), np.float64),
                self.cuda.to_device(np.zeros(1, np.int64), stream=stream),
                device((max(slots.size, 1), SUMMARY_FIELDS), np.int64))

    def _finish(self, slots: np.ndarray, rec_i: Any, rec_f: Any, cursor: Any, summary: Any,
                stream: Any) -> tuple[np.ndarray, np.ndarray]:
        """Mirrors refreshed from the summary; the written records copied back."""
        written = int(cursor.copy_to_host(stream=stream)[0])
        summary = summary.copy_to_host(stream=stream)[: slots.size]
        stream.synchronize()
        self._resets[slots] = 0
        self._columns[slots] = summary[:, S_COLUMNS]
        self._pending[slots] = summary[:, S_PENDING]
        self._overflow[slots] = summary[:, [S_OVERFLOW_PENDING, S_OVERFLOW_SEGMENTS]]
        if written > rec_i.shape[0]:  # cannot happen: record_capacity bounds what a call writes
            raise RuntimeError(f"the CUDA causal kernels wrote {written} records into {rec_i.shape[0]} slots")
        if written == 0:
            return no_records()
        ints, floats = rec_i[:written].copy_to_host(stream=stream), rec_f[:written].copy_to_host(stream=stream)
        stream.synchronize()
        return ints, floats

    def _columns_on_device(self, arrays: list, whole: Any, slots: np.ndarray, what: str, stream: Any) -> Any:
        """All slots' columns as one ``[ΣM, C]`` device array: ``whole`` in place when it is device memory, else
        the per-slot arrays gathered on the device; checked to be finite there."""
        if whole is not None and is_device_array(whole):
            columns = device_view(whole)
        else:
            columns = self._gather(arrays, what, stream)
        if np.dtype(columns.dtype) not in (np.float32, np.float64):
            raise DataError(f"the {what} columns on the device are {columns.dtype}; give float32 or float64")
        self._check_device_finite(columns, what, stream)
        return columns

    def _gather(self, arrays: list, what: str, stream: Any) -> Any:
        views = [device_view(a) if is_device_array(a) else self.cuda.to_device(np.ascontiguousarray(a),
                                                                                 stream=stream) for a in arrays]
        dtypes = {np.dtype(v.dtype) for v in views}
        if len(dtypes) != 1:
            raise DataError(f"the {what} columns of one call must share one dtype on the cuda kernels, got "
                            f"{sorted(str(d) for d in dtypes)}")
        rows = sum(int(v.shape[0]) for v in views)
        columns = self.cuda.device_array((rows, int(views[0].shape[1])), dtypes.pop(), stream=stream)
        row = 0
        for view in views:
            if view.shape[0]:
                columns[row:row + view.shape[0]].copy_to_device(view, stream=stream)
            row += int(view.shape[0])
        return columns

    def _check_device_finite(self, columns: Any, what: str, stream: Any) -> None:
        bad = self.cuda.to_device(np.zeros(1, np.int32), stream=stream)
        if columns.shape[0]:
            kernels(threads_per_block()).find_nonfinite[1, threads_per_block(), stream](columns, bad)
        if bad.copy_to_host(stream=stream)[0]:
            stream.synchronize()
            raise DataError(f"the {what} columns on the device hold NaN or Inf; the network output must be "
                            "finite (check the features and model)")


__all__ = ["THREADS", "CudaSlots", "kernels", "threads_per_block"]
