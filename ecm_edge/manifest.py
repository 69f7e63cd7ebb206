"""Sidecar manifests of exported artifacts (docs/design.md §6): ``<artifact>.json`` beside every ONNX file and engine.

A manifest says what an artifact is and what it needs: its sha256, precision, graph (``offline`` or
``streaming``), input/output names with symbolic shapes, class names, feature spec, the versions that built it
(ecm_edge, onnx, onnxruntime, TensorRT, torch), the GPU an engine was built for, and the calibration data hash and
the quantization layout of INT8 artifacts. The runtime calls :func:`verify_artifact` before it loads anything: a
file whose bytes no longer match, an engine built by another TensorRT or for another GPU, or an ONNX graph newer
than the installed ONNX Runtime is refused with a message that names the command that rebuilds it. Engines are
executable code for the GPU, so a failed check is never a warning.

Shapes are lists of ints and dimension names; a name may carry an offset (``"window-4"``: the streaming graph
returns four columns fewer than its input window). :meth:`TensorSpec.resolve` turns them into numbers. This module
imports neither torch nor onnx.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecm_edge.architecture import RECEPTIVE_RADIUS, STREAM_WINDOW
from ecm_edge.environment import gpu_name_and_capability, package_version
from ecm_edge.errors import CheckpointError
from ecm_edge.io import atomic_write_json
from ecm_edge.version import __version__

MANIFEST_FORMAT = "ecm-edge/artifact"
MANIFEST_VERSION = 1  # bump when the manifest layout or an exported graph's I/O contract changes
KINDS = ("onnx", "engine", "weights")  # "weights": deploy weights run by torch
GRAPHS = ("offline", "streaming")
PRECISIONS = ("fp32", "fp16", "int8")

# The first ONNX Runtime release that implements an opset (its release notes); newer opsets fall back to the
# ONNX Runtime version that validated the export.
MIN_ONNXRUNTIME_FOR_OPSET: dict[int, str] = {13: "1.7", 14: "1.8", 15: "1.9", 16: "1.11", 17: "1.13", 18: "1.14"}

_DIM = re.compile(r"^(?P<name>[A-Za-z_]\w*)(?P<offset>[+-]\d+)?$")

STREAM_MIN_WINDOW = STREAM_WINDOW  # the streaming graph's smallest window: one output column

# The I/O contract of the exported graphs, in output order. "D" and "C" stand for the feature dimension and the
# number of classes; other names are dynamic dimensions. A new output is one more line here (and in the graph).
GRAPH_IO: dict[str, dict[str, list[tuple[str, list[int | str]]]]] = {
    "offline": {
        "inputs": [("features", ["batch", "time", "D"])],
        "outputs": [("cas", ["batch", "time", "C"]), ("video_scores", ["batch", "C"]),
                    ("weights", ["batch", "time", "C"])],
    },
    "streaming": {
        "inputs": [("features", ["batch", "window", "D"])],
        "outputs": [("cas", ["batch", f"window-{2 * RECEPTIVE_RADIUS}", "C"]),
                    ("weights", ["batch", f"window-{2 * RECEPTIVE_RADIUS}", "C"])],
    },
}
# Outputs that artifacts exported before the weight-transition head was shipped lack; the runtime still loads them
# (every output is looked up by name) and only the score sources that need them refuse such an artifact.
ADDED_OUTPUTS: tuple[str, ...] = ("weights",)

# What the streaming graph computes, written into its manifest for the streaming runtime.
STREAMING_CONTRACT: dict[str, Any] = {
    "input": "features",
    "window_dim": "window",
    "receptive_radius": RECEPTIVE_RADIUS,
    "min_window": STREAM_MIN_WINDOW,
    "output_columns": f"window-{2 * RECEPTIVE_RADIUS}",
    "column_index": f"output column j is the CAS of window snippet j+{RECEPTIVE_RADIUS}",
    "padding": "valid: the window is not zero padded, so its first and last "
               f"{RECEPTIVE_RADIUS} snippets only serve as context; the offline graph's zero-padded border "
               "columns come from the offline graph",
}


@dataclass
class TensorSpec:
    """One graph input or output: name, element type and shape (ints and dimension names)."""

    name: str
    dtype: str  # numpy dtype name: "float32", "float16", ...
    shape: list[int | str]

    def resolve(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        """Concrete shape for named dimensions, e.g. ``{"batch": 1, "window": 9}`` → ``(1, 5, C)``."""
        return tuple(resolve_dim(d, dims) for d in self.shape)

    def dim_names(self) -> list[str]:
        return [_DIM.match(d)["name"] for d in self.shape if isinstance(d, str) and _DIM.match(d)]

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TensorSpec:
        return cls(str(raw["name"]), str(raw["dtype"]), list(raw["shape"]))


def graph_specs(graph: str, feature_dim: int, num_classes: int, dtype: str = "float32",
                legacy: bool = False) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an exported graph with D and C filled in (``legacy``: without :data:`ADDED_OUTPUTS`,
    the contract of artifacts exported before the transition weights were shipped)."""
    if graph not in GRAPH_IO:
        raise CheckpointError(f"unknown graph {graph!r}; choose from {', '.join(GRAPH_IO)}")
    fixed = {"D": feature_dim, "C": num_classes}

    def spec(name: str, shape: list[int | str]) -> TensorSpec:
        return TensorSpec(name, dtype, [fixed.get(d, d) if isinstance(d, str) else d for d in shape])

    io = GRAPH_IO[graph]
    outputs = [item for item in io["outputs"] if not (legacy and item[0] in ADDED_OUTPUTS)]
    return [spec(*item) for item in io["inputs"]], [spec(*item) for item in outputs]


