"""``ecm-edge extract``: real video files in, feature files in the dataset layout out, through the stream path."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ecm_edge.cli.main import main
from ecm_edge.config import StreamConfig
from ecm_edge.data.features import open_feature_store
from ecm_edge.runtime.extractors import assembler_for, create_extractor, iter_source_features
from ecm_edge.runtime.sources import open_source


def write_video(path: Path, seconds: float, colour: tuple[int, int, int], velocity: int, fps: float = 30.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened()
    for i in range(int(seconds * fps)):
        image = np.full((48, 64, 3), 100, np.uint8)
        x = (10 + velocity * i) % 50
        image[15:30, x:x + 12] = colour
        writer.write(image)
    writer.release()
    return path


@pytest.fixture
def videos(tmp_path) -> Path:
    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "video_a.avi", 3.0, (0, 0, 255), 2)  # 90 frames → 75 slots → 4 snippets
    write_video(folder / "video_b.avi", 2.0, (255, 0, 0), -1)  # 60 frames → 50 slots → 3 snippets
    (folder / "notes.txt").write_text("not a video")
    return folder


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([*args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def stream_path_features(path: Path) -> np.ndarray:
    """What the streaming path computes for a file: source → assembler → tiny extractor, one snippet at a time."""
    extractor = create_extractor("tiny")
    source = open_source(path, policy="all", config=StreamConfig())
    try:
        return np.concatenate([f for f, _ in iter_source_features(source, extractor, assembler=assembler_for(extractor))])
    finally:
        source.close()


def test_extract_into_one_split_matches_the_stream_path(videos, tmp_path, capsys):
    out = tmp_path / "dataset"
    code, stdout, _ = run_cli(capsys, "extract", str(videos), "-o", str(out), "--extractor", "tiny", "--split", "test")
    assert code == 0, stdout
    rgb = np.load(out / "features" / "test" / "rgb" / "video_a.npy")
    flow = np.load(out / "features" / "test" / "flow" / "video_a.npy")
    assert rgb.shape == (4, 128) and flow.shape == (4, 128) and rgb.dtype == np.float32
    assert np.load(out / "features" / "test" / "rgb" / "video_b.npy").shape == (3, 128)
    np.testing.assert_array_equal(np.concatenate([rgb, flow], axis=1), stream_path_features(videos / "video_a.avi"))
    assert "extracted 2 video(s), 7 snippets" in stdout and "next: ecm-edge train --data" in stdout
    assert not list(out.rglob(".*.tmp*"))  # nothing half-written

    before = (out / "features" / "test" / "rgb" / "video_a.npy").stat().st_mtime_ns
    code, stdout, stderr = run_cli(capsys, "extract", str(videos), "-o", str(out), "--split", "test")
    assert code == 0 and "2 of 2 videos already have features" in stderr
    assert (out / "features" / "test" / "rgb" / "video_a.npy").stat().st_mtime_ns == before


def test_auto_split_follows_the_split_files_and_the_trainer_reads_it(videos, tmp_path, capsys):
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "split_train.txt").write_text("video_a\n")
    (out / "split_test.txt").write_text("video_b\n")
    code, stdout, _ = run_cli(capsys, "extract", str(videos), "-o", str(out))
    assert code == 0, stdout
    assert (out / "features" / "train" / "rgb" / "video_a.npy").is_file()
    assert (out / "features" / "test" / "flow" / "video_b.npy").is_file()
    store = open_feature_store(out, 256, ["rgb", "flow"])
    assert store.layout == "modality" and store.read("video_a").shape == (4, 256)
    (out / "split_test.txt").write_text("other\n")
    code, _, stderr = run_cli(capsys, "extract", str(videos), "-o", str(out), "--overwrite")
    assert code == 1 and "in no split file" in stderr and "video_b" in stderr


def test_flat_layout_concatenates_the_modalities(videos, tmp_path, capsys):
    out = tmp_path / "flat"
    code, _, _ = run_cli(capsys, "extract", str(videos / "video_b.avi"), "-o", str(out), "--split", "none")
    assert code == 0
    features = np.load(out / "features" / "video_b.npy")
    assert features.shape == (3, 256)
    np.testing.assert_array_equal(features, stream_path_features(videos / "video_b.avi"))
    assert open_feature_store(out, 256, ["rgb", "flow"]).layout == "flat"


def test_errors_are_one_line_with_exit_code_1(videos, tmp_path, capsys):
    code, _, stderr = run_cli(capsys, "extract", str(videos), "-o", str(tmp_path / "o"), "--extractor", "i3d",
                              "--backend", "onnxruntime")  # --engine's former spelling, a hidden alias
    assert code == 1 and "needs an exported I3D network" in stderr and "Traceback" not in stderr
    broken = tmp_path / "broken.mp4"
    broken.write_text("this is not a video")
    code, _, stderr = run_cli(capsys, "extract", str(broken), "-o", str(tmp_path / "o"))
    assert code == 1 and "cannot decode video file" in stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, stderr = run_cli(capsys, "extract", str(empty), "-o", str(tmp_path / "o"))
    assert code == 1 and "holds no video files" in stderr
    assert not (tmp_path / "o" / "features").exists()


@pytest.mark.slow
def test_extract_with_an_exported_i3d(videos, tmp_path, capsys):
    """Slow: exports a small random-weight I3D to ONNX first (about 10 s on a 2-core CPU)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from ecm_edge.export.backbones.export import export_backbone_onnx
    from ecm_edge.export.backbones.i3d import InceptionI3d

    torch.manual_seed(0)
    torch.save(InceptionI3d().state_dict(), tmp_path / "rgb.pt")
    artifact = export_backbone_onnx("i3d", tmp_path / "rgb.pt", tmp_path / "onnx", crop=32)
    out = tmp_path / "dataset"
    code, stdout, _ = run_cli(capsys, "extract", str(videos), "-o", str(out), "--extractor", "i3d",
                              "--backbone-artifact", str(artifact), "--split", "train")
    assert code == 0, stdout
    assert np.load(out / "features" / "train" / "rgb" / "video_a.npy").shape == (4, 1024)
    assert not (out / "features" / "train" / "flow").exists()
