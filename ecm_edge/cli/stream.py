"""``ecm-edge stream``: localize actions live and write one JSON event per line.

Sources: ``--camera N``, ``--video PATH``, ``--url URL`` (RTSP/HTTP through OpenCV) or ``--features file.npy``
(snippet features replayed at snippet rate, or as fast as possible with ``--no-realtime``). Threads: the source's
reader fills a bounded buffer (policy ``latest`` for live sources: stale frames are dropped and counted), this
command's main thread runs snippet assembly, the extractor, the head and the causal post-processing, and a
writer thread feeds the sinks (``--out``, ``--webhook``). Ctrl-C (or SIGTERM) and the end of a file flush the
open segments and exit 0; a source that cannot be opened at the start exits 1 with one line.

After a stop request the flush gets :data:`STOP_GRACE_S` seconds (a webhook that does not answer in time has its
events spooled), and the process ends at the latest :data:`STOP_DEADLINE_S` seconds after the request, whatever
blocks it. A sink that could not write events (a full disk) does not stop the stream or the other sinks, but the
command exits 1 at the end with one line saying how many events were lost where; the reader of stdout leaving
(``| head``) is not a loss and ends the stream quietly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import click
from tqdm import tqdm

from ecm_edge.cli.main import info
from ecm_edge.cli.options import config_options, renamed_option
from ecm_edge.errors import EcmEdgeError
from ecm_edge.runtime.engines import PRECISION_CHOICES
from ecm_edge.runtime.localizer import HEAD_ENGINES, Localizer
from ecm_edge.runtime.sinks import JsonlSink, SinkLoss, WebhookSink

log = logging.getLogger("ecm_edge")

STOP_GRACE_S = 1.5  # after a stop request: time the sinks get to deliver before they spool what is left
STOP_DEADLINE_S = 4.0  # after a stop request: the process ends by then even if something blocks the flush


@click.command()
@click.option("--camera", type=int, default=None, metavar="INDEX", help="Camera index (0 is the first).")
@click.option("--video", type=click.Path(dir_okay=False, path_type=Path), default=None, help="A video file.")
@click.option("--url", default=None, help="An RTSP/HTTP stream URL (read by OpenCV).")
@click.option("--features", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A [T, D] .npy of snippet features, replayed at snippet rate.")
@click.option("--artifacts", required=True, type=click.Path(exists=True, path_type=Path),
              help="A training run folder (model.safetensors + model.json) or an `ecm-edge export` folder.")
@renamed_option("--engine", "--backend", "engine", type=click.Choice(HEAD_ENGINES), default="auto", show_default=True,
                help="What runs the head: numpy (deploy folder, one column per snippet), onnxruntime / tensorrt "
                     "(export folder), torch; auto picks numpy for a deploy folder, else what the machine has.")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="auto", show_default=True,
              help="Which precision of an export folder runs the head; auto: the fastest here (int8 on a CPU with "
                   "integer dot-product instructions when the folder has int8 graphs, else fp32; never fp16 on a "
                   "CPU), said in the log and in `stats` events.")
@click.option("--extractor", default="tiny", show_default=True,
              help="Feature extractor for video input: tiny, or i3d with --backbone-artifact.")
@click.option("--backbone-artifact", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="i3d: the exported RGB network (.onnx).")
@click.option("--flow-artifact", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="i3d: the exported flow network (.onnx).")
@click.option("--out", default="-", show_default=True, metavar="-|FILE",
              help="JSONL events: - for stdout, or a file (appended, flushed per event).")
@click.option("--webhook", default=None, metavar="URL", help="Also POST every event to this HTTP(S) URL.")
@click.option("--spool", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where undeliverable webhook events are kept (default: stream.webhook_spool).")
@click.option("--no-realtime", is_flag=True, help="Replay --features as fast as possible.")
@config_options(default=None)
@click.pass_context
def stream(ctx: click.Context, camera: int | None, video: Path | None, url: str | None, features: Path | None,
           artifacts: Path, engine: str, precision: str, extractor: str, backbone_artifact: Path | None,
           flow_artifact: Path | None, out: str, webhook: str | None, spool: Path | None, no_realtime: bool,
           config_name: str | None, overrides: tuple[str, ...]) -> None:
    """Localize actions live; JSON events (segment, stats, source_lost, ...) one per line.

    Without --config the thresholds and horizon come from the artifacts' own config; --set refines them,
    e.g. --set stream.horizon=128 --set stream.emit_open=true.
    """
    chosen = [name for name, value in (("--camera", camera), ("--video", video), ("--url", url),
                                       ("--features", features)) if value is not None]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one source: --camera N, --video PATH, --url URL or --features FILE"
                               + (f" (got {', '.join(chosen)})" if chosen else ""))
    options = {k: v for k, v in (("artifact", backbone_artifact), ("flow_artifact", flow_artifact)) if v}
    localizer = Localizer.from_artifacts(artifacts, engine, config=config_name, overrides=overrides,
                                         extractor=None if features is not None else extractor,
                                         extractor_options=options, precision=precision)
    cfg = localizer.config
    out_sink = localizer.add_sink(JsonlSink(out))
    if webhook is not None:
        localizer.add_sink(WebhookSink(
            webhook, spool or Path(cfg.stream.webhook_spool), timeout_s=cfg.stream.webhook_timeout_s,
            retries=cfg.stream.webhook_retries, backoff_s=cfg.stream.webhook_backoff_s,
            backoff_max_s=cfg.stream.webhook_backoff_max_s, queue_size=cfg.stream.webhook_queue))
    segments = 0

    def count(event: dict) -> None:
        nonlocal segments
        segments += event["type"] == "segment"

    localizer.on_event(count)
    try:
        source = _open(localizer, camera, video, url, features, realtime=not no_realtime)
    except BaseException:
        localizer.close()
        raise
    info(f"stream: {source.description} → {localizer.engine} {localizer.precision} head from {artifacts}, "
         f"{len(localizer.class_names)} classes, {localizer.resampler.rate:g} columns per snippet; "
         f"events to {'stdout' if out == '-' else out}{f' and {webhook}' if webhook else ''}")
    with _graceful_stop() as stop:
        stop.actions.append(source.close)  # a blocked read returns once the source is closed
        stop.actions.append(lambda: localizer.dispatcher.hurry(STOP_GRACE_S))
        try:
            with source, _progress(len(source) if features is not None else None) as bar:
                while (not stop.requested.is_set() and not out_sink.closed_by_reader
                       and (item := source.read()) is not None):
                    _push(localizer, item, source)
                    bar.update(1)
        finally:
            localizer.dropped_frames = source.dropped_frames
            localizer.flush()
            localizer.close()
    if out_sink.closed_by_reader:  # the pipe's reader left (`| head`): nothing more to say on stdout
        _silence_stdout()
    dropped = f", {localizer.dropped_frames} stale frames dropped" if localizer.dropped_frames else ""
    info(f"stream: {localizer.stats.snippets} snippets, {segments} segments{dropped}")
    _fail_on_losses(localizer.dispatcher.losses())
    if out != "-":
        info(f"events written to {out}; next: inspect them with `head {out}` or plot them with `ecm-edge viz`")


def _fail_on_losses(losses: list[SinkLoss]) -> None:
    """Events a sink could not write make the command fail, in one line: how many, where, why."""
    if losses:
        raise EcmEdgeError("; ".join(str(loss) for loss in losses))


def _open(localizer: Localizer, camera: int | None, video: Path | None, url: str | None, features: Path | None,
          realtime: bool):
    """The source, opened: a feature replay, or a camera / file / URL with the configured frame policy."""
    from ecm_edge.runtime.sources import FeatureReplaySource, ReconnectPolicy, open_source

    if features is not None:
        return FeatureReplaySource(features, realtime=realtime, snippet_seconds=localizer.snippet_seconds,
                                   feature_dim=localizer.feature_dim)
    _quiet_opencv()
    cfg = localizer.config
    spec = camera if camera is not None else str(video) if video is not None else str(url)
    return open_source(spec, policy=cfg.stream.frame_policy, reconnect=ReconnectPolicy.from_config(cfg.stream),
                       on_event=localizer.emit, config=cfg.stream)


def _push(localizer: Localizer, item, source) -> None:
    from ecm_edge.runtime.sources import FeatureSnippet

    if isinstance(item, FeatureSnippet):
        localizer.push_features(item.features, start_time=item.start_time, end_times=[item.end_time])
    else:
        localizer.dropped_frames = source.dropped_frames
        localizer.push_frames([item.image], [item.timestamp])


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail on the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _quiet_opencv() -> None:
    """OpenCV's own warnings (a camera it cannot open, a stream hiccup) would precede our one-line messages."""
    if logging.getLogger("ecm_edge").isEnabledFor(logging.DEBUG):
        return
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _progress(total: int | None) -> tqdm:
    unit = "snippets" if total is not None else "frames"
    return tqdm(total=total, unit=unit, disable=not sys.stderr.isatty(), file=sys.stderr, leave=False)


