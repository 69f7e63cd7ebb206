"""Streams on a Triton server against the in-process :class:`~ecm_edge.runtime.engine.StreamEngine`, on the same
deploy folder in the same run.

A model with random weights is saved as a deploy folder and exported with its Triton repository
(``ExportRequest(..., triton=DIR)``); one server (``ecm_edge.serving.TritonServer``, one instance of
``ecm_stream``, its Python backend running the numpy head) serves it on 127.0.0.1 while this process runs the
client (:class:`~ecm_edge.runtime.triton_client.TritonStreamEngine`, gRPC) and the in-process engine. N feature
sources (the AR(1) sequences of ``bench streams``) are replayed as fast as possible: each tick pushes one snippet
per source into both and steps both, in turn, so that both see the same load of the shared machine; the first
tick of each (the sequences' START) is not timed.

Reported per N: snippets per second of both, how many streams each holds at real time (a source delivers one
snippet per ``SNIPPET_SECONDS``), each step's p50, the added latency of a step through the server (per tick, the
Triton step minus the in-process step: p50 and p99), the server's mean batch (requests per execution, from its
metrics) and whether the events are equal: they must be, every one (the client sends every snippet's times as it
computed them, and a row of the numpy head's stacked product does not depend on how many rows Triton's batching
stacks, except that BLAS rounds a one-row product differently); the table says how many differ otherwise.

The server's Python backend needs NumPy < 2 in the environment it runs ``model.py`` in (``ecm_edge.serving``).
The part installs nothing: it uses :data:`PYTHON_ENV` or, where this interpreter has NumPy < 2, this one;
without either, or without a server binary or ``tritonclient``, it returns a section that says why it was
skipped and how to run it.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from ecm_edge.bench import BenchSection
from ecm_edge.bench.stream import COLUMNS_PER_SNIPPET, PAPER_DIMS, SNIPPET_SECONDS
from ecm_edge.bench.streams import NOT_COMPARED, SCORE_TOLERANCE, source_features
from ecm_edge.errors import ConfigError, EcmEdgeError, MissingDependencyError

PYTHON_ENV = "ECM_EDGE_TRITON_PYTHON"  # an interpreter with NumPy < 2 and ecm-edge, for the server's backend
TITLE = "Streams on a Triton server vs the in-process StreamEngine"
STREAM_COUNTS = {"full": (1, 4, 16, 64), "quick": (1, 4, 16)}
# snippets per source at each N (fewer at large N keeps the part within minutes; the first tick is not timed)
SNIPPETS = {"full": {1: 80, 4: 40, 16: 20, 64: 12}, "quick": {1: 20, 4: 10, 16: 6}}
# the thresholds of bench streams (random weights give flat video scores: events must come out to be compared),
# written into the deploy config, so that the server's engine and the in-process one run the same settings
CONFIG_OVERRIDES = ("post.class_threshold=0.0", "stream.warmup=2", "stream.stats_every_s=0")
READY_TIMEOUT_S = 300.0  # the server loads the paper-size weights and compiles the kernels before it is ready
# before each timed step: the other side's matrix-library threads spin for a while after their last product and
# would be timed as this side's cost; a pause lets them sleep, so each step runs on an otherwise quiet machine
SETTLE_S = 0.05
IGNORED_KEYS = (*NOT_COMPARED, "segment")  # segment repeats the event's fields (plus the source on the server)
METRIC = re.compile(r'^(nv_inference_count|nv_inference_exec_count)\{[^}]*model="ecm_stream"[^}]*\}\s+(\S+)', re.M)
NEEDS = {"tritonclient.grpc": ("tritonclient[grpc]", "the client of this part"),  # module -> (package, purpose)
         "torch": ("torch", "writing the model"), "onnx": ("onnx", "the export the repository is written from")}
HOW_TO_RUN = (f"to run it: set {PYTHON_ENV} to a Python with numpy<2 and ecm-edge whose environment (or this one) "
              "has the nvidia-pytriton wheel (e.g. a venv holding numpy<2 and nvidia-pytriton installed without "
              "dependencies, whose .pth adds this environment's site-packages: the one the tests make in "
              f".pytest_cache/d/triton-python) and run `{PYTHON_ENV}=/path/to/python ecm-edge bench triton`")


def run(quick: bool) -> BenchSection:
    mode = "quick" if quick else "full"
    try:
        server, python = preflight()
    except EcmEdgeError as exc:
        return skipped(str(exc))
    d, h, c = PAPER_DIMS
    with tempfile.TemporaryDirectory(prefix="ecm-edge-bench-triton-") as tmp:
        deploy_dir, repository = write_model(Path(tmp), d, h, c)
        results = measure_all(deploy_dir, repository, server, python, mode)
    return BenchSection(f"{TITLE} (D = H = {d}, C = {c})",
                        ["streams", "snippets timed", "in-process snippets/s", "Triton snippets/s",
                         "Triton / in-process", "real-time streams in-process", "real-time streams Triton",
                         "in-process step p50 ms", "Triton step p50 ms", "added p50 ms", "added p99 ms",
                         "server batch", "events equal"],
                        [_row(r) for r in results], _notes(results, d, h, c))


def skipped(reason: str) -> BenchSection:
    """The section of a run that could not measure: why, and how to run it (never a number)."""
    return BenchSection(f"{TITLE}: skipped", ["status"], [[f"skipped: {reason}"]], [HOW_TO_RUN])


# -- what the part needs ----------------------------------------------------------------------------------------
def preflight() -> tuple[Any, Any]:
    """The server binary and the server's Python, checked; an error that says what is missing otherwise."""
    from ecm_edge.serving import check_python, inspect_python

    for module, (package, purpose) in NEEDS.items():
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            raise MissingDependencyError(package, purpose)
    python = inspect_python(server_python())
    server = _find_server(python)
    check_python(server, python)
    return server, python


