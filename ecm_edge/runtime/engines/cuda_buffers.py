"""Device buffers and CUDA streams shared by the GPU engines and the CUDA post-processing.

Buffers are numba-cuda device arrays, or anything exposing ``__cuda_array_interface__`` (CuPy, torch): their
data pointer is what TensorRT's ``set_tensor_address`` and ONNX Runtime's I/O binding take. Streams may be given in
any form ``ecm_edge.kernels.streams`` accepts (numba, cuda-python, ``__cuda_stream__``, torch, a raw handle):
:func:`stream_handle` (from there) turns each into the integer handle that ``execute_async_v3`` takes, and
:func:`numba_stream` into a numba stream for copies and kernel launches, so the engine and the post-processing
kernels run on one stream without a host round trip. pycuda is not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ecm_edge.errors import DataError, MissingDependencyError, import_optional
from ecm_edge.kernels.streams import stream_handle, to_numba_stream


def require_numba_cuda() -> Any:
    """``numba.cuda`` with a real GPU, or a clear error."""
    cuda = import_optional("numba.cuda", "numba-cuda", "device buffers", "pip install 'ecm-edge[cuda]'")
    if not cuda.is_available():
        raise MissingDependencyError("a CUDA GPU", "device buffers",
                                     "no CUDA device is visible; use host arrays with infer()")
    return cuda


def array_interface(array: Any) -> dict[str, Any]:
    interface = getattr(array, "__cuda_array_interface__", None)
    if interface is None:
        raise DataError(f"{type(array).__name__} is not a device array (no __cuda_array_interface__); pass a "
                        "numba-cuda device array, or use infer() with numpy arrays")
    return interface


def device_pointer(array: Any) -> int:
    """The device address of a C-contiguous device array."""
    interface = array_interface(array)
    shape = tuple(interface["shape"])
    strides = interface.get("strides")
    dtype = np.dtype(interface["typestr"])
    if strides is not None and tuple(strides) != _c_strides(shape, dtype.itemsize):
        raise DataError(f"device array of shape {shape} is not C-contiguous (strides {strides}); copy it first")
    return int(interface["data"][0])


def device_shape(array: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in array_interface(array)["shape"])


def device_dtype(array: Any) -> np.dtype:
    return np.dtype(array_interface(array)["typestr"])


def _c_strides(shape: Sequence[int], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


def numba_stream(stream: Any) -> Any:
    """A numba stream for ``stream`` (a new one when None), for copies and kernel launches."""
    cuda = require_numba_cuda()
    if stream is None:
        return cuda.stream()
    return to_numba_stream(cuda, stream)


def empty_device(shape: Sequence[int], dtype: Any, stream: Any) -> Any:
    """An uninitialized numba device array on ``stream``."""
    cuda = require_numba_cuda()
    return cuda.device_array(tuple(shape), dtype=np.dtype(dtype), stream=numba_stream(stream))


__all__ = ["array_interface", "device_dtype", "device_pointer", "device_shape", "empty_device", "numba_stream",
           "require_numba_cuda", "stream_handle"]
