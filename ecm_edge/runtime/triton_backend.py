"""The ``ecm_stream`` model's logic inside Triton's Python backend: one ``StreamEngine`` for every sequence.

Triton's sequence batcher (oldest strategy) hands :meth:`SequenceServer.handle` the requests of up to
``max_batch_size`` sequences at once, each with its correlation id and START / END flags. A sequence is a stream
of the engine (``add_stream`` on START, ``push`` of its snippets, ``remove_stream`` on END), so one execute call is
one ``step()``: all sequences' new columns go through one head call. The events of each sequence go back in its
response as a JSON array. A sequence silent for the model's ``max_sequence_idle_microseconds`` is removed, as
Triton frees its slot (its last events have no request left to ride on and are logged only).

A request that cannot be served (features with NaN, a sequence this server does not hold) gets an error
response of its own; the other sequences of the batch and the server go on. Wrong shapes, dtypes and missing
correlation ids never reach here: Triton refuses them against config.pbtxt.

The head runs inside the model (``parameters { key: "head" }``: ``numpy`` on the deploy weights, ``onnxruntime``
on the graphs) or, with ``bls``, in another model of the server: each tick's windows of every sequence go to the
model named by ``head_model`` (``ecm_head_trt`` or ``ecm_head_onnx``, the streaming graph on TensorRT or ONNX
Runtime, where the server has those backends) as one business-logic-scripting request, so the head runs on the
GPU with the server's own batching while the sequences' state stays here. The offline graph, which scores only a
stream's first and last columns, stays in the model on ONNX Runtime.

``model.py`` in the repository is three lines: ``TritonPythonModel = backend_model(pb_utils)``; the logic is here
so that it is tested without a server and so that the server's Python imports the installed ecm-edge.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecm_edge.config import config_from_stored
from ecm_edge.deploy_format import META_NAME
from ecm_edge.errors import EcmEdgeError
from ecm_edge.runtime.engine import StreamEngine
from ecm_edge.triton_repository import (
    END_CONTROL,
    END_TIMES_INPUT,
    EVENTS_OUTPUT,
    FEATURES_INPUT,
    START_CONTROL,
    START_TIMES_INPUT,
    verify_model,
)

log = logging.getLogger("ecm_edge")

# the head parameter -> its artifacts in the version folder (bls: the offline graph runs here, the streaming graph
# in the model named by the head_model parameter)
HEAD_FOLDERS = {"numpy": "deploy", "onnxruntime": "graphs", "bls": "graphs"}
SERVER_OVERRIDES = ("stream.stats_every_s=0",)  # stats are the client's and Triton's metrics, not events here
WARMUP_SNIPPETS = 8  # snippets of a throw-away stream at load: the kernels compile before the first request
WARMUP_SOURCE = "ecm-edge warm-up"


@dataclass
class SequenceRequest:
    """One request of a sequence: its snippets and controls."""

    sequence: str
    features: np.ndarray  # [n, D]
    start: bool = False
    end: bool = False
    start_times: list[float] | None = None  # each snippet's start and end on the source's clock, as the client
    end_times: list[float] | None = None  # computed them (None: the sequence's clock continues)


class SequenceServer:
    """Sequences by correlation id, each a stream of one engine (module doc)."""

    def __init__(self, engine: StreamEngine, idle_s: float):
        self.engine, self.idle_s = engine, idle_s
        self._seen: dict[str, float] = {}  # sequence -> monotonic time of its last request

    @classmethod
    def from_version_folder(cls, folder: Path, head: str, idle_s: float,
                            head_model: Any = None) -> SequenceServer:
        """The engine on the repository's copy of the deploy weights (``numpy``) or of the graphs
        (``onnxruntime``, ``bls``), with the thresholds the model was trained with. ``head_model`` (``bls``): the
        engine that runs the streaming graph in another model (:class:`BlsHeadModel`)."""
        if head not in HEAD_FOLDERS:
            raise EcmEdgeError(f"ecm_stream's parameter head is {head!r}; choose one of {', '.join(HEAD_FOLDERS)} "
                               "in its config.pbtxt")
        if (head == "bls") != (head_model is not None):
            raise EcmEdgeError("ecm_stream runs its streaming graph in another model exactly when head is bls")
        meta = json.loads((folder / HEAD_FOLDERS["numpy"] / META_NAME).read_text())
        config = config_from_stored(meta["config"], source=str(folder / META_NAME))
        engine = StreamEngine.from_artifacts(folder / HEAD_FOLDERS[head], "numpy" if head == "numpy" else
                                             "onnxruntime", config=config, overrides=SERVER_OVERRIDES,
                                             precision="fp32" if head != "numpy" else "auto", process_stats=False)
        _warm_up(engine)  # before the head model takes over: a model cannot call another while it loads
        if head_model is not None:
            engine.head.runner.run_streaming_graph_in(head_model)
        return cls(engine, idle_s)

    def handle(self, requests: Sequence[SequenceRequest]) -> list[list[dict[str, Any]] | EcmEdgeError]:
        """Serve one batch: per request, its sequence's events (dicts) or the error that refused it."""
        results: dict[int, list[dict[str, Any]] | EcmEdgeError] = {}
        started: list[int] = []
        for i, request in enumerate(requests):
            try:
                results[i] = self._begin(request)
                started.append(i)
            except EcmEdgeError as exc:
                results[i] = exc
        by_source = self._step(requests, started, results)
        for i in started:
            request = requests[i]
            events = results[i]
            if isinstance(events, list):
                events += by_source.get(request.sequence, [])
                if request.end:
                    events += self._end(request.sequence)
        self._sweep_idle()
        return [results[i] for i in range(len(requests))]

    def close(self) -> None:
        self.engine.close()

    # -- the steps -------------------------------------------------------------------------------------------
    def _begin(self, request: SequenceRequest) -> list[dict[str, Any]]:
        """START (re)creates the sequence's stream; any request marks it seen. Returns events of an earlier
        stream of the same id that a START ended."""
        sequence, events = request.sequence, []
        if request.start:
            if sequence in self.engine.sources:
                events = _dicts(self.engine.remove_stream(sequence))
            self.engine.add_stream(sequence)
        elif sequence not in self.engine.sources:
            raise EcmEdgeError(f"sequence {sequence!r} is not held by this server (it ended, was idle longer than "
                               f"{self.idle_s:g} s, or the server restarted); start it again with the START flag")
        self._seen[sequence] = time.monotonic()
        return events

    def _step(self, requests: Sequence[SequenceRequest], started: list[int],
              results: dict[int, Any]) -> dict[str, list[dict[str, Any]]]:
        """Push every started request's snippets (in rounds no longer than a source's queue bound) and tick."""
        limit = max(1, self.engine.queue_limit)
        by_source: dict[str, list[dict[str, Any]]] = {}
        offset = 0
        while True:
            pushed = False
            for i in started:
                request = requests[i]
                if isinstance(results[i], EcmEdgeError) or offset >= len(request.features):
                    continue
                try:
                    self._push(request, offset, limit)
                    pushed = True
                except EcmEdgeError as exc:
                    results[i] = exc
            if not pushed:
                return by_source
            for event in self.engine.step():
                by_source.setdefault(str(event.source), []).append(event.to_dict())
            offset += limit

    def _push(self, request: SequenceRequest, offset: int, limit: int) -> None:
        chunk = request.features[offset:offset + limit]
        starts, ends = (None if times is None else times[offset:offset + limit]
                        for times in (request.start_times, request.end_times))
        self.engine.push(request.sequence, chunk, start_times=starts, end_times=ends)

    def _end(self, sequence: str) -> list[dict[str, Any]]:
        self._seen.pop(sequence, None)
        return _dicts(self.engine.remove_stream(sequence)) if sequence in self.engine.sources else []

    def _sweep_idle(self) -> None:
        """Sequences silent longer than the idle timeout lose their stream (Triton frees their slot too)."""
        now = time.monotonic()
        for sequence, seen in list(self._seen.items()):
            if now - seen > self.idle_s:
                lost = self._end(sequence)
                log.warning("ecm_stream: sequence %r idle for more than %g s; ended (%d last events not sent)",
                            sequence, self.idle_s, len(lost))


