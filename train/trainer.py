"""The ECM trainer: data, optimization, per-epoch evaluation, checkpoints and the run folder.

A run lives in ``runs/train/<name>``::

    config.yaml          the resolved config
    metrics.jsonl        one JSON object per epoch: loss terms, lr, seconds, and mAP per IoU when evaluated
    last.pt              training state after the latest epoch (resume from it)
    best.pt              training state of the best evaluated epoch (highest average mAP over eval.iou_thresholds)
    model.safetensors    deploy weights of the best epoch (of the latest epoch until one is evaluated)
    model.json           their class names, feature spec, model dims and config

Reproducibility: every random choice comes from a generator seeded by ``train.seed`` — the epoch's shuffle from
(seed, epoch), each clip's perturbed resampling from (seed, epoch, video), dropout from torch's generator,
whose state (with python's and numpy's) is stored in every checkpoint. Training twice on CPU with the same seed
(and the same number of threads) gives the same loss sequence, and resuming from ``last.pt`` after an
interruption gives the same final weights as a run that was never interrupted.

Batches: ``train.batch_size`` is the global batch; with N processes each takes its share of every batch and
DistributedDataParallel averages their gradients.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ecm_edge.config import Config, apply_overrides, config_from_stored
from ecm_edge.data.dataset import VideoDataset, resample_features
from ecm_edge.data.rate import parse_columns_per_snippet, training_rate
from ecm_edge.errors import CheckpointError, ConfigError, DataError, EcmEdgeError
from ecm_edge.io import atomic_write_text, next_run_dir
from ecm_edge.train import distributed as ddp
from ecm_edge.train.background import aggregated_scores, background_scores
from ecm_edge.train.checkpoint import (
    BEST_NAME,
    LAST_NAME,
    capture_rng_states,
    load_checkpoint,
    restore_rng_states,
    save_checkpoint,
)
from ecm_edge.train.deploy import save_deploy
from ecm_edge.train.losses import LOSS_TERMS, total_loss
from ecm_edge.train.model import ECM, ECMDims

logger = logging.getLogger("ecm_edge")

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"
SELECTION_METRIC = "map_avg"  # best.pt: the highest mean of mAP over cfg.eval.iou_thresholds
LOG_TERMS = ("total", *LOSS_TERMS)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
RANK_SEED_STRIDE = 1_000_003  # dropout streams of distributed processes: seed + rank · stride


@dataclass
class TrainSummary:
    """What a training run produced."""

    run_dir: Path
    epochs: int  # epochs completed
    history: list[dict[str, Any]]
    eval_split: str | None  # "val", "test" or None (nothing evaluated)
    best: dict[str, Any] | None = None  # the metrics record of the best evaluated epoch
    already_finished: bool = False  # resume found nothing left to do
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def last(self) -> dict[str, Any] | None:
        return self.history[-1] if self.history else None


# ------------------------------------------------------------------------------------------- the training step


class TrainingForward(nn.Module):
    """Everything the losses need in one module call (so DistributedDataParallel and torch.compile see it all)."""

    def __init__(self, model: ECM):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(x)
        s_bg = background_scores(self.model, x, out.weights, labels)
        return out.score_pre, out.score_post, aggregated_scores(out.score_post, s_bg)


class TrainClips(torch.utils.data.Dataset):
    """Training clips: each video's features resampled to T_fixed with a random perturbation, as [D, T]."""

    def __init__(self, dataset: VideoDataset, t_fixed: int, seed: int):
        self.dataset, self.t_fixed, self.seed = dataset, t_fixed, seed
        self.ids = list(dataset.video_ids)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        vid = self.ids[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        clip = resample_features(self.dataset.features(vid), self.t_fixed, rng)
        return torch.from_numpy(np.ascontiguousarray(clip.T)), torch.from_numpy(self.dataset.labels(vid))


def epoch_batches(num_videos: int, batch_size: int, seed: int, epoch: int,
                  ctx: ddp.DistContext = ddp.DistContext()) -> list[list[int]]:
    """This process's batches of one epoch: a seeded shuffle cut into global batches (the last may be short),
    each split across the processes; a batch smaller than the process count is topped up from the start."""
    order = np.random.default_rng([seed, epoch]).permutation(num_videos).tolist()
    batches = []
    for start in range(0, num_videos, batch_size):
        batch = order[start:start + batch_size]
        if len(batch) < ctx.world_size:
            batch += [order[i % num_videos] for i in range(ctx.world_size - len(batch))]
        batches.append(batch[ctx.rank::ctx.world_size])
    return batches


def learning_rate(cfg: Config, epoch: int) -> float:
    """lr of epoch (1-based). ``step``: train.lr, times lr_decay_factor once lr_decay_epoch epochs are done;
    ``cosine``: from train.lr after the warm-up down to train.lr · lr_min_factor at the last epoch. A warm-up of
    N epochs scales either by epoch / N over its epochs."""
    t = cfg.train
    warmup = min(1.0, epoch / t.lr_warmup_epochs) if t.lr_warmup_epochs > 0 else 1.0
    if t.lr_schedule == "cosine":
        decay_from = max(t.lr_warmup_epochs, 1)  # the first epoch at the full rate
        progress = min(1.0, max(0, epoch - decay_from) / max(1, t.epochs - decay_from))
        floor = t.lr_min_factor
        return t.lr * warmup * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    decayed = t.lr_decay_epoch > 0 and epoch > t.lr_decay_epoch
    return t.lr * warmup * (t.lr_decay_factor if decayed else 1.0)


def normalization_power(cfg: Config, epoch: int) -> float:
    """The power of ΣW that epoch (1-based) divides the post-stream sums by: 1 throughout with
    model.normalize_aggregation; with N = train.normalized_warmup_epochs, 1 at the first epoch falling linearly to
    0 (the paper's sums) at epoch N + 1. A sudden switch from normalized sums to the paper's, hundreds of times
    larger, wrecked the model it had trained (docs/design.md, Model and training)."""
    if cfg.model.normalize_aggregation:
        return 1.0
    if not fades_normalization(cfg):
        return 0.0
    return max(0.0, 1.0 - (epoch - 1) / cfg.train.normalized_warmup_epochs)


def fades_normalization(cfg: Config) -> bool:
    """Whether the run fades the ΣW normalization out (a normalized warm-up on the paper's sums)."""
    return cfg.train.normalized_warmup_epochs > 0 and not cfg.model.normalize_aggregation


# ------------------------------------------------------------------------------------------------ checks


def resolve_device(device: str, ctx: ddp.DistContext) -> torch.device:
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: torch sees no CUDA GPU (torch "
                              f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); train on --device cpu "
                              "or install a CUDA build of torch on a machine with an NVIDIA GPU")
        return torch.device("cuda", ctx.local_rank if ctx.enabled else torch.cuda.current_device())
    return torch.device("cpu")


