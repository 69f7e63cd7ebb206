"""``ecm_edge.Localizer``: the embedding API — frames or features in, action segments out, without torch.

::

    from ecm_edge import Localizer

    with Localizer.from_artifacts("runs/train/exp", extractor="tiny") as localizer:
        localizer.on_event(lambda event: print(event))
        for frames, timestamps in camera_batches():  # [N, H, W, 3] uint8 BGR, seconds
            localizer.push_frames(frames, timestamps)
    # leaving the block flushes: open segments are closed, scored and emitted

A Localizer is a :class:`~ecm_edge.runtime.engine.StreamEngine` with one stream (its ``source`` id, carried by
every event): one streaming code path for one camera and for hundreds.

``from_artifacts(DIR)`` accepts both kinds of folder that ecm-edge writes (``ecm_edge.runtime.artifacts``):

- a **deploy folder** (``model.safetensors`` + ``model.json``, what ``ecm-edge train`` leaves in its run folder):
  run by the numpy :class:`~ecm_edge.runtime.head.BatchedColumnHead` (``engine="numpy"``, the ``auto`` choice), one
  column of work per snippet; ``engine="torch"`` runs the same weights through torch instead;
- an **export folder** (``ecm.onnx`` + ``ecm.stream.onnx`` with their manifests, from ``ecm-edge export``): the
  exported graphs run by ONNX Runtime or TensorRT (``engine="onnxruntime"`` / ``"tensorrt"``; ``auto`` picks
  what the machine has), one 5-snippet window per snippet (:class:`~ecm_edge.runtime.head.BatchedWindowHead`), in the
  precision ``precision=`` names or, with ``auto``, the fastest one here
  (:func:`ecm_edge.runtime.engines.choose_precision`: int8 on a CPU with integer dot-product instructions when the
  folder has int8 graphs that ONNX Runtime runs as integer convolutions, else fp32; never fp16 on a CPU). The
  choice and its reason are logged and carried by every ``stats`` event (``precision``, ``precision_reason``).

Class names and the config (thresholds, horizon, the rate ``stream.columns_per_snippet`` at which snippets are
resampled for the head, ``ecm_edge.runtime.resample``) come from the folder; ``config=`` / ``overrides=`` refine
them.

Every ``push_*`` returns the events it produced and also hands them to the sinks and callbacks through a writer
thread; ``flush()`` returns once every sink has seen them. All methods are thread-safe (the engine's locks); a
failing callback is logged and the stream goes on. After ``flush()`` the next push starts a new stream whose
snippet times continue after the last one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ecm_edge.config import Config
from ecm_edge.runtime import events as ev
from ecm_edge.runtime.artifacts import HEAD_ENGINES, make_extractor
from ecm_edge.runtime.engine import StreamEngine
from ecm_edge.runtime.head import SlotHead
from ecm_edge.runtime.sinks import Sink

__all__ = ["DEFAULT_SOURCE", "HEAD_ENGINES", "Localizer", "make_extractor"]

DEFAULT_SOURCE = "stream"  # the source id of a Localizer's events when the caller names none


class Localizer:
    """Streaming ECM for one stream: a :class:`StreamEngine` with one slot and a synchronous API."""

    def __init__(self, head: SlotHead, class_names: Sequence[str], config: Config, *,
                 extractor: Any = None, sinks: Iterable[Sink] = (), engine: str = "custom",
                 precision: str = "fp32", precision_reason: str = "", source: str = DEFAULT_SOURCE):
        self._engine = StreamEngine(head, class_names, config, extractor=extractor, sinks=sinks, engine=engine,
                                    precision=precision, precision_reason=precision_reason, process_stats=False)
        self.source = source
        self._engine.add_stream(source)

    @classmethod
    def from_artifacts(cls, path: str | Path, engine: str = "auto", *, config: Config | str | Path | None = None,
                       overrides: Sequence[str] = (), extractor: Any = None,
                       extractor_options: dict[str, Any] | None = None, sinks: Iterable[Sink] = (),
                       precision: str = "auto", source: str = DEFAULT_SOURCE) -> Localizer:
        """Load a deploy or export folder once (see the module doc); ``engine`` is one of :data:`HEAD_ENGINES`,
        ``precision`` one of :data:`~ecm_edge.runtime.engines.PRECISION_CHOICES` (export folders; deploy weights
        run in fp32).

        ``extractor`` (needed for :meth:`push_frames`): a registry name (``tiny`` is sized to the model; ``i3d``
        takes ``extractor_options={"artifact": "i3d.onnx"}``) or an extractor object.
        """
        localizer = cls.__new__(cls)
        localizer._engine = StreamEngine.from_artifacts(
            path, engine, config=config, overrides=overrides, extractor=extractor,
            extractor_options=extractor_options, sinks=sinks, precision=precision, process_stats=False)
        localizer.source = source
        localizer._engine.add_stream(source)
        return localizer

    # -- what it runs -----------------------------------------------------------------------------------------
    @property
    def stream_engine(self) -> StreamEngine:
        """The one-stream engine underneath."""
        return self._engine

    @property
    def config(self) -> Config:
        return self._engine.config

    @property
    def class_names(self) -> list[str]:
        return self._engine.class_names

    @property
    def engine(self) -> str:
        """What runs the head (numpy, onnxruntime, tensorrt, torch)."""
        return self._engine.engine

    @property
    def precision(self) -> str:
        return self._engine.precision

    @property
    def precision_reason(self) -> str:
        return self._engine.precision_reason

    @property
    def head(self) -> SlotHead:
        return self._engine.head

    @property
    def feature_dim(self) -> int:
        return self._engine.feature_dim

    @property
    def snippet_seconds(self) -> float:
        return self._engine.snippet_seconds

    @property
    def rate(self) -> float:
        """Head columns per source snippet (``stream.columns_per_snippet`` resolved)."""
        return self._engine.rate

    @property
    def stats(self) -> ev.StepStats:
        """The stream's step latencies and counters (``stats.snippets``: processed so far)."""
        return self._engine.step_stats(self.source)

    @property
    def dropped_frames(self) -> int:
        """Stale frames the source's reader dropped (set by whoever reads the source); reported in ``stats``."""
        return self._engine.stats(self.source).dropped_frames

    @dropped_frames.setter
    def dropped_frames(self, count: int) -> None:
        self._engine.set_dropped_frames(self.source, count)

    # -- sinks ------------------------------------------------------------------------------------------------
    @property
    def dispatcher(self) -> Any:
        return self._engine.dispatcher

    def on_event(self, callback: Callable[[ev.Event], Any]) -> Callable[[ev.Event], Any]:
        """Call ``callback(event)`` for every event (from the writer thread); usable as a decorator."""
        return self._engine.on_event(callback)

    def add_sink(self, sink: Sink) -> Sink:
        return self._engine.add_sink(sink)

    def emit(self, event: ev.Event) -> None:
        """Publish an event from outside the pipeline (a source's ``source_lost`` / ``source_restored``)."""
        self._engine.emit(ev.from_source([event], self.source)[0])

    # -- input ------------------------------------------------------------------------------------------------
    def push_features(self, features: np.ndarray, start_time: float | None = None,
                      end_times: Sequence[float] | None = None) -> list[ev.Event]:
        """Snippet features ``[N, D]`` (or one ``[D]``) in stream order; returns the events they completed.

        Snippet times default to consecutive snippet durations after the previous snippet; ``start_time`` sets
        the first snippet's start, ``end_times`` gives each snippet's end (then starts follow the previous end).
        """
        return self._engine.process(self.source, features, start_time, end_times)

    def push_frames(self, frames: Sequence[np.ndarray] | np.ndarray, timestamps: Sequence[float]) -> list[ev.Event]:
        """Video frames (``[H, W, 3]`` uint8, BGR as OpenCV delivers them) with their source times in seconds."""
        self._engine.push_frames(self.source, frames, timestamps)
        return self._engine.process(self.source)

    def run(self, source: Any, *, realtime: bool = True, stop: Any = None) -> Iterator[ev.Event]:
        """Stream ``source`` (a camera index, a URL, a video or ``.npy`` features path, or a ``SourceSpec``) on its
        own reader thread and yield every event as it happens (``StreamEngine.run``); its events carry this
        Localizer's ``source`` id. Ends at the end of a file or when ``stop`` (a ``threading.Event``) is set; the
        Localizer is closed then."""
        from ecm_edge.runtime.feeds import run_sources
        from ecm_edge.runtime.source_specs import spec_for

        self._engine.remove_stream(self.source)
        yield from run_sources(self._engine, [spec_for(source, self.source)], realtime=realtime, stop=stop)

    def flush(self) -> list[ev.Event]:
        """End the stream: close and score the open segments, emit them, wait for the sinks; start afresh."""
        events = self._engine.flush(self.source)
        self._engine.dispatcher.drain()
        return events

    def stats_event(self) -> ev.Event:
        """A ``stats`` event for the interval since the last one (with the head's precision and why)."""
        return self._engine.stats_events()[0]

    def close(self) -> list[ev.Event]:
        """Flush the stream (its open segments are emitted), deliver every event to the sinks, close them and
        release the head; returns the last events. The Localizer is unusable afterwards; a second close does
        nothing."""
        return self._engine.close()

    def __enter__(self) -> Localizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