def _warm_up(engine: StreamEngine) -> None:
    """Run a throw-away stream through the engine while Triton loads the model, so the post-processing kernels
    compile (numba, seconds) then and not inside the first client's request."""
    engine.add_stream(WARMUP_SOURCE)
    engine.push(WARMUP_SOURCE, np.zeros((WARMUP_SNIPPETS, engine.feature_dim), np.float32))
    engine.step()
    engine.remove_stream(WARMUP_SOURCE)


class BlsHeadModel:
    """The streaming graph as another model of the same Triton server, called by business-logic scripting: the
    inference-engine interface of ``ecm_edge.runtime.engines`` (``infer``: features ``[B, W, D]`` → ``cas`` and
    ``weights`` ``[B, W − 4, C]``), one request per at most ``max_batch`` windows."""

    def __init__(self, pb_utils: Any, model: str, input_name: str, output_names: Sequence[str], max_batch: int):
        self.pb_utils, self.model, self.input_name = pb_utils, model, input_name
        self.output_names, self.max_batch = list(output_names), max_batch
        self.manifest = None  # no TensorRT profile here: the model's max_batch_size caps a request

    def infer(self, features: np.ndarray) -> dict[str, np.ndarray]:
        parts = [self._request(features[first:first + self.max_batch])
                 for first in range(0, len(features), self.max_batch)]
        return {name: np.concatenate([part[name] for part in parts]) for name in self.output_names}

    def close(self) -> None:
        """Nothing to release: the head model belongs to the server."""

    def _request(self, features: np.ndarray) -> dict[str, np.ndarray]:
        pb = self.pb_utils
        request = pb.InferenceRequest(model_name=self.model, requested_output_names=self.output_names,
                                      inputs=[pb.Tensor(self.input_name, np.ascontiguousarray(features, np.float32))])
        response = request.exec()
        if response.has_error():
            raise EcmEdgeError(f"ecm_stream: the head model {self.model!r} failed: {response.error().message()}")
        return {name: pb.get_output_tensor_by_name(response, name).as_numpy() for name in self.output_names}


