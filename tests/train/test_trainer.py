"""The trainer: determinism, run folder, checkpoints (weights_only, atomic), resume after kill -9."""

from __future__ import annotations

import itertools
import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from train_helpers import (  # noqa: E402
    NUM_CLASSES,
    TINY,
    make_dataset,
    single_thread,
    tiny_config,
    tiny_overrides,
    train_process,
)

from ecm_edge.config import load_config  # noqa: E402
from ecm_edge.data.dataset import VideoDataset  # noqa: E402
from ecm_edge.errors import CheckpointError, ConfigError  # noqa: E402
from ecm_edge.train import checkpoint as ckpt  # noqa: E402
from ecm_edge.train.deploy import load_deploy  # noqa: E402
from ecm_edge.train.distributed import DistContext  # noqa: E402
from ecm_edge.train.trainer import (  # noqa: E402
    epoch_batches,
    learning_rate,
    normalization_power,
    read_metrics,
    train,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    with single_thread():
        summary = train(tiny_config(), data_dir, run_dir, progress=False)
    return summary


def loss_sequence(run_dir: Path) -> list[dict]:
    return [r["loss"] for r in read_metrics(run_dir)]


def test_run_folder_contents(finished_run, data_dir):
    run_dir = finished_run.run_dir
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "last.pt", "best.pt", "model.safetensors", "model.json"} <= names
    assert not [n for n in names if n.startswith(".")], "temporary files left behind"
    # the resolved config: the stream rate `auto` becomes the median t_fixed / length of the training videos
    train_set = VideoDataset.open(data_dir, tiny_config(), "train").subset_ids(
        torch.load(run_dir / "last.pt", weights_only=True)["train_ids"])
    rate = np.median([tiny_config().data.t_fixed / train_set.num_snippets(v) for v in train_set.video_ids])
    expected = tiny_config(f"stream.columns_per_snippet={rate:.4g}")
    assert load_config(run_dir / "config.yaml").to_dict() | {"name": None} == expected.to_dict() | {"name": None}
    assert json.loads((run_dir / "model.json").read_text())["config"]["stream"]["columns_per_snippet"] == f"{rate:.4g}"

    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        assert set(r["loss"]) == {"total", "pre", "post", "c2c", "a2c"}
        assert r["lr"] == pytest.approx(tiny_config().train.lr) and r["seconds"] >= 0
        assert r["eval_split"] == "val"
        assert set(r["map"]) == {"0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7"}
        assert r["map_avg"] == pytest.approx(np.mean(list(r["map"].values())))
    best = max(records, key=lambda r: (r["map_avg"], -r["epoch"]))
    assert finished_run.best["epoch"] == best["epoch"]
    assert finished_run.last["epoch"] == 3

    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["class_names"] == VideoDataset.open(data_dir, tiny_config(), "train").class_names
    assert len(meta["class_names"]) == NUM_CLASSES
    assert meta["feature"]["dim"] == 32 and meta["dims"]["hidden_dim"] == 16
    assert meta["training"]["epoch"] == best["epoch"] and meta["training"]["selected_by"] == "map_avg"


