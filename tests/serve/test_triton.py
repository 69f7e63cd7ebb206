"""Serving on a real Triton server (the nvidia-pytriton wheel's, on 127.0.0.1): the repository `export --triton`
writes, 8 sequences over HTTP and gRPC against the in-process engine, a server killed mid-stream, bad input.

One server for the module (starting one takes seconds); the restart test starts its own, since it kills it.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ecm_edge.errors import ConfigError
from ecm_edge.triton_repository import STREAM_MODEL

pytest.importorskip("torch")
SERVE_MISSING = "the Triton client is not installed: `pip install -e '.[dev]'` (or 'ecm-edge[serve]')"
tritonclient_http = pytest.importorskip("tritonclient.http", reason=SERVE_MISSING)
pytest.importorskip("tritonclient.grpc", reason=SERVE_MISSING)

from stream_helpers import D  # noqa: E402
from triton_helpers import FOREIGN, free_ports, server_python  # noqa: E402

from ecm_edge.runtime.engine import StreamEngine  # noqa: E402
from ecm_edge.runtime.snippets import snippet_times  # noqa: E402
from ecm_edge.runtime.triton_client import TritonStreamEngine  # noqa: E402
from ecm_edge.serving import TritonServer, check_ports, find_server, inspect_python  # noqa: E402

SOURCES = 8
SNIPPETS = 90
CHUNK = 30  # snippets per push and tick
DROPPED_KEYS = ("emitted_at", "id", "latency")


def _start(repo: Path, cache: Path) -> TritonServer:
    python, why = server_python(cache)
    if python is None:
        pytest.skip(why)
    env = inspect_python(python)
    try:
        binary = find_server(env)
    except Exception as exc:
        pytest.skip(f"no Triton server here: {exc}")
    http, grpc, metrics = free_ports()
    server = TritonServer(repo, {"http": http, "grpc": grpc, "metrics": metrics}, python=env, server=binary)
    server.start()
    try:
        server.wait_ready(90)
    except Exception:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def server(repository, pytestconfig):
    server = _start(repository[1], pytestconfig.cache.mkdir("triton-python"))
    yield server
    server.stop()


def _features(seed: int, n: int = SNIPPETS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype(np.float32)
    x[n // 3: n // 2] += 3 * rng.normal(size=D).astype(np.float32)
    return x


def _comparable(events) -> list[dict]:
    return [{k: v for k, v in dict(e).items() if k not in DROPPED_KEYS} for e in events if e["type"] != "stats"]


def _assert_equal(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected), (got, expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert a[key] == pytest.approx(b[key], abs=1e-5), (key, a, b)
            elif key != "segment":
                assert a[key] == b[key], (key, a, b)


def _in_process(run: Path, inputs: dict[str, np.ndarray], start: float = 0.0, engine: str = "numpy"
                ) -> dict[str, list[dict]]:
    """The reference: the same snippets, pushed in the same chunks, through an in-process engine."""
    engine = StreamEngine.from_artifacts(run, engine, overrides=["stream.stats_every_s=0"], precision="fp32")
    out: dict[str, list] = {s: [] for s in inputs}
    for source in inputs:
        engine.add_stream(source)
    for offset in range(0, SNIPPETS, CHUNK):
        for source, x in inputs.items():
            engine.push(source, x[offset:offset + CHUNK], start_time=start + offset * engine.snippet_seconds
                        if offset == 0 else None)
        for event in engine.step():
            out[event.source].append(event)
    for source in inputs:  # the server ends each sequence on its own END request, so each flush is on its own too
        out[source] += engine.remove_stream(source)
    engine.close()
    return {s: _comparable(e) for s, e in out.items()}


def _through_server(url: str, inputs: dict[str, np.ndarray]) -> dict[str, list[dict]]:
    client = TritonStreamEngine(url, config="small", overrides=["stream.stats_every_s=0"])
    out: dict[str, list] = {s: [] for s in inputs}
    for source in inputs:
        client.add_stream(source)
    for offset in range(0, SNIPPETS, CHUNK):
        for source, x in inputs.items():
            client.push(source, x[offset:offset + CHUNK])
        for event in client.step():
            out[event.source].append(event)
    for event in client.close():
        out[event.source].append(event)
    return {s: _comparable(e) for s, e in out.items()}


# -- the repository ---------------------------------------------------------------------------------------------
def test_taken_port_is_a_clear_error(server):
    with pytest.raises(ConfigError, match=f"port {server.ports['http']} \\(http\\) is taken"):
        check_ports({"http": server.ports["http"], "grpc": 1, "metrics": 2})


# -- streams ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_eight_sequences_equal_the_in_process_engine(repository, server, protocol):
    inputs = {f"cam-{i}": _features(i) for i in range(SOURCES)}
    url = server.http_url if protocol == "http" else server.grpc_url
    got = _through_server(url, inputs)
    expected = _in_process(repository[0], inputs)
    assert sum(len(e) for e in expected.values()) > 0
    # Triton groups the concurrent requests into batches of its own choosing, the in-process engine steps all 8
    # together: a row of the numpy head's stacked product does not depend on how many rows it stacks, except that
    # BLAS computes a one-row product as a matrix-vector product, rounded differently. The steps here stack 30
    # snippets, and each END flushes its sequence alone on both sides, so every event is equal.
    for source in inputs:
        _assert_equal(got[source], expected[source])


def test_server_killed_and_restarted_mid_stream(repository, pytestconfig):
    """Events emitted before the kill stay; the snippets sent after it form a restarted sequence whose events
    equal a fresh in-process stream of the same snippets."""
    run, repo = repository
    cache = pytestconfig.cache.mkdir("triton-python")
    server = _start(repo, cache)
    x = _features(42)
    half = SNIPPETS // 2
    client = TritonStreamEngine(server.http_url, config="small",
                                overrides=["stream.stats_every_s=0", "stream.reconnect_initial_s=0.2",
                                           "stream.reconnect_max_s=0.5"], timeout_s=5)
    client.add_stream("cam")
    events = []
    try:
        client.push("cam", x[:half])
        events += client.step()
        before = _comparable(events)
        server.kill()
        client.push("cam", x[half:])
        events += client.step()
        assert [e["type"] for e in events[len(before):]] == ["source_lost"]
        server.start()
        server.wait_ready(90)
        deadline = time.monotonic() + 60
        while not any(e["type"] == "source_restored" for e in events) and time.monotonic() < deadline:
            time.sleep(0.2)
            events += client.step()
        events += client.close()
    finally:
        server.stop()
    types = [e["type"] for e in events]
    assert "source_restored" in types
    after = [e for e in events[types.index("source_restored") + 1:]]
    # what was emitted before the kill: the uninterrupted stream's first events
    reference = StreamEngine.from_artifacts(run, "numpy", overrides=["stream.stats_every_s=0"])
    reference.add_stream("cam")
    reference.push("cam", x[:half])
    emitted = _comparable(reference.step())
    _assert_equal(before, emitted)
    reference.close()
    fresh = StreamEngine.from_artifacts(run, "numpy", overrides=["stream.stats_every_s=0"])
    fresh.add_stream("cam")
    clock = snippet_times(0.0, half, fresh.snippet_seconds)[1][-1]  # where the client's clock stood
    fresh.push("cam", x[half:], start_time=clock)
    expected = _comparable(fresh.step() + fresh.close())
    _assert_equal(_comparable(after), expected)


# -- bad input --------------------------------------------------------------------------------------------------
def _raw(server, features: np.ndarray, dtype: str = "FP32", **sequence):
    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.ports['http']}")
    tensor = tritonclient_http.InferInput("FEATURES", list(features.shape), dtype)
    tensor.set_data_from_numpy(features)
    result = client.infer(STREAM_MODEL, [tensor], **sequence)
    return json.loads(result.as_numpy("EVENTS").reshape(-1)[0])


@pytest.mark.parametrize(("features", "dtype", "sequence", "message"), [
    (np.zeros((1, 3, D + 1), np.float32), "FP32", {"sequence_id": "bad-d", "sequence_start": True}, "shape"),
    (np.zeros((1, 3, D), np.float64), "FP64", {"sequence_id": "bad-dtype", "sequence_start": True}, "FP"),
    (np.zeros((1, 3, D), np.float32), "FP32", {}, "correlation ID"),
    (np.full((1, 3, D), np.nan, np.float32), "FP32", {"sequence_id": "nan", "sequence_start": True}, "NaN"),
])
def test_bad_request_is_refused_and_the_server_goes_on(server, features, dtype, sequence, message):
    with pytest.raises(Exception, match=message):
        _raw(server, features, dtype, **sequence)
    assert _raw(server, np.zeros((1, 2, D), np.float32), sequence_id="after-bad", sequence_start=True,
                sequence_end=True) is not None


def test_sending_after_end_is_refused(server):
    _raw(server, np.zeros((1, 2, D), np.float32), sequence_id="ended", sequence_start=True, sequence_end=True)
    with pytest.raises(Exception, match="START"):
        _raw(server, np.zeros((1, 2, D), np.float32), sequence_id="ended")


def test_model_of_another_release_does_not_load_and_says_why(server):
    failures = server.model_failures()
    assert "exported by ecm-edge 0.0.1" in failures[FOREIGN]
    with pytest.raises(Exception, match=FOREIGN):
        tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.ports['http']}").infer(
            FOREIGN, [], sequence_id="x", sequence_start=True)


# -- the head in another model (business-logic scripting) --------------------------------------------------------
def test_bls_head_model_serves_eight_sequences_like_the_in_process_engine(bls_repository, pytestconfig):
    """ecm_stream keeps the sequences and calls the head model once per tick through the server; the events equal
    an in-process engine on the same FP32 graphs with ONNX Runtime."""
    export, repo = bls_repository
    assert 'key: "head_model" value: { string_value: "ecm_head_onnx" }' in (repo / STREAM_MODEL / "config.pbtxt"
                                                                            ).read_text()
    server = _start(repo, pytestconfig.cache.mkdir("triton-python"))
    try:
        assert "ecm_head_onnx" not in server.skipped
        inputs = {f"cam-{i}": _features(100 + i) for i in range(SOURCES)}
        got = _through_server(server.grpc_url, inputs)
        metrics = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    finally:
        server.stop()
    head_calls = re.search(r'nv_inference_exec_count\{model="ecm_head_onnx",version="1"\} (\d+)', metrics)
    assert head_calls is not None and int(head_calls.group(1)) >= SNIPPETS // CHUNK, metrics
    expected = _in_process(export, inputs, engine="onnxruntime")
    assert sum(len(e) for e in expected.values()) > 0
    for source in inputs:
        _assert_equal(got[source], expected[source])


def test_bls_stream_model_is_not_loaded_without_its_head_model(bls_repository, tmp_path):
    """On a server with the Python backend only, as exported (the head an ONNX Runtime platform model)."""
    from ecm_edge.serving import loadable_models

    repo = tmp_path / "repo"
    shutil.copytree(bls_repository[1], repo)
    config = repo / "ecm_head_onnx" / "config.pbtxt"
    config.write_text(config.read_text().replace('backend: "python"', 'platform: "onnxruntime_onnx"'))
    (tmp_path / "backends" / "python").mkdir(parents=True)
    load, skipped = loadable_models(repo, tmp_path / "backends")
    assert STREAM_MODEL not in load and "onnxruntime backend" in skipped["ecm_head_onnx"]
    assert "runs its head in ecm_head_onnx (--triton-head bls)" in skipped[STREAM_MODEL]
