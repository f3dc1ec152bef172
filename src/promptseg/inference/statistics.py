"""statistics.json: per class volume (ml), voxel count, mean and std intensity of the input image.

TotalSegmentator's `--statistics` writes {class: {"volume": ml, "intensity": mean}}; the same keys
are kept (so scripts written for it read ours) and `voxels` and `intensity_std` are added.
Computed on the input grid from the written masks, so volume == voxels x voxel volume exactly.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import atomic_write
from ..io.volume import Volume
from .prediction import Prediction


def class_statistics(prediction: Prediction, image: Volume) -> dict[str, dict[str, Any]]:
    """{class: {"volume": ml, "voxels": n, "intensity": mean, "intensity_std": std}} (NaN-free:
    an empty class has volume 0 and intensities of 0, as TotalSegmentator writes them)."""
    if not prediction.label_map.same_grid(image):
        raise ValueError("statistics need the image on the prediction's grid")
    values = np.asarray(image.array)
    voxel_ml = float(np.prod(prediction.label_map.spacing)) / 1000.0
    out: dict[str, dict[str, Any]] = {}
    for name in prediction.masks:
        mask = np.asarray(prediction.masks[name].array, dtype=bool)
        n = int(np.count_nonzero(mask))
        inside = values[mask].astype(np.float64) if n else np.zeros(0)
        out[name] = {
            "volume": n * voxel_ml,
            "voxels": n,
            "intensity": round(float(inside.mean()), 4) if n else 0.0,
            "intensity_std": round(float(inside.std()), 4) if n else 0.0,
        }
    return out


def write_statistics(path: Path, prediction: Prediction, image: Volume) -> Path:
    return atomic_write(path, json.dumps(class_statistics(prediction, image), indent=1) + "\n")
