"""Validation during training: Dice per modality and class on cases the run does not train on.

Why a flag beside Dice: a class whose per-class head has died (its output the same number at
every voxel, e.g. a dynamic head whose hidden units all went negative at too high a learning
rate) scores 0 exactly like a class that is merely hard, and never recovers; the record names
it (`dead`: Dice 0 with the mean logit on the class's own voxels below 0 — a class that is
learning finds some of them first; `constant`: the logit map does not vary at all) so a run is
stopped and its recipe changed instead of waited on.

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


#: A logit map varying less than this over a whole case is one number: the class's head is dead.
CONSTANT_STD = 1e-4


def split_cases(config: dict[str, Any], cases: list, prepare_more: Callable[[list], list] | None = None):
    """(training cases, validation cases) of a run: the `test` patients set aside (in neither),
    then the patient-wise hold-out of `validation` (`holdout` ids or a `fraction` of the rest)
    plus the prepared cases of `validation.datasets`."""
    v = config.get("validation") or {}
    globs, pattern = v.get("split_datasets") or ["*"], v.get("patient")
    if v.get("test"):
        cases, _ = split_by_patient(cases, list(v["test"]), globs, pattern, setting="validation.test")
    patients = list(v.get("holdout") or [])
    if not patients and float(v.get("fraction") or 0) > 0:
        patients = held_out_patients(cases, float(v["fraction"]), int(v.get("seed") or 0), globs, pattern)
    train, held = split_by_patient(cases, patients, globs, pattern) if patients else (list(cases), [])
    if v.get("datasets") and prepare_more is not None:
        held = held + list(prepare_more(v["datasets"]))
    return train, held


def case_scores(model, case, window: Sequence[int], overlap: float = 0.25,
                device=None) -> dict[str, tuple[float, float, float]]:
    """Class -> (Dice, mean logit on the class's voxels (NaN where it has none), logit std over
    the case) of one prepared case, for the classes the case annotates and the model knows; a
    class absent from both prediction and mask has Dice NaN and is left out of the means."""
    classes = [n for n in case.classes if n in model.class_names]
    if not classes:
        return {}
    image = torch.from_numpy(np.array(case.image, dtype=np.float32))[None]  # a copy: the cache is read-only
    prompts = model.prompt_batch(classes, modality=case.modality, datasets=[case.dataset], batch_size=1)
    logits = sliding_window_logits(model, image, prompts, window=window, overlap=overlap, sw_batch_size=1,
                                   device=device, out_device="cpu", precision="float32")
    out = {}
    for j, n in enumerate(classes):
        truth = np.asarray(case.targets[case.classes.index(n)]) > 0
        z = logits[0, j].numpy()
        positive = float(z[truth].mean()) if truth.any() else math.nan
        out[n] = (dice(z > 0, truth), positive, float(z.std()))
    return out


def validate(model, cases: Sequence, window: Sequence[int], overlap: float = 0.25, device=None) -> dict[str, Any]:
    """{"dice": {"MODALITY/class": mean over cases}, "mean": mean of those, "cases": n,
    "positive_logit": {key: mean over cases}, "flags": {key: "dead" | "constant"}} (flags only
    where raised, as the module docstring defines them); the model is left in eval mode (the
    trainer sets train mode before each step)."""
    model.eval()
    scores: dict[str, list[float]] = defaultdict(list)
    positives: dict[str, list[float]] = defaultdict(list)
    spread: dict[str, float] = defaultdict(float)
    for case in cases:
        for name, (d, pos, std) in case_scores(model, case, window, overlap, device).items():
            key = f"{case.modality}/{name}"
            if not math.isnan(d):
                scores[key].append(d)
            if not math.isnan(pos):
                positives[key].append(pos)
            spread[key] = max(spread[key], std)
    per = {k: round(float(np.mean(v)), 4) for k, v in sorted(scores.items())}
    mean = round(float(np.mean(list(per.values()))), 4) if per else float("nan")
    pos = {k: round(float(np.mean(v)), 3) for k, v in sorted(positives.items())}
    flags = {k: "constant" for k, s in spread.items() if s < CONSTANT_STD}
    flags.update({k: "dead" for k, v in pos.items() if v < 0 and per.get(k, 0.0) == 0.0 and k not in flags})
    return {"dice": per, "mean": mean, "cases": len(cases), "positive_logit": pos, "flags": dict(sorted(flags.items()))}
