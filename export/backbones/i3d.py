"""The Inception-v1 I3D network (Carreira & Zisserman, "Quo Vadis, Action Recognition?", CVPR 2017) in torch.

The module tree reproduces the state-dict layout of the widely used PyTorch port of the DeepMind weights
(``rgb_imagenet.pt``, ``flow_imagenet.pt``): ``Conv3d_1a_7x7.conv3d.weight``, ``Conv3d_1a_7x7.bn.running_mean``,
``Mixed_3b.b0.conv3d.weight``, ``Mixed_3b.b1a``/``b1b``/``b2a``/``b2b``/``b3b`` branches, ...,
``logits.conv3d.weight`` and ``logits.conv3d.bias``, so those files load with strict key and shape checks.

Convolutions and max-pools pad like TensorFlow's ``SAME`` (the extra row or column goes after), batch norm uses
ε = 0.001, as in the original. The features are the 1024 channels of ``Mixed_5c`` averaged over time and space:
for a 16-frame 224×224 clip this is exactly the port's 2×7×7 average pool; the logits layer is kept only so the
published files load unchanged. Input: ``[N, C, T, H, W]`` with RGB (C = 3) or optical flow (C = 2) scaled to
[-1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ecm_edge.errors import CheckpointError

BN_EPS = 1e-3
FEATURE_DIM = 1024
KINETICS_CLASSES = 400  # logits of the published checkpoints
IN_CHANNELS = {"rgb": 3, "flow": 2}

# (name, input channels, [branch0, branch1 reduce, branch1, branch2 reduce, branch2, branch3 pool projection])
INCEPTION_BLOCKS: tuple[tuple[str, int, tuple[int, ...]], ...] = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding of one dimension: (before, after), the odd pixel after."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    pads: list[int] = []
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride, strict=True))):  # F.pad wants W first
        pads += same_padding(int(size), k, s)
    return F.pad(x, pads) if any(pads) else x


class Unit3D(nn.Module):
    """Conv3d (``SAME`` padding) → BatchNorm3d → ReLU; the logits unit has a bias and neither BN nor ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), batch_norm: bool = True, activation: bool = True,
                 bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.activation = kernel, stride, activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=BN_EPS) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max pooling with ``SAME`` zero padding (its inputs follow a ReLU, so zeros never win over real values)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four parallel branches (1×1; 1×1→3×3; 1×1→3×3; 3×3 max-pool→1×1), concatenated on channels."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        b0, b1_reduce, b1, b2_reduce, b2, b3 = widths
        self.b0 = Unit3D(in_channels, b0)
        self.b1a = Unit3D(in_channels, b1_reduce)
        self.b1b = Unit3D(b1_reduce, b1, (3, 3, 3))
        self.b2a = Unit3D(in_channels, b2_reduce)
        self.b2b = Unit3D(b2_reduce, b2, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, b3)
        self.out_channels = b0 + b1 + b2 + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """Inception-v1 I3D; :meth:`features` gives the pooled 1024-d clip features, :meth:`forward` the logits."""

    def __init__(self, in_channels: int = 3, num_classes: int = KINETICS_CLASSES):
        super().__init__()
        self.in_channels = in_channels
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        pools = {"Mixed_4b": ("MaxPool3d_4a_3x3", (3, 3, 3)), "Mixed_5b": ("MaxPool3d_5a_2x2", (2, 2, 2))}
        self.blocks: list[str] = []
        for name, channels, widths in INCEPTION_BLOCKS:
            if name in pools:
                pool_name, kernel = pools[name]
                setattr(self, pool_name, MaxPool3dSame(kernel, (2, 2, 2)))
                self.blocks.append(pool_name)
            setattr(self, name, InceptionBlock(channels, widths))
            self.blocks.append(name)
        self.logits = Unit3D(FEATURE_DIM, num_classes, batch_norm=False, activation=False, bias=True)

    def mixed_5c(self, x: torch.Tensor) -> torch.Tensor:
        for name in ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
                     *self.blocks):
            x = getattr(self, name)(x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, T, H, W]`` → ``[N, 1024]``: Mixed_5c averaged over time and space."""
        return self.mixed_5c(x).mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, num_classes]`` averaged over the clip (dropout omitted: inference only)."""
        pooled = self.mixed_5c(x).mean(dim=(2, 3, 4), keepdim=True)
        return self.logits(pooled).flatten(1)


class I3DFeatures(nn.Module):
    """The exported graph: ``frames [N, C, T, H, W]`` → ``features [N, 1024]``."""

    def __init__(self, network: InceptionI3d):
        super().__init__()
        self.network = network

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.network.features(frames)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pt``/``.pth`` state dict (loaded with ``weights_only=True``) or a ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"I3D weights {path} do not exist; pass the local file of the PyTorch I3D port "
                              "(e.g. rgb_imagenet.pt); nothing is downloaded")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read I3D weights {path}: {exc}") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors (got {type(state).__name__}); expected the "
                              "layout of the PyTorch I3D port (Conv3d_1a_7x7.conv3d.weight, ...)")
    prefix = "module."  # saved from nn.DataParallel
    if state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def load_state_dict_strict(model: InceptionI3d, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` requiring every parameter and buffer with its exact shape; name what does not match.

    BatchNorm's ``num_batches_tracked`` counters are optional (checkpoints saved by old torch lack them).
    """
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: {tuple(state[k].shape)} ≠ {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} with another shape (e.g. {'; '.join(wrong[:2])})")
    if problems:
        raise CheckpointError(f"{source} does not match the I3D layout ({model.in_channels} input channels): "
                              f"{'; '.join(problems)}; expected a state dict of the PyTorch I3D port "
                              f"(rgb_imagenet.pt for RGB, flow_imagenet.pt for flow)")
    full = {**{k: expected[k] for k in optional}, **state}
    model.load_state_dict(full, strict=True)


def load_i3d(path: str | Path, modality: str = "rgb") -> InceptionI3d:
    """An I3D network in eval mode with the weights of ``path`` (the class count is taken from the logits)."""
    if modality not in IN_CHANNELS:
        raise CheckpointError(f"unknown I3D modality {modality!r}; choose {' or '.join(IN_CHANNELS)}")
    state = read_state_dict(path)
    logits = state.get("logits.conv3d.weight")
    num_classes = int(logits.shape[0]) if logits is not None else KINETICS_CLASSES
    model = InceptionI3d(IN_CHANNELS[modality], num_classes)
    load_state_dict_strict(model, state, f"I3D weights {path}")
    return model.eval()
