"""Stream vs offline: the streamed test features of a trained model give an mAP@0.5 within 10 % of offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RELATIVE_MARGIN = 0.10


def ecm_edge(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "ecm_edge", *args], capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, dataset): ECM_EDGE_BENCH_CHECKPOINT / ECM_EDGE_BENCH_DATA, or the small preset trained here."""
    pytest.importorskip("torch")
    if os.environ.get("ECM_EDGE_BENCH_CHECKPOINT") and os.environ.get("ECM_EDGE_BENCH_DATA"):
        return Path(os.environ["ECM_EDGE_BENCH_CHECKPOINT"]), Path(os.environ["ECM_EDGE_BENCH_DATA"])
    root = tmp_path_factory.mktemp("parity")
    data, runs = root / "data", root / "runs"
    ecm_edge("synth", "--preset", "small", "-o", str(data))
    ecm_edge("train", "--config", "small", "--data", str(data), "--project", str(runs), "--name", "parity",
             "--no-progress")
    return runs / "train" / "parity", data


@pytest.mark.slow
def test_streamed_map_is_within_ten_percent_of_offline(trained):
    """Slow: synthesizes the small dataset and trains the small config on the CPU (minutes) unless a trained
    run is given through ECM_EDGE_BENCH_CHECKPOINT and ECM_EDGE_BENCH_DATA."""
    from ecm_edge.bench.stream import measure_parity

    run, data = trained
    result = measure_parity(run, data)
    print(f"mAP@0.5 offline {result['offline']:.4f}, streamed {result['stream']:.4f} "
          f"({result['relative']:.1%} relative; {result['offline_segments']} / {result['stream_segments']} "
          f"segments on {result['videos']} videos)")
    assert result["offline"] > 0.05, "the model did not learn; parity would be meaningless"
    assert result["relative"] <= RELATIVE_MARGIN
