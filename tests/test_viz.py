"""Timeline plots, .srt subtitles and the ``ecm-edge viz`` command, on real files."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ecm_edge.cli.main import main
from ecm_edge.data.annotations import Annotations, VideoAnnotation
from ecm_edge.errors import MissingDependencyError
from ecm_edge.evaluation import write_predictions
from ecm_edge.viz import (
    Detection,
    format_srt_time,
    normalize_cas,
    plot_timeline,
    select_detections,
    srt_text,
    write_srt,
)

pytest.importorskip("matplotlib", reason="timeline plots need matplotlib (the plot extra)")

CLASSES = ["Bounce", "Flash", "Slide", "Spin"]
GT = [("Bounce", 2.0, 6.5), ("Bounce", 12.0, 15.0), ("Spin", 18.0, 24.0)]
DETECTIONS = [Detection("Bounce", 1.8, 6.0, 0.91), Detection("Bounce", 2.5, 7.0, 0.55),
              Detection("Bounce", 11.5, 15.5, 0.73), Detection("Spin", 17.0, 22.0, 0.64),
              Detection("Flash", 25.0, 26.0, 0.21)]
DURATION = 30.0
SRT_CUE = re.compile(r"(\d+)\n(\d{2}:\d{2}:\d{2},\d{3}) --> (\d{2}:\d{2}:\d{2},\d{3})\n(\S+) (-?\d+\.\d{2})\n")
TAB_BLUE_BGR = (180, 119, 31)  # "#1f77b4", the first class's colour
GT_GRAY_BGR = (59, 59, 59)  # "#3b3b3b"


def synthetic_cas(num_snippets: int = 47) -> np.ndarray:
    """Raw logits: high inside each ground-truth segment of its class, low elsewhere."""
    centers = (np.arange(num_snippets) + 0.5) * DURATION / num_snippets
    cas = np.full((len(CLASSES), num_snippets), -2.0)
    for label, start, end in GT:
        cas[CLASSES.index(label), (centers >= start) & (centers < end)] = 3.0
    return cas


def contains_color(image: np.ndarray, bgr: tuple[int, int, int], tolerance: int = 3) -> bool:
    return bool(np.any(np.all(np.abs(image.astype(int) - bgr) <= tolerance, axis=-1)))


@pytest.fixture(scope="module")
def timelines(tmp_path_factory) -> dict[str, Path]:
    """The same video drawn without and with CAS curves."""
    folder = tmp_path_factory.mktemp("timelines")
    out = {}
    for name, cas in [("segments", None), ("segments+cas", synthetic_cas())]:
        out[name] = plot_timeline("video_0007", GT, DETECTIONS, CLASSES, cas=cas, duration=DURATION,
                                  video_scores=np.array([0.8, 0.1, 0.0, 0.5]), out_path=folder / f"{name}.png")
    return out


@pytest.mark.parametrize("kind", ["segments", "segments+cas"])
def test_plot_timeline_writes_a_readable_png(timelines, kind):
    image = cv2.imread(str(timelines[kind]))
    assert image is not None, "not a readable PNG"
    height, width = image.shape[:2]
    assert width >= 1000 and height >= 300
    assert image.std() > 20 and len(np.unique(image.reshape(-1, 3).astype(np.int32) @ [65536, 256, 1])) > 50
    assert contains_color(image, TAB_BLUE_BGR), "the top-scoring Bounce detection should be full class colour"
    assert contains_color(image, GT_GRAY_BGR), "ground-truth bars missing"
    assert not list(timelines[kind].parent.glob(".*")), "temporary file left behind"


def test_cas_bands_make_the_plot_taller_and_one_track_per_present_class(timelines, tmp_path):
    two = [g for g in GT if g[0] in ("Bounce", "Spin")], [d for d in DETECTIONS if d.label in ("Bounce", "Spin")]
    plot_timeline("v", *two, CLASSES, duration=DURATION, out_path=tmp_path / "two.png")
    heights = {name: cv2.imread(str(path)).shape[0] for name, path in timelines.items()}
    # Flash has a detection, Slide has nothing and never gets a track
    assert heights["segments+cas"] > heights["segments"] > cv2.imread(str(tmp_path / "two.png")).shape[0]


def test_empty_video_still_gets_a_plot(tmp_path):
    out = plot_timeline("empty", [], [], CLASSES, duration=DURATION, out_path=tmp_path / "empty.svg")
    assert out.read_text().lstrip().startswith("<?xml")


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"matplotlib.*pip install"):
        plot_timeline("v", GT, DETECTIONS, CLASSES, duration=DURATION, out_path=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_normalize_cas_matches_post_processing():
    cas = np.array([[-1.0, 1.0, 3.0], [-3.0, -2.0, -1.0], [2.0, 2.0, 2.0], [1.0, 2.0, 5.0]])
    expected = np.array([[-1 / 3, 1 / 3, 1.0], [-3.0, -2.0, -1.0], [0.0, 0.0, 0.0], [0.0, 0.25, 1.0]])
    np.testing.assert_allclose(normalize_cas(cas), expected)


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "00:00:00,000"), (1.5, "00:00:01,500"), (59.9994, "00:00:59,999"), (59.9996, "00:01:00,000"),
    (3725.25, "01:02:05,250"), (-2.0, "00:00:00,000"), (360000.0, "100:00:00,000")])
def test_srt_time_format(seconds, text):
    assert format_srt_time(seconds) == text


def test_srt_cues_are_numbered_ordered_and_well_formed(tmp_path):
    dets = [*DETECTIONS, {"label": "Slide", "score": 0.4, "segment": [3.0, 3.0]}]  # result entries work too
    path = write_srt(dets, tmp_path / "out.srt")
    text = path.read_text()
    cues = SRT_CUE.findall(text)
    assert len(cues) == len(dets) and text == srt_text(dets)
    assert "".join(SRT_CUE.sub("", block + "\n") for block in text.split("\n\n")).strip() == ""
    assert [int(c[0]) for c in cues] == list(range(1, len(dets) + 1))
    starts = [c[1] for c in cues]
    assert starts == sorted(starts)
    assert all(start < end for _, start, end, _, _ in cues), "every cue must last at least 1 ms"
    assert cues[0] == ("1", "00:00:01,800", "00:00:06,000", "Bounce", "0.91")


def test_select_detections():
    assert [d.score for d in select_detections(DETECTIONS, top=2)] == [0.91, 0.73]
    assert {d.score for d in select_detections(DETECTIONS, min_score=0.6)} == {0.91, 0.73, 0.64}


# --- the CLI -------------------------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path):
    """Real gt.json, pred.json (written by the evaluation module) and a raw-prediction .npz."""
    videos = {
        "video_0000": VideoAnnotation("video_0000", "test", np.array([[s, e] for _, s, e in GT]),
                                      [g[0] for g in GT], duration=DURATION, fps=25.0),
        "video_0001": VideoAnnotation("video_0001", "test", np.array([[1.0, 3.0]]), ["Slide"], duration=10.0,
                                      fps=25.0),
    }
    gt_path = Annotations(videos, CLASSES).save_json(tmp_path / "gt.json")
    results = {"video_0000": [{"label": d.label, "score": d.score, "segment": [d.start, d.end]} for d in DETECTIONS],
               "video_0001": []}
    pred_path = write_predictions(tmp_path / "pred.json", results)
    cas = np.full((2, len(CLASSES), 47), -1.0)
    cas[0] = synthetic_cas()
    raw_path = tmp_path / "raw.npz"
    np.savez(raw_path, video_ids=np.array(list(videos)), cas=cas, lengths=np.array([47, 16]),
             video_scores=np.full((2, len(CLASSES)), 0.3), num_frames=np.array([750, 250]), fps=np.array([25.0, 25.0]),
             duration=np.array([DURATION, 10.0]), class_names=np.array(CLASSES))
    return {"gt": gt_path, "pred": pred_path, "raw": raw_path, "dir": tmp_path}


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(["viz", *[str(a) for a in args]])
    return exit_info.value.code


def test_cli_writes_plot_and_subtitles(files, capsys):
    out, srt = files["dir"] / "plots" / "timeline.png", files["dir"] / "video.srt"
    code = run_cli(["--pred", files["pred"], "--gt", files["gt"], "--raw", files["raw"], "--video", "video_0000",
                    "-o", out, "--srt", srt, "--top", "3"])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"wrote {out}" in printed and f"wrote {srt}" in printed and "CAS" in printed
    assert cv2.imread(str(out)).std() > 20
    assert len(SRT_CUE.findall(srt.read_text())) == 3


def test_cli_min_score_filters_subtitles(files):
    srt = files["dir"] / "high.srt"
    assert run_cli(["--pred", files["pred"], "--gt", files["gt"], "--video", "video_0000",
                    "-o", files["dir"] / "t.png", "--srt", srt, "--min-score", "0.7"]) == 0
    assert [c[4] for c in SRT_CUE.findall(srt.read_text())] == ["0.91", "0.73"]


def test_cli_video_without_detections_draws_ground_truth(files):
    assert run_cli(["--pred", files["pred"], "--gt", files["gt"], "--video", "video_0001",
                    "-o", files["dir"] / "t1.png"]) == 0
    assert (files["dir"] / "t1.png").stat().st_size > 1000


def test_cli_unknown_video_lists_valid_ids(files, capsys):
    code = run_cli(["--pred", files["pred"], "--gt", files["gt"], "--video", "video_000",
                    "-o", files["dir"] / "t.png"])
    err = capsys.readouterr().err
    assert code == 1
    assert "video_000" in err and "video_0000, video_0001" in err and "did you mean" in err
    assert not (files["dir"] / "t.png").exists()


@pytest.mark.parametrize("broken", ["missing_pred", "bad_json", "raw_without_video"])
def test_cli_bad_inputs_exit_1_with_one_line(files, capsys, broken):
    pred, raw = files["pred"], None
    if broken == "missing_pred":
        pred = files["dir"] / "nope.json"
    elif broken == "bad_json":
        pred = files["dir"] / "bad.json"
        pred.write_text("{not json")
    else:
        raw = files["dir"] / "raw_other.npz"
        np.savez(raw, video_ids=np.array(["other"]), cas=np.zeros((1, 4, 5)), lengths=np.array([5]),
                 video_scores=np.zeros((1, 4)), num_frames=np.array([80]), fps=np.array([25.0, 25.0]),
                 duration=np.array([3.2]), class_names=np.array(CLASSES))
    args = ["--pred", pred, "--gt", files["gt"], "--video", "video_0000", "-o", files["dir"] / "t.png"]
    code = run_cli([*args, "--raw", raw] if raw else args)
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error:") and len(err.splitlines()) == 1


def test_cli_usage_errors_exit_2(files):
    assert run_cli(["--gt", files["gt"], "--video", "video_0000", "-o", files["dir"] / "t.png"]) == 2
    assert run_cli(["--pred", files["pred"], "--gt", files["gt"], "--video", "video_0000",
                    "-o", files["dir"] / "t.png", "--top", "0"]) == 2


def test_viz_module_imports_without_matplotlib_loaded():
    import subprocess

    code = "import sys, ecm_edge.viz, ecm_edge.cli.viz; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_paths_are_relative_to_cwd(files, monkeypatch):
    monkeypatch.chdir(files["dir"])
    assert run_cli(["--pred", "pred.json", "--gt", "gt.json", "--video", "video_0000", "-o", "rel.png"]) == 0
    assert Path("rel.png").is_file()
