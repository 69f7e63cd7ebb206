"""The export pipeline behind ``ecm-edge export``: deploy weights → ONNX (+ FP16 / INT8) → engines → validation.

For a stem ``ecm`` (``export.stem``) and precision P the output folder receives

=============================  ==========================================================================
``ecm.onnx``                   offline graph, FP32 (always: the reference the others are derived from)
``ecm.stream.onnx``            streaming graph, FP32
``ecm.fp16.onnx`` / ``.int8``  the same two graphs in P (``ecm.stream.fp16.onnx`` ...), when P ≠ fp32
``ecm.P.engine``               TensorRT engines of the P graphs (``ecm.stream.P.engine``), where TensorRT and a
                               GPU are present (``--engine`` asks for them; without TensorRT: a message, no file)
``*.json``                     the manifest beside every artifact (:mod:`ecm_edge.manifest`)
``validation.md`` / ``.json``  with ``validate``: parity with torch and mAP per precision
``operating_points.json``      the run's alert operating points (``ecm-edge calibrate``), copied unchanged when
                               the run has them for these weights, so a stream of this folder finds them
=============================  ==========================================================================

Every step is reported through ``on_step`` as a :class:`Step` (what, where, size, seconds); the CLI prints one
line per step. Nothing is printed here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ecm_edge.config import Config, apply_overrides
from ecm_edge.data.dataset import VideoDataset
from ecm_edge.environment import cuda_gpu_visible
from ecm_edge.errors import CheckpointError, ConfigError, DataError
from ecm_edge.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ecm_edge.manifest import (
    STREAMING_CONTRACT,
    Manifest,
    build_versions,
    graph_specs,
    onnxruntime_requirement,
    sha256_file,
    write_manifest,
)
from ecm_edge.operating_points import operating_points_path, read_operating_points
from ecm_edge.train.deploy import DeployModel, load_deploy, resolve_deploy_path

log = logging.getLogger("ecm_edge")

PRECISIONS = ("fp32", "fp16", "int8")
GRAPH_SUFFIX = {"offline": "", "streaming": ".stream"}
Progress = Callable[[int, str], Callable[[int], None]]  # (total, description) -> advance(n)


@dataclass
class ExportRequest:
    checkpoint: Path  # run folder or model.safetensors
    out_dir: Path
    precision: str = "fp16"
    calib_data: Path | None = None  # dataset folder; default: the checkpoint's training data
    calib_cache: Path | None = None  # default: <out_dir>/calibration
    opset: int = 17
    engine: bool | None = None  # None: build engines when TensorRT and a GPU are present
    validate: Path | None = None  # dataset folder whose test split validates the artifacts
    overrides: tuple[str, ...] = ()  # --set section.key=value on top of the checkpoint's config
    triton: Path | None = None  # also write a Triton model repository there (ecm_edge.export.triton)
    triton_head: str = "numpy"  # what runs the head for its ecm_stream model: numpy, onnxruntime or bls


@dataclass
class Step:
    what: str
    path: Path | None
    seconds: float
    note: str = ""

    @property
    def size_bytes(self) -> int | None:
        return self.path.stat().st_size if self.path is not None and self.path.is_file() else None


@dataclass
class ExportResult:
    out_dir: Path
    artifacts: list[Path] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    engine_message: str | None = None
    validation: Any = None  # ValidationReport

    def artifact(self, graph: str, precision: str, kind: str = "onnx") -> Path | None:
        for path in self.artifacts:
            manifest = json.loads(Path(str(path) + ".json").read_text())
            if (manifest["graph"], manifest["precision"], manifest["kind"]) == (graph, precision, kind):
                return path
        return None


def artifact_name(stem: str, graph: str, precision: str, kind: str = "onnx") -> str:
    """``ecm.onnx``, ``ecm.fp16.onnx``, ``ecm.stream.int8.onnx``, ``ecm.fp16.engine``, ``ecm.stream.fp32.engine``."""
    base = stem + GRAPH_SUFFIX[graph]
    if kind == "engine":
        return f"{base}.{precision}.engine"
    return f"{base}.onnx" if precision == "fp32" else f"{base}.{precision}.onnx"


def run_export(request: ExportRequest, on_step: Callable[[Step], None] = lambda step: None,
               progress: Progress | None = None) -> ExportResult:
    """Run the whole export; see the module docstring for what is written."""
    if request.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {request.precision!r}")
    weights = resolve_deploy_path(request.checkpoint)
    deploy = load_deploy(weights)
    cfg = deploy.config
    apply_overrides(cfg, request.overrides)
    out_dir = Path(request.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = ExportResult(out_dir)
    context = _Context(request, deploy, cfg, weights, sha256_file(weights), out_dir, result, on_step, progress)
    calibration_videos = context.calibration_videos() if request.precision == "int8" else None  # fail early
    points = context.run_operating_points()  # a malformed file fails before the export, not after it
    fp32 = {graph: context.export_fp32(graph) for graph in ("offline", "streaming")}
    if request.precision == "fp16":
        precise = {graph: context.convert_fp16(graph, path) for graph, path in fp32.items()}
    elif request.precision == "int8":
        calibration = context.calibrate(fp32["offline"], *calibration_videos)
        precise = {graph: context.quantize_int8(graph, path, calibration) for graph, path in fp32.items()}
    else:
        precise = fp32
    context.build_engines(precise)
    if request.validate is not None:
        context.validate(Path(request.validate))
    context.carry_operating_points(points)
    if request.triton is not None:
        context.write_triton(Path(request.triton))
    warn_about_foreign_artifacts(out_dir, context.weights_sha256)
    return result


def warn_about_foreign_artifacts(out_dir: Path, weights_sha256: str) -> list[str]:
    """Artifacts left in ``out_dir`` by an export of other weights (a runtime could pick them up): warn."""
    from ecm_edge.runtime.engines import list_artifacts

    foreign = [m.artifact for m in list_artifacts(out_dir) if m.source.get("weights_sha256") != weights_sha256]
    if foreign:
        log.warning("%s also holds artifacts of other weights (%s); export into an empty folder or remove them",
                    out_dir, ", ".join(foreign))
    return foreign


@dataclass
class _Context:
    """The state one export run shares between its steps."""

    request: ExportRequest
    deploy: DeployModel
    cfg: Config
    weights: Path
    weights_sha256: str
    out_dir: Path
    result: ExportResult
    on_step: Callable[[Step], None]
    progress: Progress | None

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def report(self, what: str, path: Path | None, started: float, note: str = "") -> None:
        step = Step(what, path, time.perf_counter() - started, note)
        self.result.steps.append(step)
        self.on_step(step)

    def path(self, graph: str, precision: str, kind: str = "onnx") -> Path:
        return self.out_dir / artifact_name(self.cfg.export.stem, graph, precision, kind)

    def rebuild_command(self, precision: str) -> str:
        parts = ["ecm-edge export", f"--checkpoint {self.request.checkpoint}", f"--precision {precision}",
                 f"--opset {self.request.opset}", f"-o {self.out_dir}"]
        if precision == "int8" and self.request.calib_data is not None:
            parts.insert(3, f"--calib-data {self.request.calib_data}")
        parts += [f"--set {item}" for item in self.request.overrides]
        return " ".join(parts)

    def manifest(self, graph: str, precision: str, calibration: dict[str, Any] | None = None,
                 quantization: dict[str, Any] | None = None) -> Manifest:
        dims = self.deploy.model.dims
        inputs, outputs = graph_specs(graph, dims.feature_dim, dims.num_classes)
        versions = build_versions()
        return Manifest(
            artifact="", kind="onnx", graph=graph, precision=precision, inputs=inputs, outputs=outputs,
            class_names=list(self.deploy.class_names), feature=dict(self.deploy.meta.get("feature", {})),
            topk=dims.topk if graph == "offline" else None, opset=self.request.opset,
            streaming=dict(STREAMING_CONTRACT) if graph == "streaming" else None, versions=versions,
            requires={"onnxruntime": onnxruntime_requirement(self.request.opset, versions.get("onnxruntime"))},
            calibration=calibration, quantization=quantization,
            source={"weights": str(self.weights), "weights_sha256": self.weights_sha256, "config": self.cfg.name},
            rebuild=self.rebuild_command(precision))

    def finish(self, path: Path, manifest: Manifest) -> None:
        write_manifest(path, manifest)
        self.result.artifacts.append(path)

    # -- the steps ---------------------------------------------------------------------------------------------
    def export_fp32(self, graph: str) -> Path:
        from ecm_edge.export.onnx_export import export_graph

        started = time.perf_counter()
        path = export_graph(self.deploy.model, self.path(graph, "fp32"), graph, opset=self.request.opset)
        self.finish(path, self.manifest(graph, "fp32"))
        self.report(f"onnx {graph} fp32", path, started)
        return path

    def convert_fp16(self, graph: str, fp32_path: Path) -> Path:
        from ecm_edge.export.fp16 import convert_to_fp16

        started = time.perf_counter()
        path = self.path(graph, "fp16")
        _save_onnx(convert_to_fp16(onnx.load(str(fp32_path))), path)
        self.finish(path, self.manifest(graph, "fp16"))
        self.report(f"onnx {graph} fp16", path, started)
        return path

    def calibrate(self, fp32_offline: Path, videos: list[tuple[str, np.ndarray]], source: str) -> Any:
        from ecm_edge.export.int8 import CalibrationMethod, calibrate

        started = time.perf_counter()
        log.info("INT8 calibration on %d videos of %s", len(videos), source)
        method = CalibrationMethod(self.cfg.export.calib_method, self.cfg.export.calib_percentile)
        cache_dir = self.request.calib_cache or self.out_dir / "calibration"
        advance = self.progress(len(videos), "calibrating") if self.progress else None
        calibration = calibrate(onnx.load(str(fp32_offline)), videos, method, self.weights_sha256, cache_dir,
                                advance)
        cached = ", cached" if calibration.from_cache else ""
        self.report(f"int8 calibration ({len(videos)} videos, {method.name}{cached})",
                    Path(cache_dir) / f"{calibration.key}.json", started)
        return calibration

    def calibration_videos(self) -> tuple[list[tuple[str, np.ndarray]], str]:
        """Up to ``export.calib_videos`` training videos, evenly spread over the split (deterministic)."""
        data_dir, ids = self.request.calib_data, None
        if data_dir is None:
            data_dir, ids = training_data_of(self.weights)
        dataset = VideoDataset.open(data_dir, self.cfg, "train")
        if ids:
            dataset = dataset.subset_ids([v for v in ids if v in dataset.annotations.videos])
        from ecm_edge.export.int8 import check_calibration_videos

        chosen = _spread(list(dataset.video_ids), self.cfg.export.calib_videos)
        videos = [(vid, np.asarray(dataset.features(vid), dtype=np.float32)) for vid in chosen]
        source = f"{data_dir} (train)"
        check_calibration_videos(videos, self.deploy.model.dims.feature_dim, source)
        return videos, source

    def quantize_int8(self, graph: str, fp32_path: Path, calibration: Any) -> Path:
        from ecm_edge.export.int8 import quantization_entry, quantize_qdq

        started = time.perf_counter()
        path = self.path(graph, "int8")
        _save_onnx(quantize_qdq(onnx.load(str(fp32_path)), calibration), path)
        entry = quantization_entry(path)
        if entry["onnxruntime_integer_ops"] < entry["quantized_convs"]:
            log.warning("ONNX Runtime %s runs only %d of the %d int8 convolutions of %s as integer operators; on a "
                        "CPU this graph is no faster than FP32", entry["onnxruntime"],
                        entry["onnxruntime_integer_ops"], entry["quantized_convs"], path.name)
        self.finish(path, self.manifest(graph, "int8", calibration.manifest_entry(), entry))
        self.report(f"onnx {graph} int8 (Q/DQ, {entry['onnxruntime_integer_ops']} of {entry['quantized_convs']} "
                    "convolutions integer in ONNX Runtime)", path, started)
        return path

    def build_engines(self, onnx_paths: dict[str, Path]) -> None:
        from ecm_edge.export import tensorrt_build as trtb

        wanted = self.request.engine
        if wanted is False:
            return
        if not trtb.tensorrt_available():
            self.result.engine_message = trtb.tensorrt_missing_message(list(onnx_paths.values()))
            return
        if not cuda_gpu_visible():
            self.result.engine_message = ("TensorRT is installed but no CUDA GPU is visible, so no engine was "
                                          "built; the ONNX artifacts run with the onnxruntime engine")
            return
        from ecm_edge.manifest import read_manifest

        for graph, onnx_path in onnx_paths.items():
            started = time.perf_counter()
            engine = self.path(graph, self.request.precision, "engine")
            manifest = trtb.build_engine(onnx_path, engine, read_manifest(onnx_path), self.cfg,
                                         timing_cache=self.out_dir / f"{self.cfg.export.stem}.timing.cache")
            self.finish(engine, manifest)
            self.report(f"tensorrt {graph} {self.request.precision} engine", engine, started)

    def write_triton(self, folder: Path) -> None:
        """The Triton model repository of these artifacts (``ecm_edge.export.triton``)."""
        from ecm_edge.export.triton import TritonSources, write_repository

        started = time.perf_counter()
        engine = self.path("streaming", self.request.precision, "engine")
        sources = TritonSources(self.out_dir, self.weights, self.weights_sha256, self.cfg.export.stem,
                                engine if engine.is_file() else None)
        models = write_repository(folder, sources, self.request.triton_head)
        self.report(f"triton repository ({', '.join(m.name for m in models)})", folder, started)

    def run_operating_points(self) -> Path | None:
        """The run's ``operating_points.json`` when it holds points for these weights; points of other weights
        (calibrated before the run trained on) are left behind with a warning."""
        path = operating_points_path(self.weights.parent)
        points = read_operating_points(self.weights.parent)
        if points is None:
            log.info("%s has no alert operating points (ecm-edge calibrate), so this export carries none",
                     self.weights.parent)
            return None
        if points.weights_sha256 not in (None, self.weights_sha256):
            log.warning("%s was calibrated for other weights than %s, so the export leaves it out; run `ecm-edge "
                        "calibrate --checkpoint %s --data DIR` and export again", path, self.weights.name,
                        self.weights.parent)
            return None
        return path

    def carry_operating_points(self, source: Path | None) -> None:
        """Copy the run's operating points beside the artifacts, byte for byte (the stream reads them there)."""
        target = operating_points_path(self.out_dir)
        if source is None:
            if target.is_file() and not self._points_fit(target):
                log.warning("%s is left from an export of other weights; remove it, or calibrate the run and "
                            "export again", target)
            return
        started = time.perf_counter()
        atomic_write_bytes(target, source.read_bytes())
        self.report("alert operating points", target, started)

    def _points_fit(self, path: Path) -> bool:
        try:
            points = read_operating_points(path)
        except CheckpointError:
            return False
        return points is not None and points.weights_sha256 == self.weights_sha256

    def validate(self, data_dir: Path) -> None:
        from ecm_edge.export import validate as val
        from ecm_edge.runtime.engines import load_engine

        started = time.perf_counter()
        dataset = VideoDataset.open(data_dir, self.cfg, "test")
        if list(dataset.class_names) != list(self.deploy.class_names):
            raise DataError(f"{data_dir} has classes {dataset.class_names[:3]}… but the model was trained on "
                            f"{self.deploy.class_names[:3]}…; validate on the dataset the model was trained for")
        clips = val.offline_clips(dataset, self.cfg.data.t_fixed)
        report = val.ValidationReport("test", len(dataset))
        reference = load_engine(self.weights, engine="torch", graph="offline")
        reference_out = val.run_offline(reference, clips)
        report.maps.append(val.map_row("torch", "torch", val.evaluate_outputs(reference_out, dataset,
                                                                              self.deploy.class_names, self.cfg)))
        stream_reference = load_engine(self.weights, engine="torch", graph="streaming")
        for path in self.result.artifacts:
            runner = load_engine(path)
            manifest = runner.manifest
            if manifest.graph == "offline":
                advance = self.progress(len(clips), f"validating {path.name}") if self.progress else None
                outputs = val.run_offline(runner, clips, progress=advance)
                report.parity += val.compare_outputs(reference_out, outputs, "offline", manifest.precision,
                                                     runner.name)
                evaluation = val.evaluate_outputs(outputs, dataset, self.deploy.class_names, self.cfg)
                report.maps.append(val.map_row(manifest.precision, runner.name, evaluation))
            else:
                report.parity += val.streaming_parity(stream_reference, runner, manifest.precision, dataset)
            runner.close()
        val.add_map_deltas(report.maps)
        self.result.validation = report
        atomic_write_json(self.out_dir / "validation.json", report.to_dict())
        markdown = self.out_dir / "validation.md"
        atomic_write_text(markdown, report.to_markdown())
        verdict = "all checks passed" if report.passed else "SOME CHECKS FAILED"
        self.report(f"validation on {len(dataset)} test videos of {data_dir} ({verdict})", markdown, started)


def training_data_of(weights: Path) -> tuple[Path, list[str] | None]:
    """The training data folder (and training video ids) recorded in the run folder's ``last.pt``."""
    from ecm_edge.train.checkpoint import load_checkpoint

    for name in ("last.pt", "best.pt"):
        state_path = weights.with_name(name)
        if state_path.is_file():
            state = load_checkpoint(state_path)
            if state.get("data_dir"):
                data_dir = Path(state["data_dir"])
                if not data_dir.is_dir():
                    raise DataError(f"the training data of {weights.parent} ({data_dir}) is gone; pass "
                                    "--calib-data DIR with training features for INT8 calibration")
                return data_dir, list(state.get("train_ids") or []) or None
    raise DataError(f"{weights.parent} records no training data (no last.pt with a data folder beside "
                    f"{weights.name}); pass --calib-data DIR with training features for INT8 calibration")


def _spread(items: list[str], limit: int) -> list[str]:
    if limit <= 0 or len(items) <= limit:
        return items
    picks = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


def _save_onnx(model: onnx.ModelProto, path: Path) -> None:
    from ecm_edge.io import atomic_path

    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
