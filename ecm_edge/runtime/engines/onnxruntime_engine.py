"""ONNX Runtime engine: any exported ``.onnx`` (FP32, FP16, INT8) on the CPU, or on the GPU with onnxruntime-gpu.

Providers: ``auto`` takes the CUDA provider when this onnxruntime build has it, else the CPU. With the CUDA
provider, :meth:`OnnxRuntimeEngine.infer_device` binds device buffers directly (I/O binding on their device
pointers), and a ``stream`` given at load becomes the provider's compute stream, so ONNX Runtime and the CUDA
post-processing share it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ecm_edge.errors import EcmEdgeError, import_optional
from ecm_edge.manifest import Manifest, verify_artifact
from ecm_edge.runtime.engines import EngineBase
from ecm_edge.runtime.engines import cuda_buffers as cb

log = logging.getLogger("ecm_edge")

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def import_onnxruntime() -> Any:
    return import_optional("onnxruntime", "onnxruntime", "running ONNX artifacts",
                           "pip install onnxruntime (or onnxruntime-gpu)")


def choose_providers(available: list[str], providers: str | list[str] = "auto") -> list[str]:
    """``auto`` → CUDA (when available) then CPU; ``cpu`` → CPU; ``cuda`` → CUDA or an error; or a list."""
    if isinstance(providers, list):
        missing = [p for p in providers if p not in available]
        if missing:
            raise EcmEdgeError(f"onnxruntime providers {missing} are not available here ({', '.join(available)})")
        return providers
    if providers == "cpu":
        return [CPU]
    if providers == "cuda":
        if CUDA not in available:
            raise EcmEdgeError(f"the CUDA provider needs onnxruntime-gpu; this onnxruntime has {', '.join(available)}")
        return [CUDA, CPU]
    if providers == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise EcmEdgeError(f"providers must be auto, cpu, cuda or a list, got {providers!r}")


class OnnxRuntimeEngine(EngineBase):
    name: ClassVar[str] = "onnxruntime"

    def __init__(self, artifact: Path, manifest: Manifest, session: Any, stream: Any = None):
        super().__init__(artifact, manifest)
        self.session = session
        self.providers = list(session.get_providers())
        self.supports_device_buffers = CUDA in self.providers
        self._stream = stream

    @classmethod
    def load(cls, artifact: Path, precision: str | None = None, graph: str | None = None,
             providers: str | list[str] = "auto", threads: int = 0, device_id: int = 0,
             stream: Any = None) -> OnnxRuntimeEngine:
        """Verify ``artifact`` and open an inference session (``threads`` 0: onnxruntime's default)."""
        manifest = verify_artifact(artifact, precision=precision, kind="onnx", graph=graph)
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        chosen = choose_providers(ort.get_available_providers(), providers)
        provider_options = [_provider_options(p, device_id, stream) for p in chosen]
        session = ort.InferenceSession(str(artifact), options, providers=chosen, provider_options=provider_options)
        log.debug("onnxruntime session for %s on %s", artifact, ", ".join(session.get_providers()))
        return cls(Path(artifact), manifest, session, stream)

    def infer(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = self.host_inputs(inputs)
        values = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, values, strict=True))

    def infer_device(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any] | None = None,
                     stream: Any = None) -> dict[str, Any]:
        """Run on device buffers through I/O binding (CUDA provider only); outputs are allocated when not given."""
        if not self.supports_device_buffers:
            return super().infer_device(inputs, outputs, stream)
        stream = stream if stream is not None else self._stream
        shapes = self.output_shapes({name: cb.device_shape(a) for name, a in inputs.items()})
        outputs = dict(outputs or {})
        for spec in self.manifest.outputs:
            if spec.name not in outputs:
                outputs[spec.name] = cb.empty_device(shapes[spec.name], spec.dtype, stream)
        if stream is not None:
            cb.numba_stream(stream).synchronize()  # inputs written on the caller's stream are complete
        binding = self.session.io_binding()
        for name, array in inputs.items():
            binding.bind_input(name, "cuda", self._device_id(), cb.device_dtype(array), list(cb.device_shape(array)),
                               cb.device_pointer(array))
        for name, array in outputs.items():
            binding.bind_output(name, "cuda", self._device_id(), cb.device_dtype(array),
                                list(cb.device_shape(array)), cb.device_pointer(array))
        self.session.run_with_iobinding(binding)
        return outputs

    def _device_id(self) -> int:
        options = self.session.get_provider_options().get(CUDA, {})
        return int(options.get("device_id", 0))

    def close(self) -> None:
        self.session = None


def _provider_options(provider: str, device_id: int, stream: Any) -> dict[str, str]:
    if provider != CUDA:
        return {}
    options = {"device_id": str(device_id)}
    if stream is not None:
        options["user_compute_stream"] = str(cb.stream_handle(stream))
    return options
