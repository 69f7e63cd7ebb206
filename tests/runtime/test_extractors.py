"""Feature extractors: the registry, ``tiny`` (determinism, colour and motion separation, speed) and ``i3d``
with random weights (published state-dict layout, shapes, ONNX parity, flow input, one real 224×224 snippet)."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from ecm_edge.errors import CheckpointError, EcmEdgeError
from ecm_edge.runtime.extractors import (
    EXTRACTORS,
    assembler_for,
    create_extractor,
    flow_network_input,
    measure_snippets_per_second,
    prepared_frames,
    rgb_network_input,
)
from ecm_edge.runtime.sources import Frame

REAL_TIME_SNIPPETS_PER_S = 25.0 / 16.0


def square_clip(colour: tuple[int, int, int], velocity: float, seed: int, size=(96, 72)) -> np.ndarray:
    """16 BGR frames: a 14-pixel square of ``colour`` moving ``velocity`` px/frame on a noisy grey background,
    starting at a random place (the within-class variation)."""
    rng = np.random.default_rng(seed)
    background = rng.integers(90, 110, (size[1], size[0], 3)).astype(np.uint8)
    x0, y0 = int(rng.integers(25, 50)), int(rng.integers(15, 40))
    frames = []
    for t in range(16):
        image = background.copy()
        x = round(x0 + velocity * t)
        cv2.rectangle(image, (x, y0), (x + 14, y0 + 14), colour, -1)
        frames.append(image)
    return np.stack(frames)


RED, BLUE = (0, 0, 255), (255, 0, 0)


def separation(groups: dict[str, np.ndarray]) -> tuple[float, float, float]:
    """(mean within-group distance, mean between-group distance, nearest-centroid accuracy)."""
    within, between = [], []
    names = list(groups)
    for i, a in enumerate(names):
        d = np.linalg.norm(groups[a][:, None] - groups[a][None], axis=-1)
        within.append(d[np.triu_indices(len(d), 1)].mean())
        between += [np.linalg.norm(groups[a][:, None] - groups[b][None], axis=-1).mean() for b in names[i + 1:]]
    centroids = np.stack([groups[n].mean(axis=0) for n in names])
    correct = sum(int(np.argmin(np.linalg.norm(centroids - x, axis=1)) == k)
                  for k, n in enumerate(names) for x in groups[n])
    return float(np.mean(within)), float(np.mean(between)), correct / sum(len(g) for g in groups.values())


def modality(features: np.ndarray, extractor, name: str) -> np.ndarray:
    start = 0
    for m, d in extractor.modalities:
        if m == name:
            return features[:, start:start + d]
        start += d
    raise KeyError(name)


# -- registry --------------------------------------------------------------------------------------------------

def test_registry_names_and_suggestions():
    assert {"tiny", "i3d"} <= set(EXTRACTORS)
    with pytest.raises(EcmEdgeError, match="did you mean 'tiny'"):
        create_extractor("tinny")
    with pytest.raises(EcmEdgeError, match="needs an exported I3D network"):
        create_extractor("i3d")


# -- tiny ------------------------------------------------------------------------------------------------------

def test_tiny_is_deterministic_and_seeded():
    clips = np.stack([square_clip(RED, 2.0, s) for s in range(3)])
    a, b = create_extractor("tiny"), create_extractor("tiny")
    fa = a.extract(clips)
    assert fa.shape == (3, 256) and fa.dtype == np.float32 and np.isfinite(fa).all()
    assert np.array_equal(fa, b.extract(clips))
    assert not np.allclose(fa, create_extractor("tiny", seed=1).extract(clips))
    assert [m for m, _ in a.modalities] == ["rgb", "flow"] and sum(d for _, d in a.modalities) == a.dim
    one_by_one = np.concatenate([a.extract(clips[i:i + 1]) for i in range(3)])
    assert np.array_equal(one_by_one, fa)  # batch-independent: offline batches and the stream agree exactly


def test_tiny_gives_the_same_features_from_the_assembler_path():
    """Frames prepared while assembling (the stream path) give exactly the features of raw clips."""
    extractor = create_extractor("tiny")
    clip = square_clip(BLUE, -1.5, seed=4)
    assembler = assembler_for(extractor)
    snippets = []
    for i, image in enumerate(clip):
        snippets += assembler.push(Frame(image, i / 25.0, i))
    assert len(snippets) == 1 and snippets[0].prepared_for == extractor.prepare_key
    assert np.array_equal(prepared_frames(snippets, extractor), prepared_frames(clip[None], extractor))
    assert np.array_equal(extractor.extract(snippets), extractor.extract(clip[None]))


def test_tiny_separates_colours():
    extractor = create_extractor("tiny")
    groups = {name: modality(extractor.extract(np.stack([square_clip(c, 0.0, s) for s in range(6)])), extractor, "rgb")
              for name, c in (("red", RED), ("blue", BLUE), ("green", (0, 200, 0)))}
    within, between, accuracy = separation(groups)
    assert accuracy == 1.0
    assert between > 4 * within, (within, between)


def test_tiny_separates_motion_direction_and_stillness():
    extractor = create_extractor("tiny")
    groups = {name: modality(extractor.extract(np.stack([square_clip(RED, v, s) for s in range(6)])), extractor,
                             "flow")
              for name, v in (("still", 0.0), ("right", 2.0), ("left", -2.0))}
    within, between, accuracy = separation(groups)
    assert accuracy == 1.0
    assert between > 3 * within, (within, between)


def test_tiny_speed_on_one_core():
    """Snippets per second on one core, preparation of 320×240 frames included (figure printed)."""
    extractor = create_extractor("tiny")
    clips = np.stack([cv2.resize(f, (320, 240)) for f in square_clip(RED, 2.0, 0)])[None].repeat(8, axis=0)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        rate = measure_snippets_per_second(extractor, clips, min_seconds=1.0)
    finally:
        cv2.setNumThreads(threads)
    print(f"\ntiny extractor: {rate:.0f} snippets/s on one core = {rate / REAL_TIME_SNIPPETS_PER_S:.0f}x real time")
    assert np.isfinite(rate) and rate > 0


# -- i3d -------------------------------------------------------------------------------------------------------

torch = pytest.importorskip("torch", reason="the I3D network and its export need torch")
pytest.importorskip("onnx", reason="exporting I3D needs onnx")

from ecm_edge.export.backbones.export import export_backbone_onnx, torch_features  # noqa: E402
from ecm_edge.export.backbones.i3d import (  # noqa: E402
    InceptionI3d,
    load_i3d,
    load_state_dict_strict,
    read_state_dict,
)

SMALL = 32  # crop of the fast tests (the smallest that survives I3D's five 2× reductions); 224 runs once


def random_i3d(in_channels: int, seed: int = 0) -> InceptionI3d:
    """Random weights with batch-norm statistics measured on random clips, so activations keep a unit scale
    through the 50+ layers (with default statistics they vanish and every comparison would be trivial)."""
    torch.manual_seed(seed)
    model = InceptionI3d(in_channels)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.momentum = None  # cumulative average over the calibration batch
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    model.train()
    with torch.no_grad():
        model.features(torch.rand(2, in_channels, 16, SMALL, SMALL) * 2 - 1)
    return model.eval()


@pytest.fixture(scope="module")
def i3d_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("i3d")
    paths = {}
    for modality_name, channels in (("rgb", 3), ("flow", 2)):
        paths[modality_name] = folder / f"{modality_name}_random.pt"
        torch.save(random_i3d(channels).state_dict(), paths[modality_name])
    return paths


@pytest.fixture(scope="module")
def i3d_artifacts(i3d_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("i3d_onnx")
    return {"rgb": export_backbone_onnx("i3d", i3d_weights["rgb"], folder, crop=SMALL)}


def test_state_dict_has_the_published_layout():
    state = InceptionI3d().state_dict()
    expected_shapes = {
        "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
        "Conv3d_1a_7x7.bn.running_mean": (64,),
        "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
        "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
        "Mixed_4f.b2b.bn.running_var": (128,),
        "Mixed_5c.b1b.conv3d.weight": (384, 192, 3, 3, 3),
        "Mixed_5c.b3b.conv3d.weight": (128, 832, 1, 1, 1),
        "logits.conv3d.weight": (400, 1024, 1, 1, 1),
        "logits.conv3d.bias": (400,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    convolutions = [k for k in state if k.endswith("conv3d.weight")]
    assert len(convolutions) == 3 + 9 * 6 + 1  # three stem units, six per inception block, the logits
    assert not any(k.startswith(("MaxPool", "avg_pool")) for k in state)


def test_state_dict_round_trip_and_strict_errors(i3d_weights, tmp_path):
    saved = torch.load(i3d_weights["rgb"], weights_only=True)
    old_style = {k: v for k, v in saved.items() if not k.endswith("num_batches_tracked")}  # as saved by old torch
    torch.save(old_style, tmp_path / "old.pt")
    model = load_i3d(tmp_path / "old.pt")
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, saved[key]), key
    broken = dict(saved)
    del broken["Mixed_4c.b1b.conv3d.weight"]
    with pytest.raises(CheckpointError, match=r"1 missing \(e\.g\. Mixed_4c\.b1b\.conv3d\.weight\)"):
        load_state_dict_strict(model, broken, "test weights")
    with pytest.raises(CheckpointError, match="unexpected"):
        load_state_dict_strict(model, {**saved, "extra.weight": torch.zeros(1)}, "test weights")
    with pytest.raises(CheckpointError, match="another shape"):
        load_state_dict_strict(InceptionI3d(in_channels=2), saved, "test weights")
    torch.save({"epoch": 3}, tmp_path / "not_a_state_dict.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        read_state_dict(tmp_path / "not_a_state_dict.pt")


def test_features_are_1024_per_snippet(i3d_weights):
    clip = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, SMALL, SMALL)).astype(np.float32)
    features = torch_features(i3d_weights["rgb"], clip)
    assert features.shape == (2, 1024) and np.isfinite(features).all()
    assert features.std() > 1e-3  # calibrated random weights: features are not degenerate


def test_onnx_parity_through_the_extractor(i3d_weights, i3d_artifacts):
    extractor = create_extractor("i3d", artifact=i3d_artifacts["rgb"], batch_size=2)
    assert extractor.dim == 1024 and extractor.crop == SMALL
    frames = np.random.default_rng(1).integers(0, 256, (3, 16, 72, 96, 3), dtype=np.uint8)
    features = extractor.extract(frames)
    reference = torch_features(i3d_weights["rgb"], rgb_network_input(prepared_frames(frames, extractor)))
    assert features.shape == (3, 1024)
    scale = np.abs(reference).max()
    assert np.abs(features - reference).max() <= 1e-4 * scale, np.abs(features - reference).max() / scale


def test_rgb_preparation_is_a_centre_crop_scaled_to_unit_range(i3d_artifacts):
    extractor = create_extractor("i3d", artifact=i3d_artifacts["rgb"])
    image = np.zeros((72, 96, 3), np.uint8)
    image[:, :, 2] = 255  # red in BGR
    image[:, :12] = 0  # a black band at the left edge is cut by the centre crop
    prepared = extractor.prepare(image)
    assert prepared.shape == (SMALL, SMALL, 3)
    assert (prepared[..., 0] == 255).all() and (prepared[..., 1:] == 0).all()  # RGB order, band cropped away
    network_input = rgb_network_input(prepared[None, None])
    assert network_input.shape == (1, 3, 1, SMALL, SMALL)
    assert network_input.min() == -1.0 and network_input.max() == 1.0


def test_flow_input_is_farneback_flow_clipped_to_unit_range(i3d_artifacts):
    extractor = create_extractor("i3d", artifact=i3d_artifacts["rgb"])
    flow = flow_network_input(prepared_frames(square_clip(RED, 3.0, seed=2)[None], extractor))
    assert flow.shape == (1, 2, 16, SMALL, SMALL) and np.abs(flow).max() <= 1.0
    assert flow[0, 0].sum() > 2 * abs(flow[0, 1].sum())  # the square moves right: net positive x flow
    still = flow_network_input(prepared_frames(square_clip(RED, 0.0, seed=2)[None], extractor))
    assert np.abs(still).max() < 0.05


@pytest.mark.slow
def test_flow_stream_adds_1024_flow_channels(i3d_weights, i3d_artifacts, tmp_path):
    """Slow: a second ONNX export (the flow network), about 10 s on a 2-core CPU."""
    flow_artifact = export_backbone_onnx("i3d-flow", i3d_weights["flow"], tmp_path, crop=SMALL)
    extractor = create_extractor("i3d", artifact=i3d_artifacts["rgb"], flow_artifact=flow_artifact)
    assert extractor.dim == 2048 and [m for m, _ in extractor.modalities] == ["rgb", "flow"]
    clip = square_clip(RED, 3.0, seed=2)[None]
    flow = flow_network_input(prepared_frames(clip, extractor))
    features = extractor.extract(clip)
    reference = torch_features(i3d_weights["flow"], flow, modality="flow")
    np.testing.assert_allclose(features[:, 1024:], reference, atol=1e-4 * np.abs(reference).max())


@pytest.mark.slow
def test_one_full_size_224_snippet(i3d_weights, tmp_path):
    """The real input size once: export at 224, one snippet through ONNX Runtime and torch (speed printed).

    Slow: about 30 s on a 2-core CPU (the export traces the full network; one 224 snippet is ~27 GFLOP).
    """
    artifact = export_backbone_onnx("i3d", i3d_weights["rgb"], tmp_path, crop=224)
    extractor = create_extractor("i3d", artifact=artifact, batch_size=1)
    frames = np.random.default_rng(3).integers(0, 256, (1, 16, 240, 320, 3), dtype=np.uint8)
    started = time.perf_counter()
    features = extractor.extract(frames)
    onnx_seconds = time.perf_counter() - started
    network_input = rgb_network_input(prepared_frames(frames, extractor))
    model = load_i3d(i3d_weights["rgb"])
    started = time.perf_counter()
    with torch.no_grad():
        reference = model.features(torch.from_numpy(network_input)).numpy()
    torch_seconds = time.perf_counter() - started
    print(f"\ni3d 16x224x224 snippet on CPU: onnxruntime {onnx_seconds:.2f} s, torch {torch_seconds:.2f} s "
          f"({REAL_TIME_SNIPPETS_PER_S * onnx_seconds:.1f}x slower than real time with onnxruntime)")
    assert features.shape == (1, 1024)
    assert np.abs(features - reference).max() <= 1e-4 * np.abs(reference).max()
