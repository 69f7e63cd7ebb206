"""``ecm-edge demo``: the whole product on an embedded default, from raw video to localized actions.

Eight named stages, each writing under one folder::

    OUT/
      data/         videos (procedural, exact ground truth), gt.json, split files, tiny-backbone features
      train/        the ECM run trained on video-level labels only (configs/demo.yaml), and its operating points
                    (operating_points.json: from which score a detection of each class becomes an alert)
      eval/         held-out detections (ActivityNet JSON), raw predictions (.npz) and mAP per IoU (eval.json)
      export/       fp32, fp16 and int8 ONNX with manifests; agreement.json (fp16/int8 against fp32)
      stream/       events.jsonl of one held-out video file streamed frame by frame through the runtime: its
                    detections and the alerts among them
      report.md     the summary tables and the timeline image
      timeline.png  ground truth, streamed detections (outlined where they became alerts) and CAS curves of the
                    streamed video
      demo.json     per stage: the parameters it ran with, its seconds and its figures

A stage is reused when ``demo.json`` records it with the same parameters (its own and those of the stages it
depends on) and its outputs exist; otherwise it and everything after it run again. ``fresh`` redoes all.
Training, evaluation and export need torch (imported by those stages only); streaming runs without it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecm_edge.config import Config, load_config
from ecm_edge.errors import DataError
from ecm_edge.io import atomic_write_json, atomic_write_text
from ecm_edge.operating_points import OPERATING_POINTS_NAME

logger = logging.getLogger("ecm_edge")

STATE_NAME = "demo.json"
STAGES = ("videos", "features", "train", "calibrate", "evaluate", "export", "stream", "report")
EXPORT_PRECISIONS = ("fp32", "fp16", "int8")
STREAM_ENGINE = "onnxruntime"  # the runtime path a deployment without torch uses


@dataclass(frozen=True)
class DemoOptions:
    """What a demo run makes; ``None`` takes the value of the demo config."""

    out_dir: Path = Path("demo")
    num_videos: int = 40  # procedural videos (about a quarter of each class is held out for testing)
    epochs: int | None = None  # training epochs (configs/demo.yaml: train.epochs)
    seed: int = 0  # seed of the video set; the training seed is the config's
    fresh: bool = False  # redo every stage even when its outputs exist
    config: str = "demo"  # shipped config name or YAML path
    progress: bool = False  # progress bars inside long stages (the CLI turns them on for a terminal)


@dataclass
class StageResult:
    """One stage's outcome, as reported when it ends."""

    name: str
    seconds: float  # of this run (≈0 when reused)
    reused: bool
    wrote: list[Path]
    figures: dict[str, Any] = field(default_factory=dict)
    original_seconds: float = 0.0  # what the stage took when it last ran


@dataclass
class DemoSummary:
    """Everything a demo run produced, for the CLI's summary and for tests."""

    out_dir: Path
    stages: list[StageResult]
    report: Path
    timeline: Path

    def stage(self, name: str) -> StageResult:
        return next(s for s in self.stages if s.name == name)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)


class _Paths:
    """Where each stage writes, under the demo's folder."""

    def __init__(self, root: Path):
        self.root = root
        self.data, self.train, self.eval = root / "data", root / "train", root / "eval"
        self.export, self.stream = root / "export", root / "stream"
        self.report, self.timeline, self.state = root / "report.md", root / "timeline.png", root / STATE_NAME


EventCallback = Callable[[dict[str, Any]], None]
StageCallback = Callable[[StageResult], None]


def demo_config(options: DemoOptions) -> Config:
    """The demo's config with the options applied (epochs)."""
    overrides = [f"train.epochs={options.epochs}"] if options.epochs is not None else []
    return load_config(options.config, overrides)


