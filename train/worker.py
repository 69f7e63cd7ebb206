"""One training process: resolve the run's config and folder, join the process group torchrun set up, train.

What ``python -m ecm_edge.train`` runs in every process torchrun starts (``ecm-edge train --nproc N`` launches
it), and what ``ecm-edge train`` does in its own process. No CLI here: the CLI sits above this package.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ecm_edge.config import Config, load_config
from ecm_edge.errors import EcmEdgeError
from ecm_edge.train import distributed as ddp
from ecm_edge.train import trainer

logger = logging.getLogger("ecm_edge")


def resolve_run(config_name: str | None, overrides: Sequence[str], data_dir: Path | None, project: str | Path,
                resume: str | None, run_dir: Path | None) -> tuple[Config, Path, Path | None]:
    """(config, data folder, run folder or None for a new one): ``resume`` continues a run with its own config
    (``overrides`` still apply) and, unless ``data_dir`` is given, its own data folder."""
    if resume:
        run_dir = trainer.find_resume_dir(resume, project) if run_dir is None else run_dir
        cfg, stored_data = trainer.config_for_resume(run_dir, tuple(overrides))
        data_dir = data_dir or (Path(stored_data) if stored_data else None)
    else:
        cfg = load_config(config_name, list(overrides))
    if data_dir is None:
        raise EcmEdgeError("--data DIR is required (the dataset folder to train on)")
    return cfg, Path(data_dir), run_dir


def train_process(cfg: Config, data_dir: Path, *, project: str | Path = "runs", name: str | None = None,
                  run_dir: Path | None = None, device: str = "cpu", resume: bool = False,
                  progress: bool | None = None) -> trainer.TrainSummary | None:
    """Train as this process's part of a torchrun group (or alone); the summary on rank 0, None on the others.

    A new run folder (``run_dir`` None) is chosen by rank 0 and shared; one that failed before its first file
    is removed again."""
    dist = ddp.init_distributed(device)
    if not dist.is_main:
        logger.setLevel(logging.WARNING)
    try:
        if run_dir is None:
            run_dir = trainer.resolve_run_dir(project, name, dist)
        if dist.is_main:
            logger.info("training %s on %s (%s%s) → %s", cfg.name, data_dir, device,
                        f", {dist.world_size} processes" if dist.enabled else "", run_dir)
        summary = trainer.train(cfg, data_dir, run_dir, device=device, resume=resume, progress=progress)
    except BaseException:
        if dist.is_main and run_dir is not None and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    finally:
        ddp.shutdown_distributed()
    return summary if dist.is_main else None
