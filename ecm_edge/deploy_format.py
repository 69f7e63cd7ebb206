"""The deploy-weights format: ``model.safetensors`` + ``model.json``.

Training writes it (``ecm_edge.train.deploy``, torch); the torch-free runtime reads it (the numpy streaming head).
Both take the names and the description reader from here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ecm_edge.errors import CheckpointError

DEPLOY_FORMAT = "ecm-edge/model"
DEPLOY_FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
META_NAME = "model.json"


def read_deploy_meta(meta_path: str | Path) -> dict[str, Any]:
    """The model description ``model.json``, checked to be one (clear errors for corrupted or foreign files)."""
    meta_path = Path(meta_path)
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path} is corrupted ({exc}); re-run `ecm-edge train` or restore it") from None
    if not isinstance(meta, dict) or meta.get("format") != DEPLOY_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{meta_path} is not an ecm-edge model description (format {found!r})")
    return meta
