"""CUDA streams given in any form, turned into what a launch needs: the one stream adapter of ecm-edge.

A stream may be a numba stream, a cuda-python (``cuda.bindings``) ``CUstream``/``cudaStream_t``, an object with
``__cuda_stream__`` (cuda.core, newer numba-cuda), a ``torch.cuda.Stream`` (``cuda_stream``), a ctypes pointer or
a raw integer handle. :func:`stream_handle` gives its raw ``cudaStream_t`` (what TensorRT's ``execute_async_v3``,
ONNX Runtime and torch's ``ExternalStream`` take), :func:`to_numba_stream` a numba stream over it (for copies and
kernel launches), so an engine and the post-processing kernels run on one stream without a host round trip.

Used by the CUDA post-processing (``ecm_edge.kernels.cuda``) and the runtime's device buffers
(``ecm_edge.runtime.engines.cuda_buffers``). Imports neither numba nor torch: the caller passes ``numba.cuda``.
"""

from __future__ import annotations

import ctypes
from typing import Any

from ecm_edge.errors import DataError


def stream_handle(stream: Any) -> int:
    """The raw ``cudaStream_t`` of ``stream`` as an int (0, the legacy default stream, for None)."""
    if stream is None:
        return 0
    if isinstance(stream, int):
        return stream
    if hasattr(stream, "__cuda_stream__"):  # cuda.core streams (and newer numba-cuda and torch streams)
        protocol = stream.__cuda_stream__
        value = protocol() if callable(protocol) else protocol
        return int(value[1])
    if isinstance(stream, ctypes.c_void_p):
        return int(stream.value or 0)
    torch_handle = getattr(stream, "cuda_stream", None)  # torch.cuda.Stream
    if isinstance(torch_handle, int):
        return torch_handle
    handle = getattr(stream, "handle", None)  # numba streams: ctypes c_void_p or a cuda.bindings CUstream
    if handle is not None and handle is not stream:
        return stream_handle(handle)
    if hasattr(stream, "getPtr"):  # cuda.bindings CUstream / cudaStream_t
        return int(stream)
    try:
        return int(stream)
    except (TypeError, ValueError):
        raise DataError(f"cannot use {type(stream).__name__} as a CUDA stream; pass a numba stream, a cuda-python "
                        "stream, a torch stream or an integer handle") from None


def is_numba_stream(stream: Any) -> bool:
    """True for numba's own streams (and the CUDA simulator's), which launches take as they are."""
    return type(stream).__module__.startswith("numba")


def to_numba_stream(cuda: Any, stream: Any) -> Any:
    """``stream`` (not None) as a numba stream of the ``numba.cuda`` module ``cuda``: a numba stream as it is,
    any other form wrapped around its raw handle (the caller keeps that stream alive)."""
    if is_numba_stream(stream):
        return stream
    return cuda.external_stream(stream_handle(stream))


__all__ = ["is_numba_stream", "stream_handle", "to_numba_stream"]
