"""``ecm-edge bench export``: the exported head per precision against FP32 and the torch model, on this machine.

For each head size (D = H = 2048, the paper's, and D = H = 256; C = 20, T_fixed = 750; random weights, seeded) a
model is exported to FP32, FP16 and INT8 ONNX (INT8 calibrated on the training split of a synthetic dataset of
that D) and run through ONNX Runtime (CPU; CUDA where onnxruntime-gpu is installed). Per precision: file size,
max abs error against torch on the synthetic test features (``cas`` and ``video_scores``), median milliseconds of
one offline call ``[1, 750, D]`` and of one streaming call ``[B, 5, D]`` (B windows, as a many-streams engine
batches them) for B ∈ {1, 8, 32, 128}; then the INT8 / FP32 speed-up per column and the speed-up against torch
at T = 750, all measured in the same run. ``--quick``: D = H = 256 only, B ∈ {1, 8}, fewer repeats. mAP needs
trained weights: ``ecm-edge export --validate DIR`` reports it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ecm_edge.bench import BenchSection
from ecm_edge.errors import MissingDependencyError

log = logging.getLogger("ecm_edge")

FULL = {"dims": (2048, 256), "batches": (1, 8, 32, 128), "repeat": 7, "videos": 60}
QUICK = {"dims": (256,), "batches": (1, 8), "repeat": 3, "videos": 30}
NUM_CLASSES, T_FIXED, SEED = 20, 750, 0
PRECISIONS = ("fp32", "fp16", "int8")


def run(quick: bool = False) -> BenchSection:
    try:
        import torch  # noqa: F401 - the export needs it
    except ImportError:
        raise MissingDependencyError("torch", "benchmarking the export", "pip install 'ecm-edge[export]'") from None
    settings = QUICK if quick else FULL
    rows: list[list[object]] = []
    notes: list[str] = []
    for dim in settings["dims"]:
        with tempfile.TemporaryDirectory(prefix="ecm-bench-export-") as tmp:
            rows += _run(Path(tmp), dim, settings, notes)
    batches = settings["batches"]
    headers = (["head", "model", "engine", "size MB", "cas max abs err", "video_scores max abs err",
                f"offline ms T={T_FIXED}"] + [f"stream ms B={b}" for b in batches]
               + [f"speed-up vs torch T={T_FIXED}"])
    notes += [f"C={NUM_CLASSES}; random weights (seed {SEED}); offline: one [1, {T_FIXED}, D] "
              "call; stream: one [B, 5, D] call (B windows of the streaming head, one new column each); median of "
              f"{settings['repeat']} calls after 3 warm-up calls; the CPU may be shared, so compare ratios",
              f"errors on the synthetic test videos resampled to T={T_FIXED}; INT8 calibrated on the synthetic "
              "training split (percentile 99.99 for convolution inputs, the error after the LeakyReLU for outputs)",
              "'int8 / fp32' rows: FP32 milliseconds divided by INT8 milliseconds, per column",
              "mAP per precision needs trained weights: ecm-edge export --checkpoint RUN --validate DATA"]
    return BenchSection("Export: ONNX Runtime per precision vs FP32 and the torch head", headers, rows, notes)


def _run(root: Path, dim: int, settings: dict, notes: list[str]) -> list[list[object]]:
    import torch

    from ecm_edge.config import load_config
    from ecm_edge.data.dataset import VideoDataset
    from ecm_edge.data.synth import SynthSettings, generate_dataset
    from ecm_edge.export import validate as val
    from ecm_edge.export.pipeline import ExportRequest, run_export
    from ecm_edge.manifest import read_manifest
    from ecm_edge.runtime.engines import load_engine
    from ecm_edge.train.deploy import save_deploy
    from ecm_edge.train.model import ECM, ECMDims

    cfg = load_config("thumos14", [f"data.feature_dim={dim}", f"model.hidden_dim={dim}", "export.calib_videos=200"])
    generate_dataset(root / "data", SynthSettings.from_preset("small", seed=SEED, num_classes=NUM_CLASSES,
                                                             feature_dim=dim, num_videos=settings["videos"]))
    test = VideoDataset.open(root / "data", cfg, "test")
    cfg.model.num_classes = len(test.class_names)  # a class without any video is left out of the dataset
    torch.manual_seed(SEED)
    model = ECM(ECMDims.from_config(cfg)).eval()
    save_deploy(model, test.class_names, cfg, root / "run")
    offline, streaming = {}, {}
    for precision in ("fp16", "int8"):
        result = run_export(ExportRequest(root / "run", root / "out", precision=precision,
                                          calib_data=root / "data", engine=False))
        for p in ("fp32", precision):
            offline[p], streaming[p] = result.artifact("offline", p), result.artifact("streaming", p)
    clips = val.offline_clips(test, T_FIXED)
    head = f"D=H={dim}"
    batches, repeat = settings["batches"], settings["repeat"]

    def timings(offline_engine, streaming_engine) -> list[float]:
        ms = val.measure_latency(offline_engine, dim, (T_FIXED,), repeat)[T_FIXED]
        return [ms, *val.measure_stream_latency(streaming_engine, dim, batches, repeat).values()]

    torch_offline = load_engine(root / "run", engine="torch", graph="offline")
    reference = val.run_offline(torch_offline, clips)
    torch_ms = timings(torch_offline, load_engine(root / "run", engine="torch", graph="streaming"))
    rows: list[list[object]] = [[head, "torch (baseline)", "torch", "—", 0.0, 0.0, *_ms(torch_ms), "1.00×"]]
    measured: dict[str, list[float]] = {}
    for precision in PRECISIONS:
        engine, stream_engine = load_engine(offline[precision]), load_engine(streaming[precision])
        errors = {r.output: r.max_abs for r in val.compare_outputs(reference, val.run_offline(engine, clips),
                                                                   "offline", precision, engine.name)}
        measured[precision] = timings(engine, stream_engine)
        provider = engine.providers[0].replace("ExecutionProvider", "")
        rows.append([head, precision, f"onnxruntime {provider}", round(offline[precision].stat().st_size / 1e6, 1),
                     float(errors["cas"]), float(errors["video_scores"]), *_ms(measured[precision]),
                     f"{torch_ms[0] / measured[precision][0]:.2f}×"])
        engine.close()
        stream_engine.close()
    rows.append([head, "int8 / fp32", "speed-up", "", "", "",
                 *[f"{f / i:.2f}×" for f, i in zip(measured["fp32"], measured["int8"], strict=True)], ""])
    entry = read_manifest(offline["int8"]).quantization or {}
    notes.append(f"{head}, {model.num_parameters() / 1e6:.1f} M parameters, k={cfg.topk}: ONNX Runtime "
                 f"{entry.get('onnxruntime')} runs {entry.get('onnxruntime_integer_ops')} of the "
                 f"{entry.get('quantized_convs')} int8 convolutions as integer operators (optimized graph: "
                 f"{_ops(entry.get('onnxruntime_ops', {}))})")
    return rows


def _ms(values: list[float]) -> list[float]:
    return [round(v, 2) for v in values]


def _ops(counts: dict[str, int]) -> str:
    return ", ".join(f"{op} ×{n}" if n > 1 else op for op, n in counts.items())
