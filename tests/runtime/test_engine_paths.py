"""``StreamEngine`` beyond the numpy head on features: exported graphs with a batch of windows, frames extracted
across sources in one call, sinks, per-source overrides, stats per source and for the process."""

from __future__ import annotations

import numpy as np
import pytest
from stream_helpers import D, assert_same_events

from ecm_edge.errors import ConfigError
from ecm_edge.runtime.engine import StreamEngine
from ecm_edge.runtime.extractors import TinyExtractor
from ecm_edge.runtime.head import BatchedWindowHead, FullPassRunner, HeadWeights, WindowHead, full_cas
from ecm_edge.runtime.localizer import Localizer

OVERRIDES = ("post.class_threshold=0.0", "stream.horizon=64", "stream.warmup=8")
NOT_COMPARED = ("emitted_at", "latency", "id", "source")


def source_features(seed: int, length: int, dim: int = D) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(length, dim)).astype(np.float32)
    x[length // 4: length // 2] += 3 * rng.normal(size=dim).astype(np.float32)
    return x


def comparable(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in NOT_COMPARED} for e in events if e["type"] != "stats"]


def by_source(events: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for event in events:
        grouped.setdefault(event["source"], []).append(event)
    return grouped


# -- the batched window head ------------------------------------------------------------------------------------
def test_batched_window_head_columns_equal_a_window_head_per_slot():
    """Slots pushing 0–4 snippets per call, streams shorter than the first border, a slot reused: every slot's
    columns are its own WindowHead's (same runner: an offline pass in numpy)."""
    weights = HeadWeights.random(12, 20, 5, seed=4)
    runner = FullPassRunner(lambda x: full_cas(weights, x))
    rng = np.random.default_rng(2)
    batched = BatchedWindowHead(runner, 12, 5)
    singles = {slot: WindowHead(runner, 12, 5) for slot in range(4)}
    got: dict[int, list[np.ndarray]] = {slot: [] for slot in singles}
    expected: dict[int, list[np.ndarray]] = {slot: [] for slot in singles}
    for slot in singles:
        batched.reset(slot)
    for call in range(25):
        slots = [int(s) for s in rng.permutation(4)[: rng.integers(1, 5)]]
        features = [rng.normal(size=(int(rng.integers(0, 5)), 12)).astype(np.float32) for _ in slots]
        for slot, ours, x in zip(slots, batched.push_many(slots, features), features, strict=True):
            got[slot].append(ours)
            expected[slot].append(singles[slot].push(x))
        if call % 6 == 5:
            slot = slots[0]
            got[slot].append(batched.flush_many([slot])[0])
            expected[slot].append(singles[slot].flush())
    ends = batched.flush_many(list(singles))
    for slot, single in singles.items():
        ours = np.concatenate([*got[slot], ends[slot]])
        theirs = np.concatenate([*expected[slot], single.flush()])
        assert ours.shape == theirs.shape and len(ours) > 0
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    # this runner gives no transition weights: None for every slot that got columns
    assert all(w is None for w, c in zip(batched.last_transition_weights(), ends, strict=True) if len(c))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A deploy folder with transition weights and its ``ecm-edge export`` (fp32 ONNX graphs)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from ecm_edge.config import load_config
    from ecm_edge.export.pipeline import ExportRequest, run_export
    from ecm_edge.train.deploy import save_deploy
    from ecm_edge.train.model import ECM, ECMDims

    torch.manual_seed(0)
    model = ECM(ECMDims(D, 40, 4, topk=8)).eval()
    cfg = load_config("small", [f"data.feature_dim={D}", "model.hidden_dim=40", "model.num_classes=4"])
    deploy = tmp_path_factory.mktemp("deploy")
    save_deploy(model, [f"action{i}" for i in range(4)], cfg, deploy)
    out = tmp_path_factory.mktemp("export")
    run_export(ExportRequest(checkpoint=deploy, out_dir=out, precision="fp32", engine=False))
    return out


@pytest.mark.parametrize("score_source", ["cas", "fused"])
def test_exported_graphs_serve_n_streams_with_one_call_per_tick(export_dir, score_source):
    """Three sources through ONNX Runtime in one engine (each tick one streaming-graph call for all windows):
    each source's events are those of its own one-stream Localizer on the same folder."""
    overrides = (*OVERRIDES, f"post.score_source={score_source}")
    features = {f"cam{i}": source_features(i, n) for i, n in enumerate([70, 90, 50])}
    engine = StreamEngine.from_artifacts(export_dir, "onnxruntime", overrides=overrides, precision="fp32")
    assert engine.engine == "onnxruntime" and isinstance(engine.head, BatchedWindowHead)
    for source in features:
        engine.add_stream(source)
    calls = []
    run_batch = engine.head.runner.run_batch
    engine.head.runner.run_batch = lambda graph, x: (calls.append((graph, len(x))), run_batch(graph, x))[1]
    events = []
    for tick in range(90):
        for source, x in features.items():
            if tick < len(x):
                engine.push(source, x[tick])
        events += engine.step()
    events += engine.close()
    streaming_calls = [n for graph, n in calls if graph == "streaming"]
    assert len(streaming_calls) <= 90 and max(streaming_calls) == 3  # one call per tick, every stream in it
    got = by_source(events)
    assert any(e["type"] == "segment" for e in events)
    for source, x in features.items():
        localizer = Localizer.from_artifacts(export_dir, "onnxruntime", overrides=overrides, precision="fp32")
        theirs = [e for row in x for e in localizer.push_features(row)] + localizer.flush()
        localizer.close()
        assert_same_events(comparable(got[source]), comparable(theirs))


def test_a_batch_beyond_the_engine_profile_runs_in_chunks(export_dir):
    """A TensorRT engine's profile caps the batch (recorded in its manifest): the runner splits a larger batch
    into calls the profile allows, with the same results (ONNX Runtime stands in for the engine here)."""
    from ecm_edge.runtime.engines import load_engine, select_artifact
    from ecm_edge.runtime.head import EngineRunner, batch_limit

    streaming = load_engine(select_artifact(export_dir, "streaming", precision="fp32"), "onnxruntime")
    offline = load_engine(select_artifact(export_dir, "offline", precision="fp32"), "onnxruntime")
    runner = EngineRunner(offline, streaming)
    windows = np.random.default_rng(0).normal(size=(7, 5, D)).astype(np.float32)
    whole, whole_weights = runner.run_batch("streaming", windows)
    calls = []
    infer = streaming.infer
    streaming.infer = lambda x: (calls.append(len(x)), infer(x))[1]
    streaming.manifest.source = {**streaming.manifest.source, "profile": {"features": {"max": [3, 64, D]}}}
    assert batch_limit(streaming) == 3 and batch_limit(offline) is None
    chunked, chunked_weights = runner.run_batch("streaming", windows)
    assert calls == [3, 3, 1]
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(chunked_weights, whole_weights, rtol=1e-6, atol=1e-6)
    runner.close()


# -- frames -----------------------------------------------------------------------------------------------------
class CountingTinyExtractor(TinyExtractor):
    """The tiny extractor, counting its calls and the snippets each call took."""

    def __init__(self, dim: int):
        super().__init__(dim=dim)
        self.calls: list[int] = []

    def extract(self, snippets):
        self.calls.append(len(snippets))
        return super().extract(snippets)


def moving_square_frames(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        image = np.full((48, 64, 3), rng.integers(0, 60), np.uint8)
        x = (seed * 7 + 2 * i) % 48
        image[10:30, x:x + 16] = (40 * seed % 255, 200, 90)
        frames.append(image)
    return frames


def test_frames_of_all_sources_are_extracted_in_one_call_per_tick(stream_run):
    """Two sources pushing frames: one extractor call per tick takes the snippets of both, and each source's
    events equal a Localizer fed the same frames."""
    extractor = CountingTinyExtractor(D)
    engine = StreamEngine.from_artifacts(stream_run, overrides=OVERRIDES, extractor=extractor)
    frames = {"a": moving_square_frames(1, 480), "b": moving_square_frames(2, 480)}
    fps = 25.0
    for source in frames:
        engine.add_stream(source)
    events = []
    for at in range(0, 480, 16):  # one snippet of frames per source per tick
        for source, images in frames.items():
            engine.push_frames(source, images[at:at + 16], [i / fps for i in range(at, at + 16)])
        events += engine.step()
    events += engine.close()
    assert extractor.calls and max(extractor.calls) == 2 and len(extractor.calls) <= 480 // 16
    for source, images in frames.items():
        localizer = Localizer.from_artifacts(stream_run, overrides=OVERRIDES, extractor=CountingTinyExtractor(D))
        theirs = []
        for at in range(0, 480, 16):
            theirs += localizer.push_frames(images[at:at + 16], [i / fps for i in range(at, at + 16)])
        theirs += localizer.flush()
        localizer.close()
        assert_same_events(comparable(by_source(events).get(source, [])), comparable(theirs))
        assert engine_snippets(events, source) == 0  # stats were off: none in the events


def engine_snippets(events: list[dict], source: str) -> int:
    return sum(1 for e in events if e["type"] == "stats" and e.get("source") == source)


# -- sinks, overrides, stats ------------------------------------------------------------------------------------
def test_sinks_get_every_event_with_its_source_and_outside_events(stream_run):
    engine = StreamEngine.from_artifacts(stream_run, overrides=OVERRIDES)
    seen: list[dict] = []
    engine.on_event(seen.append)
    for source in ("a", "b"):
        engine.add_stream(source)
    returned = []
    for seed, source in enumerate(("a", "b")):
        engine.push(source, source_features(seed, 80))
    returned += engine.step()
    engine.emit({"type": "source_lost", "source": "b", "reason": "test"})
    returned += engine.close()
    assert {e["source"] for e in returned} == {"a", "b"}
    assert [e for e in seen if e["type"] != "source_lost"] == returned
    assert {"type": "source_lost", "source": "b", "reason": "test"} in seen


def test_a_source_with_its_own_thresholds_gets_the_events_of_an_engine_with_them(stream_run):
    strict = ("post.nms_iou=0.2", "stream.emit_open=true")
    x = source_features(5, 100)
    engine = StreamEngine.from_artifacts(stream_run, overrides=OVERRIDES)
    engine.add_stream("plain")
    engine.add_stream("strict", overrides=strict)
    alone = StreamEngine.from_artifacts(stream_run, overrides=(*OVERRIDES, *strict))
    alone.add_stream("strict")
    events, expected = [], []
    for at in range(0, 100, 20):
        for source in ("plain", "strict"):
            engine.push(source, x[at:at + 20])
        alone.push("strict", x[at:at + 20])
        events += engine.step()
        expected += alone.step()
    events = by_source(events + engine.close())
    expected += alone.close()
    assert any(e["type"] == "segment_open" for e in expected)
    assert_same_events(comparable(events["strict"]), comparable(expected))
    assert comparable(events["plain"]) != comparable(events["strict"])
    with pytest.raises(ConfigError, match=r"source 'c': model.hidden_dim cannot be set per source"):
        engine_with_bad = StreamEngine.from_artifacts(stream_run, overrides=OVERRIDES)
        engine_with_bad.add_stream("c", overrides=["model.hidden_dim=8"])
    with pytest.raises(ConfigError, match="columns_per_snippet cannot be set per source"):
        StreamEngine.from_artifacts(stream_run).add_stream("d", overrides=["stream.columns_per_snippet=2"])


def test_stats_per_source_and_for_the_process(stream_run):
    engine = StreamEngine.from_artifacts(stream_run, overrides=(*OVERRIDES, "stream.stats_every_s=0.000001",
                                                                 "stream.queue_snippets=4"))
    for source in ("a", "b"):
        engine.add_stream(source)
    engine.push("a", source_features(0, 10))  # 4 fit the queue, 6 are dropped
    engine.push("b", source_features(1, 3))
    engine.set_dropped_frames("b", 7)
    stats = [e for e in engine.step() if e["type"] == "stats"]
    engine.close()
    per_source = {e["source"]: e for e in stats if e["source"] != "*"}
    process = next(e for e in stats if e["source"] == "*")
    assert per_source["a"]["snippets"] == 4 and per_source["a"]["dropped_snippets"] == 6
    assert per_source["b"]["snippets"] == 3 and per_source["b"]["dropped_frames"] == 7
    assert per_source["a"]["lag_s"] >= 0 and per_source["a"]["precision"] == "fp32"
    assert process["streams"] == 2 and process["dropped_snippets"] == 6 and process["snippets_per_s"] > 0
    assert process["step_ms_p99"] >= process["step_ms_p50"] > 0
