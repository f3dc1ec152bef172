"""The plain-convolution U-Net SAT's published models use as vision backbone.

Why a separate backbone: SAT-Nano / SAT-Pro were trained on the nnU-Net "PlainConvUNet" of
dynamic-network-architectures (6 stages, strides 1,2,2,2,2,2, conv 3^3 with bias -> InstanceNorm
(affine, eps 1e-5) -> LeakyReLU(0.01), transposed-conv 2^3 upsampling, concat [up, skip]). Module
names follow that layout (`encoder.stages.S.0.convs.J.{conv,norm}`, `decoder.stages.S.convs.J`,
`decoder.transpconvs.S`) so the published weights load by name. Written from those facts, not copied.

`forward` returns the encoder skips (finest first) and the finest decoder output: SAT's query
decoder pools every skip, its mask head dots the finest decoder feature.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

# features per stage and convolutions per stage (decoder: one fewer stage) of the published models
SAT_UNET_PRESETS: dict[str, dict[str, tuple[int, ...] | int]] = {
    "nano": {"features": (64, 64, 128, 256, 512, 768), "convs": 2},   # authors' 'UNET'
    "pro": {"features": (128, 128, 256, 512, 1024, 1536), "convs": 3},  # authors' 'UNET-L'
}


class ConvNormAct(nn.Module):
    """conv 3^3 (bias) -> InstanceNorm3d(affine) -> LeakyReLU(0.01)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, stride, padding=1, bias=True)
        self.norm = nn.InstanceNorm3d(cout, eps=1e-5, affine=True)
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ConvStack(nn.Module):
    """`n` ConvNormAct blocks in `self.convs`; the first one may stride."""

    def __init__(self, n: int, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.convs = nn.Sequential(*[ConvNormAct(cin if j == 0 else cout, cout, stride if j == 0 else 1)
                                     for j in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class SATEncoder(nn.Module):
    def __init__(self, in_channels: int, features: Sequence[int], convs: int):
        super().__init__()
        stages, cin = [], in_channels
        for s, cout in enumerate(features):
            stages.append(nn.Sequential(ConvStack(convs, cin, cout, 1 if s == 0 else 2)))
            cin = cout
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class SATDecoder(nn.Module):
    def __init__(self, features: Sequence[int], convs: int):
        super().__init__()
        rev = list(features)[::-1]
        self.transpconvs = nn.ModuleList(nn.ConvTranspose3d(rev[i], rev[i + 1], 2, 2, bias=True)
                                         for i in range(len(rev) - 1))
        self.stages = nn.ModuleList(ConvStack(convs, 2 * rev[i + 1], rev[i + 1]) for i in range(len(rev) - 1))

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        x = skips[-1]
        for i, (up, stage) in enumerate(zip(self.transpconvs, self.stages)):
            x = stage(torch.cat((up(x), skips[-(i + 2)]), 1))
        return x


class SATPlainUNet(nn.Module):
    """SAT's vision backbone: `forward(x) -> (skips finest-first, finest decoder feature)`."""

    def __init__(self, preset: str = "nano", in_channels: int = 3,
                 features: Sequence[int] | None = None, convs: int | None = None):
        super().__init__()
        spec = SAT_UNET_PRESETS[preset]
        self.features = tuple(features or spec["features"])
        n = int(convs or spec["convs"])
        self.encoder = SATEncoder(in_channels, self.features, n)
        self.decoder = SATDecoder(self.features, n)

    @property
    def pixel_dim(self) -> int:
        return self.features[0]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = self.encoder(x)
        return skips, self.decoder(skips)
