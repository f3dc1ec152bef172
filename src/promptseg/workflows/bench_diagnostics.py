"""The bench's prompt diagnostics: a trained checkpoint's raw logits on the scored cases.

Why apart from scoring: Dice comes from the masks `predict` writes (what users get); the
diagnostics need the logits before any threshold, in the network's own grid, with the reference
labels brought into that grid by the same preprocessing record. Figures and flags are defined in
evaluation/prompt_diagnostics.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..checkpoint import open_checkpoint
from ..evaluation.labelmap import LabelMap
from ..evaluation.prompt_diagnostics import PRUNED_RATIO, ClassDiagnostics, diagnose, flag_pruned
from ..inference import sliding_window_logits
from ..inference.predictor import mirror_axes
from ..inference.settings import inference_settings
from ..io import read_image, read_label
from ..preprocess import apply_to_label, get_plan, preprocess_image
from ..runtime import resolve_device
from ..taxonomy.query import resolve_queries


def case_logits(ckpt, image_path: Path, label_path: Path, labels: Mapping[str, tuple[int, ...]],
                classes: Sequence[str], device: str = "auto") -> tuple[torch.Tensor, list[np.ndarray | None]]:
    """Logits [K, *grid] of `classes` on one case and each class's reference mask in that grid
    (None where the reference does not name the class)."""
    modality = ckpt.modality or "CT"
    plan = get_plan(ckpt.plans.get(str(modality).upper()) or ckpt.config["plan"])
    image = read_image(image_path)
    pre = preprocess_image(image, plan)
    label = apply_to_label(read_label(label_path, reference=image), pre.record)
    model = ckpt.model.to(resolve_device(device)).eval()
    s = inference_settings(ckpt.config.get("inference"))
    pb = model.prompt_batch(list(classes), modality=modality, batch_size=1)
    logits = sliding_window_logits(model, torch.from_numpy(pre.array)[None, None], pb,
                                   window=s["window"], overlap=float(s["overlap"]), mode=s["mode"],
                                   sw_batch_size=int(s["sw_batch_size"]), out_device="cpu", precision="float32",
                                   mirror_axes=mirror_axes(pre.record) if s["mirror"] else ())[0]
    ref = LabelMap(label, dict(labels), pre.volume.spacing, model.taxonomy, path=label_path)
    whole = tuple(slice(0, n) for n in label.shape)
    masks = [ref.mask(c, whole) if ref.can_score(c) else None for c in classes]
    return logits.float(), masks


def class_thresholds(ckpt, classes: Sequence[str]) -> list[float]:
    """Each class's probability cut-off as `predict` applies it (the checkpoint's
    inference.thresholds > the taxonomy's > 0.5), so raw masks are cut where written ones are."""
    model = ckpt.model
    given = inference_settings(ckpt.config.get("inference"))["thresholds"]
    return [q.threshold for q in resolve_queries(list(classes), model.taxonomy, model.class_names,
                                                 model.canonical, given)]


def checkpoint_diagnostics(checkpoint: str | Path, cases: Sequence[Any], settings: Mapping[str, Any] | None = None,
                           device: str = "auto", dice: Mapping[str, float] | None = None
                           ) -> dict[str, ClassDiagnostics]:
    """Class -> prompt share, mean positive logit, raw Dice and flags of a checkpoint over the test
    cases (`cases`: the bench's TestCase objects; `settings`: bench.yaml's `diagnostics:` section).
    With `dice` (the written masks' Dice per class), classes post-processing emptied are flagged
    `pruned` at `settings['pruned_ratio']`."""
    settings = dict(settings or {})
    pruned_ratio = float(settings.pop("pruned_ratio", PRUNED_RATIO))
    ckpt = open_checkpoint(checkpoint, device="cpu")
    classes = list(ckpt.model.class_names)
    per_case = [case_logits(ckpt, c.image, c.label, c.labels, classes, device) for c in cases]
    diag = diagnose(per_case, classes, thresholds=class_thresholds(ckpt, classes), **settings)
    if dice is not None:
        flag_pruned(diag, dice, pruned_ratio)
    return diag