def _dicts(events: Sequence[Any]) -> list[dict[str, Any]]:
    return [event.to_dict() for event in events]


# -- the Triton side -------------------------------------------------------------------------------------------
def _parameter(model_config: dict[str, Any], key: str, default: str) -> str:
    return str(model_config.get("parameters", {}).get(key, {}).get("string_value", default))


def _bls_head(pb_utils: Any, model_config: dict[str, Any], version: Path) -> BlsHeadModel:
    """The head model ``ecm_stream``'s config names, with the tensor names of the streaming graph's manifest."""
    from ecm_edge.manifest import read_manifest

    manifest = read_manifest(next((version / HEAD_FOLDERS["bls"]).glob("*.stream.onnx")))
    return BlsHeadModel(pb_utils, _parameter(model_config, "head_model", ""), manifest.inputs[0].name,
                        [spec.name for spec in manifest.outputs], int(_parameter(model_config, "head_max_batch", "1")))


def _optional(pb_utils: Any, request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _flag(pb_utils: Any, request: Any, name: str) -> bool:
    value = _optional(pb_utils, request, name)
    return bool(value is not None and value.size and value.reshape(-1)[0])


def parse_request(pb_utils: Any, request: Any) -> SequenceRequest:
    """A Triton request of ``ecm_stream`` (batch axis of 1 dropped) as a :class:`SequenceRequest`."""
    features = _optional(pb_utils, request, FEATURES_INPUT)
    start_times, end_times = (_optional(pb_utils, request, name) for name in (START_TIMES_INPUT, END_TIMES_INPUT))
    return SequenceRequest(
        str(request.correlation_id()), np.asarray(features, np.float32).reshape(-1, features.shape[-1]),
        _flag(pb_utils, request, START_CONTROL), _flag(pb_utils, request, END_CONTROL),
        *(None if times is None else [float(t) for t in times.reshape(-1)] for times in (start_times, end_times)))


def backend_model(pb_utils: Any) -> type:
    """The ``TritonPythonModel`` class for ``pb_utils`` (the module only Triton's Python backend provides)."""

    class TritonPythonModel:
        """Triton's entry points: initialize (check the stamp, load the engine), execute, finalize."""

        def initialize(self, args: dict[str, str]) -> None:
            config = json.loads(args["model_config"])
            folder = Path(args["model_repository"])
            verify_model(folder)  # another ecm-edge or changed files: the model does not load, saying why
            idle_us = config.get("sequence_batching", {}).get("max_sequence_idle_microseconds", 0)
            version = folder / str(args["model_version"])
            head = _parameter(config, "head", "numpy")
            self.server = SequenceServer.from_version_folder(version, head, float(idle_us) / 1e6 or float("inf"),
                                                             _bls_head(pb_utils, config, version) if head == "bls"
                                                             else None)

        def execute(self, requests: list[Any]) -> list[Any]:
            parsed = [parse_request(pb_utils, request) for request in requests]
            return [self._response(result) for result in self.server.handle(parsed)]

        def finalize(self) -> None:
            self.server.close()

        @staticmethod
        def _response(result: list[dict[str, Any]] | EcmEdgeError) -> Any:
            if isinstance(result, EcmEdgeError):
                return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(result)))
            payload = np.array([[json.dumps(result, separators=(",", ":")).encode()]], dtype=object)
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(EVENTS_OUTPUT, payload)])

    return TritonPythonModel
