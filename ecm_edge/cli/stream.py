"""``ecm-edge stream``: localize actions live in one or many sources and write one JSON event per line.

Sources: ``--sources FILE`` (a YAML list, ``ecm_edge.runtime.source_specs``) and repeated ``--camera N``,
``--video PATH``, ``--url URL`` (RTSP/HTTP through OpenCV) or ``--features file.npy`` (snippet features), in any
mix. Every source is a stream of one :class:`~ecm_edge.runtime.engine.StreamEngine`; every event carries its
``source`` id. Threads (``ecm_edge.runtime.feeds``): each source has a feed thread that reads it (live sources keep
their newest frame, stale ones are dropped and counted) and pushes into the engine; this command's main thread
ticks the engine; a writer thread feeds the sinks (``--out``, ``--webhook``). Files and feature files play at
their own clock (``--no-realtime``: as fast as possible) and end; Ctrl-C (or SIGTERM) and the end of every
source flush the open segments and exit 0. A source that cannot be opened at the start exits 1 with one line,
unless ``--keep-going``: then it is reported as a ``source_lost`` event and, if live, tried again with backoff.

After a stop request the flush gets :data:`STOP_GRACE_S` seconds (a webhook that does not answer in time has its
events spooled), and the process ends at the latest :data:`STOP_DEADLINE_S` seconds after the request, whatever
blocks it. A sink that could not write events (a full disk) does not stop the stream or the other sinks, but the
command exits 1 at the end with one line saying how many events were lost where; the reader of stdout leaving
(``| head``) is not a loss and ends the stream quietly. A source that failed on the way (a camera that stayed
down beyond ``stream.reconnect_attempts``) also makes the exit code 1, after the others were served.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from ecm_edge.cli.main import info
from ecm_edge.cli.options import config_options, renamed_option
from ecm_edge.errors import EcmEdgeError
from ecm_edge.runtime.engines import PRECISION_CHOICES
from ecm_edge.runtime.localizer import HEAD_ENGINES
from ecm_edge.runtime.sinks import JsonlSink, SinkLoss, WebhookSink, parse_event_types
from ecm_edge.runtime.source_specs import SourceSpec, check_unique, load_sources_file, specs_from_options

log = logging.getLogger("ecm_edge")

STOP_GRACE_S = 1.5  # after a stop request: time the sinks get to deliver before they spool what is left
STOP_DEADLINE_S = 4.0  # after a stop request: the process ends by then even if something blocks the flush
SOURCES_NAMED = 4  # the start line names this many sources, then says how many more there are

SOURCES_EXAMPLE = """\b
A sources file (relative paths are read from its folder; `set:` holds that source's own post.*, stream.* and alerts.*
settings):
\b
    sources:
      - {id: gate-1, url: "rtsp://user:pass@10.0.0.5/stream1"}
      - {id: lobby, camera: 0}
      - {id: replay, features: recordings/day1.npy}
      - id: file-3
        video: clips/a.mp4
        set: {post.class_threshold: 0.3, stream.emit_open: true}