def check_precision_options(cfg: Config, device: torch.device) -> None:
    """AMP and torch.compile are CUDA options; on CPU they are refused rather than silently ignored."""
    if device.type == "cuda":
        return
    if cfg.train.amp != "off":
        raise ConfigError(f"train.amp={cfg.train.amp} needs --device cuda; CPU training runs in fp32 "
                          "(use --set train.amp=off)")
    if cfg.train.compile:
        raise ConfigError("train.compile=true needs --device cuda; on CPU use --set train.compile=false")


def check_dataset(dataset: VideoDataset, cfg: Config) -> None:
    if len(dataset.class_names) != cfg.model.num_classes:
        raise ConfigError(f"{dataset.data_dir} has {len(dataset.class_names)} classes but model.num_classes is "
                          f"{cfg.model.num_classes}; use --set model.num_classes={len(dataset.class_names)}")
    unlabeled = [v for v in dataset.video_ids if not dataset.labels(v).any()]
    if len(unlabeled) == len(dataset.video_ids):
        raise DataError(f"no training video of {dataset.data_dir} has a label; weak supervision needs "
                        "video-level labels in the annotations")
    if unlabeled:
        logger.warning("%d training video(s) carry no label (e.g. %r); they count for the classification losses "
                       "only", len(unlabeled), unlabeled[0])


# ----------------------------------------------------------------------------------------------- the run


@dataclass
class _State:
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None


