"""Snippet assembly: any frame rate → 25 fps, 16 frames per snippet, timestamps from the source's clock."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ecm_edge.errors import DataError
from ecm_edge.runtime.snippets import SnippetAssembler, snippet_times
from ecm_edge.runtime.sources import Frame, open_source


def numbered_frame(index: int, fps: float, start: float = 0.0) -> Frame:
    """A tiny frame whose pixels carry its own index (so the chosen frame of every slot can be read back)."""
    image = np.full((2, 2, 3), index % 256, np.uint8)
    return Frame(image, start + index / fps, index)


def assemble(frames: list[Frame], assembler: SnippetAssembler | None = None):
    assembler = assembler or SnippetAssembler()
    snippets = []
    for frame in frames:
        snippets += assembler.push(frame)
    return snippets, assembler


def chosen_indices(snippets) -> np.ndarray:
    return np.concatenate([s.frames[:, 0, 0, 0] for s in snippets]).astype(int)


@pytest.mark.parametrize("source_fps", [25.0, 30.0, 12.5, 50.0, 29.97])
def test_slots_take_the_nearest_source_frame(source_fps: float):
    seconds = 4.0
    frames = [numbered_frame(i, source_fps, start=10.0) for i in range(int(seconds * source_fps))]
    snippets, _ = assemble(frames)
    last_time = frames[-1].timestamp - 10.0
    assert len(snippets) == int((np.floor(last_time * 25 + 1e-9) + 1) // 16)
    slot_times = np.arange(len(snippets) * 16) / 25.0
    # The expected source frame of each slot: nearest in time, ties to the earlier frame.
    expected = np.ceil(slot_times * source_fps - 0.5 - 1e-9).astype(int)
    assert np.array_equal(chosen_indices(snippets), expected % 256)


@pytest.mark.parametrize("source_fps", [30.0, 12.5])
def test_snippet_times_follow_the_source_clock(source_fps: float):
    frames = [numbered_frame(i, source_fps, start=3.5) for i in range(int(3 * source_fps))]
    snippets, _ = assemble(frames)
    assert [s.index for s in snippets] == list(range(len(snippets)))
    for s in snippets:
        assert s.start_time == pytest.approx(3.5 + 0.64 * s.index, abs=1e-9)
        assert s.end_time == pytest.approx(s.start_time + 0.64, abs=1e-9)
        assert s.frames.shape == (16, 2, 2, 3) and s.frames.dtype == np.uint8


def test_12_5_fps_shows_every_frame_twice_and_30_fps_skips_one_in_six():
    slow, _ = assemble([numbered_frame(i, 12.5) for i in range(40)])
    assert list(chosen_indices(slow)[:8]) == [0, 0, 1, 1, 2, 2, 3, 3]
    fast, _ = assemble([numbered_frame(i, 30.0) for i in range(90)])
    used = chosen_indices(fast)
    assert len(np.unique(used)) == len(used)  # no frame shown twice when the source is faster
    assert list(used[:6]) == [0, 1, 2, 4, 5, 6]  # slot k at k/25 s: nearest 30 fps frame round(1.2 k)


def test_gap_restarts_the_grid_without_stale_frames():
    before = [numbered_frame(i, 25.0) for i in range(24)]  # one full snippet + 8 slots
    after = [Frame(np.full((2, 2, 3), 200, np.uint8), 10.0 + i / 25.0, 1000 + i) for i in range(16)]
    snippets, assembler = assemble(before + after, SnippetAssembler(max_gap_s=1.0))
    assert len(snippets) == 2 and assembler.gaps == 1
    assert snippets[1].index == 1 and snippets[1].start_time == pytest.approx(10.0)
    assert (snippets[1].frames == 200).all()


def test_out_of_order_frames_are_skipped():
    frames = [numbered_frame(i, 25.0) for i in range(20)]
    frames.insert(10, numbered_frame(3, 25.0))
    snippets, assembler = assemble(frames)
    assert assembler.frames_skipped == 1
    assert list(chosen_indices(snippets)) == list(range(16))


def test_flush_pads_or_drops_the_partial_snippet():
    _, assembler = assemble([numbered_frame(i, 25.0) for i in range(20)])
    padded = assembler.flush(pad=True)
    assert len(padded) == 1 and list(padded[0].frames[:, 0, 0, 0]) == [16, 17, 18, 19] + [19] * 12
    _, assembler = assemble([numbered_frame(i, 25.0) for i in range(20)])
    assert assembler.flush() == []


def test_transform_runs_once_per_used_frame_and_marks_the_snippet():
    calls = []

    def shrink(image: np.ndarray) -> np.ndarray:
        calls.append(1)
        return image[:1, :1]

    snippets, _ = assemble([numbered_frame(i, 50.0) for i in range(64)],
                           SnippetAssembler(transform=shrink, prepared_for="test:1"))
    assert len(snippets) == 2 and len(calls) == 32  # 50 fps → every other frame fills a slot
    assert snippets[0].frames.shape == (16, 1, 1, 3) and snippets[0].prepared_for == "test:1"


def test_real_video_file_gives_floor_of_duration_over_snippet(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48))
    for i in range(90):  # 3 s at 30 fps
        writer.write(np.full((48, 64, 3), (i * 2) % 256, np.uint8))
    writer.release()
    source = open_source(path)
    try:
        snippets, _ = assemble(list(source))
    finally:
        source.close()
    assert len(snippets) == 4  # 3 s hold 75 slots at 25 fps: four full snippets of 16
    assert [s.start_time for s in snippets] == pytest.approx([0.0, 0.64, 1.28, 1.92])
    assert snippets[0].frames.shape == (16, 48, 64, 3)


def test_given_start_and_end_times_arrive_unchanged():
    """A remote caller's times are used as sent: six times 0.64 added up is not 6 · 0.64 in binary floating point,
    and a starts-follow-ends rule would rebuild the former from the ends."""
    starts = [0.0]
    for _ in range(6):
        starts.append(starts[-1] + 0.64)
    ends = [s + 0.64 for s in starts]
    assert snippet_times(5.0, 7, 0.64, start_times=starts, end_times=ends) == (starts, ends)
    assert snippet_times(0.0, 7, 0.64)[0][6] != starts[6]  # why they are sent
    with pytest.raises(DataError, match="7 snippets, 6 start times and no end times; give both"):
        snippet_times(0.0, 7, 0.64, start_times=starts[:6])