def _find_server(python: Any) -> Any:
    """``ecm_edge.serving.find_server``, its failure as one clear error."""
    from ecm_edge.serving import INSTALL_HINT, find_server

    try:
        return find_server(python)
    except (EcmEdgeError, TypeError) as exc:
        detail = str(exc) if isinstance(exc, EcmEdgeError) else "tritonserver is not on PATH and nvidia-pytriton " \
            "has no server binary here"
        raise MissingDependencyError("a Triton server", "this part", f"{detail}; {INSTALL_HINT}") from None


def server_python() -> Path:
    """:data:`PYTHON_ENV` when set, else this interpreter when its NumPy is 1.x; an error saying why otherwise."""
    named = os.environ.get(PYTHON_ENV)
    if named:
        return Path(named)
    if int(np.__version__.split(".")[0]) < 2:
        return Path(sys.executable)
    raise ConfigError(f"no Python for the server's Python backend: {PYTHON_ENV} is not set and this interpreter has "
                      f"NumPy {np.__version__} (the backend stub of nvidia-pytriton needs NumPy < 2)")


# -- the model and the server -----------------------------------------------------------------------------------
def write_model(folder: Path, d: int, h: int, c: int) -> tuple[Path, Path]:
    """A deploy folder with random weights (the thumos14 config at :data:`COLUMNS_PER_SNIPPET`, plus
    :data:`CONFIG_OVERRIDES`) and the Triton repository of its FP32 export."""
    import torch

    from ecm_edge.config import load_config
    from ecm_edge.export.pipeline import ExportRequest, run_export
    from ecm_edge.train.deploy import save_deploy
    from ecm_edge.train.model import ECM, ECMDims

    cfg = load_config("thumos14", [f"data.feature_dim={d}", f"model.hidden_dim={h}", f"model.num_classes={c}",
                                   f"stream.columns_per_snippet={COLUMNS_PER_SNIPPET}", *CONFIG_OVERRIDES])
    torch.manual_seed(0)
    deploy_dir = folder / "run"
    save_deploy(ECM(ECMDims.from_config(cfg)).eval(), [f"class{i}" for i in range(c)], cfg, deploy_dir)
    repository = folder / "repository"
    run_export(ExportRequest(checkpoint=deploy_dir, out_dir=folder / "export", precision="fp32", engine=False,
                             triton=repository))
    return deploy_dir, repository