def open_training_data(data_dir: str | Path, cfg: Config) -> tuple[VideoDataset, VideoDataset | None, str | None]:
    """(training videos, evaluation videos or None, evaluation split name)."""
    train_split = VideoDataset.open(data_dir, cfg, "train")
    check_dataset(train_split, cfg)
    if cfg.train.eval_split == "test":
        logger.warning("EVALUATING ON THE TEST SPLIT (train.eval_split=test): best.pt is selected on test data, "
                       "so its mAP is not an unbiased estimate; use the default train.eval_split=val for that")
        return train_split, VideoDataset.open(data_dir, cfg, "test"), "test"
    if cfg.data.val_fraction <= 0:
        logger.warning("data.val_fraction=0: no validation videos, so no per-epoch mAP; best.pt = last epoch")
        return train_split, None, None
    train_part, val_part = train_split.holdout(cfg.data.val_fraction, cfg.data.val_seed)
    if not len(val_part):
        logger.warning("no video could be held out for validation; training without per-epoch mAP")
        return train_split, None, None
    logger.info("training on %d videos, validating on %d held-out training videos", len(train_part), len(val_part))
    return train_part, val_part, "val"


def with_stream_rate(cfg: Config, train_set: VideoDataset) -> Config:
    """``cfg`` with ``stream.columns_per_snippet: auto`` replaced by the rate this network trains at (the median
    ``t_fixed / length`` of its training videos), so the run's config, and with it the deploy and export
    folders, tell the stream how to resample (``ecm_edge.data.rate``, ``ecm_edge.runtime.resample``)."""
    if parse_columns_per_snippet(cfg.stream.columns_per_snippet) is not None:
        return cfg
    lengths = [train_set.num_snippets(video_id) for video_id in train_set.video_ids]
    rate = training_rate(lengths, cfg.data.t_fixed)
    cfg = copy.deepcopy(cfg)
    cfg.stream.columns_per_snippet = f"{rate:.4g}"
    logger.info("training clips hold %.4g columns per source snippet (median); streams will resample to that "
                "(stream.columns_per_snippet)", rate)
    return cfg


def _ambiguous_segments(data_dir: str | Path, cfg: Config, split: str | None):
    if cfg.eval.protocol != "thumos14" or split != "test":
        return None
    from ecm_edge.data.annotations import load_ambiguous
    from ecm_edge.evaluation import find_ambiguous_file

    return load_ambiguous(find_ambiguous_file(data_dir))


def evaluate_epoch(model: ECM, eval_set: VideoDataset, class_names: list[str], cfg: Config, device: torch.device,
                   ambiguous=None) -> dict[str, Any]:
    """mAP of the current weights on the evaluation videos, as a metrics fragment."""
    from ecm_edge.train.inference import evaluate_raw, predict_dataset_raw

    raw = predict_dataset_raw(model, eval_set, class_names, cfg, device=device)
    _, result = evaluate_raw(raw, eval_set.annotations, cfg, ambiguous=ambiguous)
    return {"map": {f"{t:g}": m for t, m in zip(result.iou, result.map, strict=True)},
            SELECTION_METRIC: result.average, "num_predictions": result.num_predictions}


