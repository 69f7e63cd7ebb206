"""Loading what a stream runs: the head of a deploy or export folder, its class names and config, the extractor.

Both kinds of folder that ecm-edge writes are accepted:

- a **deploy folder** (``model.safetensors`` + ``model.json``, what ``ecm-edge train`` leaves in its run folder):
  the numpy :class:`~ecm_edge.runtime.head.BatchedColumnHead` (``engine="numpy"``, the ``auto`` choice), one
  column of work per snippet; ``engine="torch"`` runs the same weights through torch instead;
- an **export folder** (``ecm.onnx`` + ``ecm.stream.onnx`` with their manifests, from ``ecm-edge export``): the
  exported graphs run by ONNX Runtime or TensorRT (``engine="onnxruntime"`` / ``"tensorrt"``; ``auto`` picks
  what the machine has) in :class:`~ecm_edge.runtime.head.BatchedWindowHead`, one 5-snippet window per snippet,
  every stream's windows in one call, in the precision ``precision=`` names or, with ``auto``, the fastest one
  here (:func:`ecm_edge.runtime.engines.choose_precision`).

The runtime never imports training or export code: the torch head is a plugin the engine registry names.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ecm_edge.config import Config, apply_overrides, config_from_stored, load_config, shipped_config_names
from ecm_edge.deploy_format import META_NAME, WEIGHTS_NAME, is_deploy_folder
from ecm_edge.errors import CheckpointError, ConfigError
from ecm_edge.manifest import read_manifest
from ecm_edge.runtime.engines import PrecisionChoice
from ecm_edge.runtime.head import (
    BatchedColumnHead,
    BatchedWindowHead,
    HeadWeights,
    SlotHead,
    load_head_weights,
)
from ecm_edge.runtime.resample import AUTO, parse_columns_per_snippet

log = logging.getLogger("ecm_edge")

# What runs the head: numpy (deploy folders, no torch), an inference engine of ecm_edge.runtime.engines, or auto.
HEAD_ENGINES = ("auto", "numpy", "onnxruntime", "tensorrt", "torch")


def check_artifacts_folder(path: str | Path, engine: str) -> Path:
    """The artifacts folder (a file's folder), checked to exist; ``engine`` checked to be one of HEAD_ENGINES."""
    if engine not in HEAD_ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(HEAD_ENGINES)}")
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise CheckpointError(f"artifacts folder {folder} does not exist; pass a training run folder "
                              "(runs/train/NAME) or an export folder (runs/export/NAME)")
    return folder


def make_extractor(spec: Any, feature_dim: int, **options: Any) -> Any:
    """An extractor from a registry name (``tiny`` is sized to the model) or an extractor object, checked
    against the model's feature dimension."""
    if spec is None:
        raise ConfigError("frames need a feature extractor: pass extractor='tiny' (or 'i3d', or an extractor "
                          "object) to Localizer.from_artifacts, the one the model's training features came from")
    if isinstance(spec, str):
        from ecm_edge.runtime.extractors import create_extractor

        if spec == "tiny":
            options.setdefault("dim", feature_dim)
        spec = create_extractor(spec, **options)
    if spec.dim != feature_dim:
        raise ConfigError(f"the {getattr(spec, 'name', 'given')} extractor gives {spec.dim}-d features but the "
                          f"model expects {feature_dim}; use the extractor the model was trained with")
    return spec


# -- loading artifacts ----------------------------------------------------------------------------------------
def load_head(folder: Path, engine: str, precision: str = "auto"
              ) -> tuple[SlotHead, list[str], dict[str, Any] | None, str, PrecisionChoice]:
    """The head for ``engine`` from a deploy or export folder: (head, class names, stored config, engine, the
    precision it runs and why)."""
    if engine == "numpy" or engine == "torch" or (engine == "auto" and is_deploy_folder(folder)):
        runner = "torch" if engine == "torch" else "numpy"
        if precision not in ("auto", "fp32"):
            raise ConfigError(f"precision {precision} needs an export folder (`ecm-edge export --precision "
                              f"{precision}`); the {runner} head runs the deploy weights of {folder} in fp32")
        choice = PrecisionChoice("fp32", "weights", f"run in float32 by the {runner} head")
    if engine == "numpy" or (engine == "auto" and is_deploy_folder(folder)):
        if not is_deploy_folder(folder):
            raise CheckpointError(f"engine numpy needs deploy weights ({WEIGHTS_NAME} + {META_NAME}) in {folder}; "
                                  "pass a training run folder or choose --engine onnxruntime for an export folder")
        weights, meta = load_head_weights(folder)
        return BatchedColumnHead(weights), list(meta["class_names"]), meta.get("config"), "numpy", choice
    if engine == "torch":
        return (*_torch_head(folder), choice)
    return _exported_head(folder, engine, precision)


