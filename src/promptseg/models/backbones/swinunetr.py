"""Swin UNETR behind the backbone contract, built from MONAI's blocks.

Module names (`swinViT`, `encoder1..4`, `encoder10`, `decoder1..5`) are those of MONAI's
`SwinUNETR` and of the Universal Model's copy of it, so their state dicts load with a prefix
rename (see `promptseg.models.official`).

Why we drive the Swin transformer stage by stage instead of calling `swinViT(x)` once: so a
conditioner hook at encoder levels 1-4 acts on the transformer *stream* (its output flows into
the deeper stages and into the skip connection of that scale), exactly as on a CNN encoder.
With identity hooks the computation is MONAI's `SwinUNETR.forward` (tested).

Levels (feature_size f = 48):   encoder  0: encoder1(x)              f  @1
                                         1: patch embedding stream   f  @1/2
                                         2: swin stage 1 stream     2f  @1/4
                                         3: swin stage 2 stream     4f  @1/8
                                         4: swin stage 3 stream     8f  @1/16
                                         5: encoder10(stage 4)     16f  @1/32 (bottleneck)
                                decoder  0..4: decoder5..decoder1   8f, 4f, 2f, f, f @ 1/16..1
Differences from the official (ljwztc/CLIP-Driven-Universal-Model) SwinUNETR: `downsample`
selects the patch-merging order -- "merging"/"mergingv2" are MONAI's, "official" reproduces the
official repository's own PatchMerging (which picks sub-voxels (0,1,0) and (0,0,1) twice and
never (1,1,0), (0,1,1)); official checkpoints need downsample="official". `img_size` is accepted
for config compatibility only (MONAI >= 1.5 removed it; the size is checked at run time).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetrBasicBlock, UnetrUpBlock
from monai.networks.nets.swin_unetr import MERGING_MODE, PatchMergingV2, SwinTransformer
from torch import nn

from ...errors import ConfigError
from ..conditioners.base import Conditioner
from .base import Backbone, BackboneOutput, match_batch
from .blocks import check_hook, check_input

# (depth, height, width) offsets of the 8 sub-voxels, in the order the official code concatenates them
OFFICIAL_MERGE_ORDER = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1))


class OfficialPatchMerging(PatchMergingV2):
    """Patch merging with the official Universal Model's sub-voxel order (for its checkpoints)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            return super().forward(x)
        _, d, h, w, _ = x.shape
        if d % 2 or h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        x = torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in OFFICIAL_MERGE_ORDER], -1)
        return self.reduction(self.norm(x))


DOWNSAMPLE = {**MERGING_MODE, "official": OfficialPatchMerging}


