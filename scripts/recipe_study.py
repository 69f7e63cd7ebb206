"""Compare training recipes on several synthetic THUMOS14-like sets and seeds, resumably.

Each run is one (set, seed, recipe): the set is synthesized once (``ecm-edge synth --preset thumos14`` with its
difficulty and seed, the instance layout of the real annotations with ``--timeline``), the recipe trained with
``ecm-edge train`` at ``--hidden`` (validation mAP every epoch), and the best epoch scored on the test split with
``ecm-edge eval``. One JSON line per finished run is appended to ``--results``; runs already there are skipped, so
the study can be run piece by piece (``--max-runs``) and grows across invocations.

    python scripts/recipe_study.py --work study --results docs/recipe_study.jsonl \\
        --timeline annotations/thumos14 --max-runs 4

A line: set, seed, recipe, epochs run, the first epoch whose validation mAP@0.5 is above zero, the per-epoch
validation curve (mAP@0.5 and average), and the test mAP@0.5 and average mAP of the best epoch (in %).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The synthetic sets: name -> (difficulty, synth seed). They differ in difficulty and in their random draw.
SETS = {"d05": (0.5, 101), "d07": (0.7, 202), "d09": (0.9, 303)}
SEEDS = (16, 17, 18)  # training seeds (train.seed)
# The recipes: name -> (shipped config, overrides). "paper" is the published recipe (150 epochs); the others are
# what is measured against it.
RECIPES: dict[str, tuple[str, list[str]]] = {
    "paper": ("thumos14", []),
    "lite": ("thumos14_lite", []),
    "normfade": ("thumos14", ["train.epochs=40", "train.lr=1e-3", "train.normalized_warmup_epochs=10",
                              "train.patience=10"]),
    "normfade_cos": ("thumos14", ["train.epochs=40", "train.lr=1e-3", "train.normalized_warmup_epochs=10",
                                  "train.lr_schedule=cosine", "train.lr_warmup_epochs=2", "train.patience=10"]),
    "normfade_clip": ("thumos14", ["train.epochs=40", "train.lr=1e-3", "train.normalized_warmup_epochs=10",
                                   "train.lr_schedule=cosine", "train.lr_warmup_epochs=2", "train.grad_clip=5",
                                   "train.patience=10"]),
    "normfade20_clip": ("thumos14", ["train.epochs=40", "train.lr=1e-3", "train.normalized_warmup_epochs=20",
                                     "train.lr_schedule=cosine", "train.lr_warmup_epochs=2", "train.grad_clip=5",
                                     "train.patience=10"]),
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        print(report(args.results))
        return 0
    done = finished_runs(args.results)
    todo = [(s, seed, r) for r in args.recipes for s in args.sets for seed in args.seeds
            if (s, seed, r) not in done]
    print(f"{len(done)} runs recorded in {args.results}, {len(todo)} to go", file=sys.stderr)
    for count, (set_name, seed, recipe) in enumerate(todo[:args.max_runs or None], start=1):
        started = time.monotonic()
        line = run_one(args, set_name, seed, recipe)
        with open(args.results, "a") as out:
            out.write(json.dumps(line) + "\n")
        print(f"[{count}] {set_name} seed {seed} {recipe}: {line['epochs']} epochs, val mAP@0.5 > 0 from epoch "
              f"{line['first_epoch_above_zero']}, test mAP@0.5 {line['test_map50']:.2f} avg {line['test_avg']:.2f} "
              f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the data sets and the runs")
    parser.add_argument("--results", type=Path, required=True, help="JSON lines file the runs are appended to")
    parser.add_argument("--timeline", type=Path, default=None, help="real THUMOS14 annotations (synth --timeline)")
    parser.add_argument("--hidden", type=int, default=256, help="model.hidden_dim of every recipe")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--max-runs", type=int, default=0, help="stop after this many new runs (0: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--report", action="store_true", help="print the recorded runs as a markdown table, run none")
    parser.add_argument("--preset", default="thumos14", choices=["thumos14", "small"],
                        help="synth preset of the sets (small: a quick check of the script, not a measurement)")
    parser.add_argument("--extra", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides after every recipe's (e.g. train.epochs=2 for a quick check)")
    return parser.parse_args(argv)


def report(results: Path) -> str:
    """Per set and recipe: runs, epochs, first epoch with validation mAP@0.5 above zero, test mAP@0.5 and average
    (mean ± sd over the seeds)."""
    lines = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    groups: dict[tuple[str, str], list[dict]] = {}
    for line in lines:
        groups.setdefault((line["set"], line["recipe"]), []).append(line)

    def spread(values: list[float]) -> str:
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 \
            else f"{values[0]:.2f}"

    rows = ["| set | recipe | runs | epochs | val mAP@0.5 > 0 from epoch | test mAP@0.5 | test avg mAP |",
            "|---|---|---|---|---|---|---|"]
    for (set_name, recipe), runs in sorted(groups.items()):
        firsts = [r["first_epoch_above_zero"] for r in runs]
        rows.append(f"| {set_name} | {recipe} | {len(runs)} | {', '.join(str(r['epochs']) for r in runs)} | "
                    f"{', '.join('never' if f is None else str(f) for f in firsts)} | "
                    f"{spread([r['test_map50'] for r in runs])} | {spread([r['test_avg'] for r in runs])} |")
    return "\n".join(rows)


def finished_runs(results: Path) -> set[tuple[str, int, str]]:
    if not results.is_file():
        return set()
    lines = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return {(line["set"], int(line["seed"]), line["recipe"]) for line in lines}


def run_one(args: argparse.Namespace, set_name: str, seed: int, recipe: str) -> dict:
    data = ensure_set(args.work / "data" / set_name, *SETS[set_name], args.timeline, args.preset)
    config, overrides = RECIPES[recipe]
    name = f"{set_name}-s{seed}-{recipe}"
    settings = [*overrides, f"model.hidden_dim={args.hidden}", f"train.seed={seed}", "train.eval_every=1",
                *args.extra]
    run = args.work / "runs" / "train" / name
    if run.exists():  # an interrupted run: it starts over (its line was never written)
        shutil.rmtree(run)
    ecm_edge("train", "--config", config, "--data", str(data), "--project", str(args.work / "runs"), "--name", name,
             "--no-progress", "--no-calibrate", "--device", args.device,
             *[item for s in settings for item in ("--set", s)])
    curve = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    test = json.loads(ecm_edge("eval", "--checkpoint", str(run), "--data", str(data), "--split", "test", "--json"))
    map50 = test["map"][test["iou"].index(0.5)]
    above = next((r["epoch"] for r in curve if r.get("map", {}).get("0.5", 0) > 0), None)
    return {"set": set_name, "seed": seed, "recipe": recipe, "config": config, "overrides": settings,
            "epochs": len(curve), "first_epoch_above_zero": above,
            "val_map50": [round(100 * r.get("map", {}).get("0.5", 0), 2) for r in curve],
            "val_avg": [round(100 * r.get("map_avg", 0) or 0, 2) for r in curve],
            "test_map50": round(100 * map50, 2), "test_avg": round(100 * test["average"], 2),
            "seconds": round(sum(r.get("seconds_total", 0) for r in curve), 1)}


def ensure_set(folder: Path, difficulty: float, seed: int, timeline: Path | None, preset: str) -> Path:
    if not (folder / "synth.json").is_file():
        extra = ["--timeline", str(timeline)] if timeline else []
        ecm_edge("synth", "--preset", preset, "-o", str(folder), "--seed", str(seed), "--difficulty",
                 str(difficulty), "--force", *extra)
    return folder


def ecm_edge(*args: str) -> str:
    """Run the CLI as a user would; its stdout (stderr passes through)."""
    done = subprocess.run([sys.executable, "-m", "ecm_edge", *args], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ecm-edge {' '.join(args)} failed with exit code {done.returncode}")
    return done.stdout


if __name__ == "__main__":
    sys.exit(main())
