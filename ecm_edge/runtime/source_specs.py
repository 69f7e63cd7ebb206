"""Which inputs one ``ecm-edge stream`` process serves: a sources file, or repeated command-line options.

A sources file names every input once (docs/design.md §7)::

    sources:
      - {id: gate-1, url: "rtsp://user:pass@10.0.0.5/stream1"}
      - {id: lobby, camera: 0}
      - {id: replay, features: recordings/day1.npy}
      - id: file-3
        video: clips/a.mp4
        set: {post.class_threshold: 0.3}     # this source's own settings (post.*, stream.*, alerts.* keys)

Each entry has an ``id`` (the ``source`` of its events), exactly one input (``camera``, ``url``, ``video`` or
``features``) and optionally ``set``, per-source config overrides written as ``--set`` would take them. Relative
paths are read against the sources file's folder. Every problem is one line that names the file, the entry and
its id, so a file with a hundred cameras can be fixed without guessing.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ecm_edge.config import Config, apply_override, check_ordered
from ecm_edge.errors import ConfigError, DataError, EcmEdgeError
from ecm_edge.runtime.engine import SHARED_KEYS, SOURCE_OVERRIDE_SECTIONS
from ecm_edge.runtime.sources import URL_SCHEMES, parse_spec

SOURCE_KINDS = ("camera", "url", "video", "features")  # an entry names exactly one of these inputs
LIVE_KINDS = ("camera", "url")  # inputs that never end on their own
ID_KEY, SET_KEY = "id", "set"
ENTRY_KEYS = (ID_KEY, *SOURCE_KINDS, SET_KEY)
FILE_KEY = "sources"  # the one top-level key of a sources file
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NOT_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_PER_SOURCE_WORDS = ", ".join(f"{section}*" for section in SOURCE_OVERRIDE_SECTIONS)
FEATURES_SUFFIX = ".npy"  # a path with it is a features file, any other path a video
_SHOWN_CHARS = 60  # a wrong value in an error line is cut after this many characters


@dataclass(frozen=True)
class SourceSpec:
    """One input of a stream process: its id, what it is, where it is, and its own config overrides."""

    id: str
    kind: str  # one of SOURCE_KINDS
    target: int | str | Path  # camera index, URL, or the path of a video or features file
    overrides: tuple[str, ...] = ()  # "section.key=value", post.* and stream.* keys only

    @property
    def live(self) -> bool:
        """Cameras and URLs run until stopped; files and feature files end."""
        return self.kind in LIVE_KINDS

    def describe(self) -> str:
        """The input in words, never with a URL's password (for logs and info lines)."""
        if self.kind == "url":
            parts = urlsplit(str(self.target))
            host = parts.hostname or ""
            if parts.port:
                host = f"{host}:{parts.port}"
            return f"{parts.scheme}://{host}{parts.path}"
        return f"camera {self.target}" if self.kind == "camera" else f"{self.kind} {self.target}"


# -- a sources file -------------------------------------------------------------------------------------------
def load_sources_file(path: str | Path, config: Config | None = None) -> list[SourceSpec]:
    """The sources a YAML file lists (module doc), checked: every entry's id, input and ``set`` keys.

    ``set`` keys and values are checked with the config schema on a copy of ``config`` (the defaults when None);
    with a ``config`` the ordered pairs (e.g. a threshold range) are checked against its other values too.
    """
    where = str(path)
    entries = _read_entries(Path(path), where)
    specs: list[SourceSpec] = []
    seen: dict[str, int] = {}
    for number, entry in enumerate(entries, start=1):
        spec = _entry_spec(entry, number, Path(path).parent, where, config)
        if spec.id in seen:
            raise ConfigError(f"{where}: entry {number} (id {spec.id!r}): id already used by entry {seen[spec.id]}; "
                              "every source needs its own id")
        seen[spec.id] = number
        specs.append(spec)
    return specs


def _read_entries(path: Path, where: str) -> list[Any]:
    """The file's list of entries; one line for a missing file, bad YAML or the wrong shape."""
    if not path.is_file():
        raise ConfigError(f"sources file {where} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{where} is not valid YAML: {detail}") from None
    example = f"write `{FILE_KEY}:` followed by entries like `- {{id: lobby, camera: 0}}`"
    if not isinstance(raw, dict) or FILE_KEY not in raw:
        raise ConfigError(f"{where}: expected a mapping with a `{FILE_KEY}` list; {example}")
    extra = sorted(set(raw) - {FILE_KEY}, key=str)
    if extra:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(map(str, extra))}; only `{FILE_KEY}` is read")
    entries = raw[FILE_KEY]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: `{FILE_KEY}` must be a non-empty list; {example}")
    return entries


