"""The deploy-weights format: ``model.safetensors`` + ``model.json``.

Training writes it (``ecm_edge.train.deploy``, torch); the torch-free runtime reads it (the numpy streaming head).
Both take the names and the description reader from here.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ecm_edge.errors import CheckpointError

log = logging.getLogger("ecm_edge")

DEPLOY_FORMAT = "ecm-edge/model"
DEPLOY_FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
META_NAME = "model.json"
SHA256_KEY = "weights_sha256"  # model.json's record of model.safetensors, checked at every load
DEPLOY_REBUILD = "rebuild the deploy weights from the run's best.pt with `ecm-edge train --redeploy RUN`"
REBUILD_HINT = f"restore the run folder from a copy, or {DEPLOY_REBUILD}"


def read_deploy_meta(meta_path: str | Path) -> dict[str, Any]:
    """The model description ``model.json``, checked to be one (clear errors for corrupted or foreign files)."""
    meta_path = Path(meta_path)
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path} is corrupted ({exc}); {REBUILD_HINT}") from None
    if not isinstance(meta, dict) or meta.get("format") != DEPLOY_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{meta_path} is not an ecm-edge model description (format {found!r})")
    return meta


def deploy_paths(folder: str | Path) -> tuple[Path, Path]:
    """``(model.safetensors, model.json)`` of a deploy folder; an error names whichever of the two is missing."""
    folder = Path(folder)
    weights, meta = folder / WEIGHTS_NAME, folder / META_NAME
    missing = [p.name for p in (weights, meta) if not p.is_file()]
    if len(missing) == 1:
        raise CheckpointError(f"{folder} has {({WEIGHTS_NAME, META_NAME} - set(missing)).pop()} but no {missing[0]}; "
                              f"a deploy folder needs both ({REBUILD_HINT})")
    if missing:
        raise CheckpointError(f"{folder} has no {WEIGHTS_NAME} + {META_NAME}; pass a training run folder "
                              "(runs/train/NAME)")
    return weights, meta


def is_deploy_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds either file of a deploy folder (then :func:`deploy_paths` names what is missing)."""
    folder = Path(folder)
    return (folder / WEIGHTS_NAME).is_file() or (folder / META_NAME).is_file()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_weights_hash(weights_path: str | Path, meta: Mapping[str, Any], meta_path: str | Path) -> None:
    """Refuse weights whose sha256 differs from the one ``model.json`` recorded when they were written.

    Folders written before the hash was recorded load without the check (a warning says so)."""
    recorded = meta.get(SHA256_KEY)
    if recorded is None:
        log.warning("%s records no sha256 of %s (written by an older ecm-edge): its integrity is not checked",
                    meta_path, Path(weights_path).name)
        return
    actual = file_sha256(weights_path)
    if actual != recorded:
        raise CheckpointError(f"{weights_path} does not match the sha256 recorded in {meta_path} "
                              f"({actual[:12]}… vs {str(recorded)[:12]}…): the weights were modified or corrupted "
                              f"after training; {REBUILD_HINT}")


def check_deploy_meta(meta: Mapping[str, Any], meta_path: str | Path) -> None:
    """``model.json`` must agree with itself: class names, dimensions, feature spec and stored config."""
    dims = meta.get("dims")
    if not isinstance(dims, Mapping) or not isinstance(meta.get("class_names"), list):
        raise CheckpointError(f"{meta_path} lacks 'dims' or 'class_names'; {REBUILD_HINT}")
    claims = [("len(class_names)", len(meta["class_names"]), "dims.num_classes", dims.get("num_classes"))]
    feature, config = meta.get("feature", {}), meta.get("config", {})
    if "dim" in feature:
        claims.append(("feature.dim", feature["dim"], "dims.feature_dim", dims.get("feature_dim")))
    for section, key, dim in (("model", "num_classes", "num_classes"), ("model", "hidden_dim", "hidden_dim"),
                              ("data", "feature_dim", "feature_dim")):
        if key in config.get(section, {}):
            claims.append((f"config.{section}.{key}", config[section][key], f"dims.{dim}", dims.get(dim)))
    for name, value, other, expected in claims:
        if value != expected:
            raise CheckpointError(f"{meta_path} is inconsistent: {name} is {value} but {other} is {expected}; "
                                  f"{REBUILD_HINT}")


def check_finite(state: Mapping[str, Any], source: str | Path) -> None:
    """Refuse weights holding NaN or infinite values (a corrupted file that still parses)."""
    for name, tensor in state.items():
        values = np.asarray(tensor)
        if not np.isfinite(values).all():
            bad = int(values.size - np.isfinite(values).sum())
            raise CheckpointError(f"{source}: tensor {name} holds {bad} non-finite value(s); {REBUILD_HINT}")