def _torch_head(folder: Path) -> tuple[SlotHead, list[str], dict[str, Any] | None, str]:
    """The deploy weights through torch, one 5-snippet window per snippet: the runner of the torch engine's
    streaming head (``ecm_edge.export.torch_engine.torch_head``), a plugin that lives with the torch code and is
    found through the engine registry by name, so the runtime never imports training or export."""
    from ecm_edge.runtime.engines import engine_class

    head, class_names, stored, name = engine_class("torch").streaming_head(folder)
    return BatchedWindowHead(head.runner, head.feature_dim, head.num_classes), class_names, stored, name


def _exported_head(folder: Path, engine: str, precision: str = "auto"
                   ) -> tuple[SlotHead, list[str], dict[str, Any] | None, str, PrecisionChoice]:
    """The offline and streaming graphs of an export folder in the chosen kind and precision
    (:func:`~ecm_edge.runtime.engines.choose_precision`), verified and loaded."""
    from ecm_edge.runtime.engines import choose_precision, load_engine, select_artifact
    from ecm_edge.runtime.head import EngineRunner

    kind = {"onnxruntime": "onnx", "tensorrt": "engine"}.get(engine)
    choice = choose_precision(folder, precision, kind)
    offline_path = select_artifact(folder, "offline", precision=choice.precision, kind=choice.kind)
    streaming_path = select_artifact(folder, "streaming", precision=choice.precision, kind=choice.kind)
    manifest = read_manifest(offline_path)
    runner = EngineRunner(load_engine(offline_path, engine), load_engine(streaming_path, engine))
    head = BatchedWindowHead(runner, int(manifest.feature["dim"]), len(manifest.class_names))
    log.debug("exported head: %s + %s on %s", offline_path.name, streaming_path.name, runner.offline.name)
    return head, list(manifest.class_names), _exported_config(manifest, folder), runner.offline.name, choice


def _exported_config(manifest: Any, folder: Path) -> dict[str, Any] | None:
    """The config an export was made from: the deploy folder's ``model.json`` it names when still there,
    else the shipped config of that name, else None (the defaults)."""
    weights = manifest.source.get("weights")
    for candidate in ([Path(weights), folder / Path(weights)] if weights else []):
        meta = (candidate if candidate.is_dir() else candidate.parent) / META_NAME
        if meta.is_file():
            with contextlib.suppress(ValueError, KeyError):
                return json.loads(meta.read_text())["config"]
    name = manifest.source.get("config")
    if name in shipped_config_names():
        log.info("%s: thresholds from the shipped config %r (the training run's model.json is not at hand)",
                 folder, name)
        return load_config(name).to_dict()
    return None


def artifact_config(stored: dict[str, Any] | None, config: Config | str | Path | None, overrides: Sequence[str],
                    folder: Path) -> Config:
    """The config a stream of ``folder``'s model runs with: ``config`` (a Config, a name or a path) if given, else
    the one the artifacts recorded (``stored``), then ``overrides``; an ``auto`` rate stays the trained one."""
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)  # overrides and the recorded rate must not change the caller's object
    elif config is not None:
        cfg = load_config(config)
    elif stored is not None:
        cfg = config_from_stored(stored, source=str(folder / META_NAME))
    else:
        cfg = load_config(None)
    apply_overrides(cfg, overrides)
    _keep_training_rate(cfg, stored)
    return cfg


def _keep_training_rate(cfg: Config, stored: dict[str, Any] | None) -> None:
    """``stream.columns_per_snippet: auto`` means the rate the network was trained at: the one the artifacts
    record, also when another config (``--config thumos14``) supplies the rest."""
    if parse_columns_per_snippet(cfg.stream.columns_per_snippet) is not None or stored is None:
        return
    recorded = stored.get("stream", {}).get("columns_per_snippet", AUTO)
    if parse_columns_per_snippet(recorded) is not None:
        cfg.stream.columns_per_snippet = str(recorded)


def match_feature_dim(cfg: Config, head: SlotHead | HeadWeights, folder: Path) -> None:
    """The model's feature dimension wins over the config's (with a warning when they differ)."""
    if cfg.data.feature_dim != head.feature_dim:
        log.warning("config says data.feature_dim = %d but the model in %s takes %d-d features; using the model's",
                    cfg.data.feature_dim, folder, head.feature_dim)
        cfg.data.feature_dim = head.feature_dim
