"""The Triton model repository that ``ecm-edge export --triton DIR`` writes: its names, its stamp, its checks.

A repository (docs/design.md §6, §7) holds one folder per model; each model folder ecm-edge wrote carries a
stamp, ``ecm-edge.json``: the format and its version, the ecm-edge version that wrote it, the sha256 of the deploy
weights it was exported from and the sha256 of every file of the model. Three readers check it:
``ecm-edge serve`` before it starts the server, the ``ecm_stream`` Python backend when Triton loads it, and the
tests. A repository of another format version, of another ecm-edge release, or whose files no longer match their
stamp is refused with a message that says how to rebuild it. Export, serving and the runtime all import this
module; it imports neither the runtime nor torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecm_edge.deploy_format import file_sha256
from ecm_edge.errors import CheckpointError
from ecm_edge.version import __version__

REPOSITORY_FORMAT = "ecm-edge/triton-model"
REPOSITORY_VERSION = 1  # bump when the models' inputs, outputs or parameters change
STAMP_NAME = "ecm-edge.json"  # beside config.pbtxt in every model folder ecm-edge wrote
CONFIG_NAME = "config.pbtxt"
MODEL_VERSION = "1"  # the one version folder of each model

STREAM_MODEL = "ecm_stream"  # the Python backend with the sequence batcher: features in, events out
ONNX_MODEL = "ecm_head_onnx"  # the streaming graph on ONNX Runtime (platform onnxruntime_onnx)
TRT_MODEL = "ecm_head_trt"  # the streaming graph's TensorRT engine (platform tensorrt_plan)

# The ecm_stream model's tensors (the contract between the backend and the client).
FEATURES_INPUT, START_TIMES_INPUT, END_TIMES_INPUT = "FEATURES", "START_TIMES", "END_TIMES"
EVENTS_OUTPUT = "EVENTS"
START_CONTROL, END_CONTROL, READY_CONTROL = "START", "END", "READY"

REBUILD = "export it again with `ecm-edge export --checkpoint RUN --triton DIR` (the ecm-edge that serves it)"


@dataclass
class ModelStamp:
    """What one model folder of a repository is and what it was made from."""

    model: str
    weights_sha256: str
    files: dict[str, str] = field(default_factory=dict)  # path inside the model folder -> sha256
    ecm_edge: str = __version__
    format: str = REPOSITORY_FORMAT
    version: int = REPOSITORY_VERSION
    details: dict[str, Any] = field(default_factory=dict)  # feature dim, classes, head, ...

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "version": self.version, "ecm_edge": self.ecm_edge, "model": self.model,
                "weights_sha256": self.weights_sha256, "files": dict(sorted(self.files.items())),
                "details": self.details}


def stamp_model(folder: Path, weights_sha256: str, details: dict[str, Any] | None = None) -> ModelStamp:
    """Hash every file of the model folder ``folder`` and write its stamp beside ``config.pbtxt``."""
    files = {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != STAMP_NAME and "__pycache__" not in p.parts}
    stamp = ModelStamp(folder.name, weights_sha256, files, details=dict(details or {}))
    (folder / STAMP_NAME).write_text(json.dumps(stamp.to_dict(), indent=2) + "\n")
    return stamp


def read_stamp(folder: Path) -> ModelStamp:
    """The stamp of model folder ``folder``, checked to be one of this format version and this ecm-edge."""
    path = Path(folder) / STAMP_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder} has no {STAMP_NAME}: it is not a model folder `ecm-edge export --triton` "
                              f"wrote; {REBUILD}") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} cannot be read ({exc}); {REBUILD}") from None
    if not isinstance(raw, dict) or raw.get("format") != REPOSITORY_FORMAT:
        raise CheckpointError(f"{path} is not an ecm-edge Triton model stamp; {REBUILD}")
    stamp = ModelStamp(str(raw.get("model")), str(raw.get("weights_sha256")), dict(raw.get("files") or {}),
                       str(raw.get("ecm_edge")), str(raw["format"]), int(raw.get("version", 0)),
                       dict(raw.get("details") or {}))
    if stamp.version != REPOSITORY_VERSION or stamp.ecm_edge != __version__:
        raise CheckpointError(
            f"model {Path(folder).name!r} was exported by ecm-edge {stamp.ecm_edge} (repository format "
            f"{stamp.version}, weights {stamp.weights_sha256[:12]}…) but this is ecm-edge {__version__} (format "
            f"{REPOSITORY_VERSION}); {REBUILD}")
    return stamp


def verify_model(folder: Path) -> ModelStamp:
    """The model folder's stamp, with every file it lists present and unchanged (sha256)."""
    folder = Path(folder)
    stamp = read_stamp(folder)
    for name, digest in stamp.files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing from the repository; {REBUILD}")
        if file_sha256(path) != digest:
            raise CheckpointError(f"{path} changed since the export (its sha256 differs from {STAMP_NAME}); "
                                  f"{REBUILD}")
    return stamp


def stamped_models(repository: Path) -> list[Path]:
    """The model folders of ``repository`` that carry an ecm-edge stamp."""
    return sorted(p for p in Path(repository).iterdir() if (p / STAMP_NAME).is_file())
