"""The one CUDA stream adapter (``ecm_edge.kernels.streams``): raw handles of every stream form, numba streams."""

from __future__ import annotations

import ctypes

import pytest

from ecm_edge.errors import DataError
from ecm_edge.kernels.streams import is_numba_stream, stream_handle, to_numba_stream


class CudaStreamProtocol:  # cuda.core streams (and newer numba-cuda and torch streams)
    def __cuda_stream__(self):
        return (0, 0xBEEF)


class TorchLikeStream:  # torch.cuda.Stream: the handle as an int attribute
    cuda_stream = 0xCAFE


class HandleHolder:  # numba streams keep their handle (ctypes or a cuda.bindings CUstream) in .handle
    def __init__(self, handle):
        self.handle = handle


class FakeNumbaCuda:
    """Stands in for ``numba.cuda``: records the handle an external stream wraps."""

    def external_stream(self, handle: int) -> tuple[str, int]:
        return ("external", handle)


@pytest.mark.parametrize(("stream", "handle"), [
    (None, 0), (1234, 1234), (ctypes.c_void_p(5678), 5678), (ctypes.c_void_p(None), 0),
    (CudaStreamProtocol(), 0xBEEF), (TorchLikeStream(), 0xCAFE), (HandleHolder(ctypes.c_void_p(42)), 42),
    (HandleHolder(77), 77),
])
def test_raw_handles_of_every_stream_form(stream, handle):
    assert stream_handle(stream) == handle


def test_an_unusable_object_is_a_clear_error():
    with pytest.raises(DataError, match="cannot use object as a CUDA stream"):
        stream_handle(object())


def test_foreign_streams_are_wrapped_and_numba_streams_kept():
    from numba import cuda  # the simulator in the default test run (tests/conftest.py)

    assert to_numba_stream(FakeNumbaCuda(), TorchLikeStream()) == ("external", 0xCAFE)
    assert to_numba_stream(FakeNumbaCuda(), 99) == ("external", 99)
    numba_stream = cuda.stream()
    assert is_numba_stream(numba_stream) and not is_numba_stream(TorchLikeStream())
    assert to_numba_stream(FakeNumbaCuda(), numba_stream) is numba_stream


def test_the_runtime_uses_the_kernels_adapter():
    from ecm_edge.runtime.engines import cuda_buffers

    assert cuda_buffers.stream_handle is stream_handle
