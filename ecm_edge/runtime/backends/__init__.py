"""Inference backends for the exported ECM head, behind one protocol (no torch import here).

========================  ==================================  =======================================================
backend                   artifact                            needs
========================  ==================================  =======================================================
``onnxruntime``           ``<stem>[.fp16|.int8].onnx``        onnxruntime (CPU; the CUDA provider when installed)
``tensorrt``              ``<stem>.<precision>.engine``       TensorRT 10/11, a GPU, numba-cuda (device buffers)
``torch``                 deploy weights (``model.safetensors``)  torch (imported on first use only)
========================  ==================================  =======================================================

Every backend loads an artifact only after :func:`ecm_edge.manifest.verify_artifact` accepted it (hash, precision,
versions), then offers:

- ``set_shapes({"features": (B, T, D)}) -> {output: shape}``: fix the input shape (TensorRT needs it before a run;
  the others just check it against the manifest) and learn the output shapes;
- ``infer(features) -> {name: array}``: host (numpy) arrays in, host arrays out, names from the manifest;
- ``infer_device(inputs, outputs=None, stream=None)``: device buffers (numba-cuda device arrays or anything with
  ``__cuda_array_interface__``) in and out, on the caller's CUDA stream, where ``supports_device_buffers`` is true.

The backend of an artifact is found by its suffix (``auto``) or named; :func:`select_artifact` picks one file from
an export folder by graph and precision.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ecm_edge.errors import CheckpointError, DataError, EcmEdgeError
from ecm_edge.manifest import Manifest, read_manifest

log = logging.getLogger("ecm_edge")

# name -> (module, class). Add a backend by adding a line here.
BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("ecm_edge.runtime.backends.onnxruntime_backend", "OnnxRuntimeBackend"),
    "tensorrt": ("ecm_edge.runtime.backends.tensorrt_backend", "TensorRTBackend"),
    "torch": ("ecm_edge.runtime.backends.torch_backend", "TorchBackend"),
}
SUFFIX_BACKEND = {".onnx": "onnxruntime", ".engine": "tensorrt", ".safetensors": "torch"}


@runtime_checkable
class Backend(Protocol):
    """What the runtime needs from an inference backend."""

    name: ClassVar[str]
    manifest: Manifest
    supports_device_buffers: bool

    @property
    def input_names(self) -> list[str]: ...

    @property
    def output_names(self) -> list[str]: ...

    def set_shapes(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]: ...

    def infer(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def infer_device(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any] | None = None,
                     stream: Any = None) -> dict[str, Any]: ...

    def close(self) -> None: ...


class BackendBase:
    """Shape bookkeeping shared by the backends: everything the manifest already says."""

    name: ClassVar[str] = "base"
    supports_device_buffers: bool = False

    def __init__(self, artifact: Path, manifest: Manifest):
        self.artifact = artifact
        self.manifest = manifest

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.manifest.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.manifest.outputs]

    @property
    def graph(self) -> str:
        return self.manifest.graph

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.class_names)

    def set_shapes(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
        return self.output_shapes(shapes)

    def output_shapes(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
        """Output shapes for these input shapes, from the manifest's symbolic shapes (checked on the way)."""
        dims = self._bind_dims(shapes)
        result = {}
        for spec in self.manifest.outputs:
            shape = spec.resolve(dims)
            if min(shape, default=1) < 1:
                raise DataError(self._too_short_message(shapes))
            result[spec.name] = shape
        return result

    def _bind_dims(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
        dims: dict[str, int] = {}
        for spec in self.manifest.inputs:
            if spec.name not in shapes:
                raise DataError(f"{self.artifact.name} needs input {spec.name!r}; got {', '.join(shapes) or 'none'}")
            shape = tuple(int(d) for d in shapes[spec.name])
            if len(shape) != len(spec.shape):
                raise DataError(f"{self.artifact.name}: input {spec.name} must have shape {spec.shape}, got {shape}")
            for want, have in zip(spec.shape, shape, strict=True):
                if isinstance(want, int) and want != have:
                    raise DataError(f"{self.artifact.name}: input {spec.name} must have shape {spec.shape}, got "
                                    f"{shape} (features of another dimension?)")
                if isinstance(want, str):
                    dims[want] = have
        return dims

    def _too_short_message(self, shapes: Mapping[str, Sequence[int]]) -> str:
        minimum = (self.manifest.streaming or {}).get("min_window", 1)
        return (f"{self.artifact.name}: input shape {dict(shapes)} gives an empty output; the {self.graph} graph "
                f"needs at least {minimum} snippets per window")

    def host_inputs(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Normalize ``infer``'s argument to contiguous arrays of the manifest's dtypes, checking shapes."""
        if not isinstance(inputs, Mapping):
            if len(self.manifest.inputs) != 1:
                raise DataError(f"{self.artifact.name} has inputs {self.input_names}; pass a dict")
            inputs = {self.manifest.inputs[0].name: inputs}
        arrays = {spec.name: np.ascontiguousarray(inputs[spec.name], dtype=spec.dtype)
                  for spec in self.manifest.inputs if spec.name in inputs}
        self.output_shapes({name: a.shape for name, a in arrays.items()})
        return arrays

    def infer(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def infer_device(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any] | None = None,
                     stream: Any = None) -> dict[str, Any]:
        raise EcmEdgeError(f"the {self.name} backend runs on host arrays only here; call infer() with numpy arrays")

    def close(self) -> None:
        """Release sessions and buffers (the object is unusable afterwards)."""

    def __enter__(self) -> BackendBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def backend_for(artifact: str | Path) -> str:
    """The backend that runs ``artifact``, from its suffix (a folder means deploy weights → torch)."""
    path = Path(artifact)
    if path.is_dir() or path.suffix in SUFFIX_BACKEND:
        return SUFFIX_BACKEND.get(path.suffix, "torch")
    raise CheckpointError(f"cannot tell which backend runs {path} (suffix {path.suffix or 'none'}); expected "
                          f"{', '.join(SUFFIX_BACKEND)} or a deploy folder")


def backend_class(name: str) -> type[BackendBase]:
    if name not in BACKENDS:
        raise EcmEdgeError(f"unknown backend {name!r}; choose from auto, {', '.join(BACKENDS)}")
    module, attr = BACKENDS[name]
    return getattr(importlib.import_module(module), attr)


def load_backend(artifact: str | Path, backend: str = "auto", **options: Any) -> BackendBase:
    """Verify ``artifact`` against its manifest and load it with ``backend`` (``auto``: by suffix).

    ``options`` go to the backend (``precision=`` to insist on one, ``threads=``, ``providers=`` for
    onnxruntime; ``stream=`` for tensorrt; ``graph=``/``device=`` for torch).
    """
    natural = backend_for(artifact)
    wanted = natural if backend == "auto" else backend
    backend_class(wanted)  # an unknown name is an error of its own
    if wanted != natural:
        raise EcmEdgeError(f"the {wanted} backend cannot run {artifact} (that file is for {natural}); pass the "
                           f"matching artifact from the export folder or --backend {natural}")
    return backend_class(wanted).load(Path(artifact), **options)


def list_artifacts(folder: str | Path) -> list[Manifest]:
    """Manifests of the exported artifacts in ``folder`` (read, not yet verified)."""
    folder = Path(folder)
    found = []
    for sidecar in sorted(folder.glob("*.json")):
        artifact = sidecar.with_name(sidecar.name[: -len(".json")])
        if artifact.suffix in (".onnx", ".engine") and artifact.is_file():
            manifest = read_manifest(artifact)
            if any(spec.name == "cas" for spec in manifest.outputs):  # the ECM head, not an exported backbone
                found.append(manifest)
    return found


def select_artifact(folder: str | Path, graph: str = "offline", precision: str | None = None,
                    kind: str | None = None) -> Path:
    """The artifact of ``graph`` in an export folder: an engine when TensorRT can run it, else ONNX; the
    requested precision, or the first of fp16, int8, fp32 for engines and fp32, fp16, int8 for ONNX."""
    folder = Path(folder)
    candidates = [m for m in list_artifacts(folder) if m.graph == graph
                  and (precision is None or m.precision == precision) and (kind is None or m.kind == kind)]
    if kind is None and not _tensorrt_importable():
        candidates = [m for m in candidates if m.kind != "engine"]
    if not candidates:
        what = " ".join(x for x in (precision, kind) if x)
        raise CheckpointError(f"no {what + ' ' if what else ''}{graph} artifact in {folder}; export one with "
                              f"`ecm-edge export --checkpoint RUN -o {folder}`")
    order = {"engine": ("fp16", "int8", "fp32"), "onnx": ("fp32", "fp16", "int8")}

    def rank(m: Manifest) -> tuple[int, int]:
        return (0 if m.kind == "engine" else 1, order[m.kind].index(m.precision) if m.kind in order else 0)

    return folder / min(candidates, key=rank).artifact


def _tensorrt_importable() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


__all__ = ["BACKENDS", "Backend", "BackendBase", "backend_class", "backend_for", "list_artifacts", "load_backend",
           "select_artifact"]
