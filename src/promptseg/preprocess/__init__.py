"""Preprocessing plans (data, `plans.yaml`) and their exact inverse.

    pre = preprocess_image(read_image(path), get_plan("universal_ct"))
    label = apply_to_label(read_label(lpath), pre.record)
    back = invert(prediction, pre.record, interpolation="nearest")   # Volume on the input's grid
"""
from __future__ import annotations

from .geometry import Grid, nearest_indices, resample_linear, resample_nearest, resampled_size
from .intensity import apply_intensity, clip_scale, clip_zscore, mean_std, percentile_zscore, percentiles, zscore
from .pipeline import Preprocessed, apply_to_label, invert, preprocess_image
from .plan import INTENSITY_METHODS, Plan, get_plan, modality_defaults, modality_plans, plan_names
from .record import Record

__all__ = [
    "Plan",
    "get_plan",
    "plan_names",
    "modality_plans",
    "modality_defaults",
    "INTENSITY_METHODS",
    "Preprocessed",
    "Record",
    "Grid",
    "preprocess_image",
    "apply_to_label",
    "invert",
    "clip_scale",
    "clip_zscore",
    "percentile_zscore",
    "zscore",
    "mean_std",
    "percentiles",
    "apply_intensity",
    "resample_linear",
    "resample_nearest",
    "resampled_size",
    "nearest_indices",
]