def measure_all(deploy_dir: Path, repository: Path, binary: Any, python: Any, mode: str) -> list[dict[str, Any]]:
    """One server for every N; each N gets fresh engines on both sides."""
    from ecm_edge.serving import TritonServer

    http, grpc, metrics = _free_ports(3)
    server = TritonServer(repository, {"http": http, "grpc": grpc, "metrics": metrics}, python=python,
                          server=binary)
    try:
        server.start()
        server.wait_ready(READY_TIMEOUT_S)
        return [measure(deploy_dir, server, n, SNIPPETS[mode][n]) for n in STREAM_COUNTS[mode]]
    finally:
        server.stop()


def _free_ports(n: int) -> list[int]:
    """``n`` ports free on this machine now (the OS picks them)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


# -- one N -------------------------------------------------------------------------------------------------------
def measure(deploy_dir: Path, server: Any, streams: int, snippets: int) -> dict[str, Any]:
    """Both engines on the same ``streams`` sources, tick by tick in turn; rates, step times, batching, events."""
    from ecm_edge.runtime.engine import StreamEngine
    from ecm_edge.runtime.triton_client import TritonStreamEngine

    local = StreamEngine.from_artifacts(deploy_dir, "numpy")
    remote = TritonStreamEngine(server.grpc_url, config=copy.deepcopy(local.config))
    sources = [f"cam{i}" for i in range(streams)]
    features = [source_features(i, snippets, local.feature_dim) for i in range(streams)]
    for source in sources:
        local.add_stream(source)
        remote.add_stream(source)
    ours = _tick(local, sources, features, 0)  # not timed: first use of every stream's state
    theirs = _tick(remote, sources, features, 0)  # not timed: the sequences' START
    counts_before = _batch_counts(server)
    local_ms, remote_ms = [], []
    for t in range(1, snippets):
        time.sleep(SETTLE_S)
        began = time.perf_counter()
        ours += _tick(local, sources, features, t)
        local_ms.append((time.perf_counter() - began) * 1e3)
        time.sleep(SETTLE_S)
        began = time.perf_counter()
        theirs += _tick(remote, sources, features, t)
        remote_ms.append((time.perf_counter() - began) * 1e3)
    counts_after = _batch_counts(server)
    ours += local.close()
    theirs += remote.close()
    added = np.asarray(remote_ms) - np.asarray(local_ms)
    timed = streams * len(local_ms)
    return {"streams": streams, "timed": timed, "cores": len(os.sched_getaffinity(0)),
            "local_rate": timed / (sum(local_ms) / 1e3), "remote_rate": timed / (sum(remote_ms) / 1e3),
            "local_p50_ms": float(np.median(local_ms)), "remote_p50_ms": float(np.median(remote_ms)),
            "added_p50_ms": float(np.percentile(added, 50)), "added_p99_ms": float(np.percentile(added, 99)),
            "batch": _mean_batch(counts_before, counts_after), **compare(ours, theirs, sources)}


def _tick(engine: Any, sources: list[str], features: list[np.ndarray], t: int) -> list[Any]:
    """Snippet ``t`` of every source pushed, then one step."""
    for source, x in zip(sources, features, strict=True):
        engine.push(source, x[t])
    return list(engine.step())


def _batch_counts(server: Any) -> dict[str, float]:
    """The server's inference and execution counts of ``ecm_stream`` (its Prometheus metrics; empty if none)."""
    try:
        with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {name: float(value) for name, value in METRIC.findall(text)}