def _entry_spec(entry: Any, number: int, folder: Path, where: str, config: Config | None) -> SourceSpec:
    """One entry as a spec; every error names the file, the entry's number and (when it has one) its id."""
    label = f"{where}: entry {number}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{label}: expected a mapping like {{id: lobby, camera: 0}}, got {_shown(entry)}")
    raw_id = entry.get(ID_KEY)
    if raw_id is not None and isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool):
        label = f"{label} (id {str(raw_id)!r})"
    unknown = sorted(str(k) for k in entry if k not in ENTRY_KEYS)
    if unknown:
        raise ConfigError(f"{label}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(ENTRY_KEYS)}")
    if raw_id is None:
        raise ConfigError(f"{label}: missing id; give every source a unique id, e.g. id: lobby")
    try:
        source_id = check_id(raw_id)
        kind, value = _entry_input(entry)
        target = _target(kind, value, folder)
        overrides = render_overrides(entry.get(SET_KEY) or {})
        check_overrides(overrides, config)
    except EcmEdgeError as exc:
        raise type(exc)(f"{label}: {exc}") from None
    return SourceSpec(source_id, kind, target, overrides)


def _entry_input(entry: Mapping[str, Any]) -> tuple[str, Any]:
    """The entry's one input key and its value."""
    given = [kind for kind in SOURCE_KINDS if kind in entry]
    if len(given) != 1:
        found = f"got {', '.join(given)}" if given else "got none"
        raise ConfigError(f"give exactly one of {', '.join(SOURCE_KINDS)} ({found})")
    return given[0], entry[given[0]]


def _target(kind: str, value: Any, folder: Path | None) -> int | str | Path:
    """The checked camera index, URL or path (a relative path read against ``folder`` when given)."""
    if kind == "camera":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"camera must be an index (0 is the first camera), got {_shown(value)}")
        return value
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{kind} must be a {'URL' if kind == 'url' else 'file path'}, got {_shown(value)}")
    if kind == "url":
        return check_url(value.strip())
    path = Path(value).expanduser()
    if folder is not None and not path.is_absolute():
        path = folder / path
    if not path.is_file():
        raise DataError(f"{'video' if kind == 'video' else 'features'} file {path} does not exist")
    return path


def check_url(url: str) -> str:
    """A stream URL with a scheme OpenCV reads (one of :data:`~ecm_edge.runtime.sources.URL_SCHEMES`)."""
    try:
        kind = parse_spec(url)[0]
    except EcmEdgeError as exc:  # a scheme OpenCV does not read
        raise ConfigError(str(exc)) from None
    if kind != "url":
        raise ConfigError(f"url {url!r} is not a stream URL; write it as scheme://host/path with a scheme "
                          f"among {', '.join(URL_SCHEMES)}")
    return url


