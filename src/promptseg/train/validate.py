"""Validation during training: Dice per modality and class on cases the run does not train on.

Why in network space: the held-out cases are already preprocessed in the run's cache (each by its
own modality's plan), so a sliding window over the cached tensor and a Dice against the cached
masks costs one forward pass per window and nothing else; the figure is for choosing the best
step, not a report in the input grid (`promptseg evaluate` does that on written predictions).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..data.split import held_out_patients, split_by_patient
from ..evaluation.metrics import dice
from ..inference.sliding import sliding_window_logits


def split_cases(config: dict[str, Any], cases: list, prepare_more: Callable[[list], list] | None = None):
    """(training cases, validation cases) of a run: the patient-wise hold-out of `validation`
    (`holdout` ids or a `fraction`) plus the prepared cases of `validation.datasets`."""
    v = config.get("validation") or {}
    globs, pattern = v.get("split_datasets") or ["*"], v.get("patient")
    patients = list(v.get("holdout") or [])
    if not patients and float(v.get("fraction") or 0) > 0:
        patients = held_out_patients(cases, float(v["fraction"]), int(v.get("seed") or 0), globs, pattern)
    train, held = split_by_patient(cases, patients, globs, pattern) if patients else (list(cases), [])
    if v.get("datasets") and prepare_more is not None:
        held = held + list(prepare_more(v["datasets"]))
    return train, held


def case_dice(model, case, window: Sequence[int], overlap: float = 0.25, device=None) -> dict[str, float]:
    """Class -> Dice of one prepared case (classes the case annotates and the model knows; a class
    absent from both prediction and mask gives NaN and is left out of the means)."""
    classes = [n for n in case.classes if n in model.class_names]
    if not classes:
        return {}
    image = torch.from_numpy(np.array(case.image, dtype=np.float32))[None]  # a copy: the cache is read-only
    prompts = model.prompt_batch(classes, modality=case.modality, datasets=[case.dataset], batch_size=1)
    logits = sliding_window_logits(model, image, prompts, window=window, overlap=overlap, sw_batch_size=1,
                                   device=device, out_device="cpu", precision="float32")
    pred = (logits[0] > 0).numpy()
    return {n: dice(pred[j], np.asarray(case.targets[case.classes.index(n)]) > 0) for j, n in enumerate(classes)}


def validate(model, cases: Sequence, window: Sequence[int], overlap: float = 0.25, device=None) -> dict[str, Any]:
    """{"dice": {"MODALITY/class": mean over cases}, "mean": mean of those, "cases": n}; the model
    is left in eval mode (the trainer sets train mode before each step)."""
    model.eval()
    scores: dict[str, list[float]] = defaultdict(list)
    for case in cases:
        for name, d in case_dice(model, case, window, overlap, device).items():
            if not math.isnan(d):
                scores[f"{case.modality}/{name}"].append(d)
    per = {k: round(float(np.mean(v)), 4) for k, v in sorted(scores.items())}
    mean = round(float(np.mean(list(per.values()))), 4) if per else float("nan")
    return {"dice": per, "mean": mean, "cases": len(cases)}
