"""Deploy weights: ``model.safetensors`` (the ECM state dict) + ``model.json`` (classes, feature spec, dims, config).

This is what ``predict`` and ``export`` load; it carries no optimizer state and no pickled objects.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ecm_edge.config import Config, config_from_stored
from ecm_edge.deploy_format import (
    DEPLOY_FORMAT,
    DEPLOY_FORMAT_VERSION,
    META_NAME,
    SHA256_KEY,
    WEIGHTS_NAME,
    check_deploy_meta,
    check_finite,
    deploy_paths,
    file_sha256,
    read_deploy_meta,
    verify_weights_hash,
)
from ecm_edge.errors import CheckpointError
from ecm_edge.io import atomic_path, atomic_write_json
from ecm_edge.train.checkpoint import BEST_NAME, load_checkpoint
from ecm_edge.train.model import ECM, ECMDims
from ecm_edge.version import __version__


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
        SHA256_KEY: file_sha256(folder / WEIGHTS_NAME),
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
    """Load deploy weights and metadata, checking that they belong together: the recorded sha256, a consistent
    ``model.json``, finite weights whose shapes fit the recorded dimensions."""
    weights = resolve_deploy_path(path)
    weights, meta_path = deploy_paths(weights.parent)
    meta = read_deploy_meta(meta_path)
    check_deploy_meta(meta, meta_path)
    verify_weights_hash(weights, meta, meta_path)
    try:
        dims = ECMDims(**meta["dims"])
        cfg = config_from_stored(meta["config"], source=str(meta_path))
        state = load_file(str(weights), device="cpu")
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{weights} cannot be loaded ({type(exc).__name__}: {exc}); the file is "
                              "corrupted or was not written by ecm-edge") from None
    check_finite(state, weights)
    model = ECM(dims)
    _check_state_shapes(state, model, weights, meta_path)
    model.load_state_dict(state)
    model.to(device).eval()
    return DeployModel(model, list(meta["class_names"]), cfg, meta)


def _check_state_shapes(state: dict[str, torch.Tensor], model: ECM, weights: Path, meta_path: Path) -> None:
    """Every tensor the model needs, in the shape ``model.json``'s dimensions give it (torch's own message for a
    mismatch lists nothing on its first line)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{weights} is not the ECM of {meta_path}: missing tensors {missing or 'none'}, "
                              f"unexpected {unexpected or 'none'}")
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{weights} does not match the dimensions in {meta_path}: {name} is "
                                  f"{list(state[name].shape)} in the file, {list(tensor.shape)} by the dims")


def deploy_from_training_state(path: str | Path, device: str | torch.device = "cpu") -> DeployModel:
    """The deployable model held by a ``last.pt`` / ``best.pt`` training state."""
    path = Path(path)
    state = load_checkpoint(path)
    try:
        dims = ECMDims(**state["dims"])
        cfg = config_from_stored(state["config"], source=str(path))
        model = ECM(dims)
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path} does not hold a usable ECM state ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    check_finite(state["model"], path)
    model.to(device).eval()
    return DeployModel(model, list(state["class_names"]), cfg, {"source": str(path), "epoch": state.get("epoch")})


def rebuild_deploy(run_dir: str | Path) -> Path:
    """Rewrite a run folder's ``model.safetensors`` + ``model.json`` from its ``best.pt`` (the weights training
    deployed), e.g. after the deploy files were lost or corrupted; returns the weights path."""
    run_dir = Path(run_dir)
    best = run_dir / BEST_NAME
    if not best.is_file():
        raise CheckpointError(f"{run_dir} has no {BEST_NAME} to rebuild its deploy weights from; retrain the run")
    deployed = deploy_from_training_state(best)
    return save_deploy(deployed.model, deployed.class_names, deployed.config, run_dir,
                       training={"epoch": deployed.meta["epoch"], "rebuilt_from": BEST_NAME})
