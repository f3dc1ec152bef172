"""Backbone contract: a U-Net-shaped network that exposes its stages and calls conditioner hooks.

Backbones never import conditioners; they receive one at `forward` time and call, in order:
`on_input` -> for each encoder level `on_encoder(level, feat)` -> `on_bottleneck(feat)` -> for
each decoder level `on_decoder(level, feat)`. The segmenter then calls `conditioner.predict`.
Level numbering: encoder level 0 is the full-resolution stage, the last encoder level is the
bottleneck; decoder level d is the d-th decoder stage run (coarse to fine).
`encoder_strides[i]` / `decoder_strides[d]` are the cumulative down-sampling factors (per axis)
of that stage w.r.t. the input, so a conditioner can find "the 1/8 stage" on any backbone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class BackboneOutput:
    decoder_out: torch.Tensor           # [B', out_channels, *input spatial]; B' = B or B*K
    encoder_feats: list[torch.Tensor]   # per encoder level, after hooks; last = bottleneck
    decoder_feats: list[torch.Tensor]   # per decoder level, after hooks


class Backbone(nn.Module):
    in_channels: int
    encoder_channels: list[int]
    decoder_channels: list[int]
    out_channels: int
    encoder_strides: list[tuple[int, int, int]]
    decoder_strides: list[tuple[int, int, int]]

    #: Top-level child modules that make up the encoder (`encoder_parameters`).
    encoder_modules: tuple[str, ...] = ("encoder",)

    def in_encoder(self, name: str) -> bool:
        """Whether a parameter / state-dict name (relative to the backbone) is the encoder's."""
        return name.split(".", 1)[0] in self.encoder_modules

    def encoder_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of the encoder (what fine-tuning may initialise or freeze alone)."""
        return [(n, p) for n, p in self.named_parameters() if self.in_encoder(n)]

    @property
    def bottleneck_channels(self) -> int:
        return self.encoder_channels[-1]

    @property
    def size_multiple(self) -> tuple[int, int, int]:
        """Input sizes must be multiples of this (the bottleneck's cumulative stride)."""
        return tuple(self.encoder_strides[-1])

    def forward(self, x: torch.Tensor, conditioner, ctx) -> BackboneOutput:  # pragma: no cover
        raise NotImplementedError


def match_batch(skip: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat a skip connection when the conditioner expanded the batch to B*K at the bottleneck."""
    if skip.shape[0] == batch:
        return skip
    if batch % skip.shape[0]:
        raise ValueError(f"cannot expand a batch of {skip.shape[0]} to {batch}")
    return skip.repeat_interleave(batch // skip.shape[0], dim=0)
