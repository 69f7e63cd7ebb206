"""Snippet feature files: the three on-disk layouts, layout detection and validation (docs/design.md §4).

A video's features are one ``[T, D]`` float32 array, one row per 0.64 s snippet. They are stored as

- ``modality``: ``ROOT/<split>/<modality>/<video>.npy``, one ``[T, D_m]`` file per modality (``rgb``, ``flow``),
  concatenated along the channels in the order of ``data.modalities``;
- ``flat``: ``ROOT/<video>.npy``, already ``[T, D]``;
- ``wtalc``: one pickled object array holding a ``[T_i, D]`` array per video (the W-TALC
  ``Thumos14reduced-I3D-JOINTFeatures.npy``), aligned with the video names of ``videoname.npy`` beside it.

Every array is checked before use: readable, two-dimensional with D channels, at least one snippet, only finite
values. A failed check is a :class:`DataError` naming the video, the file and the expected shape, because a bad
file found after hours of training, or silently turned into NaN losses, costs far more than a clear message now.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ecm_edge.errors import DataError

logger = logging.getLogger("ecm_edge")

# I3D streams of one video may differ by a snippet at the end (RGB and flow are extracted separately); a larger
# mismatch means the files belong to different videos or extractions.
MAX_MODALITY_LENGTH_MISMATCH = 1

NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file
WTALC_NAMES_FILE = "videoname.npy"
WTALC_FEATURES_GLOB = "*Features.npy"


def validate_features(array: np.ndarray, video_id: str, source: str, feature_dim: int) -> np.ndarray:
    """Check one video's features and return them as C-contiguous float32 ``[T, D]``.

    ``source`` names where the array came from (a file, or an element of an array file) for the error message.
    """
    where = f"features of video {video_id!r} ({source})"
    if not isinstance(array, np.ndarray) or array.dtype == object:
        raise DataError(f"{where}: expected a numeric array [T, {feature_dim}], got {type(array).__name__}"
                        f"{'' if not isinstance(array, np.ndarray) else ' of Python objects'}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DataError(f"{where}: expected a numeric array [T, {feature_dim}], got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] != feature_dim:
        raise DataError(f"{where}: shape {tuple(array.shape)}, expected [T, {feature_dim}] "
                        f"(T snippets × data.feature_dim channels; set data.feature_dim if your features differ)")
    if array.shape[0] == 0:
        raise DataError(f"{where}: holds no snippets (shape {tuple(array.shape)}), expected [T >= 1, {feature_dim}]")
    features = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(features)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        kind = "NaN" if np.isnan(features).any() else "Inf"
        raise DataError(f"{where}: {int((~finite).sum())} non-finite value(s) ({kind}) in {len(rows)} snippet(s), "
                        f"first at snippet {int(rows[0])}; re-extract the features of this video")
    return features


def load_npy(path: Path, video_id: str, mmap: bool = False) -> np.ndarray:
    """``np.load`` of one per-video feature file, with every failure turned into a :class:`DataError`."""
    return open_npy(path, f"features of video {video_id!r}: file {path}", mmap=mmap)


def open_npy(path: Path, where: str, mmap: bool = False) -> np.ndarray:
    """``np.load`` of a plain numeric .npy file; every failure a :class:`DataError` that starts with ``where``.

    The signature is checked first: numpy would try any other file as a pickle and report "pickled (object)
    data" for a text file, and an empty file as an EOFError (which click would even turn into "Aborted.").
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{where} does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"{where} is empty (0 bytes); re-extract it")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
    except OSError as exc:
        raise DataError(f"{where} cannot be read ({exc})") from None
    if magic != NPY_MAGIC:
        raise DataError(f"{where} cannot be read: it is not a .npy file (it does not start with the NumPy file "
                        f"signature{_looks_like(magic)}); re-extract it with np.save, or remove it")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(f"{where} holds pickled Python objects; a per-video feature file must be a plain "
                            "numeric .npy array [T, D]") from None
        raise DataError(f"{where} is not a readable .npy file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{where} cannot be read ({exc or type(exc).__name__}); it may be truncated: "
                        "re-extract it") from None