def resolve_dim(dim: int | str, dims: Mapping[str, int]) -> int:
    """``7`` → 7; ``"time"`` → dims["time"]; ``"window-4"`` → dims["window"] − 4."""
    if isinstance(dim, int):
        return dim
    match = _DIM.match(dim)
    if match is None:
        raise CheckpointError(f"manifest shape dimension {dim!r} is not a name or name±offset")
    name = match["name"]
    if name not in dims:
        raise CheckpointError(f"shape dimension {name!r} is not given (known: {', '.join(sorted(dims)) or 'none'})")
    return dims[name] + int(match["offset"] or 0)


@dataclass
class Manifest:
    """Everything a runtime needs to know about one artifact before loading it."""

    artifact: str  # file name, relative to the manifest's folder
    kind: str  # "onnx" | "engine"
    graph: str  # "offline" | "streaming"
    precision: str  # "fp32" | "fp16" | "int8"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    class_names: list[str]
    feature: dict[str, Any]  # {"dim", "fps", "snippet_frames", "modalities"}
    sha256: str = ""
    size_bytes: int = 0
    topk: int | None = None  # k of the video score's top-k mean (offline graph)
    opset: int | None = None
    streaming: dict[str, Any] | None = None  # the streaming graph's window contract
    versions: dict[str, str | None] = field(default_factory=dict)
    requires: dict[str, str] = field(default_factory=dict)  # what the loading machine must offer
    gpu: dict[str, str] | None = None  # engines: {"name", "compute_capability"}
    calibration: dict[str, Any] | None = None  # int8: {"data_hash", "method", "videos", "cache_key", ...}
    # int8: the Q/DQ layout and what ONNX Runtime made of it at export: {"layout", "quantized_convs",
    # "onnxruntime", "onnxruntime_integer_ops", ...}; absent in int8 artifacts exported before it was recorded
    quantization: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)  # {"weights", "weights_sha256", "config"}
    rebuild: str = ""  # the command that rebuilds this artifact
    created: str = ""
    format: str = MANIFEST_FORMAT
    format_version: int = MANIFEST_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Manifest:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        values["inputs"] = [TensorSpec.from_dict(t) for t in raw["inputs"]]
        values["outputs"] = [TensorSpec.from_dict(t) for t in raw["outputs"]]
        return cls(**values)

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


