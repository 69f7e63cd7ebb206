"""TensorRT engine: a ``<stem>.<precision>.engine`` through the name-based API of TensorRT 10/11.

``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3`` only (the binding-index API is gone in 10.x).
Buffers are numba-cuda device arrays; the engine runs on one CUDA stream — the caller's (numba, cuda-python or a
raw handle) or one of its own — so the CUDA post-processing can read the ``cas`` buffer on the same stream
without a host copy. :meth:`TensorRTEngine.infer_device` returns as soon as the work is queued; synchronize the
stream (or launch the next kernel on it) before reading the outputs. The engine is deserialized only after its
manifest check passed: same sha256, same TensorRT version, same GPU compute capability.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ecm_edge.errors import CheckpointError, DataError, EcmEdgeError, import_optional
from ecm_edge.manifest import Manifest, verify_artifact
from ecm_edge.runtime.engines import EngineBase
from ecm_edge.runtime.engines import cuda_buffers as cb

log = logging.getLogger("ecm_edge")


def import_tensorrt() -> Any:
    return import_optional("tensorrt", "TensorRT", "running engines",
                           "install TensorRT 10 or 11 (JetPack on a Jetson, `pip install tensorrt` on a server), "
                           "or run the ONNX artifact with the onnxruntime engine")


class TensorRTEngine(EngineBase):
    name: ClassVar[str] = "tensorrt"
    supports_device_buffers = True

    def __init__(self, artifact: Path, manifest: Manifest, trt: Any, runtime: Any, engine: Any, stream: Any):
        super().__init__(artifact, manifest)
        self.trt = trt
        self.runtime = runtime  # must outlive the engine
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise EcmEdgeError(f"TensorRT could not create an execution context for {artifact} (out of GPU memory?)")
        self.stream = cb.numba_stream(stream)
        self._check_io_names()
        self._host_buffers: dict[str, Any] = {}

    @classmethod
    def load(cls, artifact: Path, precision: str | None = None, graph: str | None = None,
             stream: Any = None) -> TensorRTEngine:
        manifest = verify_artifact(artifact, precision=precision, kind="engine", graph=graph)
        trt = import_tensorrt()
        cb.require_numba_cuda()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(Path(artifact).read_bytes())
        if engine is None:
            raise CheckpointError(f"TensorRT {trt.__version__} could not deserialize {artifact}; rebuild it with "
                                  f"`{manifest.rebuild or 'ecm-edge export --engine'}`")
        return cls(Path(artifact), manifest, trt, runtime, engine, stream)

    def _tensor_names(self, mode: Any) -> list[str]:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        return [n for n in names if self.engine.get_tensor_mode(n) == mode]

    def _check_io_names(self) -> None:
        engine_inputs = self._tensor_names(self.trt.TensorIOMode.INPUT)
        engine_outputs = self._tensor_names(self.trt.TensorIOMode.OUTPUT)
        if sorted(engine_inputs) != sorted(self.input_names) or sorted(engine_outputs) != sorted(self.output_names):
            raise CheckpointError(f"{self.artifact} has tensors {engine_inputs} → {engine_outputs} but its manifest "
                                  f"lists {self.input_names} → {self.output_names}; rebuild the engine")

    def tensor_dtype(self, name: str) -> np.dtype:
        return np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))

    def set_shapes(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
        expected = self.output_shapes(shapes)
        for name, shape in shapes.items():
            if not self.context.set_input_shape(name, tuple(int(d) for d in shape)):
                low, _, high = self.engine.get_tensor_profile_shape(name, 0)
                raise DataError(f"{self.artifact.name}: input {name} of shape {tuple(shape)} is outside the engine's "
                                f"optimization profile {tuple(low)} … {tuple(high)}; rebuild with a wider "
                                "export.min_t/max_t (or stream window) or split the input")
        for name, shape in expected.items():
            actual = tuple(self.context.get_tensor_shape(name))
            if actual != shape:
                raise CheckpointError(f"{self.artifact.name}: engine gives {name} shape {actual}, manifest says {shape}")
        return expected

    def infer_device(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any] | None = None,
                     stream: Any = None) -> dict[str, Any]:
        """Queue one run on ``stream`` (default: the engine's); outputs are allocated when not given."""
        run_stream = self.stream if stream is None else cb.numba_stream(stream)
        shapes = self.set_shapes({name: cb.device_shape(a) for name, a in inputs.items()})
        outputs = dict(outputs or {})
        for name, shape in shapes.items():
            if name not in outputs:
                outputs[name] = cb.empty_device(shape, self.tensor_dtype(name), run_stream)
            elif cb.device_shape(outputs[name]) != shape:
                raise DataError(f"output buffer {name} has shape {cb.device_shape(outputs[name])}, needs {shape}")
        for name, array in {**inputs, **outputs}.items():
            if cb.device_dtype(array) != self.tensor_dtype(name):
                raise DataError(f"{name} buffer is {cb.device_dtype(array)}, the engine wants {self.tensor_dtype(name)}")
            self.context.set_tensor_address(name, cb.device_pointer(array))
        if not self.context.execute_async_v3(cb.stream_handle(run_stream)):
            raise EcmEdgeError(f"TensorRT failed to run {self.artifact.name}")
        return outputs

    def infer(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = self.host_inputs(inputs)
        device_inputs = {name: self._device_copy(name, array) for name, array in feeds.items()}
        device_outputs = self.infer_device(device_inputs, stream=self.stream)
        host = {name: array.copy_to_host(stream=self.stream) for name, array in device_outputs.items()}
        self.stream.synchronize()
        return host

    def _device_copy(self, name: str, array: np.ndarray) -> Any:
        """Reuse the input's device buffer while its shape stays the same (every streaming step)."""
        cuda = cb.require_numba_cuda()
        buffer = self._host_buffers.get(name)
        if buffer is None or buffer.shape != array.shape:
            buffer = cuda.device_array(array.shape, dtype=self.tensor_dtype(name), stream=self.stream)
            self._host_buffers[name] = buffer
        buffer.copy_to_device(array.astype(self.tensor_dtype(name), copy=False), stream=self.stream)
        return buffer

    def close(self) -> None:
        self._host_buffers.clear()
        self.context = None
        self.engine = None