def _looks_like(head: bytes) -> str:
    """What a file that is not .npy seems to be, from its first bytes (for the message)."""
    if head.startswith(b"PK"):
        return "; it looks like a .npz archive or another zip file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return "; it looks like a text file" if all(c.isprintable() or c in "\t\r\n" for c in text) else ""


def read_feature_file(path: str | Path, video_id: str, feature_dim: int) -> np.ndarray:
    """Read and validate one ``[T, D]`` feature file."""
    path = Path(path)
    return validate_features(load_npy(path, video_id), video_id, f"file {path}", feature_dim)


class FeatureStore:
    """Where the features of a dataset's videos live; one subclass per layout."""

    layout: str = ""

    def __init__(self, root: Path, feature_dim: int):
        self.root = Path(root)
        self.feature_dim = feature_dim

    def read(self, video_id: str) -> np.ndarray:
        """The validated ``[T, D]`` float32 features of one video."""
        raise NotImplementedError

    def num_snippets(self, video_id: str) -> int:
        """T of the stored features, read cheaply (header only where the format allows)."""
        raise NotImplementedError

    def missing(self, video_ids: Sequence[str]) -> list[str]:
        """The ids among ``video_ids`` that have no features in this store."""
        raise NotImplementedError

    def describe(self, video_id: str) -> str:
        """Where this store looks for a video's features (for messages)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, feature_dim={self.feature_dim})"


class FlatFeatureStore(FeatureStore):
    """``ROOT/<video>.npy``, each ``[T, D]``."""

    layout = "flat"

    def path(self, video_id: str) -> Path:
        return self.root / f"{video_id}.npy"

    def read(self, video_id: str) -> np.ndarray:
        return read_feature_file(self.path(video_id), video_id, self.feature_dim)

    def num_snippets(self, video_id: str) -> int:
        header = load_npy(self.path(video_id), video_id, mmap=True)
        validate_shape(header.shape, video_id, f"file {self.path(video_id)}", self.feature_dim)
        return int(header.shape[0])

    def missing(self, video_ids: Sequence[str]) -> list[str]:
        return [v for v in video_ids if not self.path(v).is_file()]

    def describe(self, video_id: str) -> str:
        return str(self.path(video_id))


class ModalityFeatureStore(FeatureStore):
    """``ROOT/<split>/<modality>/<video>.npy``, one file per modality, concatenated along the channels.

    A video is looked up in every split folder, so held-out validation videos (a part of ``train``) and
    datasets whose split folders are named differently from the split files still resolve.
    """

    layout = "modality"

    def __init__(self, root: Path, feature_dim: int, modalities: Sequence[str]):
        super().__init__(root, feature_dim)
        if not modalities:
            raise DataError("data.modalities is empty; name the per-modality feature folders, e.g. [rgb, flow]")
        self.modalities = list(modalities)
        self.split_dirs = sorted(p for p in self.root.iterdir() if (p / self.modalities[0]).is_dir())
        self._where: dict[str, Path] = {}
        for split_dir in reversed(self.split_dirs):
            for file in (split_dir / self.modalities[0]).glob("*.npy"):
                self._where[file.stem] = split_dir

    def paths(self, video_id: str) -> list[Path]:
        split_dir = self._where.get(video_id)
        if split_dir is None:
            raise DataError(f"features of video {video_id!r}: no file {self.describe(video_id)}")
        return [split_dir / m / f"{video_id}.npy" for m in self.modalities]

    def read(self, video_id: str) -> np.ndarray:
        paths = self.paths(video_id)
        parts = [load_npy(p, video_id) for p in paths]
        for part, path in zip(parts, paths, strict=True):
            if part.ndim == 2 and part.shape[0] == 0:
                raise DataError(f"features of video {video_id!r} (file {path}): holds no snippets (shape "
                                f"{part.shape}), expected [T >= 1, D_{path.parent.name}]")
            if part.ndim != 2:
                raise DataError(f"features of video {video_id!r} (file {path}): shape {part.shape}, expected "
                                f"[T >= 1, D_{path.parent.name}] with the channels of {', '.join(self.modalities)} "
                                f"summing to [T, {self.feature_dim}]")
        length = self._common_length(video_id, [p.shape[0] for p in parts])
        if sum(p.shape[1] for p in parts) != self.feature_dim:
            detail = ", ".join(f"{p}: {part.shape}" for p, part in zip(paths, parts, strict=True))
            raise DataError(f"features of video {video_id!r}: {detail}; expected [T, D_m] per modality, "
                            f"concatenated to [T, {self.feature_dim}] (set data.feature_dim if your features differ)")
        joined = np.concatenate([p[:length] for p in parts], axis=1)
        source = "files " + ", ".join(str(p) for p in paths)
        return validate_features(joined, video_id, source, self.feature_dim)

    def num_snippets(self, video_id: str) -> int:
        paths = self.paths(video_id)
        shapes = [load_npy(p, video_id, mmap=True).shape for p in paths]
        channels = sum(s[1] for s in shapes if len(s) == 2)
        if any(len(s) != 2 or s[0] == 0 for s in shapes) or channels != self.feature_dim:
            detail = ", ".join(f"{p}: {tuple(s)}" for p, s in zip(paths, shapes, strict=True))
            raise DataError(f"features of video {video_id!r}: {detail}; expected [T >= 1, D_m] per modality, "
                            f"concatenated to [T, {self.feature_dim}] (set data.feature_dim if your features differ)")
        return self._common_length(video_id, [s[0] for s in shapes])

    def _common_length(self, video_id: str, lengths: list[int]) -> int:
        if max(lengths) - min(lengths) > MAX_MODALITY_LENGTH_MISMATCH:
            detail = ", ".join(f"{m}: T={t}" for m, t in zip(self.modalities, lengths, strict=True))
            raise DataError(f"features of video {video_id!r}: the modalities disagree on the number of snippets "
                            f"({detail}) in {self.describe(video_id)}; they must come from the same video")
        if max(lengths) != min(lengths):
            logger.debug("video %s: modalities differ by one snippet %s; using the shorter", video_id, lengths)
        return min(lengths)

    def missing(self, video_ids: Sequence[str]) -> list[str]:
        absent = []
        for vid in video_ids:
            split_dir = self._where.get(vid)
            if split_dir is None or not all((split_dir / m / f"{vid}.npy").is_file() for m in self.modalities):
                absent.append(vid)
        return absent

    def describe(self, video_id: str) -> str:
        split_dir = self._where.get(video_id)
        if split_dir is not None:
            return ", ".join(str(split_dir / m / f"{video_id}.npy") for m in self.modalities)
        splits = "{" + ",".join(p.name for p in self.split_dirs) + "}" if self.split_dirs else "<split>"
        return f"{self.root}/{splits}/{{{','.join(self.modalities)}}}/{video_id}.npy"


class WtalcFeatureStore(FeatureStore):
    """One object array of ``[T_i, D]`` arrays (W-TALC), aligned with ``videoname.npy``.

    The array file is a pickle inside ``.npy``; it is loaded once, on first use, and only from a folder the user
    pointed at (pickles can run code: use files you trust).
    """

    layout = "wtalc"

    def __init__(self, array_file: Path, names_file: Path, feature_dim: int):
        super().__init__(array_file.parent, feature_dim)
        self.array_file = Path(array_file)
        self.names_file = Path(names_file)
        try:
            names = np.load(self.names_file, allow_pickle=True)
        except Exception as exc:
            raise DataError(f"{self.names_file} is not a readable numpy file ({exc})") from None
        self.names = [n.decode() if isinstance(n, bytes) else str(n) for n in names.reshape(-1)]
        self.index = {name: i for i, name in enumerate(self.names)}
        self._array: np.ndarray | None = None
        self._lock = threading.Lock()

    def _load(self, video_id: str) -> np.ndarray:
        with self._lock:
            if self._array is None:
                where = f"features of video {video_id!r}: feature array file {self.array_file}"
                if not self.array_file.is_file() or self.array_file.stat().st_size == 0:
                    raise DataError(f"{where} is missing or empty (0 bytes)")
                try:
                    array = np.load(self.array_file, allow_pickle=True)
                except Exception as exc:
                    raise DataError(f"{where} cannot be read ({exc})") from None
                if array.ndim != 1 or len(array) != len(self.names):
                    raise DataError(f"{where} holds {array.shape} entries but {self.names_file} names "
                                    f"{len(self.names)} videos; they must align one to one")
                self._array = array
            return self._array

    def _entry(self, video_id: str) -> np.ndarray:
        if video_id not in self.index:
            raise DataError(f"features of video {video_id!r}: not named in {self.names_file}")
        return self._load(video_id)[self.index[video_id]]

    def read(self, video_id: str) -> np.ndarray:
        source = f"file {self.array_file}, entry {self.index.get(video_id)}"
        return validate_features(self._entry(video_id), video_id, source, self.feature_dim)

    def num_snippets(self, video_id: str) -> int:
        entry = self._entry(video_id)
        shape = getattr(entry, "shape", ())
        validate_shape(shape, video_id, f"file {self.array_file}, entry {self.index[video_id]}", self.feature_dim)
        return int(shape[0])

    def missing(self, video_ids: Sequence[str]) -> list[str]:
        return [v for v in video_ids if v not in self.index]

    def describe(self, video_id: str) -> str:
        return f"entry {video_id!r} of {self.array_file} (names from {self.names_file})"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_array"] = None  # reloaded in the receiving process rather than pickled through a pipe
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def validate_shape(shape: tuple[int, ...], video_id: str, source: str, feature_dim: int) -> None:
    """The header-only part of :func:`validate_features`: two dimensions, D channels, T >= 1."""
    if len(shape) != 2 or shape[1] != feature_dim or shape[0] == 0:
        raise DataError(f"features of video {video_id!r} ({source}): shape {tuple(shape)}, expected "
                        f"[T >= 1, {feature_dim}] (set data.feature_dim if your features differ)")


def find_wtalc_array(folder: Path) -> Path | None:
    """The W-TALC feature array in ``folder`` (``*Features.npy`` beside ``videoname.npy``), if any."""
    if not (folder / WTALC_NAMES_FILE).is_file():
        return None
    candidates = sorted(folder.glob(WTALC_FEATURES_GLOB))
    if len(candidates) > 1:
        raise DataError(f"{folder} holds several feature arrays ({', '.join(p.name for p in candidates)}); "
                        "keep one, or point at a folder with exactly one")
    return candidates[0] if candidates else None


def open_feature_store(data_dir: str | Path, feature_dim: int, modalities: Sequence[str]) -> FeatureStore:
    """Detect the feature layout of a dataset directory and return its store.

    Looked for, in order: ``DIR/features/<split>/<modality>/`` folders, a W-TALC array in ``DIR/features/`` or
    ``DIR/``, then per-video ``DIR/features/<video>.npy`` files. ``data_dir`` may also be the features folder.
    """
    data_dir = Path(data_dir)
    root = data_dir / "features" if (data_dir / "features").is_dir() else data_dir
    if not root.is_dir():
        raise DataError(f"feature folder {root} does not exist")
    if modalities and any((p / modalities[0]).is_dir() for p in root.iterdir() if p.is_dir()):
        return ModalityFeatureStore(root, feature_dim, modalities)
    for folder in dict.fromkeys((root, data_dir)):
        array_file = find_wtalc_array(folder)
        if array_file is not None:
            return WtalcFeatureStore(array_file, folder / WTALC_NAMES_FILE, feature_dim)
    annotation_folder = root == data_dir and (data_dir / WTALC_NAMES_FILE).is_file()
    if not annotation_folder and any(p.suffix == ".npy" for p in root.iterdir()):
        return FlatFeatureStore(root, feature_dim)
    raise DataError(f"no features found under {root}; expected {root}/<split>/{{{','.join(modalities)}}}/<video>.npy, "
                    f"{root}/<video>.npy, or a W-TALC *Features.npy array beside {WTALC_NAMES_FILE}")
