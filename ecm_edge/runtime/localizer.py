"""``ecm_edge.Localizer``: the embedding API — frames or features in, action segments out, without torch.

::

    from ecm_edge import Localizer

    with Localizer.from_artifacts("runs/train/exp", extractor="tiny") as localizer:
        localizer.on_event(lambda event: print(event))
        for frames, timestamps in camera_batches():  # [N, H, W, 3] uint8 BGR, seconds
            localizer.push_frames(frames, timestamps)
    # leaving the block flushes: open segments are closed, scored and emitted

``from_artifacts(DIR)`` accepts both kinds of folder that ecm-edge writes:

- a **deploy folder** (``model.safetensors`` + ``model.json``, what ``ecm-edge train`` leaves in its run folder):
  run by :class:`~ecm_edge.runtime.head.ColumnHead` in numpy (``engine="numpy"``, the ``auto`` choice), one
  column of work per snippet; ``engine="torch"`` runs the same weights through torch instead;
- an **export folder** (``ecm.onnx`` + ``ecm.stream.onnx`` with their manifests, from ``ecm-edge export``): the
  exported graphs run by ONNX Runtime or TensorRT (``engine="onnxruntime"`` / ``"tensorrt"``; ``auto`` picks
  what the machine has), one 5-snippet window per snippet (:class:`~ecm_edge.runtime.head.WindowHead`), in the
  precision ``precision=`` names or, with ``auto``, the fastest one here
  (:func:`ecm_edge.runtime.engines.choose_precision`: int8 on a CPU with integer dot-product instructions when the
  folder has int8 graphs that ONNX Runtime runs as integer convolutions, else fp32; never fp16 on a CPU). The
  choice and its reason are logged and carried by every ``stats`` event (``precision``, ``precision_reason``).

Class names and the config (thresholds, horizon, the rate ``stream.columns_per_snippet`` at which snippets are
resampled for the head, ``ecm_edge.runtime.resample``) come from the folder; ``config=`` / ``overrides=`` refine
them.

Every ``push_*`` returns the events it produced and also hands them to the sinks and callbacks through a writer
thread; ``flush()`` returns once every sink has seen them. All methods are thread-safe (one lock around the
state); a failing callback is logged and the stream goes on. After ``flush()`` the next push starts a new stream
whose snippet times continue after the last one.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ecm_edge.config import Config, apply_overrides, config_from_stored, load_config
from ecm_edge.deploy_format import DEPLOY_REBUILD, META_NAME, WEIGHTS_NAME, is_deploy_folder
from ecm_edge.errors import CheckpointError, ConfigError, DataError, EcmEdgeError
from ecm_edge.kernels.score_rows import missing_weights_message
from ecm_edge.manifest import read_manifest
from ecm_edge.runtime import events as ev
from ecm_edge.runtime.engines import PrecisionChoice
from ecm_edge.runtime.head import (
    ColumnHead,
    HeadWeights,
    StreamingHead,
    load_head_weights,
)
from ecm_edge.runtime.online import OnlineParams, OnlinePostProcessor
from ecm_edge.runtime.resample import AUTO, ColumnResampler, columns_per_snippet, parse_columns_per_snippet
from ecm_edge.runtime.sinks import CallbackSink, EventDispatcher, Sink
from ecm_edge.runtime.snippets import snippet_times

log = logging.getLogger("ecm_edge")

# What runs the head: numpy (deploy folders, no torch), an inference engine of ecm_edge.runtime.engines, or auto.
HEAD_ENGINES = ("auto", "numpy", "onnxruntime", "tensorrt", "torch")


class Localizer:
    """Streaming ECM: keeps the head, the causal post-processing and the event sinks of one stream."""

    def __init__(self, head: StreamingHead, class_names: Sequence[str], config: Config, *,
                 extractor: Any = None, sinks: Iterable[Sink] = (), engine: str = "custom",
                 precision: str = "fp32", precision_reason: str = ""):
        if len(class_names) != head.num_classes:
            raise ConfigError(f"{len(class_names)} class names for a head with {head.num_classes} classes")
        self.head, self.class_names, self.config, self.engine = head, list(class_names), config, engine
        self.precision, self.precision_reason = precision, precision_reason
        self.snippet_seconds = config.data.snippet_seconds
        self.resampler = ColumnResampler(columns_per_snippet(config))
        self.post = OnlinePostProcessor(OnlineParams.from_config(config, self.resampler.rate), self.class_names)
        self.dispatcher = EventDispatcher(sinks, config.stream.event_queue)
        self.stats = ev.StepStats()
        self.dropped_frames = 0  # set by whoever reads the source (the CLI does); reported in `stats`
        self._extractor_spec = extractor
        self._extractor: Any = None
        self._assembler: Any = None
        self._lock = threading.RLock()
        self._pending_times: deque[tuple[float, float]] = deque()  # columns whose CAS is not final yet
        self._last_end: float | None = None  # source time where the newest snippet ends
        self._clock = 0.0  # source time where the next feature snippet starts when no time is given
        self._frame_index = 0

    # -- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_artifacts(cls, path: str | Path, engine: str = "auto", *, config: Config | str | Path | None = None,
                       overrides: Sequence[str] = (), extractor: Any = None,
                       extractor_options: dict[str, Any] | None = None, sinks: Iterable[Sink] = (),
                       precision: str = "auto") -> Localizer:
        """Load a deploy or export folder once (see the module doc); ``engine`` is one of :data:`HEAD_ENGINES`,
        ``precision`` one of :data:`~ecm_edge.runtime.engines.PRECISION_CHOICES` (export folders; deploy weights
        run in fp32).

        ``extractor`` (needed for :meth:`push_frames`): a registry name (``tiny`` is sized to the model; ``i3d``
        takes ``extractor_options={"artifact": "i3d.onnx"}``) or an extractor object.
        """
        if engine not in HEAD_ENGINES:
            raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(HEAD_ENGINES)}")
        folder = Path(path)
        if folder.is_file():
            folder = folder.parent
        if not folder.is_dir():
            raise CheckpointError(f"artifacts folder {folder} does not exist; pass a training run folder "
                                  "(runs/train/NAME) or an export folder (runs/export/NAME)")
        head, class_names, stored_config, chosen, choice = load_head(folder, engine, precision)
        cfg = artifact_config(stored_config, config, overrides, folder)
        match_feature_dim(cfg, head, folder)
        if extractor is not None:
            extractor = make_extractor(extractor, head.feature_dim, **(extractor_options or {}))
        # the choice among an export folder's precisions is news; deploy weights always run in fp32
        log.log(logging.DEBUG if choice.kind == "weights" else logging.INFO, "localizer: %s head from %s in %s",
                chosen, folder, choice.describe())
        log.debug("localizer: %d classes, D = %d", head.num_classes, head.feature_dim)
        return cls(head, class_names, cfg, extractor=extractor, sinks=sinks, engine=chosen,
                   precision=choice.precision, precision_reason=choice.reason)

    # -- sinks ------------------------------------------------------------------------------------------------
    def on_event(self, callback: Callable[[ev.Event], Any]) -> Callable[[ev.Event], Any]:
        """Call ``callback(event)`` for every event (from the writer thread); usable as a decorator."""
        self.dispatcher.add(CallbackSink(callback))
        return callback

    def add_sink(self, sink: Sink) -> Sink:
        return self.dispatcher.add(sink)

    def emit(self, event: ev.Event) -> None:
        """Publish an event from outside the pipeline (a source's ``source_lost`` / ``source_restored``)."""
        self.dispatcher.publish([event])

    # -- input ------------------------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return self.head.feature_dim

    def push_features(self, features: np.ndarray, start_time: float | None = None,
                      end_times: Sequence[float] | None = None) -> list[ev.Event]:
        """Snippet features ``[N, D]`` (or one ``[D]``) in stream order; returns the events they completed.

        Snippet times default to consecutive snippet durations after the previous snippet; ``start_time`` sets
        the first snippet's start, ``end_times`` gives each snippet's end (then starts follow the previous end).
        """
        features = np.asarray(features, np.float32)
        if features.ndim == 1:
            features = features[None]
        with self._lock:
            starts, ends = self._feature_times(len(features), start_time, end_times)
            frames = len(features) * self.config.data.snippet_frames
            return self._process_runs(features, starts, ends, frames)

    def push_frames(self, frames: Sequence[np.ndarray] | np.ndarray, timestamps: Sequence[float]) -> list[ev.Event]:
        """Video frames (``[H, W, 3]`` uint8, BGR as OpenCV delivers them) with their source times in seconds."""
        if len(frames) != len(timestamps):
            raise DataError(f"push_frames got {len(frames)} frames but {len(timestamps)} timestamps")
        from ecm_edge.runtime.sources import Frame

        with self._lock:
            assembler, extractor = self._frame_pipeline()
            snippets = []
            for image, stamp in zip(frames, timestamps, strict=True):
                snippets += assembler.push(Frame(np.asarray(image), float(stamp), self._frame_index))
                self._frame_index += 1
            if not snippets:
                self.stats.record(0.0, 0, len(frames))
                return []
            features = np.asarray(extractor.extract(snippets), np.float32)
            return self._process_runs(features, [s.start_time for s in snippets], [s.end_time for s in snippets],
                                      len(frames))

    def flush(self) -> list[ev.Event]:
        """End the stream: close and score the open segments, emit them, wait for the sinks; start afresh."""
        with self._lock:
            if self._assembler is not None:
                self._assembler.flush(pad=False)
            events = self._end_stream()
            self.dispatcher.publish(events)
        self.dispatcher.drain()
        return events

    def _end_stream(self) -> list[ev.Event]:
        """The head's last columns and the tracker's open candidates, as events (not yet published)."""
        now = self._last_end
        cas = self.head.flush()
        times = [self._pending_times.popleft() for _ in range(len(cas))]
        events = self.post.push(cas, [t[0] for t in times], [t[1] for t in times],
                                None if now is None else [now] * len(cas), weights=self._head_weights())
        events += self.post.flush(now)
        self._pending_times.clear()
        self.resampler.reset()
        self._last_end = None
        return events

    def stats_event(self) -> ev.Event:
        """A ``stats`` event for the interval since the last one (with the head's precision and why)."""
        with self._lock:
            return self._stats_event()

    def _stats_event(self) -> ev.Event:
        event = self.stats.event(self.dropped_frames)
        event.update(precision=self.precision, precision_reason=self.precision_reason)
        return event

    def close(self) -> None:
        """Deliver what is queued, close the sinks and release the head (does not flush; leaving a ``with``
        block does both)."""
        self.dispatcher.close()
        with self._lock:
            self.head.close()

    def __enter__(self) -> Localizer:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.flush()
        finally:
            self.close()

    # -- the pipeline -----------------------------------------------------------------------------------------
    def _process_runs(self, features: np.ndarray, starts: Sequence[float], ends: Sequence[float],
                      frames: int) -> list[ev.Event]:
        """Process snippets, ending the stream at every source gap longer than ``stream.max_frame_gap_s`` (an
        outage, a stalled camera): no segment and no convolution spans an outage."""
        limit = self.config.stream.max_frame_gap_s
        cuts = [i for i in range(1, len(starts)) if starts[i] - ends[i - 1] > limit]
        events: list[ev.Event] = []
        for first, last in itertools.pairwise([0, *cuts, len(starts)]):
            if self._last_end is not None and starts[first] - self._last_end > limit:
                closed = self._end_stream()
                self.dispatcher.publish(closed)
                events += closed
            events += self._process(features[first:last], starts[first:last], ends[first:last],
                                    frames if first == 0 else 0)
        return events

    def _process(self, features: np.ndarray, starts: Sequence[float], ends: Sequence[float],
                 frames: int) -> list[ev.Event]:
        began = time.perf_counter()
        columns = self.resampler.plan(starts, ends)
        cas = self.head.push(features[columns.snippet])
        self._pending_times.extend(zip(columns.starts, columns.ends, strict=True))
        times = [self._pending_times.popleft() for _ in range(len(cas))]
        # the columns completed by this push were completed by its last columns, one each (at the start of a
        # window head, two by one column): latencies count from the ends of those columns' snippets
        m = len(cas)
        nows = columns.arrivals[len(columns) - m:] if m <= len(columns) else [ends[-1]] * m
        self._last_end = ends[-1]
        events = self.post.push(cas, [t[0] for t in times], [t[1] for t in times], nows, weights=self._head_weights())
        self.stats.record((time.perf_counter() - began) / len(features), len(features), frames)
        if self.stats.due(self.config.stream.stats_every_s):
            events.append(self._stats_event())
        self.dispatcher.publish(events)
        return events

    def _head_weights(self) -> np.ndarray | None:
        """The transition weights of the head's last columns when the score source needs them."""
        if self.post.params.score_source == "cas":
            return None
        weights = self.head.last_transition_weights()
        if weights is None:
            source, where = self.post.params.score_source, f"the {self.engine} head's artifacts"
            raise EcmEdgeError(missing_weights_message(source, where, DEPLOY_REBUILD) if self.engine == "numpy"
                               else missing_weights_message(source, where))
        return weights

    def _feature_times(self, n: int, start_time: float | None,
                       end_times: Sequence[float] | None) -> tuple[list[float], list[float]]:
        starts, ends = snippet_times(self._clock, n, self.snippet_seconds, start_time, end_times,
                                     where="push_features")
        if n:
            self._clock = ends[-1]
        return starts, ends

    def _frame_pipeline(self) -> tuple[Any, Any]:
        if self._assembler is None:
            from ecm_edge.runtime.extractors import assembler_for

            self._extractor = make_extractor(self._extractor_spec, self.head.feature_dim)
            self._assembler = assembler_for(self._extractor, self.config.data, self.config.stream)
        return self._assembler, self._extractor


def make_extractor(spec: Any, feature_dim: int, **options: Any) -> Any:
    """An extractor from a registry name (``tiny`` is sized to the model) or an extractor object, checked
    against the model's feature dimension."""
    if spec is None:
        raise ConfigError("frames need a feature extractor: pass extractor='tiny' (or 'i3d', or an extractor "
                          "object) to Localizer.from_artifacts, the one the model's training features came from")
    if isinstance(spec, str):
        from ecm_edge.runtime.extractors import create_extractor

        if spec == "tiny":
            options.setdefault("dim", feature_dim)
        spec = create_extractor(spec, **options)
    if spec.dim != feature_dim:
        raise ConfigError(f"the {getattr(spec, 'name', 'given')} extractor gives {spec.dim}-d features but the "
                          f"model expects {feature_dim}; use the extractor the model was trained with")
    return spec


# -- loading artifacts ----------------------------------------------------------------------------------------
def load_head(folder: Path, engine: str, precision: str = "auto"
              ) -> tuple[StreamingHead, list[str], dict[str, Any] | None, str, PrecisionChoice]:
    """The head for ``engine`` from a deploy or export folder: (head, class names, stored config, engine, the
    precision it runs and why)."""
    if engine == "numpy" or engine == "torch" or (engine == "auto" and is_deploy_folder(folder)):
        runner = "torch" if engine == "torch" else "numpy"
        if precision not in ("auto", "fp32"):
            raise ConfigError(f"precision {precision} needs an export folder (`ecm-edge export --precision "
                              f"{precision}`); the {runner} head runs the deploy weights of {folder} in fp32")
        choice = PrecisionChoice("fp32", "weights", f"run in float32 by the {runner} head")
    if engine == "numpy" or (engine == "auto" and is_deploy_folder(folder)):
        if not is_deploy_folder(folder):
            raise CheckpointError(f"engine numpy needs deploy weights ({WEIGHTS_NAME} + {META_NAME}) in {folder}; "
                                  "pass a training run folder or choose --engine onnxruntime for an export folder")
        weights, meta = load_head_weights(folder)
        return ColumnHead(weights), list(meta["class_names"]), meta.get("config"), "numpy", choice
    if engine == "torch":
        return (*_torch_head(folder), choice)
    return _exported_head(folder, engine, precision)


def _torch_head(folder: Path) -> tuple[StreamingHead, list[str], dict[str, Any] | None, str]:
    """The deploy weights through torch, one 5-snippet window per snippet: the torch engine's streaming head
    (``ecm_edge.export.torch_engine.torch_head``), a plugin that lives with the torch code and is found through
    the engine registry by name, so the runtime never imports training or export."""
    from ecm_edge.runtime.engines import engine_class

    return engine_class("torch").streaming_head(folder)


def _exported_head(folder: Path, engine: str, precision: str = "auto"
                   ) -> tuple[StreamingHead, list[str], dict[str, Any] | None, str, PrecisionChoice]:
    """The offline and streaming graphs of an export folder in the chosen kind and precision
    (:func:`~ecm_edge.runtime.engines.choose_precision`), verified and loaded."""
    from ecm_edge.runtime.engines import choose_precision, load_engine, select_artifact
    from ecm_edge.runtime.head import EngineRunner, WindowHead

    kind = {"onnxruntime": "onnx", "tensorrt": "engine"}.get(engine)
    choice = choose_precision(folder, precision, kind)
    offline_path = select_artifact(folder, "offline", precision=choice.precision, kind=choice.kind)
    streaming_path = select_artifact(folder, "streaming", precision=choice.precision, kind=choice.kind)
    manifest = read_manifest(offline_path)
    runner = EngineRunner(load_engine(offline_path, engine), load_engine(streaming_path, engine))
    head = WindowHead(runner, int(manifest.feature["dim"]), len(manifest.class_names))
    log.debug("exported head: %s + %s on %s", offline_path.name, streaming_path.name, runner.offline.name)
    return head, list(manifest.class_names), _exported_config(manifest, folder), runner.offline.name, choice


def _exported_config(manifest: Any, folder: Path) -> dict[str, Any] | None:
    """The config an export was made from: the deploy folder's ``model.json`` it names when still there,
    else the shipped config of that name, else None (the defaults)."""
    import json

    from ecm_edge.config import shipped_config_names

    weights = manifest.source.get("weights")
    for candidate in ([Path(weights), folder / Path(weights)] if weights else []):
        meta = (candidate if candidate.is_dir() else candidate.parent) / META_NAME
        if meta.is_file():
            with contextlib.suppress(ValueError, KeyError):
                return json.loads(meta.read_text())["config"]
    name = manifest.source.get("config")
    if name in shipped_config_names():
        log.info("%s: thresholds from the shipped config %r (the training run's model.json is not at hand)",
                 folder, name)
        return load_config(name).to_dict()
    return None


def artifact_config(stored: dict[str, Any] | None, config: Config | str | Path | None, overrides: Sequence[str],
                    folder: Path) -> Config:
    """The config a stream of ``folder``'s model runs with: ``config`` (a Config, a name or a path) if given, else
    the one the artifacts recorded (``stored``), then ``overrides``; an ``auto`` rate stays the trained one."""
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)  # overrides and the recorded rate must not change the caller's object
    elif config is not None:
        cfg = load_config(config)
    elif stored is not None:
        cfg = config_from_stored(stored, source=str(folder / META_NAME))
    else:
        cfg = load_config(None)
    apply_overrides(cfg, overrides)
    _keep_training_rate(cfg, stored)
    return cfg


def _keep_training_rate(cfg: Config, stored: dict[str, Any] | None) -> None:
    """``stream.columns_per_snippet: auto`` means the rate the network was trained at: the one the artifacts
    record, also when another config (``--config thumos14``) supplies the rest."""
    if parse_columns_per_snippet(cfg.stream.columns_per_snippet) is not None or stored is None:
        return
    recorded = stored.get("stream", {}).get("columns_per_snippet", AUTO)
    if parse_columns_per_snippet(recorded) is not None:
        cfg.stream.columns_per_snippet = str(recorded)


def match_feature_dim(cfg: Config, head: StreamingHead | HeadWeights, folder: Path) -> None:
    """The model's feature dimension wins over the config's (with a warning when they differ)."""
    if cfg.data.feature_dim != head.feature_dim:
        log.warning("config says data.feature_dim = %d but the model in %s takes %d-d features; using the model's",
                    cfg.data.feature_dim, folder, head.feature_dim)
        cfg.data.feature_dim = head.feature_dim
