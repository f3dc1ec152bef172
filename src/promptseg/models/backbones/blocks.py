"""Building blocks of the U-Net family: norms, activations, conv blocks, up/down-sampling.

Kept separate from `unet.py` so other backbones (and conditioners that need a small conv stack,
e.g. UniSeg's fusion) build from the same pieces.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError

Triple = tuple[int, int, int]

NORMS = ("instance", "group", "batch", "contbatch")
ACTS = ("relu", "leakyrelu", "prelu", "elu", "gelu")


def triple(value: int | Sequence[int], what: str = "value") -> Triple:
    """An int or a 3-sequence as a 3-tuple of positive ints (anisotropic strides/kernels)."""
    if isinstance(value, int):
        out = (value, value, value)
    else:
        out = tuple(int(v) for v in value)
    if len(out) != 3 or any(v < 1 for v in out):
        raise ConfigError(f"{what} must be a positive int or 3 positive ints, got {value!r}")
    return out  # type: ignore[return-value]


def group_count(channels: int, preferred: int = 16) -> int:
    """Groups for GroupNorm: `preferred` when it divides `channels`, else the largest divisor below it.

    The official Universal Model uses GroupNorm(16, C); small presets may have C not divisible by 16.
    """
    return math.gcd(channels, preferred) or 1


class ContBatchNorm3d(nn.modules.batchnorm._BatchNorm):
    """The official U-Net's ContBatchNorm3d, made independent of batching.

    The official layer calls `F.batch_norm(..., training=True)` in every mode, i.e. it always
    normalises with the statistics of the *current batch*; the official inference runs the
    sliding window with one window per batch, so there it is exactly per-sample (instance)
    normalisation followed by the batch-norm affine. We implement that directly: per-sample,
    per-channel statistics + the learned `weight`/`bias`. Consequences: (1) batching windows or
    samples never changes a sample's output (the official layer would mix samples when the batch
    is > 1); (2) the state dict keeps the batch-norm layout (weight, bias, running_mean,
    running_var, num_batches_tracked) so official checkpoints load 1:1. The running statistics
    are still tracked in training (for inspection) but never used for the output.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected 5D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if x[0, 0].numel() == 1:  # one voxel: the normalised value is 0, only the bias remains
            bias = self.bias if self.bias is not None else x.new_zeros(x.shape[1])
            return x * 0 + bias.view(1, -1, 1, 1, 1)
        track = self.training and self.track_running_stats and self.running_mean is not None
        if track:
            self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
        momentum = 0.1 if self.momentum is None else self.momentum
        return F.instance_norm(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_input_stats=True,
            momentum=momentum,
            eps=self.eps,
        )


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, eps=1e-5, affine=True)
    if kind == "group":
        return nn.GroupNorm(group_count(channels, 8), channels)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "contbatch":
        return ContBatchNorm3d(channels)
    raise ConfigError(f"unknown norm {kind!r}; choose one of {NORMS}")


def make_act(kind: str, channels: int) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leakyrelu":
        return nn.LeakyReLU(0.01, inplace=True)
    if kind == "prelu":
        return nn.PReLU(channels)
    if kind == "elu":
        return nn.ELU(inplace=True)
    if kind == "gelu":
        return nn.GELU()
    raise ConfigError(f"unknown activation {kind!r}; choose one of {ACTS}")


