"""Feature extractors: snippets of frames in, one feature vector per snippet out (docs/design.md §7).

One registry serves ``ecm-edge extract`` (offline features for training) and ``ecm-edge stream``, and both go
through :func:`iter_source_features` (source → :class:`SnippetAssembler` → extractor), so training and
deployment features are computed by the same code with the same preprocessing.

- ``tiny``: a small deterministic extractor in numpy/OpenCV: colour layout and hue statistics (``rgb``
  modality) and block-wise motion (``flow`` modality: Lucas–Kanade velocities and motion energy per block),
  each mapped to 128 channels by a seeded random projection. No file, faster than real time on one core; it is
  what the demo and the tests use.
- ``i3d``: the Inception-v1 I3D network exported to ONNX (``ecm-edge export --backbone i3d``): 1024 channels per
  snippet from a centre crop with pixels scaled to [-1, 1]; with a flow artifact also 1024 channels from OpenCV
  Farneback optical flow, an approximation of the TV-L1 flow the published features were computed from.

An extractor's ``prepare`` turns one BGR frame into its input format (resize, crop); the assembler applies it as
frames arrive so full-resolution frames are never held sixteen at a time, and ``extract`` skips it for snippets
that carry the extractor's ``prepare_key``.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from ecm_edge.config import DataConfig, StreamConfig
from ecm_edge.errors import CheckpointError, DataError, EcmEdgeError
from ecm_edge.runtime.snippets import Snippet, SnippetAssembler
from ecm_edge.runtime.sources import FrameSource

logger = logging.getLogger("ecm_edge")


@runtime_checkable
class FeatureExtractor(Protocol):
    """What the pipeline needs from a backbone."""

    name: str
    dim: int
    modalities: tuple[tuple[str, int], ...]  # (folder name, channels) in output order; channels sum to dim
    prepare_key: str  # identifies the output format of ``prepare``

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """One BGR uint8 frame → the extractor's uint8 input frame."""
        ...

    def extract(self, snippets: Sequence[Snippet] | np.ndarray) -> np.ndarray:
        """Snippets (or raw frames ``[N, 16, H, W, 3]`` uint8 BGR) → features ``[N, dim]`` float32."""
        ...


EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(name: str) -> Callable[[Callable[..., FeatureExtractor]], Callable[..., FeatureExtractor]]:
    """Class decorator adding a feature extractor to :data:`EXTRACTORS`."""

    def add(factory: Callable[..., FeatureExtractor]) -> Callable[..., FeatureExtractor]:
        EXTRACTORS[name] = factory
        return factory

    return add


