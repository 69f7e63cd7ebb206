"""Streaming benchmark: per-snippet step latency, incremental vs recomputing the horizon; memory; parity.

- **Step latency** (head + causal post-processing per new source snippet) of the paper-size head (D = H = 2048,
  C = 20; ``--quick``: D = H = 512) with random weights, streaming at the THUMOS14 training rate of
  :data:`COLUMNS_PER_SNIPPET` head columns per snippet (``ecm_edge.runtime.resample``): the runtime's two
  incremental heads — the numpy :class:`~ecm_edge.runtime.head.ColumnHead` (deploy folders) and the exported
  streaming graph on ONNX Runtime (:class:`~ecm_edge.runtime.head.WindowHead`, export folders) — against the
  baseline that recomputes the whole horizon (``stream.horizon`` snippets) through the offline pass every step,
  in numpy and on ONNX Runtime. Speedups are ratios of medians measured in the same run.
- **Memory**: peak RSS of an ``ecm-edge stream --features`` process on the deploy folder, and the growth of
  Python-allocated memory over a long in-process stream (tracemalloc): the state is bounded by the horizon.
- **Parity** (:mod:`ecm_edge.parity`): detections of the streamed test features vs the offline pipeline on the
  same checkpoint, and vs the offline pipeline fed the stream's columns, mAP@0.5 of each; run by the bench when
  a trained checkpoint is given through ``ECM_EDGE_BENCH_CHECKPOINT`` and ``ECM_EDGE_BENCH_DATA``
  (``tests/test_stream_parity.py`` trains one).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ecm_edge.bench import (
    CHECKPOINT_DATA_ENV,
    CHECKPOINT_ENV,
    BenchSection,
    describe_dataset,
    trained_run_from_env,
)
from ecm_edge.config import Config, load_config
from ecm_edge.errors import MissingDependencyError
from ecm_edge.parity import PARITY_IOU, measure_parity
from ecm_edge.runtime.head import (
    ColumnHead,
    EngineRunner,
    StreamingHead,
    WindowHead,
    full_cas,
    load_head_weights,
)
from ecm_edge.runtime.online import OnlineParams, OnlinePostProcessor
from ecm_edge.runtime.resample import ColumnResampler, stream_indices

log = logging.getLogger("ecm_edge")

PAPER_DIMS = (2048, 2048, 20)  # D, H, C of the THUMOS14 configuration
# head columns per source snippet that `ecm-edge train --config thumos14` records on the THUMOS14-like set (the
# median t_fixed / T of its training videos; real THUMOS14 durations give the same)
COLUMNS_PER_SNIPPET = 3.4
QUICK_DIMS = (512, 512, 20)
STEPS = {"full": 120, "quick": 40}  # incremental steps timed after the warm-up
BASELINE_STEPS = {"full": 8, "quick": 5}  # horizon recomputations timed (each costs ~horizon columns)
WARMUP = 8
MEMORY_SNIPPETS = {"full": 300, "quick": 300}  # snippets streamed by the peak-RSS process
GROWTH_SNIPPETS = {"full": 400, "quick": 600}  # snippets streamed while tracemalloc watches
SNIPPET_SECONDS = 0.64  # 16 frames at 25 fps (the timing runs use nominal source times)


def run(quick: bool) -> BenchSection:
    mode = "quick" if quick else "full"
    d, h, c = QUICK_DIMS if quick else PAPER_DIMS
    with tempfile.TemporaryDirectory(prefix="ecm-edge-bench-stream-") as tmp:
        deploy_dir, export_dir = _make_artifacts(Path(tmp), d, h, c)
        cfg = load_config("thumos14", [f"data.feature_dim={d}", f"model.hidden_dim={h}", f"model.num_classes={c}",
                                       f"stream.columns_per_snippet={COLUMNS_PER_SNIPPET}"])
        horizon = cfg.stream.horizon
        rng = np.random.default_rng(0)
        features = rng.normal(size=(horizon + WARMUP + STEPS[mode], d)).astype(np.float32)
        weights, _ = load_head_weights(deploy_dir)
        rows, medians = _latency_rows(cfg, weights, export_dir, features, mode)
        notes = [f"D = {d}, H = {h}, C = {c}, horizon {horizon} snippets, {COLUMNS_PER_SNIPPET} head columns per "
                 "snippet (stream.columns_per_snippet of a THUMOS14 training run); step = one source snippet "
                 f"through head + causal post-processing; {STEPS[mode]} incremental and {BASELINE_STEPS[mode]} "
                 "recompute steps timed after the horizon filled; speedup = recompute median / incremental "
                 "median of the same runtime."]
        notes += _memory_notes(deploy_dir, cfg, d, mode, Path(tmp))
        notes += _parity_notes()
        log.debug("stream bench medians: %s", medians)
    return BenchSection(f"Streaming step latency (D = H = {d}, C = {c})",
                        ["runtime", "head", "step p50 ms", "step p99 ms", "speedup vs recompute"], rows, notes)


# -- artifacts ---------------------------------------------------------------------------------------------------
def save_random_deploy(folder: Path, d: int, h: int, c: int) -> Path:
    """A deploy folder with random weights (seed 0; torch writes it) and the thumos14 config at the THUMOS14
    training rate :data:`COLUMNS_PER_SNIPPET`, as a training run records it."""
    try:
        import torch

        from ecm_edge.train.deploy import save_deploy
        from ecm_edge.train.model import ECM, ECMDims
    except ImportError:
        raise MissingDependencyError("torch", "writing the benchmark's model", "pip install 'ecm-edge[train]'") \
            from None
    cfg = load_config("thumos14", [f"data.feature_dim={d}", f"model.hidden_dim={h}", f"model.num_classes={c}",
                                   f"stream.columns_per_snippet={COLUMNS_PER_SNIPPET}"])
    torch.manual_seed(0)
    save_deploy(ECM(ECMDims.from_config(cfg)).eval(), [f"class{i}" for i in range(c)], cfg, folder)
    return folder


def _make_artifacts(folder: Path, d: int, h: int, c: int) -> tuple[Path, Path | None]:
    """A deploy folder with random weights and, where onnx is installed, its export."""
    deploy_dir = save_random_deploy(folder / "run", d, h, c)
    try:
        from ecm_edge.export.pipeline import ExportRequest, run_export
    except ImportError as exc:
        log.warning("no ONNX export (%s); the ONNX Runtime rows are skipped", exc)
        return deploy_dir, None
    export_dir = folder / "export"
    run_export(ExportRequest(checkpoint=deploy_dir, out_dir=export_dir, precision="fp32", engine=False))
    return deploy_dir, export_dir


def _onnx_runner(export_dir: Path) -> EngineRunner:
    from ecm_edge.runtime.engines import load_engine

    return EngineRunner(load_engine(export_dir / "ecm.onnx", "onnxruntime"),
                        load_engine(export_dir / "ecm.stream.onnx", "onnxruntime"))


# -- latency -----------------------------------------------------------------------------------------------------
def _latency_rows(cfg: Config, weights: Any, export_dir: Path | None, features: np.ndarray,
                  mode: str) -> tuple[list[list[object]], dict[str, float]]:
    horizon, c, rate = cfg.stream.horizon, weights.num_classes, COLUMNS_PER_SNIPPET
    names = [f"class{i}" for i in range(c)]
    params = OnlineParams.from_config(cfg, rate)
    runtimes: list[tuple[str, StreamingHead, Callable[[np.ndarray], np.ndarray]]] = [
        ("numpy", ColumnHead(weights), lambda x: full_cas(weights, x))]
    if export_dir is not None:
        runner = _onnx_runner(export_dir)
        runtimes.append(("onnxruntime", WindowHead(runner, weights.feature_dim, c), runner.full_cas))
    rows, medians = [], {}
    for name, head, full_pass in runtimes:
        incremental = incremental_latencies(head, OnlinePostProcessor(params, names), features,
                                            skip=horizon + WARMUP, rate=rate)
        recompute = recompute_latencies(full_pass, OnlinePostProcessor(params, names), features, horizon,
                                        steps=BASELINE_STEPS[mode], rate=rate)
        inc_ms, rec_ms = incremental * 1e3, recompute * 1e3
        speedup = float(np.median(rec_ms) / np.median(inc_ms))
        head_kind = "one column per layer" if name == "numpy" else "5-snippet window (streaming graph)"
        rows.append([name, f"incremental: {head_kind}", float(np.percentile(inc_ms, 50)),
                     float(np.percentile(inc_ms, 99)), speedup])
        rows.append([name, f"recompute {horizon} snippets (offline pass)", float(np.percentile(rec_ms, 50)),
                     float(np.percentile(rec_ms, 99)), 1.0])
        medians[name] = float(np.median(inc_ms))
    return rows, medians


def incremental_latencies(head: StreamingHead, post: OnlinePostProcessor, features: np.ndarray,
                          skip: int, rate: float = 1.0) -> np.ndarray:
    """Seconds per source snippet of resampling to ``rate`` columns, ``head.push`` and post-processing, timed
    after the first ``skip`` snippets."""
    times = []
    resampler, column_seconds, done = ColumnResampler(rate), SNIPPET_SECONDS / rate, 0
    for t, row in enumerate(features):
        began = time.perf_counter()
        columns = resampler.plan([t * SNIPPET_SECONDS], [(t + 1) * SNIPPET_SECONDS])
        cas = head.push(row[None][columns.snippet])
        if len(cas):
            starts = (done + np.arange(len(cas))) * column_seconds
            post.push(cas, starts, starts + column_seconds)
            done += len(cas)
        if t >= skip:
            times.append(time.perf_counter() - began)
    return np.asarray(times)


def recompute_latencies(full_pass: Callable[[np.ndarray], np.ndarray], post: OnlinePostProcessor,
                        features: np.ndarray, horizon: int, steps: int, rate: float = 1.0) -> np.ndarray:
    """Seconds per source snippet when every step reruns the offline pass over the columns of the last
    ``horizon`` snippets and keeps the columns that became final (two before the newest; exact, as they never
    see the window's padding)."""
    snippet_of = stream_indices(len(features), rate)
    columns = features[snippet_of]
    column_seconds = SNIPPET_SECONDS / rate
    times = []
    for t in range(horizon, horizon + steps):
        began = time.perf_counter()
        first, end = np.searchsorted(snippet_of, [t - horizon + 1, t + 1])
        new = int(np.searchsorted(snippet_of, t + 1) - np.searchsorted(snippet_of, t))
        cas = full_pass(columns[first:end])[-2 - new:-2]
        starts = (end - 2 - new + np.arange(new)) * column_seconds
        post.push(cas, starts, starts + column_seconds)
        times.append(time.perf_counter() - began)
    return np.asarray(times)


# -- memory ------------------------------------------------------------------------------------------------------
def _memory_notes(deploy_dir: Path, cfg: Config, d: int, mode: str, tmp: Path) -> list[str]:
    features = np.random.default_rng(1).normal(size=(MEMORY_SNIPPETS[mode], d)).astype(np.float32)
    path = tmp / "stream.npy"
    np.save(path, features)
    peak, final = stream_memory(deploy_dir, path)
    weights_mb = (deploy_dir / "model.safetensors").stat().st_size / 2**20
    growth, total = state_growth(deploy_dir, d, GROWTH_SNIPPETS[mode])
    return [f"memory of a running stream ({len(features)} snippets replayed, numpy head): resident "
            f"{final / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB while the weights were read "
            f"(weights file {weights_mb:.0f} MiB)",
            f"Python-allocated memory of a running stream grew by {growth / 2**10:.0f} KiB over "
            f"{GROWTH_SNIPPETS[mode]} snippets after the horizon filled (tracemalloc, {total / 2**20:.1f} MiB "
            "traced in all): bounded by the horizon, not by the stream's length"]


STREAM_SCRIPT = """
import sys
from ecm_edge.runtime.localizer import Localizer
from ecm_edge.runtime.sources import FeatureReplaySource

localizer = Localizer.from_artifacts(sys.argv[1])
for item in FeatureReplaySource(sys.argv[2], realtime=False):
    localizer.push_features(item.features, start_time=item.start_time, end_times=[item.end_time])
localizer.flush()
status = {k: int(v.split()[0]) * 1024 for k, v in (line.split(":") for line in open("/proc/self/status"))
          if k in ("VmHWM", "VmRSS")}
print(status["VmHWM"], status["VmRSS"])
localizer.close()
"""


def stream_memory(artifacts: Path, features: Path) -> tuple[int, int]:
    """(peak, running) resident memory in bytes of a fresh process streaming ``features`` the way
    ``ecm-edge stream --features`` does, read from its own ``VmHWM`` / ``VmRSS`` (Linux) before it closes.

    A fresh process, because ``getrusage`` of a child would also count this (large) process's memory at the
    fork. The peak includes the weights file's pages while the weights are read.
    """
    done = subprocess.run([sys.executable, "-c", STREAM_SCRIPT, str(artifacts), str(features)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the streaming process failed: {done.stderr[-500:]}")
    peak, running = (int(v) for v in done.stdout.split()[-2:])
    return peak, running


def state_growth(artifacts: Path, d: int, snippets: int) -> tuple[int, int]:
    """(bytes the traced Python allocations grew over ``snippets`` snippets after a full horizon, total)."""
    from ecm_edge.runtime.localizer import Localizer

    localizer = Localizer.from_artifacts(artifacts)
    rng = np.random.default_rng(2)
    warm = localizer.config.stream.horizon + WARMUP
    for _ in range(warm):
        localizer.push_features(rng.normal(size=d).astype(np.float32))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(snippets):
            localizer.push_features(rng.normal(size=d).astype(np.float32))
        localizer.dispatcher.drain()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        localizer.close()
    return after - before, after


# -- parity ------------------------------------------------------------------------------------------------------
def _parity_notes() -> list[str]:
    given = trained_run_from_env()
    if given is None:
        return [f"parity (stream vs offline mAP@0.5): set {CHECKPOINT_ENV} (a training run) and "
                f"{CHECKPOINT_DATA_ENV} (its dataset) to measure it here; `python -m pytest -m slow "
                "tests/test_stream_parity.py` trains a thumos14_lite model on the THUMOS14-like preset and "
                "measures it"]
    checkpoint, data = given
    result = measure_parity(checkpoint, data)
    return [f"parity on {result['videos']} test videos of {describe_dataset(data)} ({result['config']} config, "
            f"{result['columns_per_snippet']:g} columns per snippet): mAP@{PARITY_IOU} offline "
            f"{result['offline']:.4f}, streamed {result['stream']:.4f} ({result['relative']:+.1%} relative); "
            f"average mAP offline {result['offline_average']:.4f}, streamed "
            f"{result['stream_average']:.4f}" + _at_rate_note(result)]


def _at_rate_note(result: dict[str, Any]) -> str:
    if result["offline_at_rate"] is None:
        return ""
    return (f"; offline at the stream's rate (the same columns, seeing the whole video) "
            f"{result['offline_at_rate']:.4f}, streamed {result['relative_at_rate']:+.1%} relative to it")
