"""The small deploy folder and feature file the stream tests (CLI, faults) run on: random weights, 4 classes,
and 120 snippets with one distinct stretch so that segments come out; and ``ecm-edge stream`` as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

D, H, C = 32, 48, 4
CLASS_NAMES = ["walk", "jump", "wave", "sit"]
KEEP_ALL = ("--set", "post.class_threshold=0.0")  # random weights: flat video scores, keep every class
STREAM_COMMAND = (sys.executable, "-m", "ecm_edge", "stream")  # `ecm-edge stream` with the tests' Python
STREAM_TIMEOUT_S = 120  # a stream of the small deploy folder takes seconds; a hung one fails the test


def save_random_deploy(folder: Path) -> Path:
    """A training-run folder (``model.safetensors`` + ``model.json``) with seeded random weights; needs torch."""
    import torch

    from ecm_edge.config import load_config
    from ecm_edge.train.deploy import save_deploy
    from ecm_edge.train.model import ECM, ECMDims

    torch.manual_seed(5)
    cfg = load_config("small", [f"data.feature_dim={D}", f"model.hidden_dim={H}", f"model.num_classes={C}",
                                "stream.columns_per_snippet=1"])  # a number, as `ecm-edge train` records it
    save_deploy(ECM(ECMDims.from_config(cfg)).eval(), CLASS_NAMES, cfg, folder)
    return folder


def save_features_with_an_action(path: Path) -> Path:
    """``[120, D]`` float32 features: noise, with snippets 30–59 shifted together (an "action")."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, D)).astype(np.float32)
    x[30:60] += 3 * rng.normal(size=D).astype(np.float32)
    np.save(path, x)
    return path


def run_stream(*args: str, timeout: float = STREAM_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``ecm-edge stream ARGS`` as a subprocess, its output captured as text."""
    return subprocess.run([*STREAM_COMMAND, *args], capture_output=True, text=True, timeout=timeout)


def events_of(text: str) -> list[dict]:
    """The events of a JSONL text (blank lines skipped)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_same_events(got: list[dict], expected: list[dict]) -> None:
    """Same events in the same order; floats may differ in the last rounded digit (float32 sums)."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert a[key] == pytest.approx(b[key], abs=2e-5), (key, a, b)
            else:
                assert a[key] == b[key], (key, a, b)


def write_video(path: Path, seconds: float, fps: float = 25.0) -> Path:
    """A 64×48 MJPG video written by OpenCV: a red square that moves during the middle third."""
    cv2 = pytest.importorskip("cv2")
    frames = int(seconds * fps)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened()
    for i in range(frames):
        image = np.full((48, 64, 3), 40, np.uint8)
        x = 5 + (i % 40) if frames // 3 <= i < 2 * frames // 3 else 5
        image[10:26, x:x + 16] = (0, 0, 230)
        writer.write(image)
    writer.release()
    return path