def check_id(value: Any) -> str:
    """A source id: letters, digits, '.', '_' and '-', starting with a letter or digit (a number is read as
    text)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError(f"id must be text, got {_shown(value)}")
    text = str(value)
    if not _ID_PATTERN.fullmatch(text):
        raise ConfigError(f"id {text!r} may hold only letters, digits, '.', '_' and '-' and must start with a "
                          "letter or digit")
    return text


# -- per-source overrides -------------------------------------------------------------------------------------
def render_overrides(settings: Any) -> tuple[str, ...]:
    """A ``set:`` mapping as ``--set`` strings (``{post.class_threshold: 0.3}`` → ``post.class_threshold=0.3``)."""
    if not isinstance(settings, dict):
        raise ConfigError(f"set must be a mapping of config keys, e.g. {{post.class_threshold: 0.3}}, got "
                          f"{_shown(settings)}")
    rendered = []
    for key, value in settings.items():
        if isinstance(value, dict):
            raise ConfigError(f"set: write dotted keys ({key}.KEY: VALUE), not a nested {key}: mapping")
        rendered.append(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
    return tuple(rendered)


def check_overrides(overrides: Sequence[str], config: Config | None = None) -> None:
    """Each override names a config key a single source may set, with a valid value (the config schema's own
    checks, on a copy of ``config``; with a ``config`` also its ordered pairs)."""
    trial = copy.deepcopy(config) if config is not None else Config()
    for item in overrides:
        apply_override(trial, item)  # unknown keys ("did you mean"), types, choices and ranges
        dotted = item.split("=", 1)[0].strip()
        if not dotted.startswith(SOURCE_OVERRIDE_SECTIONS) or dotted in SHARED_KEYS:
            raise ConfigError(f"{dotted} cannot be set per source; a source may set {_PER_SOURCE_WORDS} keys "
                              f"except {', '.join(SHARED_KEYS)} (set the others for every source with --set)")
    if config is not None and overrides:
        check_ordered(trial, "set")


# -- command-line options -------------------------------------------------------------------------------------
def specs_from_options(cameras: Iterable[int] = (), urls: Iterable[str] = (), videos: Iterable[str | Path] = (),
                       features: Iterable[str | Path] = (), *, taken: Collection[str] = ()) -> list[SourceSpec]:
    """Specs for repeated ``--camera`` / ``--url`` / ``--video`` / ``--features`` options, ids from the inputs'
    names (``camera-0``, a URL's host and path, a file's stem); a name already used (in ``taken`` or by an earlier
    option) gets ``-2``, ``-3``, ... Paths stay as given (relative to the working directory)."""
    named: list[tuple[str, str, int | str | Path]] = []
    for index in cameras:
        named.append((f"camera-{_target('camera', index, None)}", "camera", index))
    for url in urls:
        named.append((url_id(check_url(url)), "url", url))
    for kind, paths in (("video", videos), ("features", features)):
        for path in paths:
            named.append((_safe_id(Path(path).stem, kind), kind, _target(kind, str(path), None)))
    used = set(taken)
    specs = []
    for base, kind, target in named:
        source_id = _unused(base, used)
        used.add(source_id)
        specs.append(SourceSpec(source_id, kind, target))
    return specs


def spec_for(source: SourceSpec | int | str | Path, source_id: str | None = None) -> SourceSpec:
    """One input as the ``run`` methods take it: a spec, a camera index, a stream URL, a ``.npy`` features file
    or a video file; ``source_id`` replaces the id it would get from its name."""
    if isinstance(source, SourceSpec):
        spec = source
    elif isinstance(source, int) and not isinstance(source, bool):
        spec = specs_from_options(cameras=[source])[0]
    elif isinstance(source, str) and "://" in source:
        spec = specs_from_options(urls=[source])[0]
    elif isinstance(source, (str, Path)) and Path(source).suffix == FEATURES_SUFFIX:
        spec = specs_from_options(features=[source])[0]
    elif isinstance(source, (str, Path)):
        spec = specs_from_options(videos=[source])[0]
    else:
        raise ConfigError(f"a source is a camera index, a URL, a video or .npy features path, or a SourceSpec; "
                          f"got {type(source).__name__}")
    return spec if source_id is None else replace(spec, id=check_id(source_id))


def url_id(url: str) -> str:
    """An id from a URL's host, port and path, never its credentials: ``rtsp://u:p@10.0.0.5:554/live/1`` →
    ``10.0.0.5-554-live-1``."""
    parts = urlsplit(url)
    return _safe_id(" ".join(str(p) for p in (parts.hostname, parts.port, parts.path) if p), "stream")


def check_unique(specs: Sequence[SourceSpec]) -> None:
    """Every id once (a sources file and options together); at least one source."""
    if not specs:
        raise ConfigError("no source given; pass --sources FILE or at least one --camera, --url, --video or "
                          "--features")
    seen: set[str] = set()
    for spec in specs:
        if spec.id in seen:
            raise ConfigError(f"two sources have the id {spec.id!r}; every source needs its own id")
        seen.add(spec.id)


def _safe_id(text: str, fallback: str) -> str:
    """``text`` with every run of characters an id may not hold replaced by '-'."""
    return _NOT_ID_CHARS.sub("-", text).strip("-._") or fallback


def _unused(base: str, used: set[str]) -> str:
    if base not in used:
        return base
    n = 2
    while f"{base}-{n}" in used:
        n += 1
    return f"{base}-{n}"


def _shown(value: Any) -> str:
    """A short rendering of a wrong value for an error line."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + '...'}"
