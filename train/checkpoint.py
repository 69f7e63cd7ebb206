"""Training state checkpoints (``last.pt`` / ``best.pt``).

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so ``torch.load(weights_only=True)``
reads it without unpickling any object: model and optimizer state dicts, the finished epoch, every random
number generator state (python, numpy, torch and CUDA), the resolved config, the class names, the metrics
history and the best epoch so far. Files are written to a temporary name and renamed, so a run killed at any
moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecm_edge.errors import CheckpointError
from ecm_edge.io import atomic_path
from ecm_edge.version import __version__

CHECKPOINT_FORMAT = "ecm-edge/train-state"
CHECKPOINT_FORMAT_VERSION = 1
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"


def capture_rng_states() -> dict[str, Any]:
    """The global generators of python, numpy and torch (CPU and every CUDA device), as plain values."""
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_states` (CUDA states only when the same devices are present)."""
    python = states["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    np_state = states["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a training state atomically (temporary file in the same folder, then rename)."""
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION,
               "ecm_edge_version": __version__, **state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training state with ``weights_only=True``; a damaged or foreign file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise CheckpointError(f"checkpoint {path} cannot be read ({first}); the file is corrupted or truncated — "
                              f"restore it or start a new run") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an ecm-edge training checkpoint "
                              f"(format {state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    if state.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer ecm-edge ({state.get('ecm_edge_version')}); "
                              "upgrade ecm-edge to resume it")
    return state
