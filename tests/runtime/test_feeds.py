"""``run_sources``: many real sources into one engine at once. Feature files give each source's one-source events,
video files and a live MJPEG server on 127.0.0.1 stream together while the server is cut and restored, a source
that cannot open or fails on the way spares the others, stop ends everything promptly, files lose nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from mjpeg_server import MjpegServer
from stream_helpers import D, assert_same_events, write_video

from ecm_edge.errors import ConfigError
from ecm_edge.runtime import feeds
from ecm_edge.runtime.engine import StreamEngine
from ecm_edge.runtime.feeds import SourceFailure, SourceFeeds, run_sources
from ecm_edge.runtime.source_specs import SourceSpec, url_id
from ecm_edge.runtime.sources import FeatureReplaySource

# random weights give flat video scores: keep every class; a short warm-up so that short inputs give segments
OVERRIDES = ("post.class_threshold=0.0", "stream.horizon=64", "stream.warmup=4")
FAST_LIVE = ("stream.read_timeout_s=0.5", "stream.reconnect_initial_s=0.1", "stream.reconnect_max_s=0.3",
             "stream.open_timeout_s=2.0", "stream.stats_every_s=0.2")
NOT_COMPARED = ("emitted_at", "id")
TEST_TIMEOUT_S = 30.0  # a test that waits for a live event gives up (and stops the sources) after this


def comparable(events: list[dict], source: str) -> list[dict]:
    """One source's events without wall-clock fields, stats excluded (their rates and timings vary by run)."""
    return [{k: v for k, v in e.items() if k not in NOT_COMPARED} for e in events
            if e.get("source") == source and e["type"] != "stats"]


def engine_for(run: Path, *extra: str, extractor: str | None = None) -> StreamEngine:
    return StreamEngine.from_artifacts(run, overrides=[*OVERRIDES, *extra], extractor=extractor)


