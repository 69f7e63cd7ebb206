"""Backbone → ONNX: the graph the ``i3d`` feature extractor runs, with its sidecar manifest.

The exported graph maps ``frames [batch, C, 16, S, S]`` (C = 3 for RGB, 2 for flow, values in [-1, 1]) to
``features [batch, 1024]``. The batch is dynamic; frames and crop size are fixed at export (224 for the published
weights), because the ``SAME`` paddings of I3D depend on them. Nothing is downloaded: the weights come from a
local file in the layout of the PyTorch I3D port (see :mod:`ecm_edge.export.backbones.i3d`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ecm_edge.config import DataConfig
from ecm_edge.environment import package_version
from ecm_edge.errors import EcmEdgeError, MissingDependencyError
from ecm_edge.export.backbones.i3d import FEATURE_DIM, IN_CHANNELS, I3DFeatures, load_i3d
from ecm_edge.io import atomic_path
from ecm_edge.manifest import (
    Manifest,
    TensorSpec,
    build_versions,
    onnxruntime_requirement,
    sha256_file,
    write_manifest,
)

log = logging.getLogger("ecm_edge")

DEFAULT_OPSET = 17
DEFAULT_CROP = 224  # the crop the published I3D weights were trained on
INPUT_NAME, OUTPUT_NAME = "frames", "features"
# The manifest schema knows the head's graphs only; a backbone is a whole-clip ("offline") graph, and its
# manifest says which backbone it is under ``source``.
BACKBONE_GRAPH = "offline"


@dataclass(frozen=True)
class BackboneSpec:
    """An exportable backbone: the network and the input it expects."""

    network: str
    modality: str

    @property
    def channels(self) -> int:
        return IN_CHANNELS[self.modality]


BACKBONES: dict[str, BackboneSpec] = {
    "i3d": BackboneSpec("i3d", "rgb"),
    "i3d-flow": BackboneSpec("i3d", "flow"),
}


def export_backbone_onnx(name: str, weights_path: str | Path, out_dir: str | Path, opset: int = DEFAULT_OPSET, *,
                         crop: int = DEFAULT_CROP, frames: int | None = None, stem: str | None = None) -> Path:
    """Export backbone ``name`` (``i3d`` or ``i3d-flow``) with the weights of ``weights_path`` to ``out_dir``.

    Writes ``<stem>.onnx`` (default stem: the backbone name) atomically and its manifest ``<stem>.onnx.json``;
    returns the ONNX path.
    """
    if name not in BACKBONES:
        raise EcmEdgeError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    spec = BACKBONES[name]
    frames = frames or DataConfig().snippet_frames
    weights_path = Path(weights_path)
    network = load_i3d(weights_path, spec.modality)
    path = Path(out_dir) / f"{stem or name}.onnx"
    onnx = _require_onnx()
    example = torch.zeros(1, spec.channels, frames, crop, crop)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            # The SAME paddings become constants of the fixed clip size, which is what the export intends.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            torch.onnx.export(I3DFeatures(network).eval(), (example,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              do_constant_folding=True)
        onnx.checker.check_model(str(tmp))
    write_manifest(path, backbone_manifest(name, spec, weights_path, frames, crop, opset))
    log.info("exported %s backbone to %s (%.1f MB)", name, path, path.stat().st_size / 1e6)
    return path


def backbone_manifest(name: str, spec: BackboneSpec, weights_path: Path, frames: int, crop: int,
                      opset: int) -> Manifest:
    """The manifest of an exported backbone (hash and size are filled in by ``write_manifest``)."""
    data = DataConfig()
    ort_version = package_version("onnxruntime")
    return Manifest(
        artifact="", kind="onnx", graph=BACKBONE_GRAPH, precision="fp32",
        inputs=[TensorSpec(INPUT_NAME, "float32", ["batch", spec.channels, frames, crop, crop])],
        outputs=[TensorSpec(OUTPUT_NAME, "float32", ["batch", FEATURE_DIM])],
        class_names=[],
        feature={"dim": FEATURE_DIM, "fps": data.feature_fps, "snippet_frames": frames,
                 "modalities": [spec.modality], "crop": crop, "value_range": [-1.0, 1.0],
                 "channel_order": "RGB" if spec.modality == "rgb" else "flow x, y"},
        opset=opset,
        versions=build_versions(include_tensorrt=False),
        requires={"onnxruntime": onnxruntime_requirement(opset, ort_version)},
        source={"backbone": name, "network": spec.network, "modality": spec.modality,
                "weights": weights_path.name, "weights_sha256": sha256_file(weights_path)},
        rebuild=f"ecm-edge export --backbone {name} --backbone-weights {weights_path}",
    )


def torch_features(weights_path: str | Path, clip: np.ndarray, modality: str = "rgb") -> np.ndarray:
    """Reference features of ``clip`` ``[N, C, T, S, S]`` from the torch network (for parity checks)."""
    network = load_i3d(weights_path, modality)
    with torch.no_grad():
        return network.features(torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32))).numpy()


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError("onnx", "exporting a backbone to ONNX", "pip install 'ecm-edge[export]'") from None
    return onnx
