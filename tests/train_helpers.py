"""Shared by the training tests: a tiny synthetic dataset and a tiny config, so each run takes seconds."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from ecm_edge.config import Config, load_config
from ecm_edge.data.synth import SynthSettings, generate_dataset

NUM_CLASSES = 4
FEATURE_DIM = 32
# 18 videos → 12 train + 6 test; D = 32, H = 16, T_fixed = 32 (top-k 4), batch 4
TINY = (f"data.feature_dim={FEATURE_DIM}", f"model.num_classes={NUM_CLASSES}", "model.hidden_dim=16",
        "data.t_fixed=32", "train.batch_size=4", "data.val_fraction=0.25", "train.epochs=3")


def make_dataset(folder: Path, num_videos: int = 18, seed: int = 0, num_classes: int = NUM_CLASSES,
                 feature_dim: int = FEATURE_DIM) -> Path:
    settings = SynthSettings.from_preset("small", seed=seed, num_classes=num_classes, feature_dim=feature_dim,
                                         num_videos=num_videos)
    generate_dataset(folder, settings)
    return folder


def tiny_config(*extra: str) -> Config:
    return load_config("small", [*TINY, *extra])


def tiny_overrides(*extra: str) -> list[str]:
    """The same settings as ``--set`` arguments."""
    args: list[str] = []
    for item in (*TINY, *extra):
        args += ["--set", item]
    return args


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread: fast and reproducible on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def train_process(*args: str) -> subprocess.Popen:
    """``python -m ecm_edge.train ARGS`` in its own process."""
    return subprocess.Popen([sys.executable, "-m", "ecm_edge.train", *args], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
