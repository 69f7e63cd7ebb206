"""Inference engines for the exported ECM head, behind one protocol (no torch import here).

========================  ==================================  =======================================================
engine                    artifact                            needs
========================  ==================================  =======================================================
``onnxruntime``           ``<stem>[.fp16|.int8].onnx``        onnxruntime (CPU; the CUDA provider when installed)
``tensorrt``              ``<stem>.<precision>.engine``       TensorRT 10/11, a GPU, numba-cuda (device buffers)
``torch``                 deploy weights (``model.safetensors``)  torch (a plugin in ``ecm_edge.export.torch_engine``)
========================  ==================================  =======================================================

Every engine loads an artifact only after :func:`ecm_edge.manifest.verify_artifact` accepted it (hash, precision,
versions), then offers:

- ``set_shapes({"features": (B, T, D)}) -> {output: shape}``: fix the input shape (TensorRT needs it before a run;
  the others just check it against the manifest) and learn the output shapes;
- ``infer(features) -> {name: array}``: host (numpy) arrays in, host arrays out, names from the manifest;
- ``infer_device(inputs, outputs=None, stream=None)``: device buffers (numba-cuda device arrays or anything with
  ``__cuda_array_interface__``) in and out, on the caller's CUDA stream, where ``supports_device_buffers`` is true.

The engine of an artifact is found by its suffix (``auto``) or named; :func:`select_artifact` picks one file from
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

# name -> (module, class), imported by engine_class on first use. Add an engine by adding a line here.
# The torch engine is a plugin that lives with the torch code (ecm_edge.export.torch_engine, above the runtime
# layer, docs/design.md §2 and §6): the runtime names it by module path only and never imports it statically, so
# it is loaded (and torch with it) only when "torch" is asked for.
ENGINES: dict[str, tuple[str, str]] = {
    "onnxruntime": ("ecm_edge.runtime.engines.onnxruntime_engine", "OnnxRuntimeEngine"),
    "tensorrt": ("ecm_edge.runtime.engines.tensorrt_engine", "TensorRTEngine"),
    "torch": ("ecm_edge.export.torch_engine", "TorchEngine"),
}
SUFFIX_ENGINE = {".onnx": "onnxruntime", ".engine": "tensorrt", ".safetensors": "torch"}


@runtime_checkable
class Engine(Protocol):
    """What the runtime needs from an inference engine."""

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


class EngineBase:
    """Shape bookkeeping shared by the engines: everything the manifest already says."""

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
        raise EcmEdgeError(f"the {self.name} engine runs on host arrays only here; call infer() with numpy arrays")

    def close(self) -> None:
        """Release sessions and buffers (the object is unusable afterwards)."""

    def __enter__(self) -> EngineBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def engine_for(artifact: str | Path) -> str:
    """The engine that runs ``artifact``, from its suffix (a folder means deploy weights → torch)."""
    path = Path(artifact)
    if path.is_dir() or path.suffix in SUFFIX_ENGINE:
        return SUFFIX_ENGINE.get(path.suffix, "torch")
    raise CheckpointError(f"cannot tell which engine runs {path} (suffix {path.suffix or 'none'}); expected "
                          f"{', '.join(SUFFIX_ENGINE)} or a deploy folder")


def engine_class(name: str) -> type[EngineBase]:
    """The class of engine ``name``, its module imported now (the torch plugin's too: see :data:`ENGINES`)."""
    if name not in ENGINES:
        raise EcmEdgeError(f"unknown engine {name!r}; choose from auto, {', '.join(ENGINES)}")
    module, attr = ENGINES[name]
    return getattr(importlib.import_module(module), attr)


def load_engine(artifact: str | Path, engine: str = "auto", **options: Any) -> EngineBase:
    """Verify ``artifact`` against its manifest and load it with ``engine`` (``auto``: by suffix).

    ``options`` go to the engine (``precision=`` to insist on one, ``threads=``, ``providers=`` for
    onnxruntime; ``stream=`` for tensorrt; ``graph=``/``device=`` for torch).
    """
    natural = engine_for(artifact)
    wanted = natural if engine == "auto" else engine
    engine_class(wanted)  # an unknown name is an error of its own
    if wanted != natural:
        raise EcmEdgeError(f"the {wanted} engine cannot run {artifact} (that file is for {natural}); pass the "
                           f"matching artifact from the export folder or --engine {natural}")
    return engine_class(wanted).load(Path(artifact), **options)


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


__all__ = ["ENGINES", "Engine", "EngineBase", "engine_class", "engine_for", "list_artifacts", "load_engine",
           "select_artifact"]
