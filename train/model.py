"""The Equivalent Classification Mapping network (docs/design.md §3).

One shared temporal-convolution classifier Φ + bias-free classifier serves two streams:
the pre-classification stream scores every snippet (the CAS) and pools the top-k into a video score; the
post-classification stream first aggregates the input features with per-class foreground weights
(the weight-transition module applied to the CAS) and classifies the aggregate. Only the pre-stream is needed at
inference, so :meth:`ECM.export_forward` returns just that.

The layer shapes, the activation slope, the dropout and the top-k rule come from :mod:`ecm_edge.architecture`,
which the ONNX export and the torch-free numpy head read as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ecm_edge.architecture import (
    CLASSIFIER_BIAS,
    DROPOUT,
    KERNEL_SIZE,
    LEAKY_SLOPE,
    PADDING,
    POINTWISE_KERNEL,
    TRANSITION_BIAS,
    clipped_topk,
)
from ecm_edge.config import Config

PHASES = 3  # the post-stream splits the snippets into this many interleaved phases


@dataclass(frozen=True)
class ECMDims:
    feature_dim: int  # D
    hidden_dim: int  # H
    num_classes: int  # C
    topk: int  # k of the top-k video score, ecm_edge.architecture.topk_count(T_fixed, r)
    dropout: float = DROPOUT
    leaky_slope: float = LEAKY_SLOPE
    normalize_aggregation: bool = False

    @classmethod
    def from_config(cls, cfg: Config) -> ECMDims:
        return cls(cfg.data.feature_dim, cfg.model.hidden_dim, cfg.model.num_classes, cfg.topk,
                   cfg.model.dropout, cfg.model.leaky_slope, cfg.model.normalize_aggregation)


@dataclass
class ECMOutput:
    """What the training forward returns; the losses are functions of these."""

    cas: torch.Tensor  # [B, C, T] raw class activation logits
    score_pre: torch.Tensor  # [B, C] top-k mean of the CAS
    weights: torch.Tensor  # [B, C, T] transition weights W = sigmoid(conv1x1(CAS))
    score_post: torch.Tensor  # [B, C] post-classification stream logits


class ECM(nn.Module):
    def __init__(self, dims: ECMDims):
        super().__init__()
        self.dims = dims
        # the post-stream sums are divided by ΣW to this power: 1 normalized, 0 the paper's sums; the trainer moves
        # it from 1 to 0 during a normalized warm-up
        self.normalize_power = 1.0 if dims.normalize_aggregation else 0.0
        d, h, c = dims.feature_dim, dims.hidden_dim, dims.num_classes
        self.conv1 = nn.Conv1d(d, h, kernel_size=KERNEL_SIZE, padding=PADDING)
        self.conv2 = nn.Conv1d(h, h, kernel_size=KERNEL_SIZE, padding=PADDING)
        self.act = nn.LeakyReLU(dims.leaky_slope)
        self.dropout = nn.Dropout(dims.dropout)
        self.classifier = nn.Conv1d(h, c, kernel_size=POINTWISE_KERNEL, bias=CLASSIFIER_BIAS)
        self.transition = nn.Conv1d(c, c, kernel_size=POINTWISE_KERNEL, bias=TRANSITION_BIAS)

    # -- the shared parts -------------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Φ: [N, D, L] → [N, H, L]."""
        return self.dropout(self.act(self.conv2(self.act(self.conv1(x)))))

    def embed_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Φ for short sequences (the post-stream's 3 phases): [N, D, S] → [N, H, S], equal to :meth:`embed`.

        Each zero-padded temporal convolution runs as one matrix product over the unfolded windows, which on CPU
        is faster than a convolution over N sequences that short.
        """
        hidden = self.act(_same_conv_as_matmul(x, self.conv1))
        return self.dropout(self.act(_same_conv_as_matmul(hidden, self.conv2)))

    def class_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The CAS with zero padding (the offline pass): x [B, D, T] → cas [B, C, T]."""
        return self.classifier(self.embed(x))

    def valid_class_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The CAS without padding, for inference (no dropout): a window x [B, D, W] → cas [B, C, W − 2·R] of its
        centre columns, R = ``ecm_edge.architecture.RECEPTIVE_RADIUS`` (the streaming graph)."""
        hidden = self.act(F.conv1d(x, self.conv1.weight, self.conv1.bias))
        hidden = self.act(F.conv1d(hidden, self.conv2.weight, self.conv2.bias))
        return F.conv1d(hidden, self.classifier.weight)

    def video_score(self, cas: torch.Tensor) -> torch.Tensor:
        """Mean of the top-k CAS values over time; k is clipped to T for clips shorter than k."""
        return topk_mean(cas, clipped_topk(self.dims.topk, cas.shape[-1]))

    # -- the streams -------------------------------------------------------------------------------------------
    def pre_stream(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, D, T] → (cas [B, C, T], score_pre [B, C])."""
        cas = self.class_activation(x)
        return cas, self.video_score(cas)

    def transition_weights(self, cas: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.transition(cas))

    def aggregate(self, x: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Per-phase weighted sums of the input features.

        x [B, D, T], W [B, C, T] → [B, C, D, 3]. With ``scale`` [B, K, T] the input is first multiplied per
        snippet by each of the K rows (the background branch's 1 − W_c), giving [B, K, C, D, 3] without
        copying x: scaling x by s and weighting by W equals weighting x by W·s. The optional normalization
        divides by ΣW of the phase either way, as for the unscaled input.
        """
        phases = []
        for g in range(PHASES):
            w_g = weights[:, :, g::PHASES]
            x_g = x[:, :, g::PHASES].contiguous().transpose(1, 2)  # [B, T_g, D]; BLAS is slow on stride 3
            if scale is None:
                f_g = torch.bmm(w_g, x_g)
            else:
                b, k, c = scale.shape[0], scale.shape[1], w_g.shape[1]
                w_scaled = (w_g[:, None] * scale[:, :, None, g::PHASES]).reshape(b, k * c, -1)
                f_g = torch.bmm(w_scaled, x_g).reshape(b, k, c, -1)
            if self.normalize_power > 0:
                norm = w_g.sum(dim=-1, keepdim=True).clamp_min(1e-6) ** self.normalize_power  # [B, C, 1]
                f_g = f_g / (norm if scale is None else norm[:, None])
            phases.append(f_g)
        return torch.stack(phases, dim=-1)

    def post_classify(self, aggregated: torch.Tensor) -> torch.Tensor:
        """Score class c's 3-step sequence with classifier row c only: [B, C, D, 3] → [B, C]."""
        b, c, d, steps = aggregated.shape
        hidden = self.embed_steps(aggregated.reshape(b * c, d, steps)).reshape(b, c, -1, steps)
        rows = self.classifier.weight[:, :, 0]  # [C, H]
        return torch.einsum("bchs,ch->bcs", hidden, rows).mean(dim=-1)

    def post_stream(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.post_classify(self.aggregate(x, weights))

    def forward(self, x: torch.Tensor) -> ECMOutput:
        """Training forward: x [B, D, T]."""
        cas, score_pre = self.pre_stream(x)
        weights = self.transition_weights(cas)
        return ECMOutput(cas, score_pre, weights, self.post_stream(x, weights))

    def export_forward(self, features: torch.Tensor, with_weights: bool = False) -> tuple[torch.Tensor, ...]:
        """Deployment forward: features [B, T, D] → (cas [B, T, C], video_scores [B, C] = softmax(score_pre)),
        and with ``with_weights`` a third output, the transition weights W = sigmoid(conv1x1(cas)) [B, T, C]."""
        cas, score_pre = self.pre_stream(features.transpose(1, 2))
        outputs = (cas.transpose(1, 2), class_probabilities(score_pre))
        if with_weights:
            outputs += (self.transition_weights(cas).transpose(1, 2),)
        return outputs

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def topk_mean(cas: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """Mean of the k largest CAS values over time: cas [B, C, T] → [B, C]; ``k`` may be a graph value (export)."""
    return torch.topk(cas, k, dim=2).values.mean(dim=2)


def class_probabilities(video_score: torch.Tensor) -> torch.Tensor:
    """The deployed video scores: softmax over the classes of the top-k means, [B, C] → [B, C]."""
    return torch.softmax(video_score, dim=1)


def _same_conv_as_matmul(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv(x)`` for a temporal Conv1d of :data:`KERNEL_SIZE` with :data:`PADDING`, as one matrix product:
    [N, C_in, S] → [N, C_out, S]."""
    n, c_in, steps = x.shape
    windows = F.pad(x, (PADDING, PADDING)).unfold(2, KERNEL_SIZE, 1)  # [N, C_in, S, K]
    columns = windows.permute(0, 2, 1, 3).reshape(n, steps, c_in * KERNEL_SIZE)
    out = columns @ conv.weight.reshape(conv.out_channels, c_in * KERNEL_SIZE).t()
    if conv.bias is not None:
        out = out + conv.bias
    return out.transpose(1, 2)

