"""Many streams per process: one :class:`~ecm_edge.runtime.engine.StreamEngine` (batched head) against N
independent :class:`~ecm_edge.runtime.localizer.Localizer` s fed the same snippets in the same run.

The paper-size head (D = H = 2048, C = 20) with random weights, saved as a deploy folder, at the THUMOS14
training rate of :data:`~ecm_edge.bench.stream.COLUMNS_PER_SNIPPET` head columns per snippet. N feature sources
(seeded AR(1) sequences, :func:`source_features`) are replayed as fast as possible: each tick pushes one snippet
per stream and runs ``StreamEngine.step``; the baseline pushes the same snippets into one Localizer per stream,
round robin (all Localizers share one copy of the weights, the baseline's best case: loaded separately each
holds its own). The engine's ticks and the Localizers' rounds alternate, so that both see the same load of a
shared machine; each N runs in a fresh process, so that its resident memory is its own.

Reported per N: snippets per second of both (the first tick of each is not timed) and their ratio; how many
streams the engine holds at real time per core (a stream delivers one snippet per ``SNIPPET_SECONDS``); the
tick's p50 / p99 (N snippets pushed and stepped) and the share of the batched head alone in it; resident memory
per stream (growth when the N streams were added and first fed, / N); and whether the engine's events equal the
Localizers' (without ``emitted_at``, ``latency``, ``id``; ``source`` is the engine's only; scores to float32
rounding, :data:`SCORE_TOLERANCE`). Above :data:`BASELINE_STREAMS` streams the Localizers run on that many of
them and their rate stands for N (a Localizer's cost per snippet does not depend on how many others exist);
the events are compared on those streams.

``post.class_threshold`` is 0 (random weights give flat video scores; events must come out to be compared), which
makes every class score every candidate: the post-processing's share is an upper bound. ``stream.warmup`` is 2
snippets (the streams are short; with the default 32 nearly every column would be held back and the
post-processing timed in its cheapest state).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ecm_edge.bench import BenchSection
from ecm_edge.bench.stream import COLUMNS_PER_SNIPPET, PAPER_DIMS, SNIPPET_SECONDS, save_random_deploy

STREAM_COUNTS = {"full": (1, 8, 32, 128, 512), "quick": (1, 8, 32, 128)}
# snippets per stream at each N (fewer at large N keeps the part within minutes; the first tick is not timed)
SNIPPETS = {"full": {1: 150, 8: 60, 32: 24, 128: 16, 512: 10}, "quick": {1: 30, 8: 12, 32: 6, 128: 4}}
BASELINE_STREAMS = 32  # independent Localizers timed on at most this many streams
OVERRIDES = ("post.class_threshold=0.0", "stream.warmup=2")
# the head's float32 products sum in another order for another number of rows; the normalization over the first
# few columns of a stream can stretch such a difference into the rounded score's last digits
SCORE_TOLERANCE = 1e-3
SNIPPET_CORRELATION = 0.9  # of neighbouring snippets' features in the replayed sources
HEAD_REPEATS = 3  # timings of the batched head alone per N
NOT_COMPARED = ("emitted_at", "latency", "id", "source")


def run(quick: bool) -> BenchSection:
    mode = "quick" if quick else "full"
    d, h, c = PAPER_DIMS
    with tempfile.TemporaryDirectory(prefix="ecm-edge-bench-streams-") as tmp:
        deploy_dir = save_random_deploy(Path(tmp) / "run", d, h, c)
        results = [measure_in_process(deploy_dir, n, SNIPPETS[mode][n]) for n in STREAM_COUNTS[mode]]
    return BenchSection(f"Many streams per process: StreamEngine vs independent Localizers (D = H = {d}, C = {c})",
                        ["streams", "snippets timed", "engine snippets/s", "Localizers snippets/s", "speedup",
                         "real-time streams per core", "tick p50 ms", "tick p99 ms", "head share of tick",
                         "MiB per stream", "events identical"],
                        [_row(r) for r in results], _notes(results, d, h, c))


def _row(r: dict[str, Any]) -> list[object]:
    per_core = r["engine_rate"] * SNIPPET_SECONDS / r["cores"]
    baseline = f"{r['baseline_rate']:.1f}" + ("" if r["baseline_streams"] == r["streams"]
                                              else f" ({r['baseline_streams']} streams)")
    return [r["streams"], r["timed"], r["engine_rate"], baseline, f"{r['engine_rate'] / r['baseline_rate']:.2f}×",
            per_core, r["tick_p50_ms"], r["tick_p99_ms"], f"{min(r['head_share'], 1.0):.0%}",
            f"{r['rss_per_stream_mib']:.2f}", r["identical"]]


def _notes(results: list[dict[str, Any]], d: int, h: int, c: int) -> list[str]:
    cores, busy = results[0]["cores"], max(r["cpu_busy"] for r in results)
    baseline_per_core = np.median([r["baseline_rate"] for r in results]) * SNIPPET_SECONDS / cores
    largest = results[-1]
    return [
        f"D = {d}, H = {h}, C = {c}, {COLUMNS_PER_SNIPPET} head columns per snippet, horizon 256 snippets "
        "(thumos14 config), random weights; sources: AR(1) features (coefficient "
        f"{SNIPPET_CORRELATION} between neighbouring snippets) replayed as fast as possible, one snippet per stream "
        "per tick; post.class_threshold = 0 (every class scores every candidate: a heavy post-processing load) "
        "and stream.warmup = 2 snippets, so that short streams give events to compare",
        f"cores: the {cores} this process may run on (numpy's matrix library uses all of them; at most {busy:.1f} "
        "busy on average during the engine's ticks); real-time streams per core = engine snippets/s × "
        f"{SNIPPET_SECONDS} s / cores (a live stream delivers one snippet per {SNIPPET_SECONDS} s); the "
        f"independent Localizers hold {baseline_per_core:.1f} per core at any N",
        f"above {BASELINE_STREAMS} streams the independent Localizers are timed on {BASELINE_STREAMS} of them and "
        "their rate stands for N (one Localizer's cost per snippet does not depend on the others); events are "
        "compared on those streams (the engine's other streams produce theirs, not compared); the engine's "
        "ticks and the Localizers' rounds alternate, so that both see the same load",
        "tick = one snippet pushed per stream + StreamEngine.step (resampling, one batched product per layer, "
        "the post-processing of every stream in one kernel call); p99 of few ticks is close to their maximum; head share = the batched "
        "head alone on one tick's columns / tick p50 (timed apart: at one stream the head is the whole tick)",
        "MiB per stream: growth of the process's resident memory when the N streams were added and fed their "
        "first snippet, / N (head state, post-processing rings over the horizon, queues); the weights "
        f"({_weights_mib(d, h, c):.0f} MiB) are held once; resident at {largest['streams']} streams: "
        f"{largest['rss_mib']:.0f} MiB",
        "what limits it: at one stream the head is memory-bound (each tick reads every layer's weights once, "
        f"whatever N); stacked, the two products are compute-bound (2·3·(D + H)·H flops per column) and take "
        f"{largest['head_share']:.0%} of a tick at {largest['streams']} streams: the rest is the causal "
        f"post-processing of all streams in one call of the slot-array kernels (stream.kernels = "
        f"{largest['kernels']}), resampling and queueing; a Localizer is the same engine with one slot, so the "
        "baseline pays a head call and a kernel call per stream",
    ]


def _weights_mib(d: int, h: int, c: int) -> float:
    return 4 * (3 * d * h + 3 * h * h + h * c) / 2**20


# -- one N, in a fresh process -----------------------------------------------------------------------------------
CHILD = "import sys; from ecm_edge.bench.streams import child_main; child_main(sys.argv[1:])"


def measure_in_process(deploy_dir: Path, streams: int, snippets: int) -> dict[str, Any]:
    """:func:`measure` in a fresh Python process (its resident memory is the engine's alone)."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(deploy_dir), str(streams), str(snippets)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {streams}-stream measurement failed: {done.stderr[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_main(argv: list[str]) -> None:
    print(json.dumps(measure(Path(argv[0]), int(argv[1]), int(argv[2]))))


def measure(deploy_dir: Path, streams: int, snippets: int) -> dict[str, Any]:
    """The engine on ``streams`` sources of ``snippets`` snippets each and the independent Localizers on (at most
    :data:`BASELINE_STREAMS` of) the same sources, tick by tick in turn (so that both see the same load of a
    shared machine); rates, tick times, memory, event equality."""
    from ecm_edge.runtime.engine import StreamEngine
    from ecm_edge.runtime.head import BatchedColumnHead
    from ecm_edge.runtime.localizer import Localizer

    engine = StreamEngine.from_artifacts(deploy_dir, overrides=OVERRIDES)
    features = [source_features(i, snippets, engine.feature_dim) for i in range(streams)]
    sources = [f"cam{i}" for i in range(streams)]
    subset = min(streams, BASELINE_STREAMS)
    baseline = features[:subset]
    localizers = [Localizer(BatchedColumnHead(engine.head.weights), engine.class_names, engine.config)
                  for _ in baseline]  # one copy of the weights for all: the baseline's best case
    _warm_blas(engine)
    rss_before = _rss_bytes()
    for source in sources:
        engine.add_stream(source)
    events = _engine_tick(engine, sources, features, 0)  # not timed: first use of every stream's state
    rss_after = _rss_bytes()
    theirs = [localizer.push_features(x[0]) for localizer, x in zip(localizers, baseline, strict=True)]
    ticks, rounds, cpu = [], [], 0.0
    for t in range(1, snippets):
        began, began_cpu = time.perf_counter(), time.process_time()
        events += _engine_tick(engine, sources, features, t)
        ticks.append(time.perf_counter() - began)
        cpu += time.process_time() - began_cpu
        began = time.perf_counter()
        for i, (localizer, x) in enumerate(zip(localizers, baseline, strict=True)):
            theirs[i] += localizer.push_features(x[t])
        rounds.append(time.perf_counter() - began)
    events += engine.close()
    for i, localizer in enumerate(localizers):
        theirs[i] += localizer.flush()
        localizer.close()
    ms = np.asarray(ticks) * 1e3
    head_ms = _head_ms(engine, streams)
    return {"streams": streams, "timed": streams * len(ticks), "cores": len(os.sched_getaffinity(0)),
            "kernels": engine.kernels,
            "engine_rate": streams * len(ticks) / sum(ticks), "cpu_busy": cpu / sum(ticks),
            "tick_p50_ms": float(np.percentile(ms, 50)), "tick_p99_ms": float(np.percentile(ms, 99)),
            "head_share": head_ms / float(np.percentile(ms, 50)), "baseline_rate": subset * len(rounds) / sum(rounds), "baseline_streams": subset,
            "rss_per_stream_mib": (rss_after - rss_before) / streams / 2**20, "rss_mib": rss_after / 2**20,
            "identical": _compare(events, sources[:subset], theirs)}


def source_features(seed: int, snippets: int, dim: int) -> np.ndarray:
    """A feature source ``[snippets, dim]``: a unit-variance AR(1) sequence (coefficient
    :data:`SNIPPET_CORRELATION`), because neighbouring snippets of a video look alike."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(snippets, dim))
    x = np.empty((snippets, dim), np.float32)
    x[0] = noise[0]
    for t in range(1, snippets):
        x[t] = SNIPPET_CORRELATION * x[t - 1] + np.sqrt(1 - SNIPPET_CORRELATION**2) * noise[t]
    return x


def _head_ms(engine: Any, streams: int) -> float:
    """Median ms of the batched head alone on one tick's columns of ``streams`` streams (ρ per stream on
    average: slot i gets ⌊(i + 1)·ρ⌋ − ⌊i·ρ⌋)."""
    from ecm_edge.runtime.head import BatchedColumnHead

    head = BatchedColumnHead(engine.head.weights, capacity=streams)
    slots = list(range(streams))
    for slot in slots:
        head.reset(slot)
    bounds = np.floor(np.arange(streams + 1) * COLUMNS_PER_SNIPPET).astype(int)
    columns = [np.zeros((n, engine.feature_dim), np.float32) for n in np.diff(bounds)]
    times = []
    for _ in range(HEAD_REPEATS):
        began = time.perf_counter()
        head.push_many(slots, columns)
        times.append(time.perf_counter() - began)
    return float(np.median(times)) * 1e3


def _engine_tick(engine: Any, sources: list[str], features: list[np.ndarray], t: int) -> list[dict[str, Any]]:
    """Snippet ``t`` of every source pushed, then one step."""
    for source, x in zip(sources, features, strict=True):
        engine.push(source, x[t])
    return engine.step()


def _compare(events: list[dict[str, Any]], sources: list[str], expected: list[list[dict[str, Any]]]) -> str:
    """``yes (K events, scores within Δ)`` when each source's engine events equal its Localizer's — same types,
    classes and times, scores within :data:`SCORE_TOLERANCE` — else the first difference."""
    count, largest = 0, 0.0
    for source, theirs in zip(sources, expected, strict=True):
        ours, theirs = _comparable([e for e in events if e.get("source") == source]), _comparable(theirs)
        if len(ours) != len(theirs):
            return f"no: {source} has {len(ours)} events, its Localizer {len(theirs)}"
        for a, b in zip(ours, theirs, strict=True):
            if {k: v for k, v in a.items() if k != "score"} != {k: v for k, v in b.items() if k != "score"}:
                return f"no: {source} {a} vs {b}"
            if "score" in a:
                largest = max(largest, abs(a["score"] - b["score"]))
        count += len(ours)
    if largest > SCORE_TOLERANCE:
        return f"no: scores differ by up to {largest:.2g}"
    return f"yes ({count} events, " + ("same scores)" if largest == 0 else f"scores within {largest:.1g})")


def _comparable(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k not in NOT_COMPARED} for e in events if e["type"] != "stats"]


def _warm_blas(engine: Any) -> None:
    """One product per layer before memory is measured: the matrix library allocates its buffers on first use."""
    from ecm_edge.runtime.head import full_cas

    full_cas(engine.head.weights, np.zeros((8, engine.feature_dim), np.float32))


def _rss_bytes() -> int:
    """This process's resident memory (Linux ``/proc/self/status``; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