def test_checkpoints_load_with_weights_only(finished_run):
    run_dir = finished_run.run_dir
    last = torch.load(run_dir / "last.pt", weights_only=True)
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert last["epoch"] == 3 and last["finished"] is True
    assert best["epoch"] == finished_run.best["epoch"]
    for key in ("model", "optimizer", "rng", "config", "class_names", "history", "best", "dims"):
        assert key in last, key
    assert set(last["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    deployed = load_deploy(run_dir)
    for name, tensor in deployed.model.state_dict().items():
        assert torch.equal(tensor, best["model"][name]), name


def test_same_seed_same_losses_and_other_seed_differs(data_dir, tmp_path):
    extra = ("train.epochs=2", "data.val_fraction=0")
    with single_thread():
        train(tiny_config(*extra), data_dir, tmp_path / "a", progress=False)
        train(tiny_config(*extra), data_dir, tmp_path / "b", progress=False)
        train(tiny_config(*extra, "train.seed=17"), data_dir, tmp_path / "c", progress=False)
    assert loss_sequence(tmp_path / "a") == loss_sequence(tmp_path / "b")
    assert loss_sequence(tmp_path / "a") != loss_sequence(tmp_path / "c")
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_kill_9_reaches_the_uninterrupted_weights(data_dir, tmp_path):
    """A real process is killed with SIGKILL mid-run; resuming it ends with the same weights as a clean run."""
    epochs = 8
    settings = (f"train.epochs={epochs}", "train.eval_every=3", "post.kernels=numpy")
    victim_dir = tmp_path / "victim"
    victim = train_process("--config", "small", "--data", str(data_dir), "--no-progress", "--run-dir",
                           str(victim_dir), *tiny_overrides(*settings))
    deadline = time.monotonic() + 240
    while victim.poll() is None and time.monotonic() < deadline:
        if len(read_metrics(victim_dir)) >= 2:
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, victim.stdout.read()
    killed_at = torch.load(victim_dir / "last.pt", weights_only=True)["epoch"]
    assert 2 <= killed_at < epochs

    resumed = train_process("--resume", str(victim_dir), "--no-progress")
    with single_thread():  # the same single thread as the subprocesses (train_helpers.subprocess_env)
        clean = train(tiny_config(*settings), data_dir, tmp_path / "clean", progress=False)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert f"epoch {killed_at + 1}/{epochs}" in output and f"epoch {killed_at}/{epochs}" not in output

    final = torch.load(victim_dir / "last.pt", weights_only=True)
    reference = torch.load(clean.run_dir / "last.pt", weights_only=True)
    assert final["epoch"] == reference["epoch"] == epochs
    for name in reference["model"]:
        assert torch.equal(final["model"][name], reference["model"][name]), name
    assert loss_sequence(victim_dir) == loss_sequence(clean.run_dir)
    assert [r["epoch"] for r in read_metrics(victim_dir)] == list(range(1, epochs + 1))


def test_cli_reads_the_run_folder_by_the_trainer_names():
    from ecm_edge.cli import train as cli_train
    from ecm_edge.train import trainer

    assert (cli_train.METRICS_NAME, cli_train.SELECTION_METRIC) == (trainer.METRICS_NAME, trainer.SELECTION_METRIC)


def test_resuming_a_finished_run_says_so(finished_run, capsys):
    from ecm_edge.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--resume", str(finished_run.run_dir), "--no-progress"])
    assert exit_info.value.code == 0
    assert "already finished all 3 epochs" in capsys.readouterr().out


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"epoch": 1, "weights": torch.ones(3)})

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")  # what a crash mid-write leaves
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path, {"epoch": 2, "weights": torch.zeros(3)})
    assert ckpt.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"epoch": 1, "weights": torch.ones(3)})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        ckpt.load_checkpoint(path)
    torch.save({"not": "ours"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an ecm-edge training checkpoint"):
        ckpt.load_checkpoint(tmp_path / "other.pt")


def test_epoch_batches_cover_every_video_once_and_split_across_processes():
    single = epoch_batches(10, 4, seed=3, epoch=1)
    assert sorted(i for b in single for i in b) == list(range(10)) and [len(b) for b in single] == [4, 4, 2]
    assert epoch_batches(10, 4, seed=3, epoch=1) == single
    assert epoch_batches(10, 4, seed=3, epoch=2) != single
    ranks = [epoch_batches(10, 4, seed=3, epoch=1, ctx=DistContext(r, 2, r)) for r in range(2)]
    for i, batch in enumerate(single):
        assert sorted(ranks[0][i] + ranks[1][i]) == sorted(batch)
    tiny = [epoch_batches(3, 2, seed=0, epoch=1, ctx=DistContext(r, 2, r)) for r in range(2)]
    assert all(len(b) == 1 for rank in tiny for b in rank)  # a short last batch is topped up for every rank


def test_learning_rate_decays_after_the_decay_epoch():
    cfg = load_config("activitynet13")
    assert learning_rate(cfg, 26) == pytest.approx(2e-4)
    assert learning_rate(cfg, 27) == pytest.approx(2e-5)
    assert learning_rate(load_config("thumos14"), 150) == pytest.approx(2e-4)


def test_cosine_schedule_with_warmup():
    cfg = load_config("thumos14", ["train.lr_schedule=cosine", "train.lr_warmup_epochs=4", "train.epochs=40",
                                   "train.lr=1e-3", "train.lr_min_factor=0.01"])
    rates = [learning_rate(cfg, epoch) for epoch in range(1, 41)]
    assert rates[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])  # linear warm-up to lr
    assert rates[-1] == pytest.approx(1e-5)  # lr · lr_min_factor at the last epoch
    assert all(a > b for a, b in itertools.pairwise(rates[3:]))  # then decreasing
    plain = load_config("thumos14", ["train.lr_schedule=cosine", "train.epochs=10"])
    assert learning_rate(plain, 1) == pytest.approx(2e-4)  # no warm-up: full rate at the first epoch


def test_normalized_warmup_fades_to_the_paper_sums():
    cfg = load_config("thumos14", ["train.normalized_warmup_epochs=4"])
    assert [normalization_power(cfg, e) for e in (1, 2, 3, 4, 5, 100)] == pytest.approx([1, 0.75, 0.5, 0.25, 0, 0])
    assert normalization_power(load_config("thumos14"), 1) == 0  # the paper's sums
    assert normalization_power(load_config("thumos14_lite"), 100) == 1  # normalized throughout


def test_thumos14_fast_trains_from_the_cli_and_records_its_fade(data_dir, finished_run, tmp_path):
    from ecm_edge.cli.main import main

    overrides = tiny_overrides("train.epochs=4", "train.normalized_warmup_epochs=2", "train.lr_warmup_epochs=1")
    with single_thread(), pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", "thumos14_fast", "--data", str(data_dir), "--project", str(tmp_path),
              "--name", "fast", "--no-progress", "--no-calibrate", *overrides])
    assert exit_info.value.code == 0
    history = read_metrics(tmp_path / "train" / "fast")
    assert [r["normalize_power"] for r in history] == pytest.approx([1, 0.5, 0, 0])
    assert history[0]["lr"] == pytest.approx(1e-3)  # one warm-up epoch: the full rate at once
    assert history[-1]["lr"] == pytest.approx(2e-4)  # cosine down to the paper's rate
    assert all(np.isfinite(list(r["loss"].values())).all() for r in history)
    assert "normalize_power" not in read_metrics(finished_run.run_dir)[0]  # recorded only while it fades