def manifest_path(artifact: str | Path) -> Path:
    """The sidecar of ``ecm.fp16.onnx`` is ``ecm.fp16.onnx.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def build_versions(include_tensorrt: bool = True) -> dict[str, str | None]:
    """Versions of the components that produce or run artifacts on this machine."""
    versions: dict[str, str | None] = {"ecm_edge": __version__}
    for dist in ("onnx", "onnxruntime", "torch"):
        versions[dist] = package_version(dist)
    versions["tensorrt"] = package_version("tensorrt") if include_tensorrt else None
    return versions


def onnxruntime_requirement(opset: int, exporting_version: str | None) -> str:
    """The oldest ONNX Runtime that runs a graph of this opset."""
    if opset in MIN_ONNXRUNTIME_FOR_OPSET:
        return MIN_ONNXRUNTIME_FOR_OPSET[opset]
    return _major_minor(exporting_version) if exporting_version else MIN_ONNXRUNTIME_FOR_OPSET[max(
        MIN_ONNXRUNTIME_FOR_OPSET)]


def write_manifest(artifact: str | Path, manifest: Manifest) -> Path:
    """Hash ``artifact``, complete ``manifest`` (sha256, size, name, time) and write its sidecar atomically."""
    artifact = Path(artifact)
    manifest.artifact = artifact.name
    manifest.sha256 = sha256_file(artifact)
    manifest.size_bytes = artifact.stat().st_size
    manifest.created = manifest.created or datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")
    _check_fields(manifest, manifest_path(artifact))
    return atomic_write_json(manifest_path(artifact), manifest.to_dict())


def read_manifest(artifact: str | Path) -> Manifest:
    """Read the sidecar of ``artifact`` (no hash check: see :func:`verify_artifact`)."""
    path = manifest_path(artifact)
    if not path.is_file():
        raise CheckpointError(f"{artifact} has no manifest ({path.name} is missing beside it); artifacts are only "
                              "loaded with their manifest: re-export with `ecm-edge export`")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"manifest {path} is unreadable ({exc}); re-export with `ecm-edge export`") from None
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{path} is not an ecm-edge artifact manifest (format "
                              f"{raw.get('format') if isinstance(raw, dict) else None!r})")
    version = raw.get("format_version")
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise CheckpointError(f"{path} has manifest version {version!r}; this ecm-edge ({__version__}) reads "
                              f"version {MANIFEST_VERSION} and older: upgrade ecm-edge or re-export the model")
    try:
        manifest = Manifest.from_dict(raw)
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"manifest {path} is incomplete ({type(exc).__name__}: {exc}); re-export with "
                              "`ecm-edge export`") from None
    _check_fields(manifest, path)
    return manifest


def _check_fields(manifest: Manifest, where: Path) -> None:
    for name, value, allowed in (("kind", manifest.kind, KINDS), ("graph", manifest.graph, GRAPHS),
                                 ("precision", manifest.precision, PRECISIONS)):
        if value not in allowed:
            raise CheckpointError(f"manifest {where}: {name} must be one of {', '.join(allowed)}, got {value!r}")


@dataclass(frozen=True)
class RuntimeVersions:
    """What the loading machine offers; :meth:`detect` reads it, tests may state it."""

    onnxruntime: str | None
    tensorrt: str | None
    compute_capability: str | None  # "8.7"; None without a visible CUDA GPU

    @classmethod
    def detect(cls, need_gpu: bool = False) -> RuntimeVersions:
        gpu = gpu_name_and_capability() if need_gpu else None
        return cls(package_version("onnxruntime"), package_version("tensorrt"),
                   f"{gpu[1][0]}.{gpu[1][1]}" if gpu else None)


def verify_artifact(path: str | Path, precision: str | None = None, kind: str | None = None,
                    graph: str | None = None, runtime: RuntimeVersions | None = None) -> Manifest:
    """Check ``path`` against its manifest and this machine; return the manifest or raise :class:`CheckpointError`.

    Refused: a missing or foreign manifest; bytes whose sha256 differs from the manifest's; a precision, kind or
    graph other than the caller asked for; an engine built by another TensorRT version or for a GPU of another
    compute capability; an ONNX graph that needs a newer ONNX Runtime than the installed one.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"artifact {path} does not exist; export one with `ecm-edge export`")
    manifest = read_manifest(path)
    rebuild = _rebuild_hint(manifest)
    if manifest.artifact != path.name:
        raise CheckpointError(f"manifest {manifest_path(path).name} describes {manifest.artifact}, not {path.name} "
                              f"(renamed file?); {rebuild}")
    actual = sha256_file(path)
    if actual != manifest.sha256:
        raise CheckpointError(f"{path} does not match its manifest (sha256 {actual[:12]}… ≠ {manifest.sha256[:12]}…): "
                              f"the file was modified or corrupted and will not be loaded; {rebuild}")
    for name, wanted, have in (("precision", precision, manifest.precision), ("kind", kind, manifest.kind),
                               ("graph", graph, manifest.graph)):
        if wanted is not None and wanted != have:
            raise CheckpointError(f"{path} is a {have} artifact ({name}), but {wanted} was asked for; pick the "
                                  f"{wanted} file from the export folder or {rebuild}")
    need_gpu = manifest.kind == "engine"
    runtime = runtime or RuntimeVersions.detect(need_gpu=need_gpu)
    if manifest.kind == "engine":
        _check_engine_versions(path, manifest, runtime, rebuild)
    else:
        _check_onnx_versions(path, manifest, runtime, rebuild)
    return manifest


