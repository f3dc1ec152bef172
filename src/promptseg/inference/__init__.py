"""Prediction: sliding window, post-processing, merging, predictor (file -> files).

    from promptseg.inference import Predictor, predict
    predict("runs/demo", "ct.nii.gz", "out/", prompts=["liver", "liver tumor"])
"""
from __future__ import annotations

from .merge import label_values, merge
from .postprocess import body_mask_from_image, load_rules, postprocess
from .batch import BatchError, predict
from .inputs import case_name, collect_inputs, slug
from .prediction import Prediction
from .predictor import Predictor
from ..runtime import resolve_device, set_threads
from .lean_masks import sliding_window_masks
from .sliding import sliding_window_logits
from .windows import fit_window
from .upsample import invert_classes

__all__ = [
    "Predictor",
    "Prediction",
    "predict",
    "BatchError",
    "sliding_window_logits",
    "sliding_window_masks",
    "set_threads",
    "invert_classes",
    "fit_window",
    "resolve_device",
    "postprocess",
    "load_rules",
    "body_mask_from_image",
    "merge",
    "label_values",
    "case_name",
    "collect_inputs",
    "slug",
]
