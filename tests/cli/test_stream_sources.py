"""``ecm-edge stream`` with many sources, as a real subprocess: a sources file and options together, per-source
settings, --keep-going, and the one-line errors and exit codes of bad source lists."""

from __future__ import annotations

import numpy as np
from stream_helpers import KEEP_ALL, D, events_of, run_stream, write_video


def segments_by_source(events: list[dict]) -> dict[str, list[tuple]]:
    found: dict[str, list[tuple]] = {}
    for e in events:
        if e["type"] == "segment":
            found.setdefault(e["source"], []).append((e["label"], e["start"], e["end"], e["score"]))
    return found


def test_a_sources_file_and_options_stream_together(stream_run, stream_features, tmp_path):
    (tmp_path / "inputs").mkdir()
    write_video(tmp_path / "inputs" / "door.avi", seconds=4.0)
    np.save(tmp_path / "inputs" / "other.npy", np.random.default_rng(3).normal(size=(80, D)).astype(np.float32))
    sources = tmp_path / "sources.yaml"
    sources.write_text("sources:\n"
                       "  - {id: door, video: inputs/door.avi}\n"  # relative to the file's folder
                       "  - {id: other, features: inputs/other.npy}\n"
                       f"  - {{id: strict, features: {stream_features}, set: {{post.class_threshold: 1.0}}}}\n")
    done = run_stream("--sources", str(sources), "--features", str(stream_features), "--artifacts", str(stream_run),
                      "--no-realtime", *KEEP_ALL)
    assert done.returncode == 0, done.stderr
    found = segments_by_source(events_of(done.stdout))
    assert set(found) == {"door", "other", "video"}  # "strict" keeps no class; "video": the option's file stem
    alone = run_stream("--features", str(stream_features), "--artifacts", str(stream_run), "--no-realtime",
                       *KEEP_ALL)
    assert found["video"] == segments_by_source(events_of(alone.stdout))["video"]
    # 6 snippets of video + 80 + 120 + 120 (the "strict" source runs through the head too)
    assert done.stderr.strip().splitlines()[-1].startswith("stream: 326 snippets, ")
    assert "from 4 sources" in done.stderr and "4 sources: door (video " in done.stderr


def test_duplicate_ids_are_one_line_and_exit_1(stream_run, stream_features, tmp_path):
    sources = tmp_path / "sources.yaml"
    sources.write_text(f"sources:\n  - {{id: a, features: {stream_features}}}\n"
                       f"  - {{id: a, features: {stream_features}}}\n")
    done = run_stream("--sources", str(sources), "--artifacts", str(stream_run))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == f"error: {sources}: entry 2 (id 'a'): id already used by entry 1; every source " \
                                  "needs its own id"


def test_a_setting_a_source_may_not_have_is_one_line_naming_it(stream_run, stream_features, tmp_path):
    sources = tmp_path / "sources.yaml"
    sources.write_text(f"sources:\n  - {{id: a, features: {stream_features}, set: {{data.feature_fps: 30}}}}\n")
    done = run_stream("--sources", str(sources), "--artifacts", str(stream_run))
    assert done.returncode == 1
    assert done.stderr.strip().startswith(f"error: {sources}: entry 1 (id 'a'): data.feature_fps cannot be set per "
                                          "source")


def test_keep_going_serves_the_good_sources_and_exits_1_naming_the_bad_one(stream_run, stream_features, tmp_path):
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"not a video" * 100)
    args = ["--video", str(broken), "--features", str(stream_features), "--artifacts", str(stream_run),
            "--no-realtime", *KEEP_ALL]
    done = run_stream(*args)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == f"error: source 'broken': cannot decode video file {broken}: not a video OpenCV " \
                                  "can read (corrupt or unsupported codec)"

    done = run_stream(*args, "--keep-going")
    assert done.returncode == 1
    events = events_of(done.stdout)
    lost = [e for e in events if e["type"] == "source_lost"]
    assert len(lost) == 1 and lost[0]["source"] == "broken" and lost[0]["retry_in_s"] is None
    assert "cannot decode video file" in lost[0]["reason"]
    assert set(segments_by_source(events)) == {"video"}
    assert done.stderr.strip().splitlines()[-1] == f"error: source 'broken': cannot decode video file {broken}: " \
                                                   "not a video OpenCV can read (corrupt or unsupported codec)"
    assert "stream: 120 snippets, " in done.stderr


def test_help_shows_a_sources_file(stream_run):
    done = run_stream("--help")
    assert done.returncode == 0
    assert "--sources FILE" in done.stdout and "--keep-going" in done.stdout
    assert "- {id: lobby, camera: 0}" in done.stdout and "set: {post.class_threshold: 0.3" in done.stdout
