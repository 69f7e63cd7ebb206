"""Which row to threshold: the CAS, the transition weights W, or both fused (``post.score_source``).

One checkpoint, one set of raw predictions on the synthetic THUMOS14-like test split (``ecm-edge synth --preset
small``, ``--config small``), post-processed three times; mAP at IoU 0.1 … 0.7 and the average for each source,
and for each source that beats ``cas`` on average, by how much and at which IoUs. A trained checkpoint and its data
folder can be reused through ``ECM_EDGE_BENCH_CHECKPOINT`` and ``ECM_EDGE_BENCH_DATA``; otherwise the part
synthesizes the data and trains (``--config small``; quick: fewer videos and epochs). Needs torch.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path

from ecm_edge.bench import CHECKPOINT_ENV, BenchSection, describe_dataset, trained_run_from_env
from ecm_edge.kernels.score_rows import SCORE_SOURCES

log = logging.getLogger("ecm_edge")

QUICK = {"num_videos": 60, "epochs": 10}  # full: the preset's videos and the config's epochs
SEED = 0


def run(quick: bool) -> BenchSection:
    given = trained_run_from_env()
    if given is not None:
        return _section(*given, f"given by {CHECKPOINT_ENV}")
    with tempfile.TemporaryDirectory(prefix="ecm-edge-bench-sources-") as tmp:
        data_dir, run_dir, how = _train_checkpoint(Path(tmp), quick)
        return _section(run_dir, data_dir, how)


def _train_checkpoint(folder: Path, quick: bool) -> tuple[Path, Path, str]:
    from ecm_edge.config import load_config
    from ecm_edge.data.synth import SynthSettings, generate_dataset
    from ecm_edge.train.trainer import train

    settings = SynthSettings.from_preset("small", seed=SEED, num_videos=QUICK["num_videos"] if quick else None)
    data_dir = folder / "data"
    generate_dataset(data_dir, settings)
    overrides = [f"train.epochs={QUICK['epochs']}"] if quick else []
    cfg = load_config("small", overrides)
    run_dir = folder / "run"
    train(cfg, data_dir, run_dir, progress=False)
    return data_dir, run_dir, f"trained here: --config small, {cfg.train.epochs} epochs"


def _section(checkpoint: Path, data_dir: Path, how: str) -> BenchSection:
    from ecm_edge.evaluation import evaluate_detections
    from ecm_edge.rawpred import detections_from_raw
    from ecm_edge.train.inference import predict_dataset

    raws: list = []
    _, ground_truth, cfg = predict_dataset(checkpoint, data_dir, "test", raw_out=raws)
    raw = raws[0]
    results = {}
    for source in SCORE_SOURCES:
        source_cfg = copy.deepcopy(cfg)
        source_cfg.post.score_source = source
        detections = detections_from_raw(raw, source_cfg)
        results[source] = evaluate_detections(detections, ground_truth, cfg.eval.iou_thresholds)
    ious = list(results["cas"].iou)
    rows = [[source] + [round(100 * float(m), 2) for m in r.map] + [round(100 * float(r.average), 2)]
            for source, r in results.items()]
    notes = [f"{raw.num_videos} test videos of {describe_dataset(data_dir)}, one checkpoint ({how}; config "
             f"{cfg.name}), raw predictions computed once; mAP in %; video scores (class filter, γ) are softmax(score_pre) for every source."]
    notes += [_comparison(source, results[source], results["cas"]) for source in SCORE_SOURCES if source != "cas"]
    return BenchSection("Score sources: mAP (%) of CAS vs transition weights vs fused",
                        ["source"] + [f"{t:.1f}" for t in ious] + ["avg"], rows, notes)


def _comparison(source: str, result, baseline) -> str:
    delta = 100 * (float(result.average) - float(baseline.average))
    wins = [f"{t:.1f}" for t, a, b in zip(result.iou, result.map, baseline.map, strict=True) if a > b]
    verdict = "beats" if delta > 0 else "does not beat"
    where = ("at every IoU" if len(wins) == len(result.iou) else
             f"better at IoU {', '.join(wins)} only" if wins else "better at no IoU")
    return f"{source} {verdict} cas on average ({delta:+.2f} points); {where}"
