"""SAT's published models on a whole scan: the authors' windowing, on promptseg's geometry.

Why separate from the predictor: SAT's windows must be exactly its training crop (its position
code is fixed), placed as the authors place them (half-window stride, the last window flush with the
image end, zero padding only where an axis is shorter than the crop), each window's sigmoid blended
with a Gaussian (sigma crop/8, peak 10, float16) -- settings read from official_sat_settings.yaml.
Preprocessing is promptseg's `sat_ct` / `sat_mr` plan and the masks are inverted onto the input grid.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from ..io.volume import Volume
from ..models.official_sat import OfficialSAT, sat_modality, sat_settings
from ..preprocess.pipeline import invert, preprocess_image

_PLANS = {"ct": "sat_ct", "mri": "sat_mr"}


def window_starts(size: int, crop: int) -> list[int]:
    """The authors' window origins along one axis (half-crop stride, last one flush with the end)."""
    step = crop // 2
    n = max(math.ceil(size / step) - 1, 1)
    return sorted({max(min(i * step, size - crop), 0) for i in range(n)})


def gaussian_weights(crop: Sequence[int]) -> np.ndarray:
    """Importance map: a centred delta blurred with sigma crop/8, peak scaled to 10, float16, no zeros."""
    delta = np.zeros(crop)
    delta[tuple(c // 2 for c in crop)] = 1
    g = gaussian_filter(delta, [c / 8 for c in crop], 0, mode="constant", cval=0)
    g = (g / g.max() * 10).astype(np.float16)
    g[g == 0] = g[g != 0].min()
    return g.astype(np.float32)


def sat_probabilities(model: OfficialSAT, image: np.ndarray, queries: torch.Tensor,
                      device: str | torch.device = "cpu", batch: int | None = None) -> np.ndarray:
    """[N, *image.shape] blended probabilities of the N queries over a preprocessed [X, Y, Z] image."""
    crop = model.crop
    batch = int(batch or sat_settings()["inference"]["sw_batch_size"])
    shape = image.shape
    boxes = [(x, y, z) for x in window_starts(shape[0], crop[0]) for y in window_starts(shape[1], crop[1])
             for z in window_starts(shape[2], crop[2])]
    weight = torch.from_numpy(gaussian_weights(crop))
    prob = torch.zeros((len(queries), *shape))
    acc = torch.zeros(shape)
    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    q = queries.to(device)
    with torch.inference_mode():
        for start in range(0, len(boxes), batch):
            group = boxes[start:start + batch]
            wins = torch.zeros((len(group), 1, *crop))
            spans = []
            for i, (x, y, z) in enumerate(group):
                part = img[x:x + crop[0], y:y + crop[1], z:z + crop[2]]
                wins[i, 0, :part.shape[0], :part.shape[1], :part.shape[2]] = part
                spans.append(part.shape)
            out = torch.sigmoid(model.forward_embeddings(wins.to(device), q).float()).cpu()
            for (x, y, z), s, o in zip(group, spans, out):
                w = weight[:s[0], :s[1], :s[2]]
                prob[:, x:x + s[0], y:y + s[1], z:z + s[2]] += o[:, :s[0], :s[1], :s[2]] * w
                acc[x:x + s[0], y:y + s[1], z:z + s[2]] += w
    return (prob / acc).numpy()


def predict_sat(model: OfficialSAT, volume: Volume, names: Sequence[str], modality: str = "ct",
                device: str | torch.device = "cpu") -> dict[str, Volume]:
    """name -> binary mask on the INPUT grid (uint8), for a model carrying its vocabulary's embeddings."""
    mod = sat_modality(modality)
    queries = model.queries_for(list(names), mod)
    pre = preprocess_image(volume, _PLANS.get(mod, "sat_mr"))
    prob = sat_probabilities(model.to(device).eval(), pre.array, queries, device)
    masks = (prob > float(sat_settings()["inference"]["threshold"])).astype(np.uint8)
    return {n: invert(masks[k], pre.record) for k, n in enumerate(names)}
