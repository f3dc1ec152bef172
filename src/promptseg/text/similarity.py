"""How alike the text encoder finds two class prompts (cosine of their embeddings).

Why: a text-conditioned method can only tell classes apart as far as their embeddings differ.
Under MiniLM "left kidney" and "right kidney" are nearly the same vector (issue 17 measured cosine
0.97), so a model that learns one learns the other's mask too; the bench prints the closest pairs
beside its Dice so such a failure is read as the encoder's, not the method's.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def closest_pairs(names: Sequence[str], embeddings: torch.Tensor, top: int = 5) -> list[tuple[str, str, float]]:
    """The `top` most similar class pairs, (a, b, cosine), most similar first; embeddings [N, D]."""
    if embeddings.shape[0] != len(names):
        raise ValueError(f"{len(names)} names but {embeddings.shape[0]} embeddings")
    e = F.normalize(embeddings.detach().double(), dim=1)
    sim = e @ e.T
    pairs = [(names[i], names[j], float(sim[i, j])) for i in range(len(names)) for j in range(i + 1, len(names))]
    return sorted(pairs, key=lambda p: -p[2])[:top]
