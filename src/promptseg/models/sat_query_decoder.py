"""SAT's query decoder and mask head, shaped like the published checkpoints.

Facts (zhaoziheng/SAT @ 5676be5, model/maskformer.py + transformer_decoder.py), written anew:
- every encoder skip is average-pooled to the bottleneck grid (kernel = stride = 32,16,8,4,2 for
  the five finer skips), concatenated on channels with the bottleneck, and projected
  Linear(sum C, hidden) GELU Linear(hidden, 768) GELU -> one 768-d token per bottleneck voxel;
- a fixed 3-D sinusoidal position code (positional_encodings' PositionalEncoding3D over the
  (H/32, W/32, D/32) grid of the training crop, sin/cos interleaved) is added to the keys only;
- 6 pre-norm DETR decoder layers with cross-attention only (8 heads, FFN 2048, ReLU; each layer
  also owns an unused `norm1`), then a final LayerNorm;
- mask head Linear(768, mid) GELU Linear(mid, C0) GELU, dot product with the finest decoder feature.
"""
from __future__ import annotations

import torch
from torch import nn


def sinusoid_3d(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """[prod(grid), dim] position code: per axis `ceil(dim/6)*2` channels of interleaved sin/cos."""
    ch = int(-(-dim // 6) * 2)
    ch += ch % 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, ch, 2).float() / ch))
    axes = []
    for n in grid:
        arg = torch.arange(n, dtype=torch.float32)[:, None] * inv_freq[None]
        axes.append(torch.stack((arg.sin(), arg.cos()), -1).flatten(-2))  # [n, ch]
    x, y, z = grid
    emb = torch.cat([axes[0][:, None, None].expand(x, y, z, ch), axes[1][None, :, None].expand(x, y, z, ch),
                     axes[2][None, None].expand(x, y, z, ch)], -1)
    return emb[..., :dim].reshape(x * y * z, dim)


class CrossAttentionLayer(nn.Module):
    """Pre-norm DETR decoder layer without self-attention (SAT's variant)."""

    def __init__(self, dim: int, heads: int = 8, ffn: int = 2048):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=0.1)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm1 = nn.LayerNorm(dim)  # present in the checkpoints, never used in the forward
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(0.1)

    def forward(self, q: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """q [N, B, d]; memory, pos [T, B, d] (sequence first, as the authors' code)."""
        a = self.multihead_attn(self.norm2(q), memory + pos, memory, need_weights=False)[0]
        q = q + self.dropout(a)
        return q + self.dropout(self.linear2(self.dropout(torch.relu(self.linear1(self.norm3(q))))))


class QueryStack(nn.Module):
    def __init__(self, dim: int, layers: int = 6, heads: int = 8, ffn: int = 2048):
        super().__init__()
        self.layers = nn.ModuleList(CrossAttentionLayer(dim, heads, ffn) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, q, memory, pos):
        for layer in self.layers:
            q = layer(q, memory, pos)
        return self.norm(q)


def _mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, hidden), nn.GELU(), nn.Linear(hidden, cout), nn.GELU())


class SATQueryHead(nn.Module):
    """Multi-scale image tokens + text queries -> one logit map per query.

    Attribute names are the checkpoints' (`projection_layer`, `transformer_decoder`, `mask_embed_proj`).
    """

    def __init__(self, features: tuple[int, ...], hidden: int, mask_mid: int, crop: tuple[int, int, int],
                 patch: int = 32, dim: int = 768, layers: int = 6, heads: int = 8, ffn: int = 2048):
        super().__init__()
        self.patch = int(patch)
        self.crop = tuple(int(c) for c in crop)
        self.grid = tuple(c // self.patch for c in self.crop)
        self.projection_layer = _mlp(sum(features), hidden, dim)
        self.transformer_decoder = QueryStack(dim, layers, heads, ffn)
        self.mask_embed_proj = _mlp(dim, mask_mid, features[0])
        self.register_buffer("pos_embedding", sinusoid_3d(self.grid, dim), persistent=False)

    def tokens(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """[T, B, dim] image tokens from the encoder skips (finest first)."""
        bottom = skips[-1]
        if tuple(bottom.shape[2:]) != self.grid:
            raise ValueError(f"SAT expects windows of {list(self.crop)} voxels (bottleneck grid {list(self.grid)}), "
                             f"got a bottleneck of {list(bottom.shape[2:])}")
        pooled = [nn.functional.avg_pool3d(s, 2 ** (len(skips) - 1 - i)) for i, s in enumerate(skips[:-1])]
        x = torch.cat(pooled + [bottom], 1).flatten(2).permute(2, 0, 1)  # [T, B, C]
        return self.projection_layer(x)

    def forward(self, queries: torch.Tensor, skips: list[torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
        """queries [N, dim] -> logits [B, N, *spatial]."""
        memory = self.tokens(skips)
        b = memory.shape[1]
        q = queries.to(memory.dtype)[:, None].expand(-1, b, -1)
        pos = self.pos_embedding.to(memory.dtype)[:, None].expand(-1, b, -1)
        masks = self.mask_embed_proj(self.transformer_decoder(q, memory, pos))  # [N, B, C0]
        return torch.einsum("bc...,nbc->bn...", pixels, masks)
