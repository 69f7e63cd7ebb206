"""``ecm_edge.Localizer``: artifacts in, events out; engines agree; callbacks isolated; thread-safe."""

from __future__ import annotations

import itertools
import json
import logging
import threading

import numpy as np
import pytest
from stream_helpers import assert_same_events as assert_same

import ecm_edge
from ecm_edge.config import load_config
from ecm_edge.errors import CheckpointError, ConfigError
from ecm_edge.runtime.head import HeadWeights, full_cas
from ecm_edge.runtime.localizer import Localizer
from ecm_edge.runtime.online import OnlineParams, OnlinePostProcessor
from ecm_edge.runtime.resample import ColumnResampler
from ecm_edge.runtime.sinks import JsonlSink

D, H, C = 32, 48, 5
CLASSES = [f"action{i}" for i in range(C)]
# random weights give flat video scores: keep every class so that segments come out
OVERRIDES = ("post.class_threshold=0.0", "stream.horizon=64")


@pytest.fixture(scope="module")
def deploy_dir(tmp_path_factory):
    """A training-run folder (model.safetensors + model.json) with known random weights."""
    torch = pytest.importorskip("torch")
    from ecm_edge.train.deploy import save_deploy
    from ecm_edge.train.model import ECM, ECMDims

    weights = HeadWeights.random(D, H, C, seed=11)
    model = ECM(ECMDims(D, H, C, topk=8))
    state = {k: torch.from_numpy(v.copy()) for k, v in weights.state_dict().items()}
    state.update({k: v for k, v in model.state_dict().items() if k.startswith("transition")})
    model.load_state_dict(state)
    cfg = load_config("small", [f"data.feature_dim={D}", f"model.hidden_dim={H}", f"model.num_classes={C}"])
    folder = tmp_path_factory.mktemp("deploy")
    save_deploy(model.eval(), CLASSES, cfg, folder)
    return folder, weights


@pytest.fixture(scope="module")
def export_dir(deploy_dir, tmp_path_factory):
    """``ecm-edge export`` of the same weights: ecm.onnx + ecm.stream.onnx with manifests."""
    pytest.importorskip("onnx")
    from ecm_edge.export.pipeline import ExportRequest, run_export

    out = tmp_path_factory.mktemp("export")
    run_export(ExportRequest(checkpoint=deploy_dir[0], out_dir=out, precision="fp32", engine=False))
    return out


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, D)).astype(np.float32)
    x[40:70] += 2.5 * rng.normal(size=D).astype(np.float32)  # a distinct stretch, so segments stand out
    return x


def comparable(events: list[dict], without: tuple[str, ...] = ("emitted_at", "source")) -> list[dict]:
    """Events without the wall-clock field and the source id (the post-processor's own events carry none), and
    others named."""
    return [{k: v for k, v in e.items() if k not in without} for e in events if e["type"] != "stats"]


def assert_same_events(got: list[dict], expected: list[dict],
                       without: tuple[str, ...] = ("emitted_at", "source")) -> None:
    """Same events in the same order, without the fields named; floats to float32 rounding."""
    assert_same(comparable(got, without), comparable(expected, without))


def stream_all(localizer: Localizer, features: np.ndarray, chunk: int) -> list[dict]:
    out = []
    for at in range(0, len(features), chunk):
        out += localizer.push_features(features[at:at + chunk])
    return out + localizer.flush()


@pytest.mark.parametrize("engine", ["numpy", "torch", "onnxruntime"])
def test_events_equal_offline_cas_through_the_online_post_processing(engine, deploy_dir, features, request):
    folder, weights = deploy_dir
    if engine == "onnxruntime":
        folder = request.getfixturevalue("export_dir")
    if engine == "torch":
        torch = pytest.importorskip("torch")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # torch's spinning worker threads starve the event thread on a small CPU
        request.addfinalizer(lambda: torch.set_num_threads(threads))
    localizer = Localizer.from_artifacts(folder, engine, overrides=OVERRIDES)
    assert localizer.engine == engine and localizer.class_names == CLASSES
    events = stream_all(localizer, features, chunk=1)
    localizer.close()
    post = OnlinePostProcessor(OnlineParams.from_config(localizer.config), CLASSES)
    starts = np.arange(len(features)) * 0.64
    expected = post.push(full_cas(weights, features), starts, starts + 0.64) + post.flush()
    assert_same_events(events, expected, without=("emitted_at", "latency", "source"))
    assert any(e["type"] == "segment" for e in events)


