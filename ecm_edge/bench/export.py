"""``ecm-edge bench export``: the exported head per precision against the torch model, on this machine.

A paper-size head (D = H = 2048, C = 20, T_fixed = 750; random weights, seeded) is exported to FP32, FP16 and INT8
ONNX (INT8 calibrated on the training split of a synthetic dataset with D = 2048) and run through ONNX Runtime
(CPU; CUDA where onnxruntime-gpu is installed). Per precision: file size, max abs error against torch on the
synthetic test features (``cas`` and ``video_scores``), median milliseconds of one ``[1, T, D]`` call for
T ∈ {16, 64, 256, 750}, and the speed-up against the torch model measured in the same run. ``--quick`` uses
D = H = 512 and T ∈ {16, 64}. mAP needs trained weights: ``ecm-edge export --validate DIR`` reports it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ecm_edge.bench import BenchSection
from ecm_edge.errors import MissingDependencyError

log = logging.getLogger("ecm_edge")

FULL = {"dim": 2048, "lengths": (16, 64, 256, 750), "repeat": 5, "videos": 60}
QUICK = {"dim": 512, "lengths": (16, 64), "repeat": 2, "videos": 30}
NUM_CLASSES, T_FIXED, SEED = 20, 750, 0


def run(quick: bool = False) -> BenchSection:
    try:
        import torch  # noqa: F401 - the export needs it
    except ImportError:
        raise MissingDependencyError("torch", "benchmarking the export", "pip install 'ecm-edge[export]'") from None
    settings = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="ecm-bench-export-") as tmp:
        return _run(Path(tmp), settings)


def _run(root: Path, settings: dict) -> BenchSection:
    import torch

    from ecm_edge.config import load_config
    from ecm_edge.data.dataset import VideoDataset
    from ecm_edge.data.synth import SynthSettings, generate_dataset
    from ecm_edge.export import validate as val
    from ecm_edge.export.pipeline import ExportRequest, run_export
    from ecm_edge.runtime.engines import load_engine
    from ecm_edge.train.deploy import save_deploy
    from ecm_edge.train.model import ECM, ECMDims

    dim = settings["dim"]
    cfg = load_config("thumos14", [f"data.feature_dim={dim}", f"model.hidden_dim={dim}", "export.calib_videos=200"])
    generate_dataset(root / "data", SynthSettings.from_preset("small", seed=SEED, num_classes=NUM_CLASSES,
                                                             feature_dim=dim, num_videos=settings["videos"]))
    test = VideoDataset.open(root / "data", cfg, "test")
    cfg.model.num_classes = len(test.class_names)  # a class without any video is left out of the dataset
    torch.manual_seed(SEED)
    model = ECM(ECMDims.from_config(cfg)).eval()
    save_deploy(model, test.class_names, cfg, root / "run")
    outputs = {}
    for precision in ("fp16", "int8"):
        result = run_export(ExportRequest(root / "run", root / "out", precision=precision,
                                          calib_data=root / "data", engine=False))
        outputs.update({p: result.artifact("offline", p) for p in ("fp32", precision)})
    clips = val.offline_clips(test, T_FIXED)
    torch_engine = load_engine(root / "run", engine="torch", graph="offline")
    reference = val.run_offline(torch_engine, clips)
    rows: list[list[object]] = []
    torch_ms = val.measure_latency(torch_engine, dim, settings["lengths"], settings["repeat"])
    rows.append(_row("torch (baseline)", "torch", None, {"cas": 0.0, "video_scores": 0.0}, torch_ms, torch_ms))
    for precision in ("fp32", "fp16", "int8"):
        engine = load_engine(outputs[precision])
        errors = {r.output: r.max_abs for r in val.compare_outputs(reference, val.run_offline(engine, clips),
                                                                   "offline", precision, engine.name)}
        latency = val.measure_latency(engine, dim, settings["lengths"], settings["repeat"])
        provider = engine.providers[0].replace("ExecutionProvider", "")
        rows.append(_row(precision, f"onnxruntime {provider}", outputs[precision].stat().st_size, errors, latency,
                         torch_ms))
        engine.close()
    lengths = settings["lengths"]
    # "backend" (the engine column) stays the word of the README's published table
    headers = (["model", "backend", "size MB", "cas max abs err", "video_scores max abs err"]
               + [f"ms T={t}" for t in lengths] + [f"speed-up vs torch T={lengths[-1]}"])
    notes = [f"head D=H={dim}, C={cfg.model.num_classes}, k={cfg.topk}; {model.num_parameters() / 1e6:.1f} M parameters; "
             f"random weights (seed {SEED}); batch 1; median of {settings['repeat']} calls after 3 warm-up calls; the CPU may be shared, so compare ratios",
             f"errors on {len(clips)} synthetic test videos resampled to T={T_FIXED}; INT8 calibrated on the "
             "synthetic training split (percentile 99.99)",
             "mAP per precision needs trained weights: ecm-edge export --checkpoint RUN --validate DATA"]
    return BenchSection("Export: ONNX Runtime per precision vs the torch head", headers, rows, notes)


def _row(name: str, engine: str, size: int | None, errors: dict[str, float], latency: dict[int, float],
         baseline: dict[int, float]) -> list[object]:
    longest = max(latency)
    return ([name, engine, "—" if size is None else round(size / 1e6, 1), float(errors["cas"]),
             float(errors["video_scores"])] + [round(latency[t], 2) for t in sorted(latency)]
            + [f"{baseline[longest] / latency[longest]:.2f}×"])
