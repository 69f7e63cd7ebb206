"""Benchmark part ``postprocess``: the post-processing kernels against the numpy reference on THUMOS14-like inputs.

Inputs: 210 videos, T = 750 snippets, 20 classes, frame counts from THUMOS14's real test-video durations at
30 fps (W-TALC's ``duration.npy``, when the annotations are found; otherwise durations drawn from the log-normal
fitted to them), 2–4 classes above the class threshold per video. The CAS of a kept class carries the video's
real ground-truth instances (or random ones) as raised plateaus over smoothed noise; every class has
background noise that sometimes crosses zero, so low thresholds see short spurious runs as with a real model.

Each set of kernels is timed on the whole batch after a first call whose time (JIT compilation included) is reported
separately; detections are checked against the reference's. The ratio to the reference, measured in the same
run, is the result; the absolute numbers depend on the machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecm_edge.bench import BenchSection
from ecm_edge.config import load_config
from ecm_edge.environment import cuda_gpu_visible
from ecm_edge.kernels import PostParams, compare_detections
from ecm_edge.postprocess import available_kernels, localize, localize_batch
from ecm_edge.timing import time_call

logger = logging.getLogger("ecm_edge")

NUM_VIDEOS = 210  # THUMOS14 test videos
QUICK_VIDEOS = 40
SNIPPETS = 750  # T_fixed of the THUMOS14 config
NUM_CLASSES = 20
FPS = 30.0
KEPT_CLASSES = (2, 4)  # classes above the class threshold per video, inclusive range
LOG_DURATION = (4.979, 0.880)  # mean, std of ln(seconds) of THUMOS14 videos (fallback when no annotations)
DURATION_RANGE = (15.0, 1673.4)  # seconds, THUMOS14 test videos
LATENCY_VIDEOS = 50  # videos timed one call each for the batch-of-one latency
DATA_ENV = "ECM_EDGE_THUMOS14"  # folder with gt.json, split_test.txt and reduced/ (W-TALC layout)


@dataclass
class BenchInputs:
    cas: np.ndarray  # float32 [N, C, T]
    video_scores: np.ndarray  # float64 [N, C]
    num_frames: np.ndarray  # int64 [N]
    fps: np.ndarray  # float64 [N]
    source: str  # where the durations and instances came from

    def subset(self, count: int) -> BenchInputs:
        return BenchInputs(self.cas[:count], self.video_scores[:count], self.num_frames[:count],
                           self.fps[:count], self.source)

    @property
    def num_videos(self) -> int:
        return self.cas.shape[0]


def find_thumos14_dir() -> Path | None:
    """``$ECM_EDGE_THUMOS14``, else ``../shared/data/thumos14`` beside the source tree, if it holds the layout."""
    candidates = [Path(os.environ[DATA_ENV])] if os.environ.get(DATA_ENV) else []
    candidates.append(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "thumos14")
    for folder in candidates:
        if (folder / "reduced" / "duration.npy").is_file() and (folder / "split_test.txt").is_file():
            return folder
    return None


def thumos_like_inputs(num_videos: int = NUM_VIDEOS, seed: int = 0, data_dir: Path | None = None) -> BenchInputs:
    """Seeded THUMOS14-like raw predictions (see the module docstring)."""
    rng = np.random.default_rng(seed)
    timelines, source = _timelines(num_videos, rng, data_dir if data_dir is not None else find_thumos14_dir())
    cas = np.empty((num_videos, NUM_CLASSES, SNIPPETS), dtype=np.float32)
    scores = rng.uniform(0.0, 0.2, (num_videos, NUM_CLASSES))
    frames = np.empty(num_videos, dtype=np.int64)
    for v, (duration, instances) in enumerate(timelines):
        frames[v] = max(1, round(duration * FPS))
        kept = _kept_classes(rng, instances)
        scores[v, kept] = rng.uniform(0.3, 0.9, kept.size)
        cas[v] = _background(rng)
        for c in kept:
            spans = [(s, e) for s, e, k in instances if k == c] or _random_spans(rng, duration)
            cas[v, c] += _plateaus(rng, spans, duration)
    return BenchInputs(cas, scores, frames, np.full(num_videos, FPS), source)


def _timelines(num_videos: int, rng: np.random.Generator, folder: Path | None):
    if folder is not None:
        from ecm_edge.data.annotations import load_wtalc_reduced, read_split

        annotations = load_wtalc_reduced(folder / "reduced")
        ids = [v for v in read_split(folder / "split_test.txt") if v in annotations.videos][:num_videos]
        if len(ids) == num_videos:
            index = annotations.class_index
            timelines = [(annotations.videos[v].duration,
                          [(s, e, index[lab]) for (s, e), lab in zip(annotations.videos[v].segments,
                                                                    annotations.videos[v].labels, strict=True)])
                         for v in ids]
            return timelines, f"THUMOS14 test videos: real durations and instances ({folder.name})"
        logger.warning("only %d annotated test videos in %s; using synthetic timelines", len(ids), folder)
    durations = np.clip(np.exp(rng.normal(*LOG_DURATION, num_videos)), *DURATION_RANGE)
    return [(float(d), []) for d in durations], "synthetic timelines (log-normal THUMOS14 durations)"


def _kept_classes(rng: np.random.Generator, instances: list[tuple[float, float, int]]) -> np.ndarray:
    count = int(rng.integers(KEPT_CLASSES[0], KEPT_CLASSES[1] + 1))
    truth = sorted({k for _, _, k in instances})[:count]
    others = rng.permutation([c for c in range(NUM_CLASSES) if c not in truth])[: count - len(truth)]
    return np.array(sorted([*truth, *others.tolist()]), dtype=np.int64)


def _background(rng: np.random.Generator) -> np.ndarray:
    """Negative logits with smoothed noise that crosses zero now and then."""
    noise = rng.normal(-1.5, 0.9, (NUM_CLASSES, SNIPPETS + 4))
    kernel = np.ones(5) / 5
    return np.stack([np.convolve(row, kernel, mode="valid") for row in noise])


def _random_spans(rng: np.random.Generator, duration: float) -> list[tuple[float, float]]:
    spans = []
    for _ in range(int(rng.integers(1, 6))):
        length = float(np.exp(rng.normal(1.1, 0.8)))
        start = float(rng.uniform(0, max(duration - length, 0.0)))
        spans.append((start, min(duration, start + length)))
    return spans


def _plateaus(rng: np.random.Generator, spans: list[tuple[float, float]], duration: float) -> np.ndarray:
    """Raised, noisy plateaus over the given spans (seconds), in snippet units of a T-snippet video."""
    out = np.zeros(SNIPPETS)
    per_second = SNIPPETS / duration
    for start, end in spans:
        lo = int(start * per_second)
        hi = max(lo + 1, int(np.ceil(end * per_second)))
        out[lo:hi] += rng.uniform(2.0, 4.0) + rng.normal(0.0, 0.5, len(out[lo:hi]))
    return out


def run(quick: bool) -> BenchSection:
    """Videos per second of all available kernels and their speedup against the numpy reference."""
    inputs = thumos_like_inputs()
    if quick:
        inputs = inputs.subset(QUICK_VIDEOS)
    params = PostParams.from_config(load_config("thumos14").post)
    repeat = 2 if quick else 5

    def batch_call(kernels: str, cas=None):
        return lambda: localize_batch(inputs.cas if cas is None else cas, inputs.video_scores,
                                      num_frames=inputs.num_frames, fps=inputs.fps, params=params, kernels=kernels)

    start = time.perf_counter()
    expected = batch_call("numpy")()
    reference_s = time.perf_counter() - start
    rows: list[list[object]] = [["numpy (reference)", inputs.num_videos / reference_s, 1e3 * reference_s /
                                 inputs.num_videos, 1.0, "-", _latency_ms(inputs, params, "numpy", quick),
                                 len(expected), "reference"]]
    threads = _numba_threads()
    for kernels in _timed_kernels():
        start = time.perf_counter()
        batch_call(kernels)()
        first_s = time.perf_counter() - start
        found = batch_call(kernels)()
        mismatch = compare_detections(found, expected)
        identical = "yes" if mismatch is None else f"NO: {mismatch}"
        latency = _latency_ms(inputs, params, kernels, quick)
        variants = [(f"cpu ({threads} threads)", threads), ("cpu (1 thread)", 1)] if kernels == "cpu" else [
            (kernels, threads)]
        for label, count in variants:
            with _numba_thread_count(count):
                seconds = float(np.median(time_call(batch_call(kernels), repeat=repeat, warmup=1)))
            rows.append([label, inputs.num_videos / seconds, 1e3 * seconds / inputs.num_videos,
                         reference_s / seconds, first_s, latency, len(found), identical])
        if kernels == "cuda":
            rows.append(_device_input_row(inputs, params, expected, reference_s, repeat))
    notes = [f"{inputs.num_videos} videos, T = {SNIPPETS}, {NUM_CLASSES} classes, {FPS:g} fps, "
             f"{int(inputs.num_frames.sum()):,} frames in all (mean {inputs.num_frames.mean():,.0f} per video), "
             f"{int((inputs.video_scores >= params.class_threshold).sum())} kept (video, class) pairs; "
             f"{inputs.source}; thumos14 post-processing ({params.mode} mode, "
             f"{params.act_thresholds.size} thresholds).",
             "videos/s and ms/video: the whole batch in one call, median of repeats after a first call; "
             "'first call' includes JIT compilation (numba caches CPU kernels on disk, so it is shorter on "
             "later runs); latency: one video per call.",
             "latency runs on one thread (a single video has too few classes to share); identical = same "
             "segments as the reference (class, bounds; scores within 1e-5)."]
    if "cuda" not in _timed_kernels():
        notes.append("cuda: no CUDA GPU visible here; scripts/gpu_check.sh measures it on a GPU machine.")
    # the report's words (title, first column) stay those of the README's published tables
    return BenchSection("Post-processing kernels (THUMOS14-like inputs)",
                        ["kernels", "videos/s", "ms/video", "speedup vs numpy", "first call s",
                         "latency ms (1 video)", "detections", "identical"], rows, notes)


def _timed_kernels() -> list[str]:
    """cpu, and cuda on a real GPU (never the simulator: it would take hours and time nothing real)."""
    return ["cpu", "cuda"] if cuda_gpu_visible() and "cuda" in available_kernels() else ["cpu"]


def _latency_ms(inputs: BenchInputs, params: PostParams, kernels: str, quick: bool) -> float:
    """Median time of one ``localize`` call per video, on the first videos."""
    count = min(inputs.num_videos, 10 if quick else LATENCY_VIDEOS)
    times = []
    for v in range(count):
        start = time.perf_counter()
        localize(inputs.cas[v], inputs.video_scores[v], num_frames=int(inputs.num_frames[v]), fps=FPS,
                 params=params, kernels=kernels)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def _device_input_row(inputs: BenchInputs, params: PostParams, expected: np.ndarray, reference_s: float,
                      repeat: int) -> list[object]:
    """The CUDA kernels reading a CAS already in device memory (as an engine's output buffer)."""
    from numba import cuda

    device_cas = cuda.to_device(inputs.cas)

    def call() -> np.ndarray:
        return localize_batch(device_cas, inputs.video_scores, num_frames=inputs.num_frames, fps=inputs.fps,
                              params=params, kernels="cuda")

    call()
    seconds = float(np.median(time_call(call, repeat=repeat, warmup=0)))
    mismatch = compare_detections(call(), expected)
    return ["cuda, CAS on device", inputs.num_videos / seconds, 1e3 * seconds / inputs.num_videos,
            reference_s / seconds, "-", "-", len(expected), "yes" if mismatch is None else f"NO: {mismatch}"]


def _numba_threads() -> int:
    import numba

    return int(numba.get_num_threads())


@contextlib.contextmanager
def _numba_thread_count(count: int) -> Iterator[None]:
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(count)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


__all__ = ["BenchInputs", "find_thumos14_dir", "run", "thumos_like_inputs"]
