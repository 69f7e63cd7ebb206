"""torch engine: the deploy weights (``model.safetensors`` + ``model.json``) run by the ECM module itself.

The reference the exported artifacts are validated against, and a fallback where torch is installed. It serves
both graphs with the exported graphs' contract (same names and shapes): ``graph="offline"`` runs
``features [B, T, D]`` → ``cas``, ``video_scores``; ``graph="streaming"`` the valid-padding window. torch is
imported when a model is loaded, never by importing this module. Its "manifest" is built from ``model.json``
(which ``load_deploy`` checks against the weights), not from a sidecar.

A plugin of the runtime that lives with the torch code (docs/design.md §2, §6): the runtime's engine registry
(``ecm_edge.runtime.engines.ENGINES``) names this module by path and imports it only when the ``torch`` engine is
asked for, so the runtime never imports training or export. :func:`torch_head` is the Localizer's streaming head
on the same weights (``Localizer.from_artifacts(folder, engine="torch")``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ecm_edge.errors import MissingDependencyError, import_optional
from ecm_edge.kernels.streams import stream_handle
from ecm_edge.manifest import STREAMING_CONTRACT, Manifest, graph_specs
from ecm_edge.runtime.engines import EngineBase
from ecm_edge.runtime.head import FullPassRunner, StreamingHead, WindowHead


def import_torch() -> Any:
    return import_optional("torch", "torch", "the torch engine", "pip install 'ecm-edge[train]', or use an "
                           "exported ONNX artifact with the onnxruntime engine")


class TorchEngine(EngineBase):
    name: ClassVar[str] = "torch"

    def __init__(self, artifact: Path, manifest: Manifest, module: Any, device: str):
        super().__init__(artifact, manifest)
        self.module = module
        self.device = device
        self.supports_device_buffers = device.startswith("cuda")

    @classmethod
    def load(cls, artifact: Path, graph: str = "offline", device: str = "cpu",
             precision: str | None = None) -> TorchEngine:
        """Load deploy weights (a run folder or ``model.safetensors``) for ``graph`` on ``device``."""
        import_torch()
        from ecm_edge.export.onnx_export import graph_module
        from ecm_edge.train.deploy import load_deploy, resolve_deploy_path

        if precision not in (None, "fp32"):
            raise MissingDependencyError(f"an exported {precision} artifact", f"{precision} inference",
                                         "the torch engine runs the fp32 deploy weights; use `ecm-edge export "
                                         f"--precision {precision}` and the onnxruntime or tensorrt engine")
        weights = resolve_deploy_path(artifact)
        deploy = load_deploy(weights, device=device)
        manifest = deploy_manifest(deploy.meta, deploy.class_names, graph, weights)
        return cls(weights, manifest, graph_module(deploy.model, graph), device)

    def infer(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = import_torch()
        feeds = self.host_inputs(inputs)
        with torch.inference_mode():
            features = feeds[self.input_names[0]]
            values = self._run(torch.from_numpy(features if features.flags.writeable else features.copy())
                               .to(self.device))
        return {name: value.float().cpu().numpy() for name, value in values.items()}

    def infer_device(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any] | None = None,
                     stream: Any = None) -> dict[str, Any]:
        """CUDA tensors or ``__cuda_array_interface__`` arrays in, queued on ``stream``; CUDA tensors out, or
        copied into ``outputs``. Synchronize the stream before reading them on the host."""
        if not self.supports_device_buffers:
            return super().infer_device(inputs, outputs, stream)
        torch = import_torch()
        features = torch.as_tensor(inputs[self.input_names[0]], device=self.device)
        self.output_shapes({self.input_names[0]: tuple(features.shape)})
        run_stream = torch.cuda.current_stream(self.device) if stream is None else torch.cuda.ExternalStream(
            stream_handle(stream), device=self.device)
        with torch.inference_mode(), torch.cuda.stream(run_stream):
            values = self._run(features)
            for name, target in (outputs or {}).items():
                torch.as_tensor(target, device=self.device).copy_(values[name])
        return dict(outputs) if outputs else values

    def _run(self, features: Any) -> dict[str, Any]:
        result = self.module(features)
        values = result if isinstance(result, tuple) else (result,)
        return dict(zip(self.output_names, values, strict=True))

    def close(self) -> None:
        self.module = None

    @staticmethod
    def streaming_head(folder: Path) -> tuple[StreamingHead, list[str], dict[str, Any] | None, str]:
        """The Localizer's head on these weights (:func:`torch_head`), found through the engine registry."""
        return torch_head(folder)


def torch_head(folder: Path) -> tuple[StreamingHead, list[str], dict[str, Any] | None, str]:
    """The deploy weights through torch, one 5-snippet window per snippet: (head, class names, stored config,
    "torch"). It runs under torch's own thread settings; on a small CPU, ``torch.set_num_threads(1)`` keeps
    torch's spinning workers from starving the event thread (a window is too small to gain from more)."""
    try:
        import torch

        from ecm_edge.train.deploy import load_deploy
    except ImportError:
        raise MissingDependencyError("torch", "engine torch", "install ecm-edge[train], or use --engine numpy "
                                     "(same weights, no torch)") from None

    deployed = load_deploy(folder)
    model = deployed.model

    def full_pass(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            cas, _, weights = model.export_forward(torch.from_numpy(np.ascontiguousarray(features))[None], True)
            return cas[0].numpy(), weights[0].numpy()

    head = WindowHead(FullPassRunner(full_pass), model.dims.feature_dim, model.dims.num_classes)
    return head, deployed.class_names, deployed.meta.get("config"), "torch"


def deploy_manifest(meta: Mapping[str, Any], class_names: list[str], graph: str, weights: Path) -> Manifest:
    """A manifest for deploy weights, from their ``model.json``."""
    feature = dict(meta.get("feature", {}))
    inputs, outputs = graph_specs(graph, int(meta["dims"]["feature_dim"]), len(class_names))
    return Manifest(artifact=weights.name, kind="weights", graph=graph, precision="fp32", inputs=inputs,
                    outputs=outputs, class_names=list(class_names), feature=feature,
                    topk=int(meta["dims"]["topk"]) if graph == "offline" else None,
                    streaming=dict(STREAMING_CONTRACT) if graph == "streaming" else None,
                    versions={"ecm_edge": meta.get("ecm_edge_version")})
