"""Sources files and source options: what they give, and one line naming the entry for every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecm_edge.config import Config
from ecm_edge.errors import ConfigError, DataError
from ecm_edge.runtime.source_specs import (
    SourceSpec,
    check_unique,
    load_sources_file,
    specs_from_options,
    url_id,
)


@pytest.fixture
def inputs(tmp_path) -> Path:
    """A folder with a video and a features file (contents do not matter here: specs only check they exist)."""
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"")
    (tmp_path / "x.npy").write_bytes(b"")
    return tmp_path


def write(folder: Path, text: str) -> Path:
    path = folder / "sources.yaml"
    path.write_text(text)
    return path


def test_a_sources_file_gives_one_spec_per_entry(inputs):
    path = write(inputs, """
sources:
  - {id: gate-1, url: "rtsp://admin:secret@10.0.0.5:554/stream1"}
  - {id: lobby, camera: 0}
  - {id: replay, features: x.npy}
  - id: file-3
    video: clips/a.mp4
    set: {post.class_threshold: 0.3, stream.emit_open: true, stream.frame_policy: latest}
  - {id: 7, camera: 1}
""")
    specs = load_sources_file(path)
    assert specs == [
        SourceSpec("gate-1", "url", "rtsp://admin:secret@10.0.0.5:554/stream1"),
        SourceSpec("lobby", "camera", 0),
        SourceSpec("replay", "features", inputs / "x.npy"),  # relative paths: from the file's folder
        SourceSpec("file-3", "video", inputs / "clips" / "a.mp4",
                   ("post.class_threshold=0.3", "stream.emit_open=true", "stream.frame_policy=latest")),
        SourceSpec("7", "camera", 1),
    ]
    assert [spec.live for spec in specs] == [True, True, False, False, True]
    assert specs[0].describe() == "rtsp://10.0.0.5:554/stream1"  # never the password


@pytest.mark.parametrize(("entries", "message"), [
    ("- [lobby, 0]", "entry 1: expected a mapping like {id: lobby, camera: 0}, got list"),
    ("- {camera: 0}", "entry 1: missing id; give every source a unique id"),
    ("- {id: lobby, camera: 0}\n  - {id: lobby, camera: 1}", "entry 2 (id 'lobby'): id already used by entry 1"),
    ("- {id: lobby, camera: 0, fps: 5}", "entry 1 (id 'lobby'): unknown key(s) fps; allowed: id, camera, url, video, "
                                         "features, set"),
    ("- {id: lobby}", "entry 1 (id 'lobby'): give exactly one of camera, url, video, features (got none)"),
    ("- {id: lobby, camera: 0, url: 'rtsp://h/s'}", "entry 1 (id 'lobby'): give exactly one of camera, url, video, "
                                                    "features (got camera, url)"),
    ("- {id: lobby, camera: -1}", "entry 1 (id 'lobby'): camera must be an index (0 is the first camera), got int -1"),
    ("- {id: lobby, camera: '0'}", "camera must be an index (0 is the first camera), got str '0'"),
    ("- {id: gate, url: 'ftp://h/s'}", "entry 1 (id 'gate'): unsupported URL scheme 'ftp'"),
    ("- {id: gate, url: clips/a.mp4}", "entry 1 (id 'gate'): url 'clips/a.mp4' is not a stream URL"),
    ("- {id: 'my cam', camera: 0}", "entry 1 (id 'my cam'): id 'my cam' may hold only letters, digits"),
    ("- {id: [1], camera: 0}", "entry 1: id must be text, got list [1]"),
    ("- {id: lobby, video: missing.mp4}", "entry 1 (id 'lobby'): video file {folder}/missing.mp4 does not exist"),
    ("- {id: lobby, camera: 0, set: {post.class_treshold: 0.3}}",
     "entry 1 (id 'lobby'): --set: unknown key post.class_treshold (did you mean 'post.class_threshold'?)"),
    ("- {id: lobby, camera: 0, set: {post.class_threshold: 2}}",
     "entry 1 (id 'lobby'): --set: post.class_threshold must be in [0, 1], got 2.0"),
    ("- {id: lobby, camera: 0, set: {model.num_classes: 3}}",
     "entry 1 (id 'lobby'): model.num_classes cannot be set per source; a source may set post.*, stream.*"),
    ("- {id: lobby, camera: 0, set: {stream.columns_per_snippet: 2}}", "stream.columns_per_snippet cannot be set per "
                                                                       "source"),
    ("- {id: lobby, camera: 0, set: [post.nms_iou]}", "entry 1 (id 'lobby'): set must be a mapping of config keys"),
    ("- {id: lobby, camera: 0, set: {post: {nms_iou: 0.5}}}", "set: write dotted keys (post.KEY: VALUE)"),
])
def test_every_bad_entry_is_one_line_naming_it(inputs, entries, message):
    path = write(inputs, f"sources:\n  {entries}\n")
    with pytest.raises((ConfigError, DataError)) as caught:
        load_sources_file(path)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: ") and message.replace("{folder}", str(inputs)) in text


@pytest.mark.parametrize(("text", "message"), [
    ("sources: [ {id: a, camera: 0", "is not valid YAML"),
    ("- {id: a, camera: 0}", "expected a mapping with a `sources` list"),
    ("sources: []", "`sources` must be a non-empty list"),
    ("sources: [{id: a, camera: 0}]\ncameras: 2", "unknown top-level key(s) cameras"),
])
def test_a_bad_file_is_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        load_sources_file(write(tmp_path, text))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_sources_file(tmp_path):
    with pytest.raises(ConfigError, match=r"sources file .*nowhere.yaml does not exist"):
        load_sources_file(tmp_path / "nowhere.yaml")


def test_per_source_settings_are_checked_against_the_given_config(tmp_path):
    path = write(tmp_path, "sources:\n  - {id: a, camera: 0, set: {post.act_thresh_start: 0.3}}\n")
    assert load_sources_file(path)[0].overrides == ("post.act_thresh_start=0.3",)  # no config: keys only
    cfg = Config()  # act_thresh_stop 0.2: the range would be empty
    with pytest.raises(ConfigError, match=r"entry 1 \(id 'a'\): set: post.act_thresh_start \(0.3\) must be below"):
        load_sources_file(path, cfg)
    assert cfg.post.act_thresh_start == Config().post.act_thresh_start  # checked on a copy


def test_options_name_their_sources(inputs):
    video = inputs / "clips" / "a.mp4"
    specs = specs_from_options([0, 2], ["rtsp://admin:secret@10.0.0.5:554/live/1", "http://cam.local/mjpg?x=1"],
                               [video], [inputs / "x.npy", inputs / "clips" / "a.mp4"], taken={"camera-2"})
    assert [(s.id, s.kind) for s in specs] == [
        ("camera-0", "camera"), ("camera-2-2", "camera"),  # a taken id gets a number
        ("10.0.0.5-554-live-1", "url"), ("cam.local-mjpg", "url"),  # host, port and path; never credentials
        ("a", "video"), ("x", "features"), ("a-2", "features"),
    ]
    assert url_id("rtsp://u:p@h") == "h"
    with pytest.raises(DataError, match=r"features file .*b\.npy does not exist"):
        specs_from_options(features=[inputs / "b.npy"])
    with pytest.raises(ConfigError, match="not a stream URL"):
        specs_from_options(urls=["cam.local/live"])


def test_ids_are_unique_and_there_is_a_source():
    with pytest.raises(ConfigError, match="two sources have the id 'a'"):
        check_unique([SourceSpec("a", "camera", 0), SourceSpec("a", "camera", 1)])
    with pytest.raises(ConfigError, match="no source given"):
        check_unique([])
