"""SegResNet (Myronenko 2018; MONAI's `SegResNet`) behind the backbone contract, from MONAI's blocks.

Why a second CNN: the FLARE23 Universal Model (universal-model-flare23) runs the CLIP-driven head
on a light SegResNet for speed (4.69M parameters with the head, 81.93 GFLOPs per window).
We drive MONAI's pieces (`ResBlock`, `get_conv_layer`, `get_upsample_layer`) stage by stage so
the conditioner hooks see every scale; with identity hooks the computation is MONAI's
`SegResNet.forward` minus its final norm-act-conv (the conditioner's head replaces it).

Levels (init_filters f):  encoder i: (strided conv, i > 0) + blocks_down[i] ResBlocks, f*2^i @ 1/2^i
                          (the last one is the bottleneck)
                          decoder d: 1x1x1 conv halving the channels + up-sampling, **added** to the
                          skip of that scale (SegResNet sums, a U-Net concatenates), then
                          blocks_up[d] ResBlocks; coarse to fine, ending at f @ 1.
Presets (every field can be overridden by a keyword):
- "flare23": f = 16, blocks_down (1, 2, 2, 4), blocks_up (1, 1, 1), GroupNorm(8), ReLU -- MONAI's
             SegResNet defaults at 16 filters; 4.70M parameters in the backbone, 4.91M with the
             Universal head for 14 classes (shared controller, 384-d text; counted in a test);
             84.1 G multiply-adds on the paper's 32x192x192 patch (torch's FlopCounterMode / 2),
             against the paper's "81.93G flops" (fvcore-style tools count multiply-adds).
- "small":   f = 8, same depth (1.18M parameters); for tests and CPU training.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from monai.networks.blocks.segresnet_block import ResBlock, get_conv_layer, get_upsample_layer
from torch import nn

from ...errors import ConfigError
from ..conditioners.base import Conditioner
from .base import Backbone, BackboneOutput, match_batch
from .blocks import check_hook, check_input

PRESETS: dict[str, dict[str, Any]] = {
    "flare23": dict(init_filters=16, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), norm=("GROUP", {"num_groups": 8})),
    "small": dict(init_filters=8, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), norm=("GROUP", {"num_groups": 8})),
}
ACT = ("RELU", {"inplace": True})


def _norm_spec(norm: Any) -> Any:
    """YAML gives lists; MONAI's factories want a (name, kwargs) tuple or a name."""
    return tuple(norm) if isinstance(norm, list) else norm


class SegResNetBackbone(Backbone):
    """SegResNet encoder/decoder calling the conditioner hooks at every stage (see backbones/base.py)."""

    def __init__(
        self,
        in_channels: int = 1,
        preset: str | None = "flare23",
        init_filters: int | None = None,
        blocks_down: Sequence[int] | None = None,
        blocks_up: Sequence[int] | None = None,
        norm: Any = None,
        upsample_mode: str = "nontrainable",
        dropout_prob: float | None = None,
    ):
        super().__init__()
        if preset is not None and preset not in PRESETS:
            raise ConfigError(f"unknown SegResNet preset {preset!r}; choose one of {sorted(PRESETS)} or None")
        base = dict(PRESETS["flare23" if preset is None else preset])
        given = dict(init_filters=init_filters, blocks_down=blocks_down, blocks_up=blocks_up, norm=norm)
        cfg = {**base, **{k: v for k, v in given.items() if v is not None}}
        self.config = {"preset": preset, **cfg, "upsample_mode": upsample_mode, "dropout_prob": dropout_prob}
        f = int(cfg["init_filters"])
        down = [int(b) for b in cfg["blocks_down"]]
        up = [int(b) for b in cfg["blocks_up"]]
        norm_ = _norm_spec(cfg["norm"])
        if len(down) < 2 or len(up) != len(down) - 1:
            raise ConfigError(
                f"SegResNet needs >= 2 encoder stages and one decoder stage fewer: blocks_down={down}, blocks_up={up}"
            )
        if f < 1 or min(down) < 1 or min(up) < 0:
            raise ConfigError("SegResNet: init_filters and blocks_down must be >= 1, blocks_up >= 0")
        n = len(down)
        widths = [f * 2**i for i in range(n)]

        self.conv_init = get_conv_layer(3, in_channels, f)
        self.dropout = nn.Dropout3d(dropout_prob) if dropout_prob else nn.Identity()
        self.encoder = nn.ModuleList()
        for i, blocks in enumerate(down):
            entry = get_conv_layer(3, widths[i - 1], widths[i], stride=2) if i > 0 else nn.Identity()
            self.encoder.append(nn.Sequential(entry, *[ResBlock(3, widths[i], norm=norm_, act=ACT) for _ in range(blocks)]))
        self.up_samples = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for d, blocks in enumerate(up):
            c = widths[n - 1 - d]
            self.up_samples.append(
                nn.Sequential(get_conv_layer(3, c, c // 2, kernel_size=1), get_upsample_layer(3, c // 2, upsample_mode))
            )
            self.decoder.append(nn.Sequential(*[ResBlock(3, c // 2, norm=norm_, act=ACT) for _ in range(blocks)]))

        cum = [tuple([2**i] * 3) for i in range(n)]
        self.in_channels = in_channels
        self.encoder_channels = widths
        self.decoder_channels = [widths[n - 2 - d] for d in range(n - 1)]
        self.out_channels = f
        self.encoder_strides = cum  # type: ignore[assignment]
        self.decoder_strides = [cum[n - 2 - d] for d in range(n - 1)]  # type: ignore[assignment]

    def forward(self, x: torch.Tensor, conditioner: Conditioner | None = None, ctx=None) -> BackboneOutput:
        who = type(self).__name__
        check_input(x, None, self.size_multiple, who)
        cond = conditioner if conditioner is not None else _IDENTITY
        h = cond.on_input(x, ctx)
        check_input(h, self.in_channels, self.size_multiple, who)
        batch = h.shape[0]
        h = self.dropout(self.conv_init(h))
        enc: list[torch.Tensor] = []
        for i, stage in enumerate(self.encoder):
            h = check_hook(cond.on_encoder(i, stage(h), ctx), self.encoder_channels[i], batch, f"on_encoder({i})")
            enc.append(h)
        # the bottleneck hook may expand the batch to B*K (skips are repeated to match below)
        h = enc[-1] = check_hook(cond.on_bottleneck(h, ctx), self.bottleneck_channels, None, "on_bottleneck")
        last = len(enc) - 1
        dec: list[torch.Tensor] = []
        for d, (up, stage) in enumerate(zip(self.up_samples, self.decoder)):
            h = up(h)
            skip = match_batch(enc[last - 1 - d], h.shape[0])
            h = stage(h + skip)
            h = check_hook(cond.on_decoder(d, h, ctx), self.decoder_channels[d], skip.shape[0], f"on_decoder({d})")
            dec.append(h)
        return BackboneOutput(decoder_out=h, encoder_feats=enc, decoder_feats=dec)


_IDENTITY = Conditioner()