def train(cfg: Config, data_dir: str | Path, run_dir: str | Path, *, device: str = "cpu", resume: bool = False,
          progress: bool | None = None) -> TrainSummary:
    """Train ECM on ``data_dir`` into ``run_dir``; with ``resume``, continue from ``run_dir/last.pt``.

    Works alone or as one process of a torchrun group (the caller's environment decides). Raises
    :class:`EcmEdgeError` subclasses for bad input; ``progress`` None shows a bar when stderr is a terminal.
    """
    run_dir = Path(run_dir)
    ctx = ddp.init_distributed("cuda" if device == "cuda" else "cpu")
    dev = resolve_device(device, ctx)
    check_precision_options(cfg, dev)
    seed_everything(cfg.train.seed)
    train_set, eval_set, eval_split = open_training_data(data_dir, cfg)
    cfg = with_stream_rate(cfg, train_set)
    class_names = list(train_set.class_names)
    model = ECM(ECMDims.from_config(cfg)).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                                 weight_decay=cfg.train.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None
    state = _State()
    if resume:
        state = _restore(run_dir / LAST_NAME, model, optimizer, scaler, class_names, ctx)
    elif ctx.enabled:
        torch.manual_seed(cfg.train.seed + RANK_SEED_STRIDE * ctx.rank)
    if state.epoch >= cfg.train.epochs or _out_of_patience(cfg, state):
        logger.info("%s already finished (%d of %d epochs%s); nothing to do", run_dir, state.epoch, cfg.train.epochs,
                    ", stopped early by train.patience" if state.epoch < cfg.train.epochs else "")
        return _summary(run_dir, state, eval_split, already_finished=True)

    forward: nn.Module = TrainingForward(model)
    if ctx.enabled:
        forward = nn.parallel.DistributedDataParallel(forward, device_ids=[dev.index] if dev.type == "cuda" else None)
    if cfg.train.compile:
        forward = torch.compile(forward)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / CONFIG_NAME)
        if resume:
            _rewrite_metrics(run_dir, state.history)
    clips = TrainClips(train_set, cfg.data.t_fixed, cfg.train.seed)
    ambiguous = _ambiguous_segments(data_dir, cfg, eval_split) if ctx.is_main else None
    show = ctx.is_main and (sys.stderr.isatty() if progress is None else progress)
    meta = {"data_dir": str(Path(data_dir).resolve()), "eval_split": eval_split,
            "train_ids": list(train_set.video_ids), "eval_ids": list(eval_set.video_ids) if eval_set else []}

    for epoch in range(state.epoch + 1, cfg.train.epochs + 1):
        started = time.perf_counter()
        lr = learning_rate(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.normalize_power = normalization_power(cfg, epoch)
        losses = _train_epoch(forward, clips, optimizer, scaler, cfg, dev, epoch, ctx, show)
        record: dict[str, Any] = {"epoch": epoch, "loss": losses, "lr": lr,
                                  "seconds": round(time.perf_counter() - started, 3)}
        if fades_normalization(cfg):
            record["normalize_power"] = model.normalize_power
        if ctx.enabled:
            if not ddp.ranks_in_sync(model, ctx):
                raise EcmEdgeError(f"epoch {epoch}: the {ctx.world_size} processes hold different weights")
            record["world_size"] = ctx.world_size
            record["ranks_in_sync"] = True
        rng_states = ddp.gather_objects(capture_rng_states(), ctx)
        if ctx.is_main:
            if eval_set is not None and _evaluate_now(cfg, epoch):
                record["eval_split"] = eval_split
                record.update(evaluate_epoch(model, eval_set, class_names, cfg, dev, ambiguous))
            record["seconds_total"] = round(time.perf_counter() - started, 3)
            is_best = _update_best(state, record)
            state.epoch = epoch
            state.history.append(record)
            _write_epoch(run_dir, model, optimizer, scaler, cfg, class_names, state, rng_states, meta, is_best)
            _log_epoch(record, cfg.train.epochs)
        else:
            state.epoch = epoch
        if ddp.broadcast_object(_out_of_patience(cfg, state) if ctx.is_main else None, ctx):
            if ctx.is_main:
                logger.info("stopping after epoch %d: %d evaluations without a better mAP than epoch %d's "
                            "(train.patience=%d)", epoch, cfg.train.patience, state.best["epoch"],
                            cfg.train.patience)
            break
        ddp.barrier(ctx)
    return _summary(run_dir, state, eval_split)


def _out_of_patience(cfg: Config, state: _State) -> bool:
    """train.patience evaluations in a row since the best one (early stopping; best.pt keeps the best)."""
    if cfg.train.patience <= 0 or state.best is None or state.best.get(SELECTION_METRIC) is None:
        return False
    since = [r for r in state.history if r["epoch"] > state.best["epoch"] and r.get(SELECTION_METRIC) is not None]
    return len(since) >= cfg.train.patience


def _evaluate_now(cfg: Config, epoch: int) -> bool:
    every = cfg.train.eval_every
    return epoch == cfg.train.epochs or (every > 0 and epoch % every == 0)


def _update_best(state: _State, record: dict[str, Any]) -> bool:
    """Mark the record best when its mAP beats the best so far (or nothing was evaluated yet)."""
    value = record.get(SELECTION_METRIC)
    if value is None:
        return state.best is None or state.best.get(SELECTION_METRIC) is None
    if state.best is None or state.best.get(SELECTION_METRIC) is None or value > state.best[SELECTION_METRIC]:
        state.best = {"epoch": record["epoch"], SELECTION_METRIC: value, "map": record.get("map")}
        return True
    return False


def _train_epoch(forward: nn.Module, clips: TrainClips, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler | None, cfg: Config, device: torch.device, epoch: int,
                 ctx: ddp.DistContext, show_progress: bool) -> dict[str, float]:
    """One pass over the training clips; returns the mean of each loss term over the steps."""
    from tqdm import tqdm

    forward.train()
    clips.epoch = epoch
    batches = epoch_batches(len(clips), cfg.train.batch_size, cfg.train.seed, epoch, ctx)
    loader = torch.utils.data.DataLoader(
        clips, batch_sampler=batches, num_workers=cfg.train.num_workers, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.train.seed * 100_000 + epoch))
    autocast = (torch.autocast("cuda", dtype=AMP_DTYPES[cfg.train.amp]) if cfg.train.amp != "off"
                else nullcontext())
    sums = torch.zeros(len(LOG_TERMS), dtype=torch.float64, device=device)
    bar = tqdm(total=len(batches), desc=f"epoch {epoch}/{cfg.train.epochs}", leave=False, disable=not show_progress,
               dynamic_ncols=True)
    for step, (x, labels) in enumerate(loader, start=1):
        x, labels = x.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast:
            score_pre, score_post, score_agg = forward(x, labels)
        loss, terms = total_loss(score_pre.float(), score_post.float(), score_agg.float(), labels,
                                 c2c_weight=cfg.train.c2c_weight, a2c_weight=cfg.train.a2c_weight)
        optimizer.zero_grad(set_to_none=True)
        (loss if scaler is None else scaler.scale(loss)).backward()
        if cfg.train.grad_clip > 0:
            if scaler is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(forward.parameters(), cfg.train.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        sums += torch.stack([terms[name].double() for name in LOG_TERMS])
        if show_progress:
            bar.set_postfix({name: f"{(sums[i] / step).item():.3f}" for i, name in enumerate(LOG_TERMS)})
            bar.update(1)
    bar.close()
    counts = torch.tensor([float(len(batches))], dtype=torch.float64, device=device)
    sums, counts = ddp.all_reduce_sum(sums, ctx), ddp.all_reduce_sum(counts, ctx)
    means = (sums / counts.clamp_min(1)).cpu().tolist()
    if not all(math.isfinite(v) for v in means):
        raise EcmEdgeError(f"epoch {epoch}: the loss is not finite ({dict(zip(LOG_TERMS, means, strict=True))}); "
                           "lower train.lr, or train with train.amp=off if mixed precision is on")
    return {name: round(v, 6) for name, v in zip(LOG_TERMS, means, strict=True)}


# ------------------------------------------------------------------------------------------ run folder I/O


def _write_epoch(run_dir: Path, model: ECM, optimizer: torch.optim.Optimizer, scaler, cfg: Config,
                 class_names: list[str], state: _State, rng_states: list[dict[str, Any]], meta: dict[str, Any],
                 is_best: bool) -> None:
    """best.pt and the deploy weights (when best), then last.pt, then the metrics line."""
    checkpoint = {
        "epoch": state.epoch,
        "epochs": cfg.train.epochs,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_states,
        "config": cfg.to_dict(),
        "class_names": class_names,
        "dims": _dims_dict(model.dims),
        "history": state.history,
        "best": state.best,
        "finished": state.epoch >= cfg.train.epochs,
        **meta,
    }
    if is_best:
        save_checkpoint(run_dir / BEST_NAME, checkpoint)
        save_deploy(model, class_names, cfg, run_dir, training={
            "epoch": state.epoch, "selected_by": SELECTION_METRIC if state.best else "latest epoch",
            SELECTION_METRIC: state.best.get(SELECTION_METRIC) if state.best else None,
            "eval_split": meta["eval_split"]})
    save_checkpoint(run_dir / LAST_NAME, checkpoint)
    _append_metrics(run_dir, state.history[-1])


def _dims_dict(dims: ECMDims) -> dict[str, Any]:
    return dataclasses.asdict(dims)


def _append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS_NAME, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _rewrite_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """On resume: the metrics file holds exactly the checkpoint's epochs (drops a line written after it)."""
    atomic_write_text(run_dir / METRICS_NAME, "".join(json.dumps(r) + "\n" for r in history))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _restore(path: Path, model: ECM, optimizer: torch.optim.Optimizer, scaler, class_names: list[str],
             ctx: ddp.DistContext) -> _State:
    checkpoint = load_checkpoint(path)
    if list(checkpoint["class_names"]) != class_names:
        raise CheckpointError(f"{path} was trained on other classes than the data now given "
                              f"({len(checkpoint['class_names'])} vs {len(class_names)}); resume with the run's "
                              f"original data ({checkpoint.get('data_dir')})")
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path} does not fit the configured model ({str(exc).splitlines()[0]}); resume "
                              "without --set overrides of data or model sizes") from None
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    rng = checkpoint["rng"]
    if len(rng) == ctx.world_size:
        restore_rng_states(rng[ctx.rank])
    else:
        logger.warning("%s was written by %d process(es), now %d: dropout streams are reseeded, so the result "
                       "will differ from an uninterrupted run", path, len(rng), ctx.world_size)
        restore_rng_states(rng[0])
        torch.manual_seed(int(checkpoint["epoch"]) + RANK_SEED_STRIDE * (ctx.rank + 1))
    return _State(int(checkpoint["epoch"]), list(checkpoint["history"]), checkpoint.get("best"))


