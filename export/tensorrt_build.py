"""TensorRT engines (``<stem>.<precision>.engine``) from the precision's ONNX, for TensorRT 10.x and 11.x.

The network is built **strongly typed** (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): the precision comes
from the ONNX graph itself (FP16 tensors in ``<stem>.fp16.onnx``, Q/DQ nodes in ``<stem>.int8.onnx``), not from
builder flags. TensorRT 11 removed the FP16/INT8 builder flags and the implicit INT8 calibrators, so on 11.x this
module never touches them; on 10.x the weakly typed path with ``BuilderFlag.FP16`` / ``BuilderFlag.INT8`` (still
from the explicit Q/DQ graph, never a calibrator) is used only when the config asks for it
(``export.trt_strongly_typed: false``, for a TensorRT 10 build whose strongly typed network fails).

One optimization profile covers the dynamic input: batch 1 … ``export.max_batch`` and, for the offline graph,
T = ``export.min_t`` / ``opt_t`` (the offline clip length) / ``max_t``; for the streaming graph the window
W = 5 / ``export.stream_opt_window`` / ``export.stream_max_window``. A timing cache (``<stem>.timing.cache``
beside the engines) makes rebuilds fast; the workspace is limited to ``export.workspace_mb``.

The pure-Python decisions (:func:`plan_build`, :func:`profile_shapes`, :func:`engine_manifest`) import no
TensorRT and are tested everywhere; :func:`build_engine` needs TensorRT and a GPU. An engine file exists only if
TensorRT built it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecm_edge.config import Config, ExportConfig
from ecm_edge.environment import gpu_name_and_capability
from ecm_edge.errors import ConfigError, EcmEdgeError, MissingDependencyError, import_optional
from ecm_edge.io import atomic_write_bytes
from ecm_edge.manifest import STREAM_MIN_WINDOW, Manifest, version_tuple

log = logging.getLogger("ecm_edge")

SUPPORTED_MAJORS = (10, 11)
TENSORRT_INSTALL_HINT = ("install TensorRT 10 or 11 (on a Jetson it comes with JetPack; on an x86 server "
                         "`pip install tensorrt`) and re-run with --engine")


def tensorrt_missing_message(onnx_paths: list[Path]) -> str:
    """What ``export`` prints when TensorRT is absent: the ONNX artifacts are usable as they are."""
    names = ", ".join(str(p) for p in onnx_paths) or "the ONNX artifacts"
    return (f"TensorRT is not installed, so no engine was built. The ONNX artifacts are complete and run with "
            f"the onnxruntime engine (CPU, or CUDA where onnxruntime-gpu is installed): {names}. To build "
            f"engines, {TENSORRT_INSTALL_HINT}.")


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`MissingDependencyError` with the documented message."""
    return import_optional("tensorrt", "TensorRT", "building and running engines",
                           f"{TENSORRT_INSTALL_HINT}; meanwhile use the ONNX artifacts with the onnxruntime engine")


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except MissingDependencyError:
        return False
    return True


# -- pure-Python decisions --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildPlan:
    """How to drive a given TensorRT version for a given precision."""

    version: tuple[int, ...]
    strongly_typed: bool
    network_flags: tuple[str, ...]  # names in trt.NetworkDefinitionCreationFlag
    builder_flags: tuple[str, ...]  # names in trt.BuilderFlag to set
    cleared_flags: tuple[str, ...] = ()  # names in trt.BuilderFlag to clear where the version has them
    uses_calibrator: bool = False  # never: INT8 comes from the graph's explicit Q/DQ nodes


def plan_build(tensorrt_version: str, precision: str, strongly_typed: bool = True) -> BuildPlan:
    """Decide network and builder flags. 11.x: strongly typed, no precision flags. 10.x: the same by default;
    the weakly typed path with FP16/INT8 flags only when ``strongly_typed`` is False."""
    version = version_tuple(tensorrt_version)
    if not version or version[0] < SUPPORTED_MAJORS[0]:
        raise MissingDependencyError(f"TensorRT {SUPPORTED_MAJORS[0]} or newer", "building engines",
                                     f"TensorRT {tensorrt_version} is installed; {TENSORRT_INSTALL_HINT}")
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"precision must be fp32, fp16 or int8, got {precision!r}")
    if version[0] > SUPPORTED_MAJORS[-1]:
        log.warning("TensorRT %s is newer than the tested 10.x/11.x; building as for 11.x", tensorrt_version)
    exact_fp32 = ("TF32",) if precision == "fp32" else ()  # fp32 means fp32: no TF32 tensor-core rounding
    if strongly_typed:
        return BuildPlan(version, True, ("STRONGLY_TYPED",), (), exact_fp32)
    if version[0] >= 11:
        raise ConfigError(f"TensorRT {tensorrt_version} builds strongly typed networks only (the FP16/INT8 builder "
                          "flags were removed in 11.0); set export.trt_strongly_typed=true")
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)}[precision]
    return BuildPlan(version, False, (), flags, exact_fp32)


