"""Benchmark part ``train``: the batched background branch against the reference's Python loop, alone and in a
whole training step (forward, the four losses, backward, Adam), at the small config's and the paper's sizes.

The loop baseline is the published algorithm (one aggregation and post-classification per video and
ground-truth class); both run in the same process on the same inputs, and the table reports the ratio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ecm_edge.bench import BenchSection
from ecm_edge.errors import MissingDependencyError
from ecm_edge.timing import time_call


@dataclass(frozen=True)
class Size:
    name: str
    feature_dim: int
    hidden_dim: int
    num_classes: int
    t_fixed: int
    batch: int
    topk: int


SMALL = Size("small config", 256, 256, 20, 256, 16, 32)
PAPER = Size("paper (THUMOS14)", 2048, 2048, 20, 750, 16, 93)
CLASSES_PER_VIDEO = (1, 3)  # ground-truth classes per video drawn from this range (THUMOS14: 1–3)


def _torch():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "the training benchmark", "pip install 'ecm-edge[train]'") from None
    return torch


def loop_background_scores(model, x, weights, labels):
    """The reference's algorithm: one pass per (video, ground-truth class)."""
    torch = _torch()
    rows = []
    for b in range(labels.shape[0]):
        gt = torch.where(labels[b] > 0.5)[0]
        runs = torch.cat([model.post_classify(model.aggregate(x[b:b + 1] * (1 - weights[b:b + 1, c:c + 1]),
                                                              weights[b:b + 1])) for c in gt.tolist()])
        row = runs.mean(dim=0)
        row = row.index_put((gt,), runs[torch.arange(len(gt)), gt])
        rows.append(row)
    return torch.stack(rows)


def _inputs(size: Size, device: str, seed: int = 0):
    torch = _torch()
    from ecm_edge.train.model import ECM, ECMDims

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ECM(ECMDims(size.feature_dim, size.hidden_dim, size.num_classes, size.topk)).to(device)
    x = torch.rand(size.batch, size.feature_dim, size.t_fixed, device=device)
    labels = np.zeros((size.batch, size.num_classes), dtype=np.float32)
    for b in range(size.batch):
        count = rng.integers(CLASSES_PER_VIDEO[0], CLASSES_PER_VIDEO[1] + 1)
        labels[b, rng.choice(size.num_classes, size=count, replace=False)] = 1
    return model, x, torch.from_numpy(labels).to(device)


def _train_step(model, optimizer, x, labels, background: Callable) -> None:
    from ecm_edge.train.background import aggregated_scores
    from ecm_edge.train.losses import total_loss

    out = model(x)
    agg = aggregated_scores(out.score_post, background(model, x, out.weights, labels))
    loss, _ = total_loss(out.score_pre, out.score_post, agg, labels, c2c_weight=0.05, a2c_weight=5.0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _synced(fn: Callable[[], object], device: str) -> Callable[[], object]:
    torch = _torch()

    def call() -> object:
        result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    return call


def measure(size: Size, device: str, repeat: int, step_repeat: int, step_warmup: int = 1) -> list[list[object]]:
    """Rows: background branch alone (forward) and the whole training step, batched vs loop."""
    torch = _torch()
    from ecm_edge.train.background import background_scores

    model, x, labels = _inputs(size, device)
    model.eval()
    with torch.no_grad():
        weights = model(x).weights
        pairs = int(labels.sum().item())
        batched = time_call(_synced(lambda: background_scores(model, x, weights, labels), device), repeat=repeat)
        looped = time_call(_synced(lambda: loop_background_scores(model, x, weights, labels), device), repeat=repeat)
    rows = [[size.name, device, "background branch (forward)", pairs, float(np.median(batched)),
             float(np.median(looped)), float(np.median(looped) / np.median(batched))]]
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=5e-4)
    step_b = time_call(_synced(lambda: _train_step(model, optimizer, x, labels, background_scores), device),
                       repeat=step_repeat, warmup=step_warmup)
    step_l = time_call(_synced(lambda: _train_step(model, optimizer, x, labels, loop_background_scores), device),
                       repeat=step_repeat, warmup=step_warmup)
    rows.append([size.name, device, "training step (fwd+bwd+Adam)", pairs, float(np.median(step_b)),
                 float(np.median(step_l)), float(np.median(step_l) / np.median(step_b))])
    return rows


def run(quick: bool) -> BenchSection:
    torch = _torch()
    headers = ["size", "device", "what", "(video, class) pairs", "batched s", "loop s", "speedup"]
    rows: list[list[object]] = []
    notes = [f"sizes: small D=H=256 C=20 T=256 B=16; paper D=H=2048 C=20 T=750 B=16; "
             f"{CLASSES_PER_VIDEO[0]}–{CLASSES_PER_VIDEO[1]} ground-truth classes per video",
             "median wall-clock seconds; the loop is the published per-(video, class) algorithm"]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        rows += measure(SMALL, device, repeat=3 if quick else 5, step_repeat=2 if quick else 3)
        if quick and device == "cpu":
            notes.append("paper size on CPU skipped with --quick (a training step takes tens of seconds)")
            continue
        on_cpu = device == "cpu"  # a paper-size step takes tens of seconds there: one warm-up, one timed call
        rows += measure(PAPER, device, repeat=1 if on_cpu else 5, step_repeat=1 if on_cpu else 5)
    return BenchSection("Training: batched background branch vs the reference loop", headers, rows, notes)