def test_patience_stops_the_run_and_keeps_the_best_epoch(data_dir, tmp_path):
    with single_thread():
        summary = train(tiny_config("train.epochs=40", "train.patience=2"), data_dir, tmp_path / "run",
                        progress=False)
    history = summary.history
    best = summary.best["epoch"]
    assert len(history) < 40 and history[-1]["epoch"] == best + 2  # two evaluations after the best, then stop
    assert all(r["map_avg"] <= summary.best["map_avg"] for r in history)
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["epoch"] == best
    with single_thread():  # resuming a run that ran out of patience does nothing
        again = train(tiny_config("train.epochs=40", "train.patience=2"), data_dir, tmp_path / "run", resume=True,
                      progress=False)
    assert again.already_finished and len(again.history) == len(history)


def test_gradient_clipping_changes_the_update(data_dir, tmp_path):
    with single_thread():
        plain = train(tiny_config("train.epochs=1", "train.eval_every=0"), data_dir, tmp_path / "plain",
                      progress=False)
        clipped = train(tiny_config("train.epochs=1", "train.eval_every=0", "train.grad_clip=1e-3"), data_dir,
                        tmp_path / "clipped", progress=False)
    a, b = (torch.load(run.run_dir / "last.pt", weights_only=True)["model"] for run in (plain, clipped))
    assert all(torch.isfinite(v).all() for v in b.values())
    assert any(not torch.allclose(a[k], b[k]) for k in a)


def test_amp_and_compile_are_refused_on_cpu(data_dir, tmp_path):
    assert tiny_config("train.amp=off").train.amp == "off"  # not YAML's boolean
    with pytest.raises(ConfigError, match=r"train\.amp=bf16 needs --device cuda"):
        train(tiny_config("train.amp=bf16"), data_dir, tmp_path / "amp", progress=False)
    with pytest.raises(ConfigError, match=r"train\.compile=true needs --device cuda"):
        train(tiny_config("train.compile=true"), data_dir, tmp_path / "compile", progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is absent")
def test_cuda_device_without_cuda_is_a_clear_error(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU"):
        train(tiny_config(), data_dir, tmp_path / "cuda", device="cuda", progress=False)


def test_class_count_mismatch_is_a_config_error(data_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.num_classes"):
        train(tiny_config("model.num_classes=7"), data_dir, tmp_path / "classes", progress=False)


@pytest.mark.gpu
@pytest.mark.parametrize(("amp", "compiled"), [("off", False), ("bf16", False), ("fp16", False), ("bf16", True)])
def test_cuda_training_with_amp_and_compile(data_dir, tmp_path, amp, compiled):
    """Needs a CUDA GPU: mixed precision and torch.compile train, evaluate and write CPU-loadable checkpoints."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    # the numpy post-processing reference: this test is about training; the kernels have their own tests
    cfg = tiny_config("train.epochs=2", f"train.amp={amp}", f"train.compile={str(compiled).lower()}",
                      "post.kernels=numpy")
    summary = train(cfg, data_dir, tmp_path / "gpu", device="cuda", progress=False)
    assert summary.epochs == 2
    assert all(np.isfinite(list(r["loss"].values())).all() for r in summary.history)
    assert "map_avg" in summary.last
    state = torch.load(tmp_path / "gpu" / "last.pt", weights_only=True, map_location="cpu")
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in state["model"].values())
    assert load_deploy(tmp_path / "gpu").model.dims.feature_dim == 32


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["off", "fp16"])
def test_thumos14_fast_trains_on_cuda(data_dir, tmp_path, amp):
    """Needs a CUDA GPU: the fast recipe's fade, schedule and clipping (after unscaling, with fp16) on the device."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    cfg = load_config("thumos14_fast", [*TINY, "train.epochs=3", "train.normalized_warmup_epochs=2",
                                        f"train.amp={amp}", "post.kernels=numpy"])
    summary = train(cfg, data_dir, tmp_path / "fast", device="cuda", progress=False)
    assert [r["normalize_power"] for r in summary.history] == pytest.approx([1, 0.5, 0])
    assert all(np.isfinite(list(r["loss"].values())).all() for r in summary.history)
    assert summary.history[-1]["lr"] == pytest.approx(2e-4)
