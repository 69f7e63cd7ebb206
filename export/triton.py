"""``ecm-edge export --triton DIR``: a Triton Inference Server model repository beside the ONNX / TensorRT artifacts.

Layout (names in :mod:`ecm_edge.triton_repository`; docs/design.md §6)::

    DIR/
      ecm_stream/                 Python backend, sequence batcher: one sequence per camera
        config.pbtxt              FEATURES [-1, D] FP32 (+ optional START_TIMES, END_TIMES FP64) → EVENTS (BYTES)
        ecm-edge.json             the stamp: ecm-edge version, weights sha256, every file's sha256
        1/model.py                imports ecm_edge from the server's Python (ecm_edge.runtime.triton_backend)
        1/deploy/                 the deploy weights (model.safetensors + model.json, operating points): head numpy
        1/graphs/                 the FP32 offline and streaming graphs with manifests: head onnxruntime
      ecm_head_onnx/              the streaming graph [B, W, D] → cas, weights [B, W-4, C] (onnxruntime_onnx)
      ecm_head_trt/               its TensorRT engine (tensorrt_plan), where one was built

The head platform models serve the graph to other pipelines (DeepStream's ``nvinferserver``) and run in NVIDIA's
Triton container; ``ecm_stream`` keeps one ``StreamEngine`` for all of its sequences and runs the head itself
(``parameters { key: "head" }``: ``numpy`` or ``onnxruntime``) or calls a head model by business-logic scripting
(``bls``: ``ecm_head_trt`` where an engine was built, else ``ecm_head_onnx``; parameter ``head_model``). Dims
and names come from the manifests.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ecm_edge.deploy_format import META_NAME, WEIGHTS_NAME
from ecm_edge.manifest import Manifest, read_manifest
from ecm_edge.operating_points import operating_points_path
from ecm_edge.triton_repository import (
    CONFIG_NAME,
    END_CONTROL,
    END_TIMES_INPUT,
    EVENTS_OUTPUT,
    FEATURES_INPUT,
    MODEL_VERSION,
    ONNX_MODEL,
    READY_CONTROL,
    START_CONTROL,
    START_TIMES_INPUT,
    STREAM_MODEL,
    TRT_MODEL,
    stamp_model,
)

STREAM_HEADS = ("numpy", "onnxruntime", "bls")  # what runs the head for ecm_stream (bls: a head model, called)
HEAD_MAX_BATCH = 64  # windows per call of the head platform models (dynamic batching gathers them)
HEAD_QUEUE_DELAY_US = 500  # how long dynamic batching may hold a window to fill a batch
STREAM_MAX_BATCH = 64  # requests (one per sequence) handed to one execute() of ecm_stream
MAX_SEQUENCES = 1024  # sequences ecm_stream holds at once (oldest strategy candidates)
# how long the sequence batcher may hold a step to gather other cameras' steps into one execute(): every camera
# sends one step per tick at about the same time, and one execute() for all of them runs the head once
STREAM_QUEUE_DELAY_US = 2000
SEQUENCE_IDLE_US = 60_000_000  # a sequence silent this long loses its slot (a camera that went away)
INSTANCES = 1  # model instances per model; ecm_stream's sequences stay with the instance that started them

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int8": "TYPE_INT8"}
MODEL_PY = '''"""Triton Python backend of ecm-edge: sequences of snippet features in, the stream's events out.