"""


def _mqtt_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The MQTT sink's options (topics ``<prefix>/<source>/<event type>``, QoS 1, availability topic)."""
    file = click.Path(dir_okay=False, path_type=Path)
    options = [
        click.option("--mqtt", "mqtt_url", default=None, metavar="URL",
                     help="Also publish events to an MQTT broker: mqtt://[user:password@]host[:1883]/prefix "
                          "(mqtts:// for TLS); topics <prefix>/<source>/<event type>, QoS 1."),
        click.option("--mqtt-events", default=None, metavar="TYPES",
                     help="Event types published over MQTT, e.g. alert (default: all)."),
        click.option("--mqtt-spool", type=file, default=None,
                     help="Where events wait while the broker is away (default: mqtt-spool.jsonl)."),
        click.option("--mqtt-user", default=None, help="Broker user name (instead of the URL's)."),
        click.option("--mqtt-password", default=None, envvar="ECM_EDGE_MQTT_PASSWORD",
                     help="Broker password (or the ECM_EDGE_MQTT_PASSWORD environment variable)."),
        click.option("--mqtt-ca", type=file, default=None, help="TLS: the CA certificate that signed the broker's."),
        click.option("--mqtt-cert", type=file, default=None, help="TLS: this client's certificate."),
        click.option("--mqtt-key", type=file, default=None, help="TLS: this client's key."),
        click.option("--mqtt-insecure", is_flag=True, help="TLS: do not check the broker's certificate."),
        click.option("--mqtt-client-id", default=None, help="MQTT client id (default: ecm-edge-<host>-<pid>)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command(epilog=SOURCES_EXAMPLE)
@click.option("--sources", "sources_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE", help="A YAML file listing the sources, each with its id (example below).")
@click.option("--camera", "cameras", type=int, multiple=True, metavar="INDEX",
              help="Camera index (0 is the first); repeatable. Id: camera-INDEX.")
@click.option("--video", "videos", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
              help="A video file; repeatable. Id: the file's stem.")
@click.option("--url", "urls", multiple=True, help="An RTSP/HTTP stream URL (read by OpenCV); repeatable. Id: its "
                                                   "host, port and path.")
@click.option("--features", "features", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
              help="A [T, D] .npy of snippet features, replayed at snippet rate; repeatable. Id: the file's stem.")
@click.option("--keep-going", is_flag=True,
              help="Start even when some sources cannot be opened: report each (source_lost), retry the live "
                   "ones with backoff, serve the others; exit 1 at the end if a source failed for good.")
@click.option("--artifacts", default=None, type=click.Path(exists=True, path_type=Path),
              help="A training run folder (model.safetensors + model.json) or an `ecm-edge export` folder "
                   "(not with --triton).")
@click.option("--triton", "triton_url", default=None, metavar="URL",
              help="Run the streams on a Triton server (`ecm-edge serve`): http://HOST:8000 or grpc://HOST:8001; "
                   "features are extracted here, events come back to the usual sinks.")
@click.option("--triton-model", default="ecm_stream", show_default=True, help="The served stream model's name.")
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
@click.option("--no-realtime", is_flag=True,
              help="Replay video files and --features as fast as possible (default: at their own clock).")
@click.option("--out-events", default=None, metavar="TYPES",
              help="Event types --out writes, e.g. segment,alert (default: all).")
@click.option("--webhook-events", default=None, metavar="TYPES", help="Event types the webhook gets (default: all).")
@_mqtt_options
@config_options(default=None)
@click.pass_context
def stream(ctx: click.Context, sources_file: Path | None, cameras: tuple[int, ...], videos: tuple[Path, ...],
           urls: tuple[str, ...], features: tuple[Path, ...], keep_going: bool, artifacts: Path | None,
           triton_url: str | None, triton_model: str, engine: str,
           precision: str, extractor: str, backbone_artifact: Path | None, flow_artifact: Path | None, out: str,
           webhook: str | None, spool: Path | None, no_realtime: bool, config_name: str | None,
           overrides: tuple[str, ...], out_events: str | None, webhook_events: str | None,
           **mqtt: Any) -> None:
    """Localize actions live in one or many sources; JSON events (segment, stats, source_lost, ...) one per
    line, each with its `source` id.

    Without --config the thresholds and horizon come from the artifacts' own config; --set refines them for
    every source, e.g. --set stream.horizon=128 --set stream.emit_open=true.

    \b
    Examples:
      ecm-edge stream --camera 0 --artifacts runs/train/exp
      ecm-edge stream --sources cameras.yaml --artifacts runs/export/exp --keep-going --out events.jsonl
      ecm-edge stream --video a.mp4 --video b.mp4 --artifacts runs/train/exp --no-realtime
      ecm-edge stream --sources cameras.yaml --triton grpc://gpu-server:8001
    """
    specs = _specs(sources_file, cameras, urls, videos, features)
    if (artifacts is None) == (triton_url is None):
        raise click.UsageError("give --artifacts FOLDER (run the head here) or --triton URL (run it on a Triton "
                               "server), one of the two")
    options = {k: v for k, v in (("artifact", backbone_artifact), ("flow_artifact", flow_artifact)) if v}
    needs_frames = any(spec.kind != "features" for spec in specs)
    if triton_url is not None:
        from ecm_edge.runtime.triton_client import TritonStreamEngine

        head: Any = TritonStreamEngine(triton_url, model=triton_model, config=config_name, overrides=overrides,
                                       extractor=extractor if needs_frames else None, extractor_options=options)
    else:
        from ecm_edge.runtime.engine import StreamEngine

        head = StreamEngine.from_artifacts(artifacts, engine, config=config_name, overrides=overrides,
                                           extractor=extractor if needs_frames else None, extractor_options=options,
                                           precision=precision)
    out_sink = head.add_sink(JsonlSink(out, types=parse_event_types(out_events)))
    if webhook is not None:
        head.add_sink(_webhook_sink(head.config, webhook, spool, webhook_events))
    if mqtt["mqtt_url"] is not None:
        head.add_sink(_mqtt_sink(**mqtt))
    if needs_frames:
        _quiet_opencv()
    _serve(head, specs, out_sink, realtime=not no_realtime, keep_going=keep_going,
           start_line=_start_line(head, specs, artifacts or triton_url, out, webhook))
    if out != "-":
        info(f"events written to {out}; next: inspect them with `head {out}` or plot them with `ecm-edge viz`")


def _specs(sources_file: Path | None, cameras: Sequence[int], urls: Sequence[str], videos: Sequence[Path],
           features: Sequence[Path]) -> list[SourceSpec]:
    """The sources of the file and of the options, in that order; at least one (a usage error otherwise)."""
    if sources_file is None and not (cameras or urls or videos or features):
        raise click.UsageError("give at least one source: --sources FILE, or --camera N, --video PATH, --url URL "
                               "or --features FILE (each repeatable, in any mix)")
    specs = load_sources_file(sources_file) if sources_file is not None else []
    specs += specs_from_options(cameras, urls, videos, features, taken={spec.id for spec in specs})
    check_unique(specs)
    return specs


def _webhook_sink(cfg: Any, url: str, spool: Path | None, events: str | None) -> WebhookSink:
    stream_cfg = cfg.stream
    return WebhookSink(url, spool or Path(stream_cfg.webhook_spool), timeout_s=stream_cfg.webhook_timeout_s,
                       retries=stream_cfg.webhook_retries, backoff_s=stream_cfg.webhook_backoff_s,
                       backoff_max_s=stream_cfg.webhook_backoff_max_s, queue_size=stream_cfg.webhook_queue,
                       types=parse_event_types(events))


def _mqtt_sink(mqtt_url: str, mqtt_events: str | None, mqtt_spool: Path | None, mqtt_user: str | None,
               mqtt_password: str | None, mqtt_ca: Path | None, mqtt_cert: Path | None, mqtt_key: Path | None,
               mqtt_insecure: bool, mqtt_client_id: str | None) -> Any:
    """The MQTT sink of the ``--mqtt*`` options (a refused login fails here, at the start, in one line)."""
    from ecm_edge.runtime.mqtt import sink_from_url

    return sink_from_url(mqtt_url, spool=mqtt_spool, events=mqtt_events, username=mqtt_user,
                         password=mqtt_password, ca_file=mqtt_ca, cert_file=mqtt_cert, key_file=mqtt_key,
                         insecure=mqtt_insecure, client_id=mqtt_client_id)


def _serve(head: Any, specs: list[SourceSpec], out_sink: JsonlSink, *, realtime: bool, keep_going: bool,
           start_line: str) -> None:
    """Run the sources into the engine until they end or a stop request; then the closing line, and exit 1 on
    lost events or failed sources."""
    from ecm_edge.runtime.feeds import SourceFailure, SourceFeeds

    halt = threading.Event()
    try:
        feeds = SourceFeeds(head, specs, realtime=realtime, keep_going=keep_going, stop=halt)
        feeds.start()  # a source that cannot be opened (without --keep-going): one line, exit 1
    except BaseException:
        head.close()
        head.dispatcher.close()
        raise
    info(start_line)
    segments, failure = 0, None
    with _graceful_stop() as stop:
        stop.actions.append(halt.set)  # every feed closes its source; the loop flushes every stream
        stop.actions.append(lambda: head.dispatcher.hurry(STOP_GRACE_S))
        try:
            with _progress() as bar:
                for event in feeds.events():
                    segments += event["type"] == "segment"
                    bar.update(event["type"] == "segment")
                    if out_sink.closed_by_reader:  # the pipe's reader left (`| head`)
                        halt.set()
        except SourceFailure as exc:
            failure = exc
        finally:
            head.dispatcher.close()
    if out_sink.closed_by_reader:  # nothing more to say on stdout
        _silence_stdout()
    info(_closing_line(feeds.totals, segments, len(specs)))
    _fail_on_losses(head.dispatcher.losses(), failure)


def _start_line(head: Any, specs: Sequence[SourceSpec], artifacts: Path | str, out: str, webhook: str | None) -> str:
    """What runs where: the sources, the head, the classes and the rate, where the events go."""
    if len(specs) == 1:
        what = specs[0].describe()
    else:
        named = ", ".join(f"{spec.id} ({spec.describe()})" for spec in specs[:SOURCES_NAMED])
        more = f" and {len(specs) - SOURCES_NAMED} more" if len(specs) > SOURCES_NAMED else ""
        what = f"{len(specs)} sources: {named}{more}"
    runner = " ".join(value for name in ("engine", "precision") if isinstance(value := getattr(head, name, None), str))
    return (f"stream: {what} → {runner + ' ' if runner else ''}head from {artifacts}, {len(head.class_names)} "
            f"classes, {head.rate:g} columns per snippet; events to {'stdout' if out == '-' else out}"
            f"{f' and {webhook}' if webhook else ''}")


def _closing_line(totals: Any, segments: int, sources: int) -> str:
    """``stream: N snippets, M segments`` and what was dropped (the count first: scripts read it)."""
    parts = [f"stream: {totals.snippets} snippets, {segments} segments"]
    if sources > 1:
        parts[0] += f" from {sources} sources"
    if totals.dropped_frames:
        parts.append(f"{totals.dropped_frames} stale frames dropped")
    if totals.dropped_snippets:
        parts.append(f"{totals.dropped_snippets} snippets dropped (a source's queue was full: stream.queue_snippets)")
    return ", ".join(parts)


def _fail_on_losses(losses: list[SinkLoss], failure: EcmEdgeError | None = None) -> None:
    """Events a sink could not write, or sources that failed, make the command fail in one line: how many,
    where, why."""
    problems = [str(loss) for loss in losses] + ([str(failure)] if failure is not None else [])
    if problems:
        raise EcmEdgeError("; ".join(problems))


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


def _progress() -> tqdm:
    """Segments so far, on a terminal only."""
    return tqdm(unit="segments", disable=not sys.stderr.isatty(), file=sys.stderr, leave=False)


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