def feature_file(folder: Path, name: str, seed: int, snippets: int = 60) -> Path:
    """Noise with one shifted stretch (an "action") at a seed-dependent place."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(snippets, D)).astype(np.float32)
    start = 10 + seed % 20
    x[start:start + 20] += 3 * rng.normal(size=D).astype(np.float32)
    np.save(folder / f"{name}.npy", x)
    return folder / f"{name}.npy"


def collect(engine: StreamEngine, specs: list[SourceSpec], **options) -> list[dict]:
    return list(run_sources(engine, specs, realtime=False, **options))


def stop_after(stop: threading.Event, seconds: float = TEST_TIMEOUT_S) -> threading.Timer:
    timer = threading.Timer(seconds, stop.set)
    timer.daemon = True
    timer.start()
    return timer


def test_n_feature_sources_in_one_run_give_n_one_source_runs(stream_run, tmp_path):
    specs = [SourceSpec(f"cam-{i}", "features", feature_file(tmp_path, f"f{i}", seed=i)) for i in range(3)]
    together = collect(engine_for(stream_run), specs)
    for spec in specs:
        alone = collect(engine_for(stream_run), [spec])
        assert comparable(alone, spec.id)  # segments came out
        assert_same_events(comparable(together, spec.id), comparable(alone, spec.id))
    assert {e["source"] for e in together} == {spec.id for spec in specs}


def test_per_source_settings_reach_their_stream_only(stream_run, tmp_path):
    path = feature_file(tmp_path, "f", seed=1)
    strict = SourceSpec("strict", "features", path, ("post.class_threshold=1.0",))  # no class passes
    events = collect(engine_for(stream_run), [SourceSpec("open", "features", path), strict])
    assert comparable(events, "open") and not comparable(events, "strict")
    with pytest.raises(ConfigError, match=r"^source 'bad': model\.hidden_dim cannot be set per source"):
        collect(engine_for(stream_run), [SourceSpec("bad", "features", path, ("model.hidden_dim=8",))])


def test_a_file_replayed_as_fast_as_possible_loses_nothing_behind_a_small_queue(stream_run, tmp_path):
    engine = engine_for(stream_run, "stream.queue_snippets=2")
    feeds_ = SourceFeeds(engine, [SourceSpec("f", "features", feature_file(tmp_path, "f", 3, snippets=120))],
                         realtime=False)
    feeds_.start()
    list(feeds_.events())
    assert feeds_.totals.snippets == 120 and feeds_.totals.dropped_snippets == 0


def test_videos_and_a_live_url_at_once_with_the_url_cut_and_restored(stream_run, tmp_path):
    videos = [SourceSpec(f"file-{i}", "video", write_video(tmp_path / f"v{i}.avi", seconds=3.0 + i))
              for i in range(2)]
    alone = collect(engine_for(stream_run, extractor="tiny"), videos)  # the files without the live source
    server = MjpegServer()
    live = SourceSpec(url_id(server.url), "url", server.url)
    engine = engine_for(stream_run, *FAST_LIVE, extractor="tiny")
    stop = threading.Event()
    stop_after(stop)
    seen: list[dict] = []
    try:
        for event in run_sources(engine, [*videos, live], stop=stop):  # files in real time: they overlap the cut
            seen.append(event)
            kinds = [(e["type"], e.get("source")) for e in seen]
            if event["type"] == "stats" and event["source"] == live.id and event["snippets"] >= 1 and \
                    ("source_lost", live.id) not in kinds:
                server.down()
            elif event["type"] == "source_lost":
                threading.Timer(0.3, server.up).start()
            if ("source_restored", live.id) in kinds and engine.sources == [live.id]:
                stop.set()  # the files have ended; the live source only ends on stop
    finally:
        server.close()
    assert not stop_timed_out(seen, live.id)
    outages = [(e["type"], e["source"]) for e in seen if e["type"] in ("source_lost", "source_restored")]
    assert outages == [("source_lost", live.id), ("source_restored", live.id)]  # that source only
    for video in videos:
        assert comparable(alone, video.id)
        assert_same_events(comparable(seen, video.id), comparable(alone, video.id))  # unaffected by the live one


def stop_timed_out(events: list[dict], live: str) -> bool:
    return ("source_restored", live) not in [(e["type"], e.get("source")) for e in events]


@pytest.fixture
def down_server():
    server = MjpegServer()
    server.down()
    yield server
    server.close()


def test_a_source_that_cannot_open_stops_the_start_naming_it(stream_run, tmp_path, down_server):
    engine = engine_for(stream_run, *FAST_LIVE)
    specs = [SourceSpec("replay", "features", feature_file(tmp_path, "f", 1)),
             SourceSpec("gate", "url", down_server.url)]
    with pytest.raises(SourceFailure, match=r"^source 'gate': cannot open stream http://127\.0\.0\.1") as caught:
        collect(engine, specs)
    assert caught.value.failures[0][0] == "gate" and len(caught.value.failures) == 1
    assert engine.sources == []  # closed: every stream flushed and removed


def test_keep_going_serves_the_others_and_retries_a_live_source_until_it_opens(stream_run, tmp_path, down_server):
    engine = engine_for(stream_run, *FAST_LIVE)
    specs = [SourceSpec("replay", "features", feature_file(tmp_path, "f", 1)),
             SourceSpec("gate", "url", down_server.url)]
    stop = threading.Event()
    stop_after(stop)
    seen: list[dict] = []
    restored = False
    for event in run_sources(engine, specs, realtime=False, keep_going=True, stop=stop):
        seen.append(event)
        # once restored, the gate's frames may reach this extractor-less engine before the stop: what it reports
        # then is not under test
        if event["type"] == "source_lost" and not restored:
            assert event["source"] == "gate" and "cannot open stream" in event["reason"] and event["retry_in_s"] > 0
            threading.Timer(0.3, down_server.up).start()
        if event["type"] == "source_restored":
            assert event["source"] == "gate" and event["attempts"] >= 1
            restored = True
            stop.set()
    assert [e["type"] for e in seen if e["source"] == "gate" and e["type"] != "stats"][:2] == \
        ["source_lost", "source_restored"]
    assert comparable(seen, "replay")  # the other source was served meanwhile


class _FailingReplay(FeatureReplaySource):
    """A replay whose reading breaks after a few snippets, as a reader hit by a bug would."""

    def read(self):
        if self._index >= 5:
            raise RuntimeError("decoder crashed")
        return super().read()


@pytest.mark.parametrize("how", ["unexpected error", "bad features"])
def test_a_source_failing_on_the_way_is_reported_and_spares_the_others(stream_run, tmp_path, monkeypatch, how):
    good = SourceSpec("good", "features", feature_file(tmp_path, "good", 1))
    if how == "unexpected error":
        monkeypatch.setattr(feeds, "FeatureReplaySource",
                            lambda path, **kw: (_FailingReplay if "bad" in str(path) else FeatureReplaySource)(path,
                                                                                                               **kw))
        bad = SourceSpec("bad", "features", feature_file(tmp_path, "bad", 2))
        reason = "its reader failed unexpectedly (RuntimeError: decoder crashed)"
    else:
        x = np.load(feature_file(tmp_path, "bad", 2))
        x[7] = np.nan
        np.save(tmp_path / "bad.npy", x)
        bad = SourceSpec("bad", "features", tmp_path / "bad.npy")
        reason = "source 'bad': features contain NaN or Inf"
    seen: list[dict] = []
    with pytest.raises(SourceFailure, match=r"^source 'bad': ") as caught:
        for event in run_sources(engine_for(stream_run), [good, bad], realtime=False):
            seen.append(event)
    assert reason in str(caught.value)
    lost = [e for e in seen if e["type"] == "source_lost"]
    assert len(lost) == 1 and lost[0]["source"] == "bad" and reason in lost[0]["reason"]
    assert lost[0]["retry_in_s"] is None
    alone = collect(engine_for(stream_run), [good])
    assert_same_events(comparable(seen, "good"), comparable(alone, "good"))


def test_stop_closes_every_source_and_flushes_promptly(stream_run, tmp_path, down_server):
    specs = [SourceSpec(f"f{i}", "features", feature_file(tmp_path, f"f{i}", i, snippets=200)) for i in range(2)]
    specs.append(SourceSpec("gate", "url", down_server.url))  # retried in the background meanwhile
    engine = engine_for(stream_run, *FAST_LIVE, "data.feature_fps=400")  # 40 ms snippets in real time
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    began = time.monotonic()
    events = list(run_sources(engine, specs, keep_going=True, stop=stop))
    assert time.monotonic() - began < 1.0 + 2 * feeds.STOP_JOIN_S
    assert engine.sources == []
    assert not [t for t in threading.enumerate() if t.name.startswith("ecm-edge feed")]
    ends = {e["source"]: e["end"] for e in events if e["type"] == "segment"}
    assert {"f0", "f1"} <= set(ends)  # the flush closed what was open at the stop
