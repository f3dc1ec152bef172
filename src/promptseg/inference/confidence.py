"""How sure the model is of each class's final mask (what pseudo-labelling keeps or drops).

Computed in the network grid, from the uint16 probabilities the sliding window keeps, so it costs
one pass over each class's voxels and no extra memory:
- a non-empty mask: the mean probability inside it (FLARE-style pseudo-label confidence; a mask
  made of barely-above-threshold voxels scores ~0.5-0.6, a crisp one ~0.95+);
- an empty mask ("absent"): 1 - the highest probability anywhere, i.e. how clearly nothing
  reached the threshold.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .lean_masks import PROB_SCALE


def mask_confidence(probs: np.ndarray, masks: Sequence[np.ndarray]) -> list[float]:
    """probs: uint16 [K, *S] scaled by PROB_SCALE; masks: K bool arrays [*S] -> K numbers in [0, 1]."""
    out = []
    for p, m in zip(probs, masks):
        m = np.asarray(m, dtype=bool)
        if m.any():
            out.append(float(p[m].mean(dtype=np.float64) / PROB_SCALE))
        else:
            out.append(1.0 - float(p.max(initial=0) / PROB_SCALE))
    return out