def run_demo(options: DemoOptions, *, on_stage: StageCallback | None = None, on_start: Callable[[str], None] | None = None,
             on_event: EventCallback | None = None) -> DemoSummary:
    """Run (or reuse) every stage in order; ``on_start(name)`` before and ``on_stage(result)`` after each,
    ``on_event(event)`` for each runtime event while streaming."""
    cfg = demo_config(options)
    if options.num_videos < 2 * cfg.model.num_classes:
        raise DataError(f"the demo needs at least two videos per class ({2 * cfg.model.num_classes} for "
                        f"{cfg.model.num_classes} classes, one to train on and one held out), got {options.num_videos}")
    paths = _Paths(Path(options.out_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    state = {} if options.fresh else _read_state(paths.state)
    runners: dict[str, Callable[[], tuple[list[Path], dict[str, Any]]]] = {
        "videos": lambda: _stage_videos(paths, cfg, options),
        "features": lambda: _stage_features(paths, cfg, options),
        "train": lambda: _stage_train(paths, cfg, options),
        "calibrate": lambda: _stage_calibrate(paths),
        "evaluate": lambda: _stage_evaluate(paths),
        "export": lambda: _stage_export(paths),
        "stream": lambda: _stage_stream(paths, on_event),
        "report": lambda: _stage_report(paths, results),
    }
    results: list[StageResult] = []
    upstream_changed = False
    for name in STAGES:
        key = _stage_key(name, cfg, options)
        recorded = state.get(name)
        if (not upstream_changed and recorded is not None and recorded.get("key") == key
                and all(Path(p).exists() for p in recorded["wrote"])):
            result = StageResult(name, 0.0, True, [Path(p) for p in recorded["wrote"]], recorded["figures"],
                                 recorded["seconds"])
        else:
            upstream_changed = True
            if on_start is not None:
                on_start(name)
            started = time.perf_counter()
            wrote, figures = runners[name]()
            seconds = time.perf_counter() - started
            result = StageResult(name, seconds, False, wrote, figures, seconds)
            state[name] = {"key": key, "seconds": round(seconds, 3), "wrote": [str(p) for p in wrote],
                           "figures": figures}
            atomic_write_json(paths.state, state)
        results.append(result)
        if on_stage is not None:
            on_stage(result)
    return DemoSummary(paths.root, results, paths.report, paths.timeline)


def _read_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        logger.warning("%s is unreadable; every stage runs again", path)
        return {}


def _stage_key(name: str, cfg: Config, options: DemoOptions) -> dict[str, Any]:
    """The parameters a stage's output depends on (upstream stages are covered by re-running downstream)."""
    if name in ("videos", "features"):
        return {"videos": options.num_videos, "seed": options.seed, "stage": name}
    return {"videos": options.num_videos, "seed": options.seed, "config": cfg.to_yaml(), "stage": name}


def _clear(path: Path) -> None:
    """Remove a stage's previous output (only folders the demo itself names)."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# --- stages ------------------------------------------------------------------------------------------------

def _stage_videos(paths: _Paths, cfg: Config, options: DemoOptions) -> tuple[list[Path], dict[str, Any]]:
    from ecm_edge.data.synth_video import generate_video_dataset

    _clear(paths.data)
    dataset = generate_video_dataset(paths.data, num_videos=options.num_videos, num_classes=cfg.model.num_classes,
                                     seed=options.seed, fps=cfg.data.default_fps)
    seconds = sum(v.duration or 0.0 for v in dataset.annotations.videos.values())
    return ([paths.data / "gt.json", paths.data / "videos"],
            {"videos": len(dataset.videos), "train": len(dataset.train_ids), "test": len(dataset.test_ids),
             "classes": dataset.class_names, "video_seconds": round(seconds, 1)})


def _stage_features(paths: _Paths, cfg: Config, options: DemoOptions) -> tuple[list[Path], dict[str, Any]]:
    from ecm_edge.runtime.extract import assign_splits, extract_dataset, find_videos
    from ecm_edge.runtime.extractors import create_extractor

    _clear(paths.data / "features")
    extractor = create_extractor("tiny", dim=cfg.data.feature_dim)
    jobs = assign_splits(find_videos((paths.data / "videos",)), paths.data, "auto")
    results, _ = extract_dataset(jobs, paths.data, extractor, cfg, overwrite=True, show=options.progress)
    snippets = sum(r.snippets for r in results)
    return [paths.data / "features", paths.data / "extract.json"], {"snippets": snippets, "dim": extractor.dim}


def _stage_train(paths: _Paths, cfg: Config, options: DemoOptions) -> tuple[list[Path], dict[str, Any]]:
    from ecm_edge.train.trainer import train

    _clear(paths.train)
    summary = train(cfg, paths.data, paths.train, progress=options.progress)
    last = summary.last or {}
    return ([paths.train / "model.safetensors", paths.train / "model.json"],
            {"epochs": summary.epochs, "final_loss": round(float(last.get("loss", {}).get("total", float("nan"))), 4)})


def _stage_calibrate(paths: _Paths) -> tuple[list[Path], dict[str, Any]]:
    """Operating points for the configured precision target (``alerts.precision``), measured on the test videos.
    The demo holds no validation videos out (they are few), so the points are chosen on its training videos, as
    ``ecm-edge calibrate`` does for such a run (with a warning)."""
    from ecm_edge.calibration import calibrate_run

    points = calibrate_run(paths.train, paths.data).points
    overall = (points.test or {}).get("overall", {})
    classes = {label: {"min_score": p.min_score, "calibrated": p.calibrated, "instances": p.instances,
                       "test": (points.test or {}).get("classes", {}).get(label, {})}
               for label, p in points.classes.items()}
    return [paths.train / OPERATING_POINTS_NAME], {
        "target_precision": points.target_precision, "split": points.split, "tiou": points.tiou,
        "global_min_score": points.global_min_score, "classes": classes, "test": overall}


def _stage_evaluate(paths: _Paths) -> tuple[list[Path], dict[str, Any]]:
    from ecm_edge.evaluation import evaluate_detections, write_predictions
    from ecm_edge.train.inference import predict_dataset

    _clear(paths.eval)
    raw_out: list[Any] = []
    results, ground_truth, cfg = predict_dataset(paths.train, paths.data, "test", raw_out=raw_out)
    result = evaluate_detections(results, ground_truth, cfg.eval.iou_thresholds)
    paths.eval.mkdir(parents=True)
    detections = write_predictions(paths.eval / "detections.json", results)
    raw = raw_out[0].save(paths.eval / "raw.npz")
    metrics = atomic_write_json(paths.eval / "eval.json", result.to_json())
    return [detections, raw, metrics], {"iou": result.iou, "map": result.map, "average": result.average,
                                        "videos": len(ground_truth.videos),
                                        "detections": result.num_predictions}


def _stage_export(paths: _Paths) -> tuple[list[Path], dict[str, Any]]:
    from ecm_edge.export.pipeline import ExportRequest, artifact_name, run_export

    _clear(paths.export)
    for precision in EXPORT_PRECISIONS[1:]:  # each run writes fp32 too: the reference it converts from
        run_export(ExportRequest(paths.train, paths.export, precision=precision))
    files = {p: paths.export / artifact_name("ecm", "offline", p) for p in EXPORT_PRECISIONS}
    agreement = _precision_agreement(paths, files)
    atomic_write_json(paths.export / "agreement.json", agreement)
    sizes = {p: f.stat().st_size for p, f in files.items()}
    return [*files.values(), paths.export / "agreement.json"], {"sizes": sizes, "agreement": agreement}


def _precision_agreement(paths: _Paths, files: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Each precision's offline ONNX on the held-out clips: max |Δ| against fp32 per output, and its mAP."""
    from ecm_edge.data.dataset import VideoDataset
    from ecm_edge.export import validate as val
    from ecm_edge.runtime.engines import load_engine
    from ecm_edge.train.deploy import load_deploy

    deploy = load_deploy(paths.train)
    dataset = VideoDataset.open(paths.data, deploy.config, "test")
    clips = val.offline_clips(dataset, deploy.config.data.t_fixed)
    outputs = {}
    for precision, path in files.items():
        engine = load_engine(path)
        try:
            outputs[precision] = val.run_offline(engine, clips)
        finally:
            engine.close()
    agreement = {}
    for precision, out in outputs.items():
        evaluation = val.evaluate_outputs(out, dataset, deploy.class_names, deploy.config)
        row = {f"max_abs_{name}": float(abs(out[name] - ref).max()) for name, ref in outputs["fp32"].items()}
        row["map_0.5"] = float(evaluation.map[evaluation.iou.index(0.5)]) if 0.5 in evaluation.iou else float("nan")
        row["map_avg"] = float(evaluation.average)
        agreement[precision] = row
    return agreement


def _streamed_video(paths: _Paths) -> tuple[str, Path]:
    """The first held-out video and its file."""
    test_ids = [line.strip() for line in (paths.data / "split_test.txt").read_text().splitlines() if line.strip()]
    if not test_ids:
        raise DataError(f"{paths.data / 'split_test.txt'} lists no video; regenerate the demo with --fresh")
    video_id = test_ids[0]
    found = sorted((paths.data / "videos").glob(f"{video_id}.*"))
    if not found:
        raise DataError(f"the held-out video {video_id} is missing from {paths.data / 'videos'}; run with --fresh")
    return video_id, found[0]


def _stage_stream(paths: _Paths, on_event: EventCallback | None) -> tuple[list[Path], dict[str, Any]]:
    from ecm_edge.runtime.localizer import Localizer
    from ecm_edge.runtime.sinks import JsonlSink

    _clear(paths.stream)
    video_id, video = _streamed_video(paths)
    events_path = paths.stream / "events.jsonl"
    localizer = Localizer.from_artifacts(paths.export, STREAM_ENGINE, extractor="tiny",
                                         sinks=[JsonlSink(events_path)], source=video_id)
    segments: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    started = time.perf_counter()
    for event in localizer.run(video, realtime=False):  # the file as fast as it decodes; closed at its end
        if event.type == "segment":
            segments.append(event.to_dict())
        elif event.type == "alert":
            alerts.append(event.to_dict())
            segments[-1]["alert"] = True  # an alert comes right after the segment it came from
        if on_event is not None:
            on_event(event)
    wall = time.perf_counter() - started
    p50, p99 = localizer.stats.percentiles_ms()
    # "backend" (the head's engine) is the key stream.json has always had; report readers rely on it
    summary = {"video": video_id, "file": str(video), "backend": localizer.engine, "snippets": localizer.stats.snippets,
               "segments": len(segments), "alerts": len(alerts), "step_ms_p50": round(p50, 3), "step_ms_p99": round(p99, 3),
               "wall_seconds": round(wall, 3), "detections": segments}
    atomic_write_json(paths.stream / "stream.json", summary)
    return [events_path, paths.stream / "stream.json"], {k: v for k, v in summary.items() if k != "detections"}


def _stage_report(paths: _Paths, stages: list[StageResult]) -> tuple[list[Path], dict[str, Any]]:
    from ecm_edge.data.annotations import load_activitynet_json
    from ecm_edge.rawpred import RawPredictions
    from ecm_edge.viz import plot_timeline

    stream = json.loads((paths.stream / "stream.json").read_text())
    video_id = stream["video"]
    annotation = load_activitynet_json(paths.data / "gt.json").videos[video_id]
    raw = RawPredictions.load(paths.eval / "raw.npz")
    index = raw.video_ids.index(video_id)
    cas = raw.cas[index, :, :int(raw.lengths[index])]
    detections = [{"label": d["label"], "score": d["score"], "segment": [d["start"], d["end"]],
                   "alert": d.get("alert", False)} for d in stream["detections"]]
    gt = [(label, float(s), float(e)) for label, (s, e) in zip(annotation.labels, annotation.segments, strict=True)]
    plot_timeline(video_id, gt, detections, raw.class_names, cas=cas, video_scores=raw.video_scores[index],
                  duration=float(raw.duration[index]), out_path=paths.timeline,
                  title=f"{video_id} (held out), streamed")
    atomic_write_text(paths.report, report_markdown({s.name: s for s in stages}, paths, stream))
    return [paths.report, paths.timeline], {}


# --- report ------------------------------------------------------------------------------------------------

def summary_tables(figures: dict[str, dict[str, Any]]) -> str:
    """The demo's results as markdown: mAP per IoU, export sizes and agreement, streaming."""
    evaluation, export, stream = figures["evaluate"], figures["export"], figures["stream"]
    lines = [f"### Held-out mAP ({evaluation['videos']} test videos, {evaluation['detections']} detections)", "",
             "| IoU | " + " | ".join(f"{t:.1f}" for t in evaluation["iou"]) + " | avg |",
             "|---|" + "---|" * (len(evaluation["iou"]) + 1),
             "| mAP (%) | " + " | ".join(f"{100 * m:.1f}" for m in evaluation["map"])
             + f" | {100 * evaluation['average']:.1f} |", "",
             "### Export (offline graph, ONNX Runtime on the test clips)", "",
             "| precision | size (KiB) | max abs Δ video scores | max abs Δ CAS | mAP@0.5 (%) | avg mAP (%) |",
             "|---|---|---|---|---|---|"]
    for precision, row in export["agreement"].items():
        lines.append(f"| {precision} | {export['sizes'][precision] / 1024:.1f} | {row['max_abs_video_scores']:.2e} | "
                     f"{row['max_abs_cas']:.2e} | {100 * row['map_0.5']:.1f} | {100 * row['map_avg']:.1f} |")
    lines += ["", "### Streaming (one held-out video file, frame by frame)", "",
              "| video | backend | snippets | segments | step p50 (ms) | step p99 (ms) | wall (s) |",
              "|---|---|---|---|---|---|---|",
              f"| {stream['video']} | {stream['backend']} | {stream['snippets']} | {stream['segments']} | "
              f"{stream['step_ms_p50']:.2f} | {stream['step_ms_p99']:.2f} | {stream['wall_seconds']:.1f} |"]
    if "calibrate" in figures:
        lines += ["", *operating_points_table(figures["calibrate"])]
    return "\n".join(lines)


def operating_points_table(calibrate: dict[str, Any]) -> list[str]:
    """Each class's operating point and what it gave on the test videos, then the overall figures."""
    lines = [f"### Alerts: operating points for a precision of {calibrate['target_precision']:.0%} (chosen on the "
             f"{calibrate['split']} videos, tIoU {calibrate['tiou']})", "",
             f"| class | operating point | own point | instances ({calibrate['split']} videos) | test alerts | "
             "test precision | test recall |", "|---|---|---|---|---|---|---|"]
    for label, point in calibrate["classes"].items():
        test = point["test"]
        lines.append(f"| {label} | {point['min_score']:.3f} | {'yes' if point['calibrated'] else 'no (global)'} | "
                     f"{point['instances']} | {test.get('alerts', 0)} | {_percent(test.get('precision'))} | "
                     f"{_percent(test.get('recall'))} |")
    overall = calibrate["test"]
    if overall:
        lines += ["", f"On the test videos: precision {_percent(overall.get('precision'))}, recall "
                      f"{_percent(overall.get('recall'))}, {overall.get('false_alerts_per_hour', 0.0):.1f} false "
                      "alerts per hour of video."]
    return lines


def streamed_detections_table(stream: dict[str, Any]) -> list[str]:
    """The streamed video's detections, in time order, and which became alerts."""
    lines = [f"### The streamed video: {stream['segments']} detections, {stream.get('alerts', 0)} alerts", "",
             "| class | start (s) | end (s) | score | alert |", "|---|---|---|---|---|"]
    for d in sorted(stream["detections"], key=lambda d: (d["start"], d["label"])):
        lines.append(f"| {d['label']} | {d['start']:.2f} | {d['end']:.2f} | {d['score']:.3f} | "
                     f"{'**alert**' if d.get('alert') else ''} |")
    return lines


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def report_markdown(stages: dict[str, StageResult], paths: _Paths, stream: dict[str, Any]) -> str:
    videos, train = stages["videos"].figures, stages["train"].figures
    figures = {name: s.figures for name, s in stages.items()}
    rows = [f"| {name} | {s.original_seconds:.1f} |" for name, s in stages.items()]
    return "\n".join([
        "# ecm-edge demo", "",
        f"{videos['videos']} procedural videos ({videos['video_seconds']:.0f} s, classes: "
        f"{', '.join(videos['classes'])}); {videos['train']} for training with video-level labels only, "
        f"{videos['test']} held out. Tiny backbone features (D = {stages['features'].figures['dim']}), "
        f"ECM trained {train['epochs']} epochs (final loss {train['final_loss']}).", "",
        summary_tables(figures), "", *streamed_detections_table(stream), "",
        "### Stages", "", "| stage | seconds |", "|---|---|", *rows, "",
        f"![timeline of {figures['stream']['video']}]({paths.timeline.name})", "",
        "Ground truth, the segments the runtime streamed (outlined in black where they became alerts), and the "
        "offline class activation curves of the streamed video, one track per class.", ""])
