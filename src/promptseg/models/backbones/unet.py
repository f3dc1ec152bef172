"""The U-Net family behind one class, with named presets.

Presets (every field can be overridden by a keyword):
- "small":   the default; widths 8..128, 1.26M parameters, 8-channel output; a training step on
             a 64^3 patch at batch 2 takes ~0.3 s on 2 CPU cores (tests, demo, CPU training).
- "nnunet":  UniSeg / nnU-Net plain conv U-Net: 6 stages 32..320, 2x (conv-IN-LeakyReLU) per
             stage, strided-conv down-sampling, transposed-conv up-sampling.
- "official_unet": the Universal Model's UNet3D (Models Genesis style): 4 stages with two convs
             each (32->64, 64->128, 128->256, 256->512), ContBatchNorm, ReLU, max-pool, transposed
             convs that keep the channel count; 19.07M parameters (64-channel output, 512-channel
             bottleneck). Official checkpoints load via `promptseg.models.official`.
Anisotropic strides (e.g. (2, 2, 1)) let thin or depth-1 volumes (2D as pseudo-3D) go through.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ...errors import ConfigError
from ..conditioners.base import Conditioner
from .base import Backbone, BackboneOutput, match_batch
from .blocks import Triple, check_hook, check_input, make_block, make_upsample, triple

PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(
        widths=(8, 16, 32, 64, 128), blocks_per_stage=(1, 2, 2, 2, 2), decoder_blocks=1, block="plain",
        norm="instance", act="leakyrelu", strides=[(2, 2, 2)] * 4, downsample="conv", upsample="transpose",
        up_width="skip",
    ),
    "nnunet": dict(
        widths=(32, 64, 128, 256, 320, 320), blocks_per_stage=2, decoder_blocks=2, block="plain",
        norm="instance", act="leakyrelu", strides=[(2, 2, 2)] * 5, downsample="conv", upsample="transpose",
        up_width="skip",
    ),
    "official_unet": dict(
        widths=(64, 128, 256, 512), first_widths=(32, 64, 128, 256), blocks_per_stage=2, decoder_blocks=2,
        block="plain", norm="contbatch", act="relu", strides=[(2, 2, 2)] * 3, downsample="maxpool",
        upsample="transpose", up_width="same",
    ),
}


def _per_stage(value: Any, n: int, what: str) -> list:
    """A scalar for every stage, or a list with one entry per stage."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ConfigError(f"{what} needs {n} entries (one per stage), got {len(value)}")
        return list(value)
    return [value] * n


class EncoderStage(nn.Module):
    def __init__(self, pool: nn.Module | None, blocks: list[nn.Module]):
        super().__init__()
        self.pool = pool if pool is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pool(x))


class DecoderStage(nn.Module):
    def __init__(self, up: nn.Module, blocks: list[nn.Module]):
        super().__init__()
        self.up = up
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.blocks(torch.cat([self.up(x), skip], dim=1))