@pytest.mark.parametrize("rate", [2.5, 0.5])
def test_resampled_stream_equals_offline_cas_of_the_resampled_features(rate, deploy_dir, features):
    """At ρ columns per snippet the stream runs the head on the snippets ``floor(i / ρ)``, and its
    post-processing, with the column times of the resampler (``test_resample``), spans the same time as at the
    native rate."""
    folder, weights = deploy_dir
    overrides = (*OVERRIDES, f"stream.columns_per_snippet={rate}")
    localizer = Localizer.from_artifacts(folder, overrides=overrides)
    events = stream_all(localizer, features, chunk=7)
    localizer.close()
    snippet_starts = np.arange(len(features)) * 0.64
    columns = ColumnResampler(rate).plan(list(snippet_starts), list(snippet_starts + 0.64))
    np.testing.assert_array_equal(columns.snippet, np.floor(np.arange(len(columns)) / rate + 1e-9))
    params = OnlineParams.from_config(localizer.config, rate)
    assert params.horizon == round(64 * rate)
    post = OnlinePostProcessor(params, CLASSES)
    expected = post.push(full_cas(weights, features[columns.snippet]), columns.starts, columns.ends) + post.flush()
    assert_same_events(events, expected, without=("emitted_at", "latency", "source"))
    assert any(e["type"] == "segment" for e in events)


def test_auto_rate_is_the_one_the_artifacts_record(tmp_path):
    """`auto` (the shipped configs) keeps the training rate a run folder records; a number overrides it."""
    pytest.importorskip("torch")
    from ecm_edge.train.deploy import save_deploy
    from ecm_edge.train.model import ECM, ECMDims

    cfg = load_config("small", [f"data.feature_dim={D}", f"model.hidden_dim={H}", f"model.num_classes={C}",
                                "stream.columns_per_snippet=2.5"])
    save_deploy(ECM(ECMDims.from_config(cfg)).eval(), CLASSES, cfg, tmp_path)
    assert Localizer.from_artifacts(tmp_path).rate == 2.5
    given = load_config("small")
    assert Localizer.from_artifacts(tmp_path, config=given).rate == 2.5
    assert given.stream.columns_per_snippet == "auto", "the caller's config must not change"
    assert Localizer.from_artifacts(tmp_path, config="small", overrides=["stream.columns_per_snippet=1"]
                                    ).rate == 1.0


def test_chunking_does_not_change_the_events(deploy_dir, features):
    folder, _ = deploy_dir
    one = Localizer.from_artifacts(folder, overrides=OVERRIDES)
    many = Localizer.from_artifacts(folder, overrides=OVERRIDES)
    assert_same_events(stream_all(one, features, 1), stream_all(many, features, 37), ("emitted_at", "latency"))


def test_latency_counts_from_the_snippet_that_completed_the_segment(deploy_dir, features):
    folder, _ = deploy_dir
    localizer = Localizer.from_artifacts(folder, overrides=OVERRIDES)
    received = []
    for i, row in enumerate(features):
        for event in localizer.push_features(row):
            received.append((i, event))
    for i, event in received:
        assert event["latency"] == pytest.approx((i + 1) * 0.64 - event["end"], abs=1e-3)
        assert event["latency"] >= 2 * 0.64 - 1e-3  # at least the head's two-snippet delay
    localizer.close()


def test_callbacks_see_every_event_and_a_failing_one_is_isolated(deploy_dir, features, caplog):
    folder, _ = deploy_dir
    localizer = Localizer.from_artifacts(folder, overrides=OVERRIDES)
    seen: list[dict] = []
    localizer.on_event(seen.append)

    @localizer.on_event
    def broken(event):
        raise RuntimeError("callback bug")

    with caplog.at_level(logging.ERROR, logger="ecm_edge"):
        returned = stream_all(localizer, features, 10)
    assert seen == returned and returned  # flush waits until callbacks have run
    assert "callback bug" in caplog.text
    localizer.close()


def test_context_manager_flushes_into_the_sinks(deploy_dir, features, tmp_path):
    folder, _ = deploy_dir
    path = tmp_path / "events.jsonl"
    with Localizer.from_artifacts(folder, overrides=OVERRIDES, sinks=[JsonlSink(path)]) as localizer:
        pushed = localizer.push_features(features)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) > len(pushed)  # the segments still open at the end came with the flush
    assert {e["type"] for e in lines} == {"segment"}