def _pad(kernel: Triple) -> Triple:
    return tuple(k // 2 for k in kernel)  # type: ignore[return-value]


def conv_norm_act(cin: int, cout: int, kernel: Triple, stride: Triple, norm: str, act: str):
    """The (conv, norm, act) triple of every block; returned loose so each block keeps its own
    attribute names (they are the state-dict keys of saved checkpoints)."""
    return (nn.Conv3d(cin, cout, kernel, stride=stride, padding=_pad(kernel), bias=True),
            make_norm(norm, cout), make_act(act, cout))


class ConvBlock(nn.Module):
    """conv -> norm -> act (nnU-Net's ConvDropoutNormReLU without dropout; official LUConv)."""

    def __init__(self, cin: int, cout: int, kernel: Triple = (3, 3, 3), stride: Triple = (1, 1, 1),
                 norm: str = "instance", act: str = "leakyrelu"):
        super().__init__()
        self.conv, self.norm, self.act = conv_norm_act(cin, cout, kernel, stride, norm, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ResidualBlock(nn.Module):
    """Two conv-norm layers with an identity (or 1x1 projection) shortcut, act after the sum."""

    def __init__(self, cin: int, cout: int, kernel: Triple = (3, 3, 3), stride: Triple = (1, 1, 1),
                 norm: str = "instance", act: str = "leakyrelu"):
        super().__init__()
        self.conv1, self.norm1, self.act1 = conv_norm_act(cin, cout, kernel, stride, norm, act)
        self.conv2, self.norm2, self.act2 = conv_norm_act(cout, cout, kernel, (1, 1, 1), norm, act)
        if cin != cout or any(s != 1 for s in stride):
            self.skip = nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), make_norm(norm, cout))
        else:
            self.skip = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(y + self.skip(x))


BLOCKS = {"plain": ConvBlock, "residual": ResidualBlock}


def make_block(kind: str, cin: int, cout: int, kernel: Triple, stride: Triple, norm: str, act: str) -> nn.Module:
    if kind not in BLOCKS:
        raise ConfigError(f"unknown block {kind!r}; choose one of {sorted(BLOCKS)}")
    return BLOCKS[kind](cin, cout, kernel, stride, norm, act)


class Upsample(nn.Module):
    """Trilinear up-sampling followed by a 1x1x1 conv to the wanted channel count."""

    def __init__(self, cin: int, cout: int, stride: Triple):
        super().__init__()
        self.scale = tuple(float(s) for s in stride)
        self.proj = nn.Conv3d(cin, cout, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = [int(n * s) for n, s in zip(x.shape[2:], self.scale)]
        return self.proj(F.interpolate(x, size=size, mode="trilinear", align_corners=False))


def make_upsample(kind: str, cin: int, cout: int, stride: Triple) -> nn.Module:
    if kind == "transpose":
        return nn.ConvTranspose3d(cin, cout, kernel_size=stride, stride=stride)
    if kind == "trilinear":
        return Upsample(cin, cout, stride)
    raise ConfigError(f"unknown upsample {kind!r}; choose 'transpose' or 'trilinear'")


def check_input(x: torch.Tensor, in_channels: int | None, multiple: Sequence[int], who: str) -> None:
    """One-line error for an input the backbone cannot take (instead of a deep shape error).

    Backbones check the shape before `on_input` and the channel count (in_channels) after it, so
    a conditioner may map other channel counts to the backbone's (MedUniSeg's input stems).
    """
    from ...errors import InputError

    if x.dim() != 5:
        raise InputError(None, f"{who}: expected a 5D tensor [B, C, X, Y, Z], got shape {tuple(x.shape)}")
    if in_channels is not None and x.shape[1] != in_channels:
        raise InputError(None, f"{who}: expected {in_channels} input channel(s), got {x.shape[1]}")
    bad = [n for n, m in zip(x.shape[2:], multiple) if n % m]
    if bad:
        raise InputError(
            None,
            f"{who}: spatial size {tuple(x.shape[2:])} must be a multiple of {tuple(multiple)} per axis "
            "(pad the input or use sliding-window inference)",
        )


def check_hook(feat: torch.Tensor, channels: int, batch: int | None, hook: str) -> torch.Tensor:
    """A conditioner hook must keep the channel count (and the batch, except at the bottleneck)."""
    if feat.shape[1] != channels:
        raise RuntimeError(f"conditioner hook {hook} changed channels from {channels} to {feat.shape[1]}")
    if batch is not None and feat.shape[0] != batch:
        raise RuntimeError(f"conditioner hook {hook} changed the batch from {batch} to {feat.shape[0]}")
    return feat