def _summary(run_dir: Path, state: _State, eval_split: str | None, already_finished: bool = False) -> TrainSummary:
    best = None
    if state.best is not None and state.best.get(SELECTION_METRIC) is not None:
        best = next((r for r in state.history if r["epoch"] == state.best["epoch"]), None)
    files = {name: run_dir / name for name in (CONFIG_NAME, METRICS_NAME, LAST_NAME, BEST_NAME, "model.safetensors",
                                               "model.json") if (run_dir / name).exists()}
    return TrainSummary(run_dir, state.epoch, state.history, eval_split, best, already_finished, files)


def _log_epoch(record: dict[str, Any], epochs: int) -> None:
    loss = record["loss"]
    text = (f"epoch {record['epoch']}/{epochs}  loss {loss['total']:.4f} (pre {loss['pre']:.3f} post "
            f"{loss['post']:.3f} c2c {loss['c2c']:.3f} a2c {loss['a2c']:.3f})  {record['seconds']:.1f} s")
    if SELECTION_METRIC in record:
        at5 = record["map"].get("0.5")
        text += f"  mAP avg {100 * record[SELECTION_METRIC]:.2f}" + (f" @0.5 {100 * at5:.2f}" if at5 is not None else "")
    logger.info(text)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------- run resolution


def resolve_run_dir(project: str | Path, name: str | None, ctx: ddp.DistContext) -> Path:
    """A new ``<project>/train/<name>`` (auto-incremented), chosen by rank 0 and shared with the others."""
    chosen = str(next_run_dir(project, "train", name)) if ctx.is_main else None
    return Path(ddp.broadcast_object(chosen, ctx))


def find_resume_dir(resume: str | Path, project: str | Path) -> Path:
    """``--resume`` accepts a run folder, its ``last.pt``, or a run name under ``<project>/train``."""
    path = Path(resume)
    if path.is_file() and path.name == LAST_NAME:
        return path.parent
    for candidate in (path, Path(project) / "train" / str(resume)):
        if (candidate / LAST_NAME).is_file():
            return candidate
    raise CheckpointError(f"cannot resume {resume}: no {LAST_NAME} in {path} or {Path(project) / 'train' / str(resume)}; "
                          "pass the run folder printed by `ecm-edge train`")


def config_for_resume(run_dir: Path, overrides: tuple[str, ...] | list[str] = ()) -> tuple[Config, str | None]:
    """The config a run was trained with (from ``last.pt``), plus ``overrides``; and its data folder."""
    checkpoint = load_checkpoint(run_dir / LAST_NAME)
    cfg = config_from_stored(checkpoint["config"], source=str(run_dir / LAST_NAME))
    apply_overrides(cfg, overrides)
    return cfg, checkpoint.get("data_dir")
