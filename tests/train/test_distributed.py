"""DistributedDataParallel on CPU: two gloo processes stay in sync, write one checkpoint, and (without dropout,
with batches that split evenly) reach the weights of single-process training."""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from train_helpers import make_dataset, single_thread, subprocess_env, tiny_config, tiny_overrides  # noqa: E402

from ecm_edge.train.trainer import read_metrics, train  # noqa: E402

# 12 training videos in batches of 4: every batch splits 2 + 2, so averaged gradients equal the batch's
SETTINGS = ("train.epochs=2", "data.val_fraction=0", "model.dropout=0.0")


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available in this torch build")
def test_two_gloo_processes_stay_in_sync_and_match_one_process(tmp_path):
    data_dir = make_dataset(tmp_path / "data")
    run_dir = tmp_path / "runs" / "train" / "ddp"
    command = [sys.executable, "-m", "ecm_edge", "train", "--nproc", "2", "--config", "small", "--data",
               str(data_dir), "--project", str(tmp_path / "runs"), "--name", "ddp", "--no-progress",
               *tiny_overrides(*SETTINGS)]
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "launching 2 processes" in done.stderr
    assert f"run written to {run_dir}" in done.stdout

    files = sorted(p.name for p in run_dir.iterdir())
    assert files == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl", "model.json", "model.safetensors",
                     "operating_points.json"]  # the alert operating points the command chose after training
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["world_size"] == 2 and r["ranks_in_sync"] is True for r in records)
    assert len(torch.load(run_dir / "last.pt", weights_only=True)["rng"]) == 2  # one generator state per process

    with single_thread():
        single = train(tiny_config(*SETTINGS), data_dir, tmp_path / "single", progress=False)
    ddp_weights = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    one_weights = torch.load(single.run_dir / "last.pt", weights_only=True)["model"]
    for name, tensor in one_weights.items():
        torch.testing.assert_close(ddp_weights[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
