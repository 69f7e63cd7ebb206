"""Benchmark part ``extractors``: feature extraction speed against real time, and I3D ONNX Runtime vs torch.

- ``tiny`` on one core (OpenCV limited to one thread), 320×240 frames, preparation included: snippets per second
  and the ratio to real time (25 / 16 = 1.5625 snippets per second).
- ``i3d`` with random weights (no download) exported to ONNX at 224×224 (``--quick``: 64×64): seconds per
  16-frame snippet through ONNX Runtime and through the torch module, and the ratio between them. Needs torch and
  onnx; without them the rows say so.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from ecm_edge.bench import BenchSection
from ecm_edge.config import DataConfig
from ecm_edge.runtime.extractors import (
    create_extractor,
    measure_snippets_per_second,
    prepared_frames,
    rgb_network_input,
)
from ecm_edge.timing import time_call

FRAME_SIZE = (320, 240)
TINY_BATCH = 8
I3D_CROP, QUICK_I3D_CROP = 224, 64


def run(quick: bool) -> BenchSection:
    real_time = DataConfig().feature_fps / DataConfig().snippet_frames
    rows: list[list[object]] = []
    rate = _tiny_rate(min_seconds=0.5 if quick else 2.0)
    rows.append(["tiny, 1 core", f"{FRAME_SIZE[0]}x{FRAME_SIZE[1]}", 1.0 / rate, rate, rate / real_time, "-"])
    crop = QUICK_I3D_CROP if quick else I3D_CROP
    notes = [f"real time = {real_time:g} snippets/s (16 frames at 25 fps); ratio > 1 is faster than real time"]
    try:
        onnx_s, torch_s = _i3d_seconds(crop, repeat=1 if quick else 3)
    except ImportError as exc:
        notes.append(f"i3d skipped: {exc} (install ecm-edge[export])")
    else:
        rows.append([f"i3d onnxruntime, {crop}x{crop}", "random weights", onnx_s, 1 / onnx_s, 1 / onnx_s / real_time,
                     f"{torch_s / onnx_s:.2f}x vs torch"])
        rows.append([f"i3d torch, {crop}x{crop}", "random weights", torch_s, 1 / torch_s, 1 / torch_s / real_time,
                     "baseline"])
    return BenchSection("Feature extractors", ["extractor", "input", "s / snippet", "snippets / s",
                                               "x real time", "speedup"], rows, notes)


def _clip(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (TINY_BATCH, DataConfig().snippet_frames, FRAME_SIZE[1], FRAME_SIZE[0], 3),
                        dtype=np.uint8)


def _tiny_rate(min_seconds: float) -> float:
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        return measure_snippets_per_second(create_extractor("tiny"), _clip(), min_seconds=min_seconds)
    finally:
        cv2.setNumThreads(threads)


def _i3d_seconds(crop: int, repeat: int) -> tuple[float, float]:
    """Median seconds per snippet of (ONNX Runtime, torch) for a random-weight I3D at ``crop``."""
    import torch

    from ecm_edge.export.backbones.export import export_backbone_onnx
    from ecm_edge.export.backbones.i3d import InceptionI3d

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        network = InceptionI3d().eval()
        weights = Path(folder) / "random.pt"
        torch.save(network.state_dict(), weights)
        artifact = export_backbone_onnx("i3d", weights, folder, crop=crop)
        extractor = create_extractor("i3d", artifact=artifact, batch_size=1)
        frames = _clip()[:1]
        onnx_s = float(np.median(time_call(lambda: extractor.extract(frames), repeat=repeat)))
        network_input = torch.from_numpy(rgb_network_input(prepared_frames(frames, extractor)))
        with torch.no_grad():
            torch_s = float(np.median(time_call(lambda: network.features(network_input), repeat=repeat)))
    return onnx_s, torch_s
