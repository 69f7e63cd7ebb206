"""The four ECM losses (docs/design.md §3) as functions of the model outputs and the video-level labels.

``L = L_pre + L_post + w_c2c · L_c2c + λ · L_a2c``:

- ``L_pre``, ``L_post``: cross-entropy of ``softmax(score)`` against the multi-hot label normalized to sum 1;
- ``L_c2c``: mean squared error between the pre- and post-stream logits (classification consistency);
- ``L_a2c``: per video, binary cross-entropy of the aggregated softmax ``score_agg`` [B, 2C] at the
  ground-truth indices (target 1) and at ground-truth + C (target 0), summed over videos and divided by B.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ecm_edge.train.background import FOREGROUND

LABEL_EPS = 1e-10  # keeps the label normalization finite for a video without labels

LOSS_TERMS = ("pre", "post", "c2c", "a2c")


def classification_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of softmax(scores) [B, C] against labels [B, C] normalized to sum 1 per video."""
    target = labels / (labels.sum(dim=1, keepdim=True) + LABEL_EPS)
    return -(target * F.log_softmax(scores, dim=1)).sum(dim=1).mean()


def c2c_loss(score_pre: torch.Tensor, score_post: torch.Tensor) -> torch.Tensor:
    """Classification consistency: MSE between the two streams' raw logits."""
    return F.mse_loss(score_pre, score_post)


def a2c_loss(score_agg: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Aggregation consistency: BCE on score_agg [B, 2C] at ground truth (→ 1) and ground truth + C (→ 0).

    Each video's BCE is the mean over its 2·n ground-truth entries; a video without ground truth adds 0.
    """
    positive = (labels > FOREGROUND).to(score_agg.dtype)
    target = torch.cat([positive, torch.zeros_like(positive)], dim=1)
    mask = torch.cat([positive, positive], dim=1)
    # torch's BCE clamps log(p) at -100 and keeps the gradient finite where p reaches 0 or 1
    bce = F.binary_cross_entropy(score_agg, target, weight=mask, reduction="none")
    per_video = bce.sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    return per_video.sum() / labels.shape[0]


def total_loss(score_pre: torch.Tensor, score_post: torch.Tensor, score_agg: torch.Tensor, labels: torch.Tensor,
               *, c2c_weight: float, a2c_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training objective and its detached terms ``pre``, ``post``, ``c2c``, ``a2c`` (and ``total``)."""
    terms = {
        "pre": classification_loss(score_pre, labels),
        "post": classification_loss(score_post, labels),
        "c2c": c2c_loss(score_pre, score_post),
        "a2c": a2c_loss(score_agg, labels),
    }
    loss = terms["pre"] + terms["post"] + c2c_weight * terms["c2c"] + a2c_weight * terms["a2c"]
    detached = {name: value.detach() for name, value in terms.items()}
    detached["total"] = loss.detach()
    return loss, detached