The logic lives in ecm_edge.runtime.triton_backend; the server's Python must have ecm-edge installed.
"""

import triton_python_backend_utils as pb_utils

from ecm_edge.runtime.triton_backend import backend_model

TritonPythonModel = backend_model(pb_utils)
'''


@dataclass
class TritonSources:
    """What an export hands the repository writer."""

    export_dir: Path  # the export folder with the FP32 graphs and their manifests
    weights: Path  # the deploy weights (model.safetensors; model.json beside it)
    weights_sha256: str
    stem: str = "ecm"
    engine: Path | None = None  # the streaming graph's TensorRT engine, when one was built


def write_repository(out: Path, sources: TritonSources, head: str = "numpy") -> list[Path]:
    """Write the repository into ``out`` (made; models already there are replaced); returns the model folders."""
    if head not in STREAM_HEADS:
        raise ValueError(f"head must be one of {', '.join(STREAM_HEADS)}, got {head!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stream_graph = sources.export_dir / f"{sources.stem}.stream.onnx"
    manifest = read_manifest(stream_graph)
    has_engine = sources.engine is not None and sources.engine.is_file()
    head_model = (TRT_MODEL if has_engine else ONNX_MODEL) if head == "bls" else None
    folders = [_stream_model(out, sources, manifest, head, head_model),
               _head_model(out, ONNX_MODEL, stream_graph, manifest, "onnxruntime_onnx", "model.onnx", sources)]
    if has_engine:
        folders.append(_head_model(out, TRT_MODEL, sources.engine, read_manifest(sources.engine), "tensorrt_plan",
                                   "model.plan", sources))
    return folders


def _fresh_model_folder(out: Path, name: str) -> Path:
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / MODEL_VERSION).mkdir(parents=True)
    return folder


def _stream_model(out: Path, sources: TritonSources, manifest: Manifest, head: str, head_model: str | None) -> Path:
    """``ecm_stream``: model.py, the deploy weights and the FP32 graphs, config.pbtxt, the stamp."""
    folder = _fresh_model_folder(out, STREAM_MODEL)
    version = folder / MODEL_VERSION
    (version / "model.py").write_text(MODEL_PY)
    deploy = version / "deploy"
    deploy.mkdir()
    for name in (WEIGHTS_NAME, META_NAME):
        shutil.copy2(sources.weights.parent / name, deploy / name)
    graphs = version / "graphs"
    graphs.mkdir()
    for name in (f"{sources.stem}.onnx", f"{sources.stem}.stream.onnx"):
        shutil.copy2(sources.export_dir / name, graphs / name)
        shutil.copy2(sources.export_dir / f"{name}.json", graphs / f"{name}.json")
    points = operating_points_path(sources.export_dir)
    if points.is_file():
        for target in (deploy, graphs):
            shutil.copy2(points, operating_points_path(target))
    dim = int(manifest.feature["dim"])
    (folder / CONFIG_NAME).write_text(stream_config(dim, head, manifest, head_model))
    stamp_model(folder, sources.weights_sha256, {"feature_dim": dim, "class_names": list(manifest.class_names),
                                                 "head": head})
    return folder


def _head_model(out: Path, name: str, artifact: Path, manifest: Manifest, platform: str, file_name: str,
                sources: TritonSources) -> Path:
    """A platform model of the streaming graph (ONNX Runtime or TensorRT) with its manifest beside the file."""
    folder = _fresh_model_folder(out, name)
    shutil.copy2(artifact, folder / MODEL_VERSION / file_name)
    shutil.copy2(Path(f"{artifact}.json"), folder / f"{artifact.name}.json")  # the manifest, outside the version
    (folder / CONFIG_NAME).write_text(head_config(name, platform, manifest))
    stamp_model(folder, sources.weights_sha256, {"artifact": artifact.name, "precision": manifest.precision})
    return folder


def _dims(shape: list[int | str]) -> str:
    """A manifest shape without its batch axis as Triton dims: named (dynamic) axes become -1."""
    return "[ " + ", ".join(str(d) if isinstance(d, int) else "-1" for d in shape[1:]) + " ]"


def head_config(name: str, platform: str, manifest: Manifest) -> str:
    """config.pbtxt of a head platform model: the manifest's inputs and outputs, dynamic batching, instances."""
    def tensors(specs: list) -> str:
        return ",\n".join(f'  {{ name: "{s.name}" data_type: {TRITON_TYPES[s.dtype]} dims: {_dims(s.shape)} }}'
                          for s in specs)

    kind = "KIND_GPU" if platform == "tensorrt_plan" else "KIND_AUTO"
    return (f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {HEAD_MAX_BATCH}\n'
            f"input [\n{tensors(manifest.inputs)}\n]\noutput [\n{tensors(manifest.outputs)}\n]\n"
            f"dynamic_batching {{ max_queue_delay_microseconds: {HEAD_QUEUE_DELAY_US} }}\n"
            f"instance_group [ {{ kind: {kind} count: {INSTANCES} }} ]\n")


def stream_config(feature_dim: int, head: str, manifest: Manifest, head_model: str | None = None) -> str:
    """config.pbtxt of ``ecm_stream``: the sequence batcher (oldest strategy, START / END / READY controls, the
    idle timeout), its tensors and the parameters the client and the backend read (with ``bls``: the head model
    it calls and the batch that model takes)."""
    def control(name: str, kind: str) -> str:
        return f'    {{ name: "{name}" control [ {{ kind: {kind} int32_false_true: [ 0, 1 ] }} ] }}'

    controls = ",\n".join([control(START_CONTROL, "CONTROL_SEQUENCE_START"),
                           control(END_CONTROL, "CONTROL_SEQUENCE_END"),
                           control(READY_CONTROL, "CONTROL_SEQUENCE_READY")])
    params = {"head": head, "feature_dim": str(feature_dim), "class_names": ",".join(manifest.class_names),
              "snippet_frames": str(manifest.feature.get("snippet_frames", "")),
              "fps": str(manifest.feature.get("fps", ""))}
    if head_model is not None:
        params.update(head_model=head_model, head_max_batch=str(HEAD_MAX_BATCH))
    parameters = "\n".join(f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }},' for k, v in params.items())
    return (f'name: "{STREAM_MODEL}"\nbackend: "python"\nmax_batch_size: {STREAM_MAX_BATCH}\n'
            f"input [\n"
            f'  {{ name: "{FEATURES_INPUT}" data_type: TYPE_FP32 dims: [ -1, {feature_dim} ] }},\n'
            f'  {{ name: "{START_TIMES_INPUT}" data_type: TYPE_FP64 dims: [ -1 ] optional: true }},\n'
            f'  {{ name: "{END_TIMES_INPUT}" data_type: TYPE_FP64 dims: [ -1 ] optional: true }}\n]\n'
            f'output [\n  {{ name: "{EVENTS_OUTPUT}" data_type: TYPE_STRING dims: [ 1 ] }}\n]\n'
            f"sequence_batching {{\n  max_sequence_idle_microseconds: {SEQUENCE_IDLE_US}\n"
            f"  oldest {{ max_candidate_sequences: {MAX_SEQUENCES} max_queue_delay_microseconds: {STREAM_QUEUE_DELAY_US} }}\n"
            f"  control_input [\n{controls}\n  ]\n}}\n"
            f"instance_group [ {{ kind: KIND_CPU count: {INSTANCES} }} ]\n"
            f"parameters [\n{parameters.rstrip(',')}\n]\n")