def test_concurrent_pushes_are_atomic(deploy_dir, features):
    """Four threads each push one block of 40 snippets at once: the events must be those of a serial run over the
    blocks in some order (each push is atomic), whichever order the threads were admitted in."""
    folder, _ = deploy_dir
    blocks = [features[at:at + 40] for at in range(0, 160, 40)]
    localizer = Localizer.from_artifacts(folder, overrides=OVERRIDES)
    events: list[dict] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(blocks))

    def worker(block: np.ndarray) -> None:
        try:
            start.wait()
            localizer.on_event(lambda e: None)
            got = localizer.push_features(block)
            with lock:
                events.extend(got)
        except BaseException as exc:
            errors.append(exc)

    lock = threading.Lock()
    threads = [threading.Thread(target=worker, args=(block,)) for block in blocks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events += localizer.flush()
    localizer.close()
    assert not errors and localizer.stats.snippets == 160

    def key(e: dict) -> tuple:
        return e["type"], e.get("label"), round(e.get("start", 0.0), 4), round(e.get("end", 0.0), 4)

    got = sorted(key(e) for e in comparable(events, ("emitted_at", "latency")))
    serial_runs = []
    for order in itertools.permutations(range(len(blocks))):
        serial = Localizer.from_artifacts(folder, overrides=OVERRIDES)
        expected = stream_all(serial, np.concatenate([blocks[i] for i in order]), chunk=40)
        serial.close()
        serial_runs.append(sorted(key(e) for e in comparable(expected, ("emitted_at", "latency"))))
    assert got and got in serial_runs


def test_times_continue_after_flush(deploy_dir, features):
    folder, _ = deploy_dir
    localizer = Localizer.from_artifacts(folder, overrides=OVERRIDES)
    first = stream_all(localizer, features, 160)
    second = stream_all(localizer, features, 160)
    localizer.close()
    assert min(e["start"] for e in second) >= 160 * 0.64 - 1e-6
    shifted = [{**e, "start": e["start"] - 102.4, "end": e["end"] - 102.4} for e in second]
    assert_same_events(shifted, first)


def test_stats_events(deploy_dir, features):
    folder, _ = deploy_dir
    localizer = Localizer.from_artifacts(folder, overrides=(*OVERRIDES, "stream.stats_every_s=1e-9"))
    localizer.dropped_frames = 7
    stats = [e for e in localizer.push_features(features[:10]) if e["type"] == "stats"]
    localizer.close()
    assert stats and stats[-1]["snippets"] == 10 and stats[-1]["dropped_frames"] == 7
    assert stats[-1]["step_ms_p99"] >= stats[-1]["step_ms_p50"] > 0 and stats[-1]["fps"] > 0


def test_frames_go_through_the_tiny_extractor(deploy_dir):
    folder, _ = deploy_dir
    from ecm_edge.runtime.extractors import create_extractor

    localizer = Localizer.from_artifacts(folder, overrides=OVERRIDES, extractor="tiny")
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 255, size=(100, 48, 64, 3), dtype=np.uint8)  # 4 s at 25 fps: 6 whole snippets
    times = np.arange(100) / 25.0
    localizer.push_frames(frames[:50], times[:50])
    localizer.push_frames(frames[50:], times[50:])
    localizer.flush()
    localizer.close()
    assert localizer.stats.snippets == 6
    snippets = frames[:96].reshape(6, 16, 48, 64, 3)
    assert create_extractor("tiny", dim=D).extract(snippets).shape == (6, D)


def test_clear_errors(deploy_dir, tmp_path):
    folder, _ = deploy_dir
    with pytest.raises(CheckpointError, match="does not exist"):
        Localizer.from_artifacts(tmp_path / "missing")
    with pytest.raises(ConfigError, match="unknown engine"):
        Localizer.from_artifacts(folder, "tensorflow")
    with pytest.raises(CheckpointError, match="deploy weights"):
        Localizer.from_artifacts(tmp_path, "numpy")
    localizer = Localizer.from_artifacts(folder)
    with pytest.raises(ConfigError, match="extractor"):
        localizer.push_frames([np.zeros((8, 8, 3), np.uint8)], [0.0])
    with pytest.raises(ConfigError, match="64-d features"):
        Localizer.from_artifacts(folder, extractor="tiny", extractor_options={"dim": 64})
    localizer.close()


def test_exposed_at_the_package_root_without_torch_import():
    import subprocess
    import sys

    code = ("import sys, ecm_edge; L = ecm_edge.Localizer; "
            "print(L.__module__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["ecm_edge.runtime.localizer", "False"]
    assert ecm_edge.Localizer is Localizer


def test_a_source_gap_ends_the_stream_and_no_segment_spans_it(deploy_dir, features):
    folder, _ = deploy_dir
    reference = Localizer.from_artifacts(folder, overrides=OVERRIDES)
    before_gap = stream_all(reference, features[:80], 80)
    reference.close()
    localizer = Localizer.from_artifacts(folder, overrides=OVERRIDES)
    first = localizer.push_features(features[:80])
    at_gap = localizer.push_features(features[80:], start_time=80 * 0.64 + 30.0)  # a 30 s outage
    after = localizer.flush()
    localizer.close()
    closed = [e for e in at_gap if e["end"] <= 80 * 0.64 + 1e-6]  # emitted when the gap was seen
    assert closed and at_gap[: len(closed)] == closed
    assert_same_events(first + closed, before_gap, ("emitted_at", "latency"))
    assert all(e["start"] >= 80 * 0.64 + 30.0 - 1e-6 for e in at_gap[len(closed):] + after)