class SwinUNETRBackbone(Backbone):
    #: the transformer and the per-scale encoder blocks feeding the skips and the bottleneck
    encoder_modules = ("swinViT", "encoder1", "encoder2", "encoder3", "encoder4", "encoder10")

    def __init__(
        self,
        in_channels: int = 1,
        img_size: int | Sequence[int] | None = None,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        norm_name: str = "instance",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        dropout_path_rate: float = 0.0,
        normalize: bool = True,
        use_checkpoint: bool = False,
        downsample: str = "merging",
        use_v2: bool = False,
    ):
        super().__init__()
        if feature_size % 12:
            raise ConfigError(f"Swin UNETR feature_size must be divisible by 12, got {feature_size}")
        if len(depths) != 4 or len(num_heads) != 4:
            raise ConfigError("Swin UNETR needs 4 entries in depths and num_heads")
        if downsample not in DOWNSAMPLE:
            raise ConfigError(f"unknown Swin downsample {downsample!r}; choose one of {sorted(DOWNSAMPLE)}")
        if img_size is not None:
            sizes = [img_size] * 3 if isinstance(img_size, int) else list(img_size)
            if any(int(s) % 32 for s in sizes):
                raise ConfigError(f"Swin UNETR img_size must be a multiple of 32 per axis, got {img_size}")
        f = feature_size
        self.normalize = normalize
        self.config = dict(feature_size=f, depths=tuple(depths), num_heads=tuple(num_heads), window_size=window_size,
                           norm_name=norm_name, normalize=normalize, downsample=downsample, use_v2=use_v2)
        self.swinViT = SwinTransformer(
            in_chans=in_channels, embed_dim=f, window_size=(window_size,) * 3, patch_size=(2, 2, 2),
            depths=depths, num_heads=num_heads, mlp_ratio=4.0, qkv_bias=True, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=dropout_path_rate, norm_layer=nn.LayerNorm,
            use_checkpoint=use_checkpoint, spatial_dims=3, downsample=DOWNSAMPLE[downsample], use_v2=use_v2,
        )

        def basic(cin: int, cout: int) -> UnetrBasicBlock:
            return UnetrBasicBlock(spatial_dims=3, in_channels=cin, out_channels=cout, kernel_size=3, stride=1,
                                   norm_name=norm_name, res_block=True)

        def up(cin: int, cout: int) -> UnetrUpBlock:
            return UnetrUpBlock(spatial_dims=3, in_channels=cin, out_channels=cout, kernel_size=3,
                                upsample_kernel_size=2, norm_name=norm_name, res_block=True)

        self.encoder1 = basic(in_channels, f)
        self.encoder2 = basic(f, f)
        self.encoder3 = basic(2 * f, 2 * f)
        self.encoder4 = basic(4 * f, 4 * f)
        self.encoder10 = basic(16 * f, 16 * f)
        self.decoder5 = up(16 * f, 8 * f)
        self.decoder4 = up(8 * f, 4 * f)
        self.decoder3 = up(4 * f, 2 * f)
        self.decoder2 = up(2 * f, f)
        self.decoder1 = up(f, f)

        self.in_channels = in_channels
        self.encoder_channels = [f, f, 2 * f, 4 * f, 8 * f, 16 * f]
        self.decoder_channels = [8 * f, 4 * f, 2 * f, f, f]
        self.out_channels = f
        self.encoder_strides = [(s, s, s) for s in (1, 2, 4, 8, 16, 32)]  # type: ignore[assignment]
        self.decoder_strides = [(s, s, s) for s in (16, 8, 4, 2, 1)]  # type: ignore[assignment]

    def _stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        vit = self.swinViT
        if vit.use_v2:
            x = getattr(vit, f"layers{i}c")[0](x.contiguous())
        return getattr(vit, f"layers{i}")[0](x.contiguous())

    def forward(self, x: torch.Tensor, conditioner: Conditioner | None = None, ctx=None) -> BackboneOutput:
        check_input(x, None, self.size_multiple, type(self).__name__)
        cond = conditioner if conditioner is not None else _IDENTITY
        ch = self.encoder_channels
        x = cond.on_input(x, ctx)
        check_input(x, self.in_channels, self.size_multiple, type(self).__name__)
        batch = x.shape[0]
        proj = lambda t: self.swinViT.proj_out(t, self.normalize)  # noqa: E731 - per-scale LayerNorm

        enc0 = check_hook(cond.on_encoder(0, self.encoder1(x), ctx), ch[0], batch, "on_encoder(0)")
        stream = self.swinViT.pos_drop(self.swinViT.patch_embed(x))
        feats = [enc0]
        skips = [enc0]
        for level in range(1, 5):
            stream = check_hook(cond.on_encoder(level, stream, ctx), ch[level], batch, f"on_encoder({level})")
            feats.append(stream)
            hidden = proj(stream)
            skips.append(getattr(self, f"encoder{level + 1}")(hidden) if level < 4 else hidden)
            stream = self._stage(level, stream)
        bottleneck = self.encoder10(proj(stream))
        bottleneck = check_hook(cond.on_encoder(5, bottleneck, ctx), ch[5], batch, "on_encoder(5)")
        h = check_hook(cond.on_bottleneck(bottleneck, ctx), ch[5], None, "on_bottleneck")
        feats.append(h)

        dec = []
        for d, name in enumerate(("decoder5", "decoder4", "decoder3", "decoder2", "decoder1")):
            skip = match_batch(skips[4 - d], h.shape[0])
            h = getattr(self, name)(h, skip)
            h = check_hook(cond.on_decoder(d, h, ctx), self.decoder_channels[d], skip.shape[0], f"on_decoder({d})")
            dec.append(h)
        return BackboneOutput(decoder_out=h, encoder_feats=feats, decoder_feats=dec)


_IDENTITY = Conditioner()
