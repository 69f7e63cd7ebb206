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
an export folder by graph and precision, and :func:`choose_precision` decides which precision of an export folder
a head runs (``auto``: the fastest on this machine, with the reason; docs/design.md §6):

- a TensorRT engine where TensorRT can run one (fp16, then int8, then fp32);
- on a CPU through ONNX Runtime: **int8** when the folder holds int8 graphs whose quantized convolutions ONNX
  Runtime runs as integer operators (the manifest's ``quantization`` entry, recorded at export) and the CPU has
  integer dot-product instructions (:func:`ecm_edge.environment.cpu_int8_instructions`: AVX-VNNI/AVX512-VNNI,
  AVX2, Arm dot product); **fp32** otherwise. **fp16** is never chosen on a CPU (ONNX Runtime has few float16
  CPU kernels and converts around them: slower than fp32), only when asked for;
- ONNX Runtime on a GPU (its CUDA provider): fp32; the int8 rule is about CPU kernels.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ecm_edge.environment import cpu_int8_instructions, cuda_gpu_visible
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


# -- which precision a head runs ----------------------------------------------------------------------------------
PRECISION_CHOICES = ("auto", "fp32", "fp16", "int8")


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision (and artifact kind) a head of an export folder runs, and why."""

    precision: str  # "fp32" | "fp16" | "int8"
    kind: str  # "onnx" | "engine" | "weights" (a deploy folder's weights, run by numpy or torch)
    reason: str

    def describe(self) -> str:
        what = {"engine": "TensorRT engines", "onnx": "ONNX graphs"}.get(self.kind, "deploy weights")
        return f"{self.precision} {what} ({self.reason})"


def choose_precision(folder: str | Path, precision: str = "auto", kind: str | None = None,
                     cpu_features: set[str] | None = None) -> PrecisionChoice:
    """Which precision of the export ``folder`` to run: ``precision`` when one is named (it must exist for both
    graphs), else the rule of the module doc. ``kind``: ``onnx`` or ``engine`` only; ``cpu_features``: the
    CPU's features as :func:`~ecm_edge.environment.cpu_features` names them (None: this CPU's)."""
    if precision not in PRECISION_CHOICES:
        raise EcmEdgeError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    folder = Path(folder)
    manifests = list_artifacts(folder)
    complete = _complete_pairs(manifests)
    kinds = [kind] if kind is not None else (["engine"] if _tensorrt_importable() else []) + ["onnx"]
    if precision != "auto":
        for k in kinds:
            if (k, precision) in complete:
                note = ""
                if precision == "fp16" and k == "onnx" and not _onnxruntime_gpu():
                    note = "; fp16 on a CPU is slower than fp32 there"
                    log.warning("running fp16 ONNX graphs on the CPU because fp16 was asked for; fp32 is faster there")
                return PrecisionChoice(precision, k, f"asked for{note}")
        raise CheckpointError(f"no {precision} {' or '.join(kinds)} artifacts of both graphs (offline and "
                              f"streaming) in {folder}; export them with `ecm-edge export --checkpoint RUN "
                              f"--precision {precision} -o {folder}`, or choose another --precision")
    if "engine" in kinds:
        for candidate in ("fp16", "int8", "fp32"):
            if ("engine", candidate) in complete:
                return PrecisionChoice(candidate, "engine", "TensorRT engine: TensorRT is installed and the folder "
                                                            f"has {candidate} engines of both graphs")
    if "onnx" not in kinds or not any(k == "onnx" for k, _ in complete):
        what = "TensorRT engines" if kinds == ["engine"] else "artifacts"
        raise CheckpointError(f"no {what} of both graphs (offline and streaming) in {folder}; export them with "
                              f"`ecm-edge export --checkpoint RUN -o {folder}`")
    if _onnxruntime_gpu():
        return _onnx_fallback(complete, "ONNX Runtime runs on the GPU (CUDA provider); the int8 rule is for CPUs")
    if ("onnx", "int8") not in complete:
        return _onnx_fallback(complete, "CPU; the folder has no int8 graphs")
    fused = _int8_fuses(manifests)
    if fused is not None:
        return _onnx_fallback(complete, fused)
    instructions = cpu_int8_instructions(cpu_features)
    if instructions is None:
        return _onnx_fallback(complete, "CPU without integer dot-product instructions (AVX2, AVX-VNNI, "
                                        "AVX512-VNNI, Arm dot product): int8 would be no faster")
    return PrecisionChoice("int8", "onnx", f"CPU with {instructions}: ONNX Runtime runs the int8 graphs' "
                                           "convolutions as integer operators")


def precision_report(folder: str | Path | None = None, cpu_features: set[str] | None = None) -> dict[str, str]:
    """What each precision would run on this machine, and what ``auto`` picks (for ``folder``, an export
    folder, from its artifacts): the lines ``ecm-edge checks`` prints."""
    instructions = cpu_int8_instructions(cpu_features)
    tensorrt = _tensorrt_importable() and cuda_gpu_visible()
    engine = "TensorRT engine on the GPU where the folder has one, else " if tensorrt else ""
    if _onnxruntime_gpu():
        report = {"fp32": f"{engine}ONNX Runtime CUDA provider, float32",
                  "fp16": f"{engine}ONNX Runtime CUDA provider, float16",
                  "int8": f"{engine}ONNX Runtime CUDA provider (Q/DQ)"}
        rule = "fp32 ONNX (GPU through ONNX Runtime)"
    else:
        report = {"fp32": f"{engine}ONNX Runtime CPU, float32 convolutions",
                  "fp16": f"{engine}ONNX Runtime CPU, float16: slower than fp32 on a CPU, only when asked for",
                  "int8": f"{engine}ONNX Runtime CPU, " + (
                      f"integer convolutions (QLinearConv) on {instructions}" if instructions else
                      "no integer dot-product instructions: no faster than fp32")}
        rule = (f"int8 where an export folder has int8 graphs ({instructions}), else fp32" if instructions
                else "fp32 (this CPU has no integer dot-product instructions)")
    if tensorrt:
        rule = "TensorRT engines (fp16, int8, fp32) where the folder has them, else " + rule
    if folder is None:
        report["auto"] = rule
    else:
        try:
            report["auto"] = f"{choose_precision(folder, cpu_features=cpu_features).describe()} from {folder}"
        except CheckpointError as exc:
            report["auto"] = f"nothing to run in {folder}: {exc}"
    return report


def _complete_pairs(manifests: list[Manifest]) -> set[tuple[str, str]]:
    """(kind, precision) of which both graphs are present."""
    graphs: dict[tuple[str, str], set[str]] = {}
    for m in manifests:
        graphs.setdefault((m.kind, m.precision), set()).add(m.graph)
    return {key for key, present in graphs.items() if present >= {"offline", "streaming"}}


def _onnx_fallback(complete: set[tuple[str, str]], reason: str) -> PrecisionChoice:
    """fp32 ONNX (always exported), else int8, else fp16."""
    for candidate in ("fp32", "int8", "fp16"):
        if ("onnx", candidate) in complete:
            note = "" if candidate == "fp32" else f"; the folder has no fp32 graphs, so {candidate}"
            return PrecisionChoice(candidate, "onnx", reason + note)
    raise CheckpointError("no ONNX artifacts of both graphs")  # not reached: the caller checked


def _int8_fuses(manifests: list[Manifest]) -> str | None:
    """None when every int8 ONNX graph records that ONNX Runtime runs all its quantized convolutions as integer
    operators; else the reason not to choose int8."""
    for m in manifests:
        if m.kind != "onnx" or m.precision != "int8":
            continue
        entry = m.quantization or {}
        if "onnxruntime_integer_ops" not in entry:
            return (f"CPU; {m.artifact} records no integer convolutions (an int8 export of an older ecm-edge, "
                    "whose Q/DQ ONNX Runtime runs in float: no faster than fp32); re-export with --precision int8")
        if entry["onnxruntime_integer_ops"] < entry.get("quantized_convs", 1):
            return (f"CPU; ONNX Runtime {entry.get('onnxruntime', '?')} ran only {entry['onnxruntime_integer_ops']} of "
                    f"the {entry.get('quantized_convs')} int8 convolutions of {m.artifact} as integer operators")
    return None


def _onnxruntime_gpu() -> bool:
    """ONNX Runtime would run on a GPU here: its CUDA provider is installed and a CUDA GPU is visible."""
    try:
        import onnxruntime
    except ImportError:
        return False
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return False
    return cuda_gpu_visible()


__all__ = [
    "ENGINES",
    "PRECISION_CHOICES",
    "Engine",
    "EngineBase",
    "PrecisionChoice",
    "choose_precision",
    "engine_class",
    "engine_for",
    "list_artifacts",
    "load_engine",
    "precision_report",
    "select_artifact",
]
