"""Deploy weights: ``model.safetensors`` (the ECM state dict) + ``model.json`` (classes, feature spec, dims, config).

This is what ``predict`` and ``export`` load; it carries no optimizer state and no pickled objects.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ecm_edge import __version__
from ecm_edge.config import Config, config_from_dict
from ecm_edge.deploy_format import (
    DEPLOY_FORMAT,
    DEPLOY_FORMAT_VERSION,
    META_NAME,
    WEIGHTS_NAME,
    read_deploy_meta,
)
from ecm_edge.errors import CheckpointError
from ecm_edge.io import atomic_path, atomic_write_json
from ecm_edge.train.model import ECM, ECMDims


@dataclasses.dataclass
class DeployModel:
    model: ECM
    class_names: list[str]
    config: Config
    meta: dict[str, Any]


def save_deploy(model: ECM, class_names: list[str], cfg: Config, folder: str | Path,
                training: dict[str, Any] | None = None) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/model.json``; returns the weights path.

    ``training`` (optional) records where the weights come from (epoch, selection metric) in ``model.json``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))
    meta = {
        "format": DEPLOY_FORMAT,
        "format_version": DEPLOY_FORMAT_VERSION,
        "ecm_edge_version": __version__,
        "class_names": list(class_names),
        "feature": {"dim": cfg.data.feature_dim, "fps": cfg.data.feature_fps,
                    "snippet_frames": cfg.data.snippet_frames, "modalities": list(cfg.data.modalities)},
        "dims": dataclasses.asdict(model.dims),
        "config": cfg.to_dict(),
    }
    if training is not None:
        meta["training"] = training
    atomic_write_json(folder / META_NAME, meta)
    return folder / WEIGHTS_NAME


def resolve_deploy_path(path: str | Path) -> Path:
    """Accept a run folder, a folder holding ``model.safetensors``, or the file itself."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"no deploy weights at {path}; pass a run folder (runs/train/NAME) or a "
                              f"{WEIGHTS_NAME} file written by `ecm-edge train`")
    return path


def load_deploy(path: str | Path, device: str | torch.device = "cpu") -> DeployModel:
    """Load deploy weights and metadata, checking that they belong together."""
    weights = resolve_deploy_path(path)
    meta_path = weights.with_name(META_NAME)
    if not meta_path.is_file():
        raise CheckpointError(f"{weights} has no {META_NAME} beside it; it is needed for class names and "
                              "model dimensions")
    meta = read_deploy_meta(meta_path)
    try:
        dims = ECMDims(**meta["dims"])
        cfg = config_from_dict({k: v for k, v in meta["config"].items() if k != "name"}, source=str(meta_path))
        cfg.name = meta["config"].get("name", "custom")
        state = load_file(str(weights), device=str(device))
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{weights} cannot be loaded ({type(exc).__name__}: {exc}); the file is "
                              "corrupted or was not written by ecm-edge") from None
    model = ECM(dims).to(device)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{weights} does not match the dimensions in {meta_path}: {first}") from None
    model.eval()
    if len(meta["class_names"]) != dims.num_classes:
        raise CheckpointError(f"{meta_path} lists {len(meta['class_names'])} classes but the model has "
                              f"{dims.num_classes}")
    return DeployModel(model, list(meta["class_names"]), cfg, meta)