@dataclass(frozen=True)
class ProfileShape:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def profile_shapes(export_cfg: ExportConfig, graph: str, feature_dim: int,
                   input_name: str = "features") -> dict[str, ProfileShape]:
    """The optimization profile of the graph's dynamic input ``[B, T|W, D]``, from the config."""
    if graph == "offline":
        lengths = (export_cfg.min_t, export_cfg.opt_t, export_cfg.max_t)
        keys = "export.min_t / opt_t / max_t"
    elif graph == "streaming":
        lengths = (STREAM_MIN_WINDOW, export_cfg.stream_opt_window, export_cfg.stream_max_window)
        keys = f"the streaming window ({STREAM_MIN_WINDOW}) / export.stream_opt_window / stream_max_window"
    else:
        raise ConfigError(f"unknown graph {graph!r}")
    if not (1 <= lengths[0] <= lengths[1] <= lengths[2]):
        raise ConfigError(f"TensorRT profile for the {graph} graph needs 1 ≤ min ≤ opt ≤ max, got {lengths} "
                          f"from {keys}")
    if export_cfg.max_batch < 1:
        raise ConfigError(f"export.max_batch must be ≥ 1, got {export_cfg.max_batch}")
    opt_batch = min(export_cfg.stream_opt_batch, export_cfg.max_batch) if graph == "streaming" else 1
    batches = (1, opt_batch, export_cfg.max_batch)
    shapes = [(b, t, feature_dim) for b, t in zip(batches, lengths, strict=True)]
    return {input_name: ProfileShape(*shapes)}


def engine_path_for(onnx_path: Path, precision: str) -> Path:
    """``ecm.fp16.onnx`` / ``ecm.onnx`` → ``ecm.fp16.engine``; ``ecm.stream.int8.onnx`` → ``ecm.stream.int8.engine``."""
    stem = onnx_path.name[: -len(".onnx")]
    if stem.endswith(f".{precision}"):
        stem = stem[: -len(precision) - 1]
    return onnx_path.with_name(f"{stem}.{precision}.engine")


def engine_manifest(onnx_manifest: Manifest, tensorrt_version: str, gpu_name: str,
                    compute_capability: tuple[int, int], plan: BuildPlan,
                    profile: dict[str, ProfileShape]) -> Manifest:
    """The engine's manifest: the ONNX manifest's contract plus TensorRT version, GPU and profile."""
    cc = f"{compute_capability[0]}.{compute_capability[1]}"
    versions = dict(onnx_manifest.versions, tensorrt=tensorrt_version)
    return Manifest(
        artifact="", kind="engine", graph=onnx_manifest.graph, precision=onnx_manifest.precision,
        inputs=onnx_manifest.inputs, outputs=onnx_manifest.outputs, class_names=onnx_manifest.class_names,
        feature=onnx_manifest.feature, topk=onnx_manifest.topk, opset=onnx_manifest.opset,
        streaming=onnx_manifest.streaming, versions=versions,
        requires={"tensorrt": tensorrt_version, "compute_capability": cc},
        gpu={"name": gpu_name, "compute_capability": cc}, calibration=onnx_manifest.calibration,
        source=dict(onnx_manifest.source, onnx=onnx_manifest.artifact, onnx_sha256=onnx_manifest.sha256,
                    strongly_typed=plan.strongly_typed, builder_flags=list(plan.builder_flags),
                    profile={name: {"min": list(s.min), "opt": list(s.opt), "max": list(s.max)}
                             for name, s in profile.items()}),
        rebuild=_with_engine_flag(onnx_manifest.rebuild),
    )


def _with_engine_flag(command: str) -> str:
    return command if not command or "--engine" in command.split() else f"{command} --engine"


# -- the build (needs TensorRT and a GPU) -----------------------------------------------------------------------
def build_engine(onnx_path: Path, engine_path: Path, onnx_manifest: Manifest, cfg: Config,
                 timing_cache: Path | None = None) -> Manifest:
    """Build and write the engine of ``onnx_path``; returns its manifest (not yet written)."""
    trt = import_tensorrt()
    gpu = gpu_name_and_capability()
    if gpu is None:
        raise EcmEdgeError("no CUDA GPU is visible, so no TensorRT engine can be built here; the ONNX artifacts "
                           "run with the onnxruntime engine")
    plan = plan_build(trt.__version__, onnx_manifest.precision, cfg.export.trt_strongly_typed)
    profile = profile_shapes(cfg.export, onnx_manifest.graph, int(onnx_manifest.feature["dim"]),
                             onnx_manifest.inputs[0].name)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    _warn_slow_precision(builder, onnx_manifest.precision, gpu[0])
    network = builder.create_network(_network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EcmEdgeError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.export.workspace_mb << 20)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in plan.cleared_flags:
        if hasattr(trt.BuilderFlag, flag):
            config.clear_flag(getattr(trt.BuilderFlag, flag))
    optimization = builder.create_optimization_profile()
    for name, shape in profile.items():
        optimization.set_shape(name, shape.min, shape.opt, shape.max)
    config.add_optimization_profile(optimization)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EcmEdgeError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} (see the "
                           "TensorRT messages above); the ONNX artifact still runs with onnxruntime")
    atomic_write_bytes(engine_path, bytes(memoryview(serialized)))
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return engine_manifest(onnx_manifest, trt.__version__, gpu[0], gpu[1], plan, profile)


def _network_flags(trt: Any, plan: BuildPlan) -> int:
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    return flags


def _warn_slow_precision(builder: Any, precision: str, gpu_name: str) -> None:
    """Say so when the GPU lacks fast FP16/INT8 (the properties were deprecated in 10.x, absent in 11.x)."""
    attribute = {"fp16": "platform_has_fast_fp16", "int8": "platform_has_fast_int8"}.get(precision)
    if attribute is None:
        return
    try:
        fast = getattr(builder, attribute)
    except Exception:
        return
    if fast is False:
        log.warning("%s has no fast %s path; the %s engine is built but may not be faster than fp32", gpu_name,
                    precision.upper(), precision)
