"""Benchmarks behind ``ecm-edge bench``: each part measures a component against a baseline in the same run.

A part is a function ``run(quick: bool) -> BenchSection`` in a module of this package, registered in
:data:`PARTS`. Results are ratios against a baseline measured in the same process, never absolute targets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# part name -> (module, function). Add a part by adding a line here.
PARTS: dict[str, tuple[str, str]] = {
    "train": ("ecm_edge.bench.train", "run"),
    "export": ("ecm_edge.bench.export", "run"),
    "eval": ("ecm_edge.bench.eval", "run"),
    "postprocess": ("ecm_edge.bench.postprocess", "run"),
    "stream": ("ecm_edge.bench.stream", "run"),
    "streams": ("ecm_edge.bench.streams", "run"),
    "triton": ("ecm_edge.bench.triton", "run"),
    "extractors": ("ecm_edge.bench.extractors", "run"),
    "score_sources": ("ecm_edge.bench.score_sources", "run"),
}

# a trained run folder and its dataset, for the parts that measure a trained model instead of training one
CHECKPOINT_ENV, CHECKPOINT_DATA_ENV = "ECM_EDGE_BENCH_CHECKPOINT", "ECM_EDGE_BENCH_DATA"


@dataclass
class BenchSection:
    title: str
    headers: list[str]
    rows: list[list[object]]
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.headers) + " |",
                 "|" + "|".join("---" for _ in self.headers) + "|"]
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}" if abs(value) < 10 else f"{value:,.1f}"
        return f"{value:.3g}"
    return str(value)


def describe_dataset(data_dir: str | Path) -> str:
    """How a report names a dataset: its ``ecm-edge synth`` preset when it has one, never a machine path."""
    import json

    try:
        settings = json.loads((Path(data_dir) / "synth.json").read_text())["settings"]
        return f"the synthetic {settings['preset']} preset (seed {settings['seed']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "the given dataset"


def trained_run_from_env() -> tuple[Path, Path] | None:
    """(run folder, dataset) named by :data:`CHECKPOINT_ENV` and :data:`CHECKPOINT_DATA_ENV`, when both are set."""
    checkpoint, data = os.environ.get(CHECKPOINT_ENV), os.environ.get(CHECKPOINT_DATA_ENV)
    return (Path(checkpoint), Path(data)) if checkpoint and data else None
