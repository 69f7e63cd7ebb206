"""The background branch of ECM's equivalent training strategy, batched (docs/design.md §3).

For every video b and every one of its ground-truth classes c, the published algorithm suppresses class c's
foreground by scaling the input per snippet with ``1 − W[b, c]``, aggregates the result with the video's full
weights ``W[b]``, post-classifies it, and keeps class c's score as the background score ``s_bg[b, c]``; a
non-ground-truth class j gets the mean of those per-class runs' scores at j. The reference runs one forward per
(video, class) pair in a Python loop; here all pairs of a batch go through one aggregation and one
post-classification, selected and scattered back with index tensors.
"""

from __future__ import annotations

import torch

from ecm_edge.train.model import ECM

FOREGROUND = 0.5  # a label entry above this marks a ground-truth class


def ground_truth_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ground-truth classes of each video, padded to the largest count in the batch.

    labels [B, C] multi-hot → (classes [B, K] class index per slot, valid [B, K] bool, counts [B]); the valid
    slots of a row hold that video's classes in ascending order.
    """
    positive = labels > FOREGROUND
    counts = positive.sum(dim=1)
    k = int(counts.max().item()) if counts.numel() else 0
    order = torch.argsort((~positive).to(torch.int8), dim=1, stable=True)  # positives first, ascending
    classes = order[:, :k]
    valid = torch.arange(k, device=labels.device)[None, :] < counts[:, None]
    return classes, valid, counts


def background_scores(model: ECM, x: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """s_bg [B, C] for features x [B, D, T], transition weights W [B, C, T] and multi-hot labels [B, C].

    A video without ground-truth classes has no background run; its row is zero (the a2c loss ignores it).
    """
    b, c, _ = weights.shape
    classes, valid, counts = ground_truth_pairs(labels)
    s_bg = torch.zeros(b, c, dtype=weights.dtype, device=weights.device)
    if classes.shape[1] == 0:
        return s_bg
    suppress = 1.0 - torch.gather(weights, 1, classes[:, :, None].expand(-1, -1, weights.shape[2]))  # [B, K, T]
    aggregated = model.aggregate(x, weights, scale=suppress)  # [B, K, C, D, 3]
    pair_video, pair_slot = valid.nonzero(as_tuple=True)  # P pairs, video-major
    pair_class = classes[pair_video, pair_slot]
    run_scores = model.post_classify(aggregated[pair_video, pair_slot])  # [P, C]
    run_scores = run_scores.to(s_bg.dtype)

    # non-ground-truth entries: mean over the video's runs; ground-truth entries: the run's own class score
    s_bg = s_bg.index_add(0, pair_video, run_scores)
    s_bg = s_bg / counts.clamp_min(1)[:, None].to(s_bg.dtype)
    own = run_scores[torch.arange(run_scores.shape[0], device=run_scores.device), pair_class]
    return s_bg.index_put((pair_video, pair_class), own)


def aggregated_scores(score_post: torch.Tensor, s_bg: torch.Tensor) -> torch.Tensor:
    """score_agg [B, 2C]: softmax over the post-stream scores followed by the background scores."""
    return torch.softmax(torch.cat([score_post, s_bg], dim=1), dim=1)
