"""``StreamEngine``: N streams through one batched head give each stream's ``Localizer`` events; slots, drops,
errors per source. And the batched head itself: each slot's columns are ``ColumnHead``'s."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from stream_helpers import assert_same_events

from ecm_edge.errors import CheckpointError, ConfigError, DataError, EcmEdgeError
from ecm_edge.runtime.engine import StreamEngine
from ecm_edge.runtime.head import BatchedColumnHead, ColumnHead, HeadWeights
from ecm_edge.runtime.localizer import Localizer

D, H, C = 32, 48, 4  # the stream_run deploy folder's (tests/stream_helpers.py)
SNIPPET = 0.64
# random weights give flat video scores: keep every class so that segments come out (as in test_localizer)
OVERRIDES = ("post.class_threshold=0.0", "stream.horizon=64", "stream.warmup=8")
RATE = ("stream.columns_per_snippet=3.4",)  # the THUMOS14 training rate: several columns per snippet
NOT_COMPARED = ("emitted_at", "latency", "id")


# -- the batched head -------------------------------------------------------------------------------------------
def test_batched_head_columns_equal_a_column_head_per_slot():
    """Slots pushing different numbers of snippets per call (0 included), flushing at different times, and a
    slot reused after its stream ended: every slot's CAS columns are its own ColumnHead's."""
    weights = HeadWeights.random(24, 40, 6, seed=3)
    rng = np.random.default_rng(0)
    batched = BatchedColumnHead(weights)  # capacity 1: the slots below make it grow
    singles: dict[int, ColumnHead] = {}
    got: dict[int, list[np.ndarray]] = {}
    expected: dict[int, list[np.ndarray]] = {}

    def record(slot: int, ours: np.ndarray, theirs: np.ndarray) -> None:
        got.setdefault(slot, []).append(ours)
        expected.setdefault(slot, []).append(theirs)

    for slot in range(5):
        batched.reset(slot)
        singles[slot] = ColumnHead(weights)
    for call in range(30):
        slots = [int(s) for s in rng.permutation(5)[: rng.integers(1, 6)]]
        features = [rng.normal(size=(int(rng.integers(0, 5)), 24)).astype(np.float32) for _ in slots]
        for slot, ours, x in zip(slots, batched.push_many(slots, features), features, strict=True):
            record(slot, ours, singles[slot].push(x))
        if call % 7 == 6:  # a stream ends; its slot starts a new one
            slot = slots[0]
            record(slot, batched.flush(slot), singles[slot].flush())
            assert batched.received(slot) == 0
    for slot in range(5):
        record(slot, batched.flush(slot), singles[slot].flush())
        ours, theirs = np.concatenate(got[slot]), np.concatenate(expected[slot])
        assert ours.shape == theirs.shape and len(ours) > 0
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert batched.capacity >= 5


def test_batched_head_short_streams_and_bad_calls():
    weights = HeadWeights.random(8, 12, 3, seed=1)
    batched, single = BatchedColumnHead(weights, capacity=2), ColumnHead(weights)
    batched.reset(0)
    batched.reset(1)
    x = np.random.default_rng(1).normal(size=(1, 8)).astype(np.float32)
    assert [len(c) for c in batched.push_many([0, 1], [x, x[:0]])] == [0, 0]
    np.testing.assert_allclose(batched.flush(0), (single.push(x), single.flush())[1], rtol=1e-6)
    assert batched.flush(1).shape == (0, 3)  # nothing received: nothing to flush
    with pytest.raises(ValueError, match="more than once"):
        batched.push_many([0, 0], [x, x])
    with pytest.raises(ValueError, match="never reset"):
        batched.push_many([7], [x])
    with pytest.raises(DataError, match=r"\[N, 8\]"):
        batched.push_many([0], [np.zeros((2, 5), np.float32)])


# -- the engine -------------------------------------------------------------------------------------------------
def source_features(seed: int, length: int) -> np.ndarray:
    """Noise with one distinct stretch (an "action"), different per source."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(length, D)).astype(np.float32)
    x[length // 4: length // 2] += 3 * rng.normal(size=D).astype(np.float32)
    return x


def comparable(events: list[dict], source: str | None = None) -> list[dict]:
    """Events without wall-clock fields and stats; with ``source`` given, each must carry it (then dropped)."""
    out = []
    for event in events:
        if event["type"] == "stats":
            continue
        if source is not None:
            assert event["source"] == source, event
        out.append({k: v for k, v in event.items() if k not in (*NOT_COMPARED, "source")})
    return out


def by_source(events: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for event in events:
        grouped.setdefault(event["source"], []).append(event)
    return grouped


def in_chunks(x: np.ndarray, size: int) -> list[np.ndarray]:
    return [x[i:i + size] for i in range(0, len(x), size)]


def localizer_events(folder, overrides, chunks: list[np.ndarray], start_times=None) -> list[dict]:
    """One Localizer fed ``chunks`` in order (``start_times[i]`` for chunk i when given), then flushed.

    The engine's ticks and the Localizer's pushes see the same chunks: float32 sums of a head product depend on
    its number of rows, and a borderline candidate can flip with them (a Localizer fed a video whole and fed it
    snippet by snippet can differ by such an event too)."""
    localizer = Localizer.from_artifacts(folder, overrides=overrides)
    events = []
    for i, chunk in enumerate(chunks):
        start = None if start_times is None else start_times[i]
        events += localizer.push_features(chunk, start_time=start)
    events += localizer.flush()
    localizer.close()
    return comparable(events)


@pytest.mark.parametrize("overrides", [OVERRIDES, (*OVERRIDES, *RATE), (*OVERRIDES, *RATE, "post.score_source=fused")],
                         ids=["native-rate", "rate-3.4", "rate-3.4-fused"])
def test_n_streams_give_the_events_of_n_localizers(stream_run, overrides):
    """Four sources of different lengths, pushing different chunk sizes per tick, one engine: each source's
    events are those of its own Localizer fed the same snippets."""
    lengths, chunk_sizes = [90, 120, 60, 100], [1, 3, 2, 5]
    features = {f"cam{i}": source_features(i, n) for i, n in enumerate(lengths)}
    engine = StreamEngine.from_artifacts(stream_run, overrides=overrides)
    assert [engine.add_stream(s) for s in features] == [0, 1, 2, 3]
    events = []
    for tick in range(max(lengths)):
        for (source, x), size in zip(features.items(), chunk_sizes, strict=True):
            chunk = x[tick * size:(tick + 1) * size]
            if len(chunk):
                engine.push(source, chunk)
        events += engine.step()
    events += engine.close()
    got = by_source(events)
    assert any(e["type"] == "segment" for e in events)
    for (source, x), size in zip(features.items(), chunk_sizes, strict=True):
        expected = localizer_events(stream_run, overrides, in_chunks(x, size))
        assert_same_events(comparable(got[source], source), expected)


def test_streams_join_and_leave_and_a_reused_slot_starts_clean(stream_run):
    engine = StreamEngine.from_artifacts(stream_run, overrides=OVERRIDES)
    a, b, c = source_features(10, 80), source_features(11, 70), source_features(12, 60)
    events = []
    assert engine.add_stream("a") == 0
    for t in range(30):
        engine.push("a", a[t])
        events += engine.step()
    assert engine.add_stream("b") == 1  # joins mid-way
    for t in range(30, 60):
        engine.push("a", a[t])
        engine.push("b", b[t - 30])
        events += engine.step()
    events += engine.remove_stream("a")  # leaves mid-way (its last events come out)
    assert engine.sources == ["b"]
    assert engine.add_stream("c") == 0, "the freed slot is reused"
    for t in range(60, 100):
        if t - 30 < len(b):
            engine.push("b", b[t - 30])
        engine.push("c", c[t - 60])
        events += engine.step()
    events += engine.close()
    got = by_source(events)
    assert got["a"] and got["b"] and got["c"]
    assert_same_events(comparable(got["a"], "a"), localizer_events(stream_run, OVERRIDES, in_chunks(a[:60], 1)))
    assert_same_events(comparable(got["b"], "b"), localizer_events(stream_run, OVERRIDES, in_chunks(b, 1)))
    assert_same_events(comparable(got["c"], "c"), localizer_events(stream_run, OVERRIDES, in_chunks(c[:40], 1)))


def test_overload_drops_whole_snippets_counted_per_source(stream_run):
    """A source pushing more than stream.queue_snippets between ticks loses the excess, counted; the dropped
    snippets' time still passes, so its stream sees a gap (here longer than stream.max_frame_gap_s: it ends and a
    new one starts), and the other source is untouched."""
    overrides = (*OVERRIDES, "stream.queue_snippets=40")
    engine = StreamEngine.from_artifacts(stream_run, overrides=overrides)
    busy, calm = source_features(20, 100), source_features(21, 100)
    engine.add_stream("busy")
    engine.add_stream("calm")
    assert engine.push("busy", busy[:50]) == 40  # 10 dropped: 6.4 s of source time without snippets
    assert engine.push("calm", calm[:40]) == 40
    events = engine.step()
    for chunk in (slice(50, 90), slice(90, 100)):
        assert engine.push("busy", busy[chunk]) == chunk.stop - chunk.start
        engine.push("calm", calm[chunk.start - 10:chunk.stop - 10])
        events += engine.step()
    engine.push("calm", calm[90:])
    events += engine.step()
    stats = engine.stats("busy")
    assert (stats.received, stats.processed, stats.dropped, stats.queued) == (100, 90, 10, 0)
    assert engine.stats("calm").dropped == 0
    events += engine.close()
    got = by_source(events)
    expected_busy = localizer_events(stream_run, overrides, [busy[:40], busy[50:90], busy[90:]],
                                     start_times=[0.0, 50 * SNIPPET, 90 * SNIPPET])
    expected_calm = localizer_events(stream_run, overrides, [calm[:40], calm[40:80], calm[80:90], calm[90:]])
    assert expected_busy and expected_calm
    assert_same_events(comparable(got["busy"], "busy"), expected_busy)
    assert_same_events(comparable(got["calm"], "calm"), expected_calm)


def test_wrong_feature_dim_names_the_source_and_spares_the_others(stream_run):
    engine = StreamEngine.from_artifacts(stream_run, overrides=OVERRIDES)
    good = source_features(30, 80)
    engine.add_stream("good")
    engine.add_stream("bad")
    events = []
    for t in range(len(good)):
        engine.push("good", good[t])
        if t == 20:
            with pytest.raises(DataError) as caught:
                engine.push("bad", np.zeros((2, D + 1), np.float32))
            message = str(caught.value)
            assert "'bad'" in message and f"[n, {D}]" in message and "\n" not in message
        events += engine.step()
    events += engine.close()
    assert_same_events(comparable(by_source(events)["good"], "good"), localizer_events(stream_run, OVERRIDES, in_chunks(good, 1)))
    assert all(e["source"] == "good" for e in events)


def test_sources_push_from_their_own_threads_while_ticks_run(stream_run):
    """push only queues (its own lock): camera threads push while the main thread steps; nothing is lost."""
    engine = StreamEngine.from_artifacts(stream_run, overrides=OVERRIDES)
    sources = {f"cam{i}": source_features(40 + i, 50) for i in range(3)}
    for source in sources:
        engine.add_stream(source)

    def feed(source: str) -> None:
        for row in sources[source]:
            engine.push(source, row)

    threads = [threading.Thread(target=feed, args=(s,)) for s in sources]
    for thread in threads:
        thread.start()
    events = []
    while any(t.is_alive() for t in threads):
        events += engine.step()
    for thread in threads:
        thread.join()
    events += engine.step()
    for source in sources:
        stats = engine.stats(source)
        assert (stats.received, stats.processed, stats.dropped, stats.queued) == (50, 50, 0, 0)
    events += engine.close()
    assert set(by_source(events)) == set(sources)


def test_engine_errors_a_user_can_act_on(stream_run, tmp_path):
    engine = StreamEngine.from_artifacts(stream_run, overrides=OVERRIDES)
    engine.add_stream("a")
    with pytest.raises(ConfigError, match="already streaming"):
        engine.add_stream("a")
    with pytest.raises(ConfigError, match=r"unknown source 'z' \(streaming: 'a'\)"):
        engine.push("z", np.zeros(D, np.float32))
    with pytest.raises(DataError, match="end times"):
        engine.push("a", np.zeros((2, D), np.float32), end_times=[1.0])
    with pytest.raises(CheckpointError, match="export them with"):
        StreamEngine.from_artifacts(tmp_path)
    engine.close()
    with pytest.raises(EcmEdgeError, match="closed"):
        engine.step()
    with pytest.raises(EcmEdgeError, match="closed"):
        engine.push("a", np.zeros(D, np.float32))


def test_the_streams_benchmark_measures_both_sides_and_compares_their_events(stream_run):
    """``ecm-edge bench streams``' measurement of one N, on a small head (the part itself runs D = H = 2048)."""
    from ecm_edge.bench.streams import measure

    result = measure(stream_run, streams=3, snippets=6)
    assert result["timed"] == 15 and result["baseline_streams"] == 3
    assert result["engine_rate"] > 0 and result["baseline_rate"] > 0 and result["tick_p99_ms"] >= result["tick_p50_ms"]
    assert result["identical"].startswith("yes ("), result["identical"]