def create_extractor(name: str, **kwargs: Any) -> FeatureExtractor:
    """Build a registered extractor; an unknown name is an error that suggests the closest one."""
    if name not in EXTRACTORS:
        close = difflib.get_close_matches(name, list(EXTRACTORS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise EcmEdgeError(f"unknown feature extractor {name!r}{hint}; available: {', '.join(sorted(EXTRACTORS))}")
    try:
        return EXTRACTORS[name](**kwargs)
    except TypeError as exc:
        raise EcmEdgeError(f"feature extractor {name!r}: {exc}") from None


# -- the shared path from a source to features ---------------------------------------------------------------

def assembler_for(extractor: FeatureExtractor, data: DataConfig | None = None,
                  stream: StreamConfig | None = None) -> SnippetAssembler:
    """A snippet assembler that prepares frames for ``extractor`` as they arrive."""
    return SnippetAssembler.from_config(data or DataConfig(), stream, transform=extractor.prepare,
                                        prepared_for=extractor.prepare_key)


def iter_source_features(source: FrameSource, extractor: FeatureExtractor, *,
                         assembler: SnippetAssembler | None = None, batch_size: int = 1,
                         pad_last: bool = False) -> Iterator[tuple[np.ndarray, list[Snippet]]]:
    """Read ``source`` to its end, yielding ``(features [n, D], snippets)`` every ``batch_size`` snippets.

    Live pipelines use ``batch_size=1`` (no snippet waits for another); offline extraction batches for
    throughput. The trailing partial snippet is dropped unless ``pad_last`` (then padded with its last frame).
    """
    assembler = assembler or assembler_for(extractor)
    pending: list[Snippet] = []
    while (frame := source.read()) is not None:
        pending += assembler.push(frame)
        while len(pending) >= batch_size:
            batch, pending = pending[:batch_size], pending[batch_size:]
            yield extractor.extract(batch), batch
    pending += assembler.flush(pad=pad_last)
    if pending:
        yield extractor.extract(pending), pending


def prepared_frames(snippets: Sequence[Snippet] | np.ndarray, extractor: FeatureExtractor) -> np.ndarray:
    """``[N, 16, h, w, 3]`` uint8 in the extractor's input format, preparing raw frames where needed."""
    if isinstance(snippets, np.ndarray):
        _check_frames(snippets, "frames")
        return np.stack([_prepare_all(clip, extractor) for clip in snippets]) if len(snippets) else snippets
    clips = []
    for snippet in snippets:
        _check_frames(snippet.frames[None], f"snippet {snippet.index}")
        ready = snippet.prepared_for == extractor.prepare_key
        clips.append(snippet.frames if ready else _prepare_all(snippet.frames, extractor))
    return np.stack(clips) if clips else np.zeros((0, DataConfig().snippet_frames, 1, 1, 3), np.uint8)


def _prepare_all(frames: np.ndarray, extractor: FeatureExtractor) -> np.ndarray:
    return np.stack([extractor.prepare(frame) for frame in frames])


def _check_frames(frames: np.ndarray, where: str) -> None:
    if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise DataError(f"{where}: expected uint8 frames [N, {DataConfig().snippet_frames}, H, W, 3], got "
                        f"{frames.dtype} {tuple(frames.shape)}")


# -- tiny ------------------------------------------------------------------------------------------------------

@register_extractor("tiny")
class TinyExtractor:
    """Colour and motion statistics on a 32×32 thumbnail, randomly projected with seeded weights.

    ``rgb`` channels: the mean colour of each block of a 4×4 grid, the colour spread, and a hue histogram
    weighted by saturation (saturated objects stand out from a grey scene). ``flow`` channels: per block the
    Lucas–Kanade velocity (direction and speed of motion) and the motion energy, plus the energy of each quarter
    of the snippet (flashing and pulsing). Both descriptors are mapped to ``dim / 2`` channels by fixed random
    matrices drawn from ``seed``; a random projection keeps distances, so what the descriptors separate, the
    features separate.
    """

    name = "tiny"
    thumbnail = 32  # pixels; frames are resized to thumbnail × thumbnail
    grid = 4  # blocks per side
    hue_bins = 12
    temporal_parts = 4  # motion energy is also summarized per quarter of the snippet
    direction_bins = 8  # sectors of the motion-direction histogram
    ridge = 1e-3  # Lucas–Kanade regularization per gradient sample (keeps flat blocks at zero velocity)
    saturation_floor = 0.25  # pixels less saturated than this count as grey in the hue histogram
    # Scales that bring each descriptor group to a comparable range before the projection: frame differences
    # and velocities are small next to colours; the colour layout is down-weighted against the position-free
    # hue statistics so that where an object is matters less than what colour it has.
    motion_gain = 10.0
    velocity_gain = 4.0
    colour_gain = 10.0
    layout_gain = 0.5

    def __init__(self, dim: int = 256, seed: int = 0):
        if dim < 2 or dim % 2:
            raise EcmEdgeError(f"tiny extractor: dim must be an even number >= 2, got {dim}")
        self.dim = dim
        self.seed = seed
        half = dim // 2
        self.modalities = (("rgb", half), ("flow", half))
        self.prepare_key = f"tiny:{self.thumbnail}"
        rng = np.random.default_rng(seed)
        n_colour = self.grid * self.grid * 3 + 3 + self.hue_bins + 1
        n_motion = self.grid * self.grid * 3 + self.temporal_parts + 2 + self.direction_bins
        self._colour_weights = (rng.standard_normal((n_colour, half)) / np.sqrt(n_colour)).astype(np.float32)
        self._motion_weights = (rng.standard_normal((n_motion, half)) / np.sqrt(n_motion)).astype(np.float32)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, (self.thumbnail, self.thumbnail), interpolation=cv2.INTER_AREA)

    def extract(self, snippets: Sequence[Snippet] | np.ndarray) -> np.ndarray:
        frames = prepared_frames(snippets, self)
        if len(frames) == 0:
            return np.zeros((0, self.dim), np.float32)
        colour = self._colour_descriptor(frames)
        motion = self._motion_descriptor(frames.astype(np.float32) / 255.0)
        # Row by row, so a snippet's features do not depend on the batch it came in (BLAS picks different
        # kernels for different batch sizes): extraction in batches and streaming one by one agree exactly.
        return np.stack([np.concatenate([c @ self._colour_weights, m @ self._motion_weights])
                         for c, m in zip(colour, motion, strict=True)])

    def _colour_descriptor(self, frames: np.ndarray) -> np.ndarray:
        n = len(frames)
        pixels = frames.astype(np.float32) / 255.0  # [N, F, S, S, 3]
        block_means = _block_mean(pixels.mean(axis=1), self.grid).reshape(n, -1) * self.layout_gain
        spread = pixels.reshape(n, -1, 3).std(axis=1)
        hsv = cv2.cvtColor(frames.reshape(-1, self.thumbnail, 3), cv2.COLOR_BGR2HSV).reshape(n, -1, 3)
        bins = (hsv[..., 0].astype(np.int64) * self.hue_bins) // 180  # OpenCV hue spans [0, 180)
        saturation = hsv[..., 1].astype(np.float32) / 255.0
        weight = np.clip((saturation - self.saturation_floor) / (1.0 - self.saturation_floor), 0.0, None)
        hist = np.stack([np.bincount(b, w, minlength=self.hue_bins) for b, w in zip(bins, weight, strict=True)])
        mass = hist.sum(axis=1, keepdims=True)
        hue_share = hist / np.maximum(mass, 1e-6)  # which hues the coloured pixels have, wherever they are
        coloured = mass / bins.shape[1] * self.colour_gain  # how much of the frame is coloured
        return np.concatenate([block_means, spread, hue_share, coloured], axis=1).astype(np.float32)

    def _motion_descriptor(self, pixels: np.ndarray) -> np.ndarray:
        n = len(pixels)
        grey = pixels.mean(axis=-1)  # [N, F, S, S]
        it = grey[:, 1:] - grey[:, :-1]  # temporal derivative between consecutive frames
        mid = 0.5 * (grey[:, 1:] + grey[:, :-1])
        ix = np.zeros_like(mid)
        iy = np.zeros_like(mid)
        ix[..., 1:-1] = 0.5 * (mid[..., 2:] - mid[..., :-2])
        iy[..., 1:-1, :] = 0.5 * (mid[..., 2:, :] - mid[..., :-2, :])
        products = [(ix * ix).sum(axis=1), (ix * iy).sum(axis=1), (iy * iy).sum(axis=1), (ix * it).sum(axis=1),
                    (iy * it).sum(axis=1)]  # [N, S, S] each
        samples = it.shape[1] * (self.thumbnail // self.grid) ** 2
        u, v = _lucas_kanade(*[_block_sum(p, self.grid) for p in products], self.ridge * samples)
        whole_u, whole_v = _lucas_kanade(*[p.sum(axis=(1, 2)) for p in products], self.ridge * samples)
        energy = np.abs(it)
        block_energy = _block_mean(energy.mean(axis=1), self.grid) * self.motion_gain
        parts = np.array_split(energy, self.temporal_parts, axis=1)
        part_energy = np.stack([p.mean(axis=(1, 2, 3)) for p in parts], axis=1) * self.motion_gain
        directions = _direction_histogram(u.reshape(n, -1), v.reshape(n, -1), self.direction_bins)
        return np.concatenate([u.reshape(n, -1), v.reshape(n, -1), block_energy.reshape(n, -1), part_energy,
                               np.stack([whole_u, whole_v], axis=1) * self.velocity_gain, directions],
                              axis=1).astype(np.float32)


def _lucas_kanade(xx: np.ndarray, xy: np.ndarray, yy: np.ndarray, xt: np.ndarray, yt: np.ndarray,
                  ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Velocity (u, v) solving [xx + r, xy; xy, yy + r] [u v]ᵀ = −[xt yt]ᵀ elementwise."""
    a11, a22 = xx + ridge, yy + ridge
    det = a11 * a22 - xy * xy
    return (-a22 * xt + xy * yt) / det, (xy * xt - a11 * yt) / det


def _direction_histogram(u: np.ndarray, v: np.ndarray, bins: int) -> np.ndarray:
    """Where the blocks move, wherever they are: speed summed per direction sector, [N, bins]."""
    speed = np.hypot(u, v)
    sector = ((np.arctan2(v, u) + np.pi) / (2 * np.pi) * bins).astype(np.int64) % bins
    return np.stack([np.bincount(s, w, minlength=bins) for s, w in zip(sector, speed, strict=True)])


def _block_sum(maps: np.ndarray, grid: int) -> np.ndarray:
    """[N, S, S, ...] → [N, grid, grid, ...] sums over square blocks."""
    n, size = maps.shape[0], maps.shape[1]
    step = size // grid
    blocks = maps[:, : step * grid, : step * grid].reshape(n, grid, step, grid, step, *maps.shape[3:])
    return blocks.sum(axis=(2, 4))


def _block_mean(maps: np.ndarray, grid: int) -> np.ndarray:
    step = maps.shape[1] // grid
    return _block_sum(maps, grid) / (step * step)


# -- i3d -------------------------------------------------------------------------------------------------------

I3D_FEATURE_DIM = 1024  # channels of the pooled Mixed_5c output
I3D_RESIZE_RATIO = 256 / 224  # shorter side is resized to crop × this before the centre crop
FLOW_CLIP = 20.0  # optical flow (pixels per frame) is clipped to ±this and scaled to [-1, 1], as for I3D flow
# cv2.calcOpticalFlowFarneback(pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags)
FARNEBACK_PARAMS = (0.5, 3, 15, 3, 5, 1.2, 0)


@register_extractor("i3d")
class I3DExtractor:
    """I3D features from exported networks (see ``ecm_edge.export.backbones``), run by the runtime's inference
    engines: ONNX Runtime for the ``.onnx`` files, TensorRT for an engine built from them (``engine``: ``auto``
    picks by suffix).

    ``artifact`` is the RGB network (input ``frames [N, 3, 16, S, S]``, output ``features [N, 1024]``);
    ``flow_artifact``, if given, the flow network (2 input channels), which adds 1024 flow channels computed from
    Farneback optical flow between consecutive snippet frames (the first flow is repeated so 16 frames give 16
    flows). The crop size S is read from the network.
    """

    name = "i3d"

    def __init__(self, artifact: str | Path | None = None, flow_artifact: str | Path | None = None, *,
                 engine: str = "auto", batch_size: int = 4, threads: int = 0):
        if artifact is None:
            raise EcmEdgeError("the i3d extractor needs an exported I3D network: export one with `ecm-edge export "
                               "--backbone i3d --backbone-weights rgb_imagenet.pt` and pass its .onnx file "
                               "(--backbone-artifact); the `tiny` extractor needs no file")
        self.rgb = BackboneRunner(artifact, expected_channels=3, engine=engine, threads=threads)
        self.flow = (BackboneRunner(flow_artifact, expected_channels=2, engine=engine, threads=threads)
                     if flow_artifact is not None else None)
        if self.flow is not None and self.flow.input_shape[2:] != self.rgb.input_shape[2:]:
            raise CheckpointError(f"the flow network {flow_artifact} takes clips {self.flow.input_shape[2:]} but "
                                  f"the RGB network {artifact} takes {self.rgb.input_shape[2:]}; export both at one size")
        self.batch_size = max(1, batch_size)
        self.crop = self.rgb.input_shape[3]
        self.resize_short = round(self.crop * I3D_RESIZE_RATIO)
        self.modalities = (("rgb", I3D_FEATURE_DIM),) + ((("flow", I3D_FEATURE_DIM),) if self.flow else ())
        self.dim = sum(d for _, d in self.modalities)
        self.prepare_key = f"i3d:{self.resize_short}:{self.crop}"

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Resize the shorter side, take the centre crop, BGR → RGB."""
        return centre_crop_rgb(image, self.resize_short, self.crop)

    def extract(self, snippets: Sequence[Snippet] | np.ndarray) -> np.ndarray:
        frames = prepared_frames(snippets, self)
        if len(frames) == 0:
            return np.zeros((0, self.dim), np.float32)
        outputs = []
        for start in range(0, len(frames), self.batch_size):
            clip = frames[start:start + self.batch_size]
            parts = [self.rgb(rgb_network_input(clip))]
            if self.flow is not None:
                parts.append(self.flow(flow_network_input(clip)))
            outputs.append(np.concatenate(parts, axis=1))
        return np.concatenate(outputs).astype(np.float32, copy=False)


def centre_crop_rgb(image: np.ndarray, resize_short: int, crop: int) -> np.ndarray:
    """I3D frame preparation: shorter side → ``resize_short`` (bilinear), centre ``crop``², BGR → RGB."""
    height, width = image.shape[:2]
    scale = resize_short / min(height, width)
    size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    top, left = (resized.shape[0] - crop) // 2, (resized.shape[1] - crop) // 2
    return np.ascontiguousarray(resized[top:top + crop, left:left + crop, ::-1])


def rgb_network_input(frames: np.ndarray) -> np.ndarray:
    """Prepared RGB uint8 ``[N, F, S, S, 3]`` → network input ``[N, 3, F, S, S]`` float32 in [-1, 1]."""
    return np.ascontiguousarray(frames.transpose(0, 4, 1, 2, 3), dtype=np.float32) / 127.5 - 1.0


def flow_network_input(frames: np.ndarray) -> np.ndarray:
    """Prepared RGB uint8 ``[N, F, S, S, 3]`` → Farneback flow ``[N, 2, F, S, S]`` clipped and scaled to [-1, 1]."""
    clips = []
    for clip in frames:
        grey = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in clip]
        flows = [cv2.calcOpticalFlowFarneback(a, b, None, *FARNEBACK_PARAMS) for a, b in itertools.pairwise(grey)]
        flows.insert(0, flows[0])
        clips.append(np.stack(flows))  # [F, S, S, 2]
    flow = np.clip(np.stack(clips), -FLOW_CLIP, FLOW_CLIP) / FLOW_CLIP
    return np.ascontiguousarray(flow.transpose(0, 4, 1, 2, 3), dtype=np.float32)


class BackboneRunner:
    """Runs an exported backbone through the runtime's inference engines (:func:`ecm_edge.runtime.engines.load_engine`,
    which checks the artifact against its manifest first): ``[N, C, F, S, S]`` in, ``[N, D]`` out."""

    def __init__(self, artifact: str | Path, *, expected_channels: int, engine: str = "auto", threads: int = 0):
        from ecm_edge.runtime.engines import engine_for, load_engine

        path = Path(artifact)
        options = {"threads": threads} if threads and engine_for(path) == "onnxruntime" else {}
        self.engine = load_engine(path, engine, **options)
        (spec,) = self.engine.manifest.inputs
        self.input_shape = tuple(spec.shape)
        if len(self.input_shape) != 5 or self.input_shape[1] != expected_channels or \
                not all(isinstance(d, int) for d in self.input_shape[1:]):
            raise CheckpointError(f"{path} takes input {list(self.input_shape)}, expected [batch, {expected_channels}, "
                                  f"frames, size, size]; is it the right network (RGB: 3 channels, flow: 2)?")
        self.output_name = self.engine.output_names[0]
        self.path = path

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.engine.infer(batch)[self.output_name]


def measure_snippets_per_second(extractor: FeatureExtractor, frames: np.ndarray, min_seconds: float = 0.5) -> float:
    """Snippets per second of ``extractor.extract`` on ``frames`` ``[N, 16, H, W, 3]`` (preparation included)."""
    count, start = 0, time.perf_counter()
    while True:
        extractor.extract(frames)
        count += len(frames)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return count / elapsed
