"""torch → ONNX for the deployable pre-stream of ECM: the offline graph and the streaming graph.

**Offline graph** (``<stem>.onnx``): ``features [B, T, D]`` → ``cas [B, T, C]`` (raw logits, zero-padded
convolutions exactly as in training), ``video_scores [B, C]`` = softmax of the top-k mean of the CAS over time, and
``weights [B, T, C]`` = sigmoid(conv1x1(cas)), the weight-transition head's per-class foreground weights.
B and T are dynamic. k is fixed at export from T_fixed · r, and clipped to T inside the graph
(:func:`ecm_edge.architecture.clipped_topk` as ``Min(Shape(cas)[T], k)`` → ``TopK``), so clips shorter than k work
as in :meth:`ECM.video_score`.

**Streaming graph** (``<stem>.stream.onnx``): ``features [B, W, D]`` (a window of W ≥ 5 consecutive snippets) →
``cas [B, W − 4, C]`` and ``weights [B, W − 4, C]``: the CAS (and its transition weights) of the window's W − 4
centre columns, computed with valid padding and no top-k.
Output column j is the CAS of window snippet j + 2; it equals the offline graph's column at the same position of
the clip whenever that position is at least two snippets away from the clip's edges (the offline graph zero-pads
the input and the hidden layer there). A streaming runtime feeds the last 5 snippets per new snippet and gets the
one column that became final (the CAS of snippet t needs snippets t−2 … t+2). The 2 and 5 are
:data:`ecm_edge.architecture.RECEPTIVE_RADIUS` and :data:`~ecm_edge.architecture.STREAM_WINDOW`.

The wrappers below only adapt the layout (``[B, T, D]`` in, ``[B, T, C]`` out) and the dynamic top-k; the layers
themselves are :class:`ECM`'s (:meth:`ECM.class_activation`, :meth:`ECM.valid_class_activation`).

Both graphs are exported with the TorchScript exporter (``dynamo=False``: the torch.export path needs
``onnxscript`` and gives the same graph here), simplified with onnxsim and checked with ``onnx.checker``; their
input/output names and shapes follow :data:`ecm_edge.manifest.GRAPH_IO`, so an output added there and in the
module's ``forward`` flows through export, manifests and engines. ``legacy=True`` writes the graphs as they were
before the ``weights`` output existed (kept to test that such artifacts still load).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from ecm_edge.architecture import STREAM_WINDOW, clipped_topk
from ecm_edge.errors import import_optional
from ecm_edge.io import atomic_path
from ecm_edge.manifest import graph_specs
from ecm_edge.train.model import ECM, class_probabilities, topk_mean

log = logging.getLogger("ecm_edge")

DEFAULT_OPSET = 17  # accepted by TensorRT on JetPack 6
TRACE_LENGTH = {"offline": 32, "streaming": STREAM_WINDOW + 4}  # example T / W used for tracing only


class OfflineGraph(nn.Module):
    """The offline pre-stream: features [B, T, D] → (cas [B, T, C], video_scores [B, C], weights [B, T, C])."""

    def __init__(self, model: ECM, legacy: bool = False):
        super().__init__()
        self.model = model
        self.legacy = legacy
        self.register_buffer("topk", torch.tensor(model.dims.topk, dtype=torch.int64), persistent=False)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cas = self.model.class_activation(features.transpose(1, 2))  # [B, C, T]
        k = clipped_topk(self.topk, torch._shape_as_tensor(cas)[2], torch.minimum)  # a graph value: T is dynamic
        video_score = topk_mean(cas, k)
        outputs = (cas.transpose(1, 2), class_probabilities(video_score))
        if self.legacy:
            return outputs
        return (*outputs, self.model.transition_weights(cas).transpose(1, 2))


class StreamingGraph(nn.Module):
    """The streaming pre-stream: a window features [B, W, D] → (cas, weights) [B, W − 4, C] of its valid centre
    columns (``legacy``: cas only)."""

    def __init__(self, model: ECM, legacy: bool = False):
        super().__init__()
        self.model = model
        self.legacy = legacy

    def forward(self, features: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        cas = self.model.valid_class_activation(features.transpose(1, 2))  # [B, C, W − 2·RECEPTIVE_RADIUS]
        if self.legacy:
            return cas.transpose(1, 2)
        return cas.transpose(1, 2), self.model.transition_weights(cas).transpose(1, 2)


GRAPH_MODULES: dict[str, type[nn.Module]] = {"offline": OfflineGraph, "streaming": StreamingGraph}


def graph_module(model: ECM, graph: str, legacy: bool = False) -> nn.Module:
    """The torch module of an exported graph, in eval mode (no dropout)."""
    return GRAPH_MODULES[graph](model, legacy=legacy).eval()


def export_graph(model: ECM, path: str | Path, graph: str = "offline", opset: int = DEFAULT_OPSET,
                 simplify: bool = True, legacy: bool = False) -> Path:
    """Export one graph to ``path`` (simplified, checked, written atomically); returns ``path``.

    ``legacy``: without the ``weights`` output, as artifacts exported before it existed."""
    onnx = _require_onnx()
    path = Path(path)
    dims = model.dims
    was_training = model.training
    try:
        with atomic_path(path) as tmp:
            _trace_to_onnx(graph_module(model, graph, legacy), graph, dims.feature_dim, dims.num_classes, tmp, opset,
                           legacy)
            proto = onnx.load(str(tmp))
            if simplify:
                proto = simplify_model(proto)
            set_io_shapes(proto, graph, dims.feature_dim, dims.num_classes, legacy)
            onnx.checker.check_model(proto, full_check=True)
            onnx.save(proto, str(tmp))
    finally:
        model.train(was_training)
    return path


def _trace_to_onnx(module: nn.Module, graph: str, feature_dim: int, num_classes: int, path: Path,
                   opset: int, legacy: bool = False) -> None:
    inputs, outputs = graph_specs(graph, feature_dim, num_classes, legacy=legacy)
    dynamic_axes = {spec.name: {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}
                    for spec in inputs + outputs}
    example = torch.zeros(1, TRACE_LENGTH[graph], feature_dim)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\..*")
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[s.name for s in inputs], output_names=[s.name for s in outputs],
                          dynamic_axes=dynamic_axes, do_constant_folding=True)


def simplify_model(proto):
    """onnxsim with a clear message when it is missing; refuses a result that onnxsim could not verify."""
    onnxsim = import_optional("onnxsim", "onnxsim", "simplifying the exported graph", "pip install 'ecm-edge[export]'")
    simplified, ok = onnxsim.simplify(proto)
    if not ok:
        log.warning("onnxsim could not verify the simplified graph; keeping the unsimplified one")
        return proto
    return simplified


def set_io_shapes(proto, graph: str, feature_dim: int, num_classes: int, legacy: bool = False) -> None:
    """Write the contract's names and shapes onto the graph's inputs and outputs (onnxsim renames dynamic dims)."""
    inputs, outputs = graph_specs(graph, feature_dim, num_classes, legacy=legacy)
    by_name = {spec.name: spec for spec in inputs + outputs}
    for value in list(proto.graph.input) + list(proto.graph.output):
        spec = by_name.get(value.name)
        if spec is None:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(spec.shape):
            raise RuntimeError(f"exported {graph} graph: {value.name} has rank {len(dims)}, expected {spec.shape}")
        for dim, want in zip(dims, spec.shape, strict=True):
            if isinstance(want, int):
                dim.dim_value = want
            else:
                dim.dim_param = want


def _require_onnx():
    return import_optional("onnx", "onnx", "ONNX export", "pip install 'ecm-edge[export]'")
