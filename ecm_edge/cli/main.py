"""The ``ecm-edge`` entry point.

Subcommands live in their own modules and are imported only when invoked, so ``ecm-edge --help`` and the
runtime commands start without importing torch. Exit codes: 0 success, 1 runtime error (one line, no traceback
unless ``--debug``), 2 usage error.

Messages on stderr: info lines (what is being done, where results went) through :func:`info` or the ``ecm_edge``
logger at INFO; ``-q`` silences both and keeps warnings and errors.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys

import click

from ecm_edge.errors import EcmEdgeError
from ecm_edge.version import __version__

# name -> (module, attribute, one-line help). Add a command by adding a line here.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "calibrate": ("ecm_edge.cli.calibrate", "calibrate", "Per-class alert thresholds for a target precision."),
    "checks": ("ecm_edge.cli.checks", "checks", "Show versions, GPUs and optional components."),
    "demo": ("ecm_edge.cli.demo", "demo", "The whole product on generated videos: train, export, stream, report."),
    "bench": ("ecm_edge.cli.bench", "bench", "Benchmark the components against baselines; markdown report."),
    "eval": ("ecm_edge.cli.eval", "eval_command", "Detection mAP of a prediction file, or of a model on a split."),
    "export": ("ecm_edge.cli.export", "export", "Export ONNX (FP32/FP16/INT8), TensorRT engines and manifests."),
    "extract": ("ecm_edge.cli.extract", "extract", "Extract snippet features from video files (tiny or I3D)."),
    "synth": ("ecm_edge.cli.synth", "synth", "Write a synthetic THUMOS14-like feature dataset (the default data)."),
    "train": ("ecm_edge.cli.train", "train", "Train ECM on a feature dataset (runs/train/NAME; resumable, DDP)."),
    "predict": ("ecm_edge.cli.predict", "predict", "Detect actions in feature files with a trained model (JSON)."),
    "postprocess": ("ecm_edge.cli.postprocess", "postprocess", "Raw predictions (--save-raw) → detections JSON."),
    "viz": ("ecm_edge.cli.viz", "viz", "Draw a video's ground truth vs detections (and CAS); export .srt subtitles."),
    "stream": ("ecm_edge.cli.stream", "stream", "Localize actions live (camera, file, URL, features) as JSON events."),
    "serve": ("ecm_edge.cli.serve", "serve", "Run NVIDIA Triton Inference Server on a repository of export --triton."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else ""
        if args and name not in COMMANDS and not name.startswith("-"):
            import difflib

            close = difflib.get_close_matches(name, list(COMMANDS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            ctx.fail(f"No such command {name!r}.{hint}")
        return super().resolve_command(ctx, args)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", prog_name="ecm-edge")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """Train, export and run ECM weakly supervised temporal action localization."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["quiet"] = quiet
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("ecm_edge")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def info(message: str) -> None:
    """An info line on stderr, unless ``-q`` was given (warnings and errors are not info: log or raise them)."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    if root is not None and isinstance(root.obj, dict) and root.obj.get("quiet"):
        return
    click.echo(message, err=True)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI, turning user-facing errors into one line and exit code 1."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    with _package_logging_restored():
        _run_cli(args, debug)
    sys.exit(0)


@contextlib.contextmanager
def _package_logging_restored():
    """The CLI owns the ecm_edge logger while it runs; a caller that runs ``main`` in-process (a test, a notebook)
    gets its own logging set-up back afterwards."""
    logger = logging.getLogger("ecm_edge")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        yield
    finally:
        logger.handlers[:], logger.propagate = saved[0], saved[2]
        logger.setLevel(saved[1])


def _run_cli(args: list[str], debug: bool) -> None:
    """Run the click group, turning each kind of failure into its message and exit code."""
    try:
        cli.main(args=args, prog_name="ecm-edge", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except EcmEdgeError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:
        if debug:
            raise
        click.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        sys.exit(1)