def _mean_batch(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Requests per execution of ``ecm_stream`` between two metric readings (None without metrics)."""
    keys = ("nv_inference_count", "nv_inference_exec_count")
    if not all(k in before and k in after for k in keys):
        return None
    executions = after[keys[1]] - before[keys[1]]
    return (after[keys[0]] - before[keys[0]]) / executions if executions else None


# -- events -------------------------------------------------------------------------------------------------------
def compare(ours: list[Any], theirs: list[Any], sources: list[str]) -> dict[str, Any]:
    """Per source, how many of the server's events have an equal in-process one (scores and times within
    :data:`SCORE_TOLERANCE`); the events without a match in all and on the worst source."""
    events = flips = worst = 0
    for source in sources:
        mine = _comparable([e for e in ours if e.get("source") == source])
        served = _comparable([e for e in theirs if e.get("source") == source])
        flipped = max(len(mine), len(served)) - _matched(served, mine)
        events, flips, worst = events + len(mine), flips + flipped, max(worst, flipped)
    return {"events": events, "flips": flips, "worst_flips": worst}


def _comparable(events: list[Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in dict(e).items() if k not in IGNORED_KEYS} for e in events if e["type"] != "stats"]


def _matched(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> int:
    """How many events of ``got`` have an equal one in ``expected`` (each used once)."""
    left, count = list(expected), 0
    for event in got:
        match = next((other for other in left if _same(event, other)), None)
        if match is not None:
            left.remove(match)
            count += 1
    return count


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    return all(abs(a[k] - b[k]) <= SCORE_TOLERANCE if isinstance(a[k], float) and isinstance(b[k], float)
               else a[k] == b[k] for k in a)


def _verdict(r: dict[str, Any]) -> str:
    if r["flips"] == 0:
        return f"yes ({r['events']} events)"
    return f"no: {r['flips']} events differ, up to {r['worst_flips']} on one source ({r['events']} events)"


# -- the report ---------------------------------------------------------------------------------------------------
def _row(r: dict[str, Any]) -> list[object]:
    batch = "n/a" if r["batch"] is None else f"{r['batch']:.1f}"
    return [r["streams"], r["timed"], r["local_rate"], r["remote_rate"], f"{r['remote_rate'] / r['local_rate']:.2f}×",
            r["local_rate"] * SNIPPET_SECONDS, r["remote_rate"] * SNIPPET_SECONDS, r["local_p50_ms"],
            r["remote_p50_ms"], r["added_p50_ms"], r["added_p99_ms"], batch, _verdict(r)]


def _notes(results: list[dict[str, Any]], d: int, h: int, c: int) -> list[str]:
    from ecm_edge.runtime.triton_client import WORKERS

    cores = results[0]["cores"]
    return [
        f"D = {d}, H = {h}, C = {c}, {COLUMNS_PER_SNIPPET} head columns per snippet, thumos14 config, random "
        "weights; sources: the AR(1) features of bench streams, one snippet per source per tick, as fast as "
        "possible; post.class_threshold = 0 and stream.warmup = 2 in the deploy config (both sides run it)",
        f"one server on 127.0.0.1 (one instance of ecm_stream, Python backend, numpy head) and this process (the "
        f"gRPC client, {WORKERS} requests in flight, and the in-process engine) share the {cores} cores; the "
        f"in-process step and the Triton step alternate tick by tick, each after a {SETTLE_S * 1e3:.0f} ms pause (the other "
        "side's matrix-library threads spin on after their last product: timed without the pause, they slowed "
        "the in-process step up to 2.5×)",
        f"real-time streams = snippets/s × {SNIPPET_SECONDS} s (a live source delivers one snippet per "
        f"{SNIPPET_SECONDS} s) on the whole machine; added = per tick, the Triton step (push + one request per "
        "source, all in flight at once, until every response is back) minus the in-process step; p99 of few ticks "
        "is close to their maximum",
        "server batch: requests per execution of ecm_stream (nv_inference_count / nv_inference_exec_count over "
        "the timed ticks): one execution is one step of the server's engine, one head call for its requests",
        f"events equal: every event of every source matched to an in-process one (scores and times within "
        f"{SCORE_TOLERANCE:g}; emitted_at, latency, id, source and segment not compared); every snippet's times "
        "travel with it, and Triton's batching changes no row of the head's product (a one-row product excepted), "
        "so every event must match; otherwise the count of those that differ",
    ]