def _check_engine_versions(path: Path, manifest: Manifest, runtime: RuntimeVersions, rebuild: str) -> None:
    built_with = manifest.requires.get("tensorrt") or manifest.versions.get("tensorrt")
    if runtime.tensorrt is None:
        raise CheckpointError(f"{path} is a TensorRT engine but TensorRT is not installed here; use the ONNX "
                              "artifact with the onnxruntime engine, or install TensorRT and rebuild the engine")
    if built_with != runtime.tensorrt:
        raise CheckpointError(f"{path} was built by TensorRT {built_with} but TensorRT {runtime.tensorrt} is "
                              f"installed; engines only load in the version that built them: {rebuild}")
    wanted_cc = manifest.requires.get("compute_capability") or (manifest.gpu or {}).get("compute_capability")
    if wanted_cc != runtime.compute_capability:
        gpu = (manifest.gpu or {}).get("name", "another GPU")
        raise CheckpointError(f"{path} was built for {gpu} (compute capability {wanted_cc}) but this machine's GPU "
                              f"has compute capability {runtime.compute_capability or 'none visible'}; {rebuild}")


def _check_onnx_versions(path: Path, manifest: Manifest, runtime: RuntimeVersions, rebuild: str) -> None:
    needed = manifest.requires.get("onnxruntime")
    if needed is None:
        return
    if runtime.onnxruntime is None:
        raise CheckpointError(f"{path} needs onnxruntime ≥ {needed}, which is not installed: pip install onnxruntime")
    if version_tuple(runtime.onnxruntime) < version_tuple(needed):
        raise CheckpointError(f"{path} (ONNX opset {manifest.opset}) needs onnxruntime ≥ {needed} but "
                              f"{runtime.onnxruntime} is installed; upgrade onnxruntime or re-export with a lower "
                              f"--opset: {rebuild}")


def _rebuild_hint(manifest: Manifest) -> str:
    command = manifest.rebuild or "ecm-edge export --checkpoint RUN --precision " + manifest.precision
    return f"rebuild it with `{command}`"


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` → (10, 3, 0, 26); non-numeric tails (``"2.13.0+cpu"``, ``"1.0rc1"``) are dropped."""
    parts: list[int] = []
    for piece in version.split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() != len(piece):
            break
    return tuple(parts)


def _major_minor(version: str) -> str:
    return ".".join(str(p) for p in version_tuple(version)[:2])