class UNet(Backbone):
    """Configurable U-Net calling the conditioner hooks at every stage (see backbones/base.py).

    `preset` gives the defaults, any keyword overrides them (preset=None: the "small" defaults).
    widths: channels per stage (stage 0 = full resolution, last = bottleneck); strides: one
    (per-axis) stride between consecutive stages; first_widths: width of a stage's first conv
    (official U-Net: half the stage width); up_width: "skip" (the up-sampling outputs the skip's
    width, nnU-Net) or "same" (keeps its input width, official U-Net); out_channels: adds a
    1x1x1 conv-norm-act projection of the last decoder stage when it differs from widths[0].
    """

    def __init__(
        self,
        in_channels: int = 1,
        preset: str | None = "small",
        widths: Sequence[int] | None = None,
        blocks_per_stage: int | Sequence[int] | None = None,
        decoder_blocks: int | Sequence[int] | None = None,
        block: str | None = None,
        norm: str | None = None,
        act: str | None = None,
        strides: Sequence[int | Sequence[int]] | None = None,
        kernel_sizes: int | Sequence[int | Sequence[int]] | None = None,
        downsample: str | None = None,
        upsample: str | None = None,
        up_width: str | None = None,
        first_widths: Sequence[int] | None = None,
        out_channels: int | None = None,
    ):
        super().__init__()
        if preset is not None and preset not in PRESETS:
            raise ConfigError(f"unknown U-Net preset {preset!r}; choose one of {sorted(PRESETS)} or None")
        base = dict(PRESETS["small" if preset is None else preset])
        given = dict(widths=widths, blocks_per_stage=blocks_per_stage, decoder_blocks=decoder_blocks, block=block,
                     norm=norm, act=act, strides=strides, kernel_sizes=kernel_sizes, downsample=downsample,
                     upsample=upsample, up_width=up_width, first_widths=first_widths)
        if widths is not None and strides is None:
            base["strides"] = [(2, 2, 2)] * (len(widths) - 1)
        if widths is not None and first_widths is None:
            base.pop("first_widths", None)
        if widths is not None and blocks_per_stage is None and isinstance(base.get("blocks_per_stage"), (list, tuple)):
            base["blocks_per_stage"] = 2
        cfg = {**base, **{k: v for k, v in given.items() if v is not None}}
        self.config = {"preset": preset, **cfg, "out_channels": out_channels}

        w = [int(c) for c in cfg["widths"]]
        n = len(w)
        if n < 2:
            raise ConfigError("a U-Net needs at least 2 stages (widths)")
        stride_list = [triple(s, "stride") for s in cfg["strides"]]
        if len(stride_list) != n - 1:
            raise ConfigError(f"strides needs {n - 1} entries (between {n} stages), got {len(stride_list)}")
        kernels = [triple(k, "kernel size") for k in _per_stage(cfg.get("kernel_sizes", 3) or 3, n, "kernel_sizes")]
        enc_blocks = [int(b) for b in _per_stage(cfg["blocks_per_stage"], n, "blocks_per_stage")]
        dec_blocks = [int(b) for b in _per_stage(cfg["decoder_blocks"], n - 1, "decoder_blocks")]
        firsts = [int(c) for c in _per_stage(cfg.get("first_widths") or w, n, "first_widths")]
        if any(b < 1 for b in enc_blocks + dec_blocks):
            raise ConfigError("every stage needs at least one block")
        kind, norm_, act_ = cfg["block"], cfg["norm"], cfg["act"]
        down, up_kind, up_w = cfg["downsample"], cfg["upsample"], cfg["up_width"]
        if down not in ("conv", "maxpool"):
            raise ConfigError(f"unknown downsample {down!r}; choose 'conv' or 'maxpool'")
        if up_w not in ("skip", "same"):
            raise ConfigError(f"unknown up_width {up_w!r}; choose 'skip' or 'same'")

        self.encoder = nn.ModuleList()
        cin = in_channels
        for i in range(n):
            stride: Triple = stride_list[i - 1] if i > 0 else (1, 1, 1)
            pool = nn.MaxPool3d(stride, stride) if (i > 0 and down == "maxpool") else None
            first_stride = stride if (i > 0 and down == "conv") else (1, 1, 1)
            blocks = []
            for j in range(enc_blocks[i]):
                cout = firsts[i] if j == 0 and enc_blocks[i] > 1 else w[i]
                blocks.append(make_block(kind, cin, cout, kernels[i], first_stride if j == 0 else (1, 1, 1), norm_, act_))
                cin = cout
            self.encoder.append(EncoderStage(pool, blocks))

        self.decoder = nn.ModuleList()
        for d in range(n - 1):
            t = n - 2 - d
            up_out = w[t] if up_w == "skip" else cin
            up = make_upsample(up_kind, cin, up_out, stride_list[t])
            blocks = []
            c = up_out + w[t]
            for j in range(dec_blocks[d]):
                blocks.append(make_block(kind, c, w[t], kernels[t], (1, 1, 1), norm_, act_))
                c = w[t]
            self.decoder.append(DecoderStage(up, blocks))
            cin = w[t]

        if out_channels is not None and out_channels != w[0]:
            self.out_proj: nn.Module = make_block("plain", w[0], out_channels, (1, 1, 1), (1, 1, 1), norm_, act_)
        else:
            self.out_proj = nn.Identity()

        cum = [(1, 1, 1)]
        for s in stride_list:
            cum.append(tuple(a * b for a, b in zip(cum[-1], s)))  # type: ignore[arg-type]
        self.in_channels = in_channels
        self.encoder_channels = w
        self.decoder_channels = [w[n - 2 - d] for d in range(n - 1)]
        self.out_channels = out_channels or w[0]
        self.encoder_strides = cum  # type: ignore[assignment]
        self.decoder_strides = [cum[n - 2 - d] for d in range(n - 1)]  # type: ignore[misc]

    def forward(self, x: torch.Tensor, conditioner: Conditioner | None = None, ctx=None) -> BackboneOutput:
        check_input(x, None, self.size_multiple, type(self).__name__)
        cond = conditioner if conditioner is not None else _IDENTITY
        h = cond.on_input(x, ctx)
        check_input(h, self.in_channels, self.size_multiple, type(self).__name__)
        batch = h.shape[0]
        last = len(self.encoder) - 1
        enc: list[torch.Tensor] = []
        for i, stage in enumerate(self.encoder):
            h = check_hook(cond.on_encoder(i, stage(h), ctx), self.encoder_channels[i], batch, f"on_encoder({i})")
            if i == last:
                h = check_hook(cond.on_bottleneck(h, ctx), self.encoder_channels[i], None, "on_bottleneck")
            enc.append(h)
        dec: list[torch.Tensor] = []
        for d, stage in enumerate(self.decoder):
            skip = match_batch(enc[last - 1 - d], h.shape[0])
            h = stage(h, skip)
            h = check_hook(cond.on_decoder(d, h, ctx), self.decoder_channels[d], skip.shape[0], f"on_decoder({d})")
            dec.append(h)
        return BackboneOutput(decoder_out=self.out_proj(h), encoder_feats=enc, decoder_feats=dec)


_IDENTITY = Conditioner()
