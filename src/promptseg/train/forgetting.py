"""Forgetting report: old classes on a held-out set of the old task, new classes on the new task,
before and after an extension, side by side (as in the continual-learning tables of the journal papers).

Why through the full predictor and `evaluate`: the numbers must be the ones a user would get from
`promptseg predict` + `promptseg evaluate` (sliding window, post-processing, merging, organ masks
including their lesions), not a training-patch proxy.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..io.atomic import atomic_write


def held_out_labels(path: str | Path) -> Path:
    """The label folder of a held-out set: DIR/labelsTs, else DIR/labelsTr, else DIR itself
    (nnU-Net / MSD layout; images are found beside it by `evaluation.cases`)."""
    p = Path(path)
    if not p.is_dir():
        raise InputError(p, "held-out set not found (a dataset folder with labelsTs/ or labelsTr/)")
    for sub in ("labelsTs", "labelsTr"):
        if (p / sub).is_dir() and any((p / sub).iterdir()):
            return p / sub
    return p


def score_classes(model, held_out: str | Path, classes: Sequence[str], device: str = "auto",
                  work_dir: str | Path | None = None) -> dict[str, Any]:
    """Mean Dice per class of `model` on a held-out set, predicting only `classes`.

    Returns {"classes": {name: mean dice or nan}, "cases": n, "per_case": {case: {name: dice}}}.
    Classes the set does not annotate are absent from the result.
    """
    from ..evaluation.cases import find_cases
    from ..evaluation.evaluate import evaluate_folders
    from ..inference.predictor import Predictor
    from ..inference.writing import write_labels_json
    from ..io import read_image, write_image

    gt_dir = held_out_labels(held_out)
    cases = find_cases(gt_dir)
    items = sorted(cases.cases.values(), key=lambda c: c.case)
    if not items:
        raise InputError(gt_dir, "no labelled cases in the held-out set")
    missing = [c.case for c in items if c.image is None]
    if missing:
        raise InputError(gt_dir, f"no image found for case(s) {missing[:3]} (expected imagesTs/ or imagesTr/ beside)")
    own_tmp = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="forgetting-")) if own_tmp else Path(work_dir)
    pred_dir = work / "pred"
    try:
        if pred_dir.exists():
            shutil.rmtree(pred_dir)
        pred_dir.mkdir(parents=True)
        predictor = Predictor(model, device=device, progress=False)
        for c in items:
            pred = predictor.predict_volume(read_image(c.image), list(classes))
            write_image(pred.label_map, pred_dir / f"{c.case}.nii.gz")
            write_labels_json(pred_dir / "labels.json", pred.names)
        result = evaluate_folders(pred_dir, gt_dir, None, progress=False, report=False)
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
    wanted = set(classes)
    per_case: dict[str, dict[str, float]] = {}
    for row in result.rows:
        if row.get("status") != "scored" or row["class"] not in wanted:
            continue
        per_case.setdefault(row["case"], {})[row["class"]] = float(row.get("dice", math.nan))
    means = {}
    for name in classes:
        vals = [d[name] for d in per_case.values() if name in d and math.isfinite(d[name])]
        if any(name in d for d in per_case.values()):
            means[name] = float(np.mean(vals)) if vals else math.nan
    return {"classes": means, "cases": len(items), "per_case": per_case, "held_out": str(gt_dir)}


def forgetting_report(before, after, old_classes: Sequence[str], new_classes: Sequence[str],
                      held_out_old: str | Path | None, held_out_new: str | Path | None,
                      device: str = "auto") -> dict[str, Any]:
    """Dice of old classes (before vs after, both asked for the old classes only, so the change is
    forgetting and nothing else) on the old task's held-out set, and of the new classes (after) on
    the new task's; a set that is None is skipped."""
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {"rows": rows}
    if held_out_old is not None:
        b = score_classes(before, held_out_old, old_classes, device)
        a = score_classes(after, held_out_old, old_classes, device)
        report["old_set"] = b["held_out"]
        for name in old_classes:
            if name in b["classes"] or name in a["classes"]:
                rows.append({"class": name, "task": "old", "before": b["classes"].get(name, math.nan),
                             "after": a["classes"].get(name, math.nan)})
    if held_out_new is not None:
        # new classes are asked together with every class of the model, as a user would: a lesion
        # is then post-processed inside its (predicted) parent organ
        a = score_classes(after, held_out_new, list(old_classes) + [c for c in new_classes if c not in old_classes],
                          device)
        report["new_set"] = a["held_out"]
        for name in new_classes:
            if name in a["classes"]:
                rows.append({"class": name, "task": "new", "before": math.nan, "after": a["classes"][name]})
    for task in ("old", "new"):
        sel = [r for r in rows if r["task"] == task]
        if sel:
            report[f"{task}_mean"] = {k: _nanmean([r[k] for r in sel]) for k in ("before", "after")}
    return report


def _nanmean(values) -> float:
    vals = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def _fmt(v: float) -> str:
    return "  -  " if not math.isfinite(v) else f"{v:.3f}"


def format_report(report: dict[str, Any]) -> str:
    """A text table: class | task | Dice before | Dice after | change."""
    lines = [f"{'class':<18} {'task':<4} {'before':>7} {'after':>7} {'change':>7}"]
    for r in report["rows"]:
        change = r["after"] - r["before"] if math.isfinite(r["before"]) and math.isfinite(r["after"]) else math.nan
        lines.append(f"{r['class']:<18} {r['task']:<4} {_fmt(r['before']):>7} {_fmt(r['after']):>7} "
                     f"{(_fmt(change) if not math.isfinite(change) else f'{change:+.3f}'):>7}")
    for task in ("old", "new"):
        m = report.get(f"{task}_mean")
        if m:
            change = m["after"] - m["before"] if math.isfinite(m["before"]) and math.isfinite(m["after"]) else math.nan
            lines.append(f"{'mean (' + task + ')':<18} {task:<4} {_fmt(m['before']):>7} {_fmt(m['after']):>7} "
                         f"{(_fmt(change) if not math.isfinite(change) else f'{change:+.3f}'):>7}")
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """JSON (NaN written as null), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    atomic_write(path, json.dumps(clean(report), indent=1) + "\n")
    return path
