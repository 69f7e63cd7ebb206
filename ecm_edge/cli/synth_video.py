"""CLI glue for procedural videos: ``ecm-edge synth --videos -o DIR [--num-videos N] [--classes K] ...``.

:func:`add_video_options` adds the video-only options to a click command; :func:`run_video_synth` generates the
set with a progress bar and says what it wrote and what to run next. :data:`synth_videos` is the same as a
stand-alone command.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ecm_edge.data.synth_video import (
    CODECS,
    MANIFEST_NAME,
    SynthVideoDataset,
    SynthVideoSpec,
    generate_video_dataset,
)
from ecm_edge.errors import DataError

_DEFAULTS = SynthVideoSpec()


class PairType(click.ParamType):
    """Two numbers joined by a separator: ``160x120`` (size) or ``20-40`` (a range)."""

    def __init__(self, name: str, separators: str, cast: Callable[[str], Any], example: str):
        self.name = name
        self._separators = separators
        self._cast = cast
        self._example = example

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple:
        if isinstance(value, tuple):
            return value
        text = str(value).strip().lower()
        for sep in self._separators:
            if sep in text:
                left, _, right = text.partition(sep)
                try:
                    return self._cast(left), self._cast(right)
                except ValueError:
                    break
        self.fail(f"{value!r} is not a {self.name}; write it like {self._example}", param, ctx)


SIZE = PairType("size", "x", int, "160x120")
RANGE = PairType("range", "-,:", float, "20-40")

# parameter name -> (click option decls, keyword arguments). A command that already defines one of these with the
# same parameter name (``ecm-edge synth``: --num-videos, --classes, --force) passes its name in ``skip``.
VIDEO_OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "videos": (("--videos",), dict(is_flag=True, help="Write procedural video files (.avi) instead of features.")),
    "num_videos": (("--num-videos",), dict(type=click.IntRange(min=1), default=None,
                                           help=f"Videos to generate [videos: {_DEFAULTS.num_videos}].")),
    "num_classes": (("--classes",), dict(type=click.IntRange(min=1), default=None,
                                         help=f"Action classes K [videos: {_DEFAULTS.num_classes}].")),
    "size": (("--size",), dict(type=SIZE, default=None, metavar="WxH",
                               help="Frame size [videos: {}x{}].".format(*_DEFAULTS.size))),
    "fps": (("--fps",), dict(type=click.FloatRange(min=1.0), default=None,
                             help=f"Frame rate [videos: {_DEFAULTS.fps:g}].")),
    "duration": (("--duration",), dict(type=RANGE, default=None, metavar="MIN-MAX",
                                       help="Video length range in seconds [videos: {:g}-{:g}].".format(
                                           *_DEFAULTS.duration))),
    "codec": (("--codec",), dict(type=click.Choice(list(CODECS)), default=None,
                                 help=f"Video codec [videos: {_DEFAULTS.codec}, in .avi].")),
    "force": (("--force",), dict(is_flag=True, help="Overwrite an existing synthetic video set in the folder.")),
}


def add_video_options(fn: Callable[..., Any] | None = None, *, skip: tuple[str, ...] = ()) -> Any:
    """Decorate a click command with the options of :data:`VIDEO_OPTIONS` (except those in ``skip``).

    Usable bare (``@add_video_options``) or configured (``@add_video_options(skip=("force",))``). The options
    arrive as keyword arguments named like the keys of :data:`VIDEO_OPTIONS`; ``None`` means the video default.
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for name in reversed(list(VIDEO_OPTIONS)):
            if name not in skip:
                decls, kwargs = VIDEO_OPTIONS[name]
                command = click.option(*decls, name, **kwargs)(command)
        return command

    return decorate(fn) if fn is not None else decorate


def run_video_synth(out_dir: str | Path, *, seed: int = 0, num_videos: int | None = None,
                    num_classes: int | None = None, size: tuple[int, int] | None = None, fps: float | None = None,
                    duration: tuple[float, float] | None = None, codec: str | None = None,
                    force: bool = False, **_ignored: Any) -> SynthVideoDataset:
    """Generate the video set under ``out_dir`` with a progress bar, then print where it went and what's next.

    ``None`` means the video default. Extra keyword arguments (such as the ``videos`` flag) are ignored.
    """
    out = Path(out_dir)
    prepare_output(out, force)
    chosen = {"num_videos": num_videos, "num_classes": num_classes, "size": size, "fps": fps, "duration": duration,
              "codec": codec}
    kwargs = {k: v for k, v in chosen.items() if v is not None}
    from tqdm import tqdm

    total = kwargs.get("num_videos", _DEFAULTS.num_videos)
    with tqdm(total=total, unit="video", desc="synth videos", disable=not sys.stderr.isatty()) as bar:
        dataset = generate_video_dataset(out, seed=seed, progress=lambda done, _: bar.update(done - bar.n),
                                         **kwargs)
    _report(dataset)
    return dataset


def prepare_output(out: Path, force: bool) -> None:
    """Refuse a non-empty folder, unless it holds a synthetic video set and ``force`` is given (then its videos
    are removed first, so none of a larger earlier set stays behind)."""
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / MANIFEST_NAME).is_file():
        raise DataError(f"{out} exists and is not empty; choose a new folder for the synthetic videos")
    if not force:
        raise DataError(f"{out} already holds a synthetic video set; pass --force to overwrite it")
    if (out / "videos").is_dir():
        shutil.rmtree(out / "videos")


def _report(dataset: SynthVideoDataset) -> None:
    spec = dataset.spec
    seconds = sum(v.duration or 0.0 for v in dataset.annotations.videos.values())
    click.echo(f"wrote {len(dataset.videos)} videos ({len(dataset.train_ids)} train / {len(dataset.test_ids)} test, "
               f"{seconds:.0f} s, {spec.size[0]}x{spec.size[1]} @ {spec.fps:g} fps, "
               f"{dataset.annotations.num_segments} action instances of {len(dataset.class_names)} classes: "
               f"{', '.join(dataset.class_names)})")
    click.echo(f"  videos:      {dataset.root / 'videos'}")
    click.echo(f"  annotations: {dataset.root / 'gt.json'} (+ split_train.txt, split_test.txt)")
    click.echo(f"next: ecm-edge extract {dataset.root / 'videos'} -o {dataset.root} --extractor tiny")


@click.command("synth-videos")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (videos/, gt.json, split_*.txt).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed; same seed, same videos.")
@add_video_options(skip=("videos",))
def synth_videos(out_dir: Path, seed: int, **options: Any) -> None:
    """Write procedural action videos with exact temporal ground truth (deterministic by seed)."""
    run_video_synth(out_dir, seed=seed, **options)