class _Stop:
    """A stop request (Ctrl-C, SIGTERM) and what to do then: close the source so a blocked read returns.

    The signal handler only raises the flag; the actions run on a watcher thread. Run inside the handler, they
    could deadlock: the handler interrupts the main thread wherever it is, possibly holding the very lock an
    action needs (the source's stop event while ``read`` waits on it).
    """

    def __init__(self, deadline_s: float = STOP_DEADLINE_S) -> None:
        self.requested = threading.Event()
        self.actions: list[Callable[[], None]] = []
        self.deadline_s = deadline_s  # after a request: the process ends by then, flushed or not
        self._finished = False
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._act_on_request, name="ecm-edge-stop", daemon=True)

    def __call__(self, signum: int, frame: object) -> None:
        if self.requested.is_set():  # a second Ctrl-C: stop at once, without flushing
            raise KeyboardInterrupt
        self.requested.set()  # only the watcher ever holds this event's lock, and only briefly

    def watch(self) -> None:
        self._watcher.start()

    def finish(self) -> None:
        """The command is done: release the watcher (without running the actions if none ran yet)."""
        self._finished = True
        self._done.set()
        self.requested.set()
        self._watcher.join()

    def _act_on_request(self) -> None:
        self.requested.wait()
        if self._finished:
            return
        for action in self.actions:
            try:
                action()
            except Exception:  # one failing action must not keep the others from running
                log.debug("a stop action failed", exc_info=True)
        if not self._done.wait(self.deadline_s):
            self._give_up()

    def _give_up(self) -> None:
        """The flush is stuck (a blocked output, a hung receiver): end the process now, saying so."""
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"error: the stream did not finish within {self.deadline_s:g} s of the stop request; "
                             "exiting without the rest of the flush\n")
            sys.stderr.flush()
        os._exit(1)


@contextlib.contextmanager
def _graceful_stop() -> Iterator[_Stop]:
    """Ctrl-C and SIGTERM end the loop (open segments are flushed, exit 0) instead of killing the process."""
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    stop.watch()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop.finish()
