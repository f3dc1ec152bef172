"""Tumour detection: patient-level sensitivity / specificity / harmonic mean, lesion-level recall.

Patient level (Universal Model journal, Table 6): a case *has* the tumour when its ground truth
has any voxel of the class; it is *predicted* to have it when the predicted volume exceeds a
threshold in mm^3 (per class; default 0 = any voxel). Sensitivity is measured on cases with the
tumour, specificity on tumour-free cases, and their harmonic mean 2*se*sp/(se+sp) balances the two.

Lesion level: ground-truth lesions are 26-connected components (cc3d); one counts as found when
at least `min_overlap_voxels` of its voxels are predicted. Precision is the same the other way
round (predicted components touching a true lesion).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

from ..masks import components


@dataclass(frozen=True)
class LesionCounts:
    gt_lesions: int
    gt_lesions_found: int
    pred_lesions: int
    pred_lesions_true: int


def lesion_counts(pred: np.ndarray, gt: np.ndarray, connectivity: int = 26, min_overlap_voxels: int = 1) -> LesionCounts:
    """Connected-component lesion matching of a predicted and a true lesion mask."""
    p = np.ascontiguousarray(np.asarray(pred) != 0)
    g = np.ascontiguousarray(np.asarray(gt) != 0)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth shape {g.shape}")

    def found(components: np.ndarray, n: int, other: np.ndarray) -> int:
        if n == 0:
            return 0
        hits = np.bincount(components[other].ravel(), minlength=n + 1)[1:]
        return int((hits >= min_overlap_voxels).sum())

    lg, ng = components(g, connectivity)
    lp, npred = components(p, connectivity)
    return LesionCounts(int(ng), found(lg, int(ng), p), int(npred), found(lp, int(npred), g))


@dataclass(frozen=True)
class DetectionCase:
    """One case's evidence for one tumour class."""

    dataset: str
    case: str
    cls: str
    gt_volume_mm3: float
    pred_volume_mm3: float
    threshold_mm3: float
    lesions: LesionCounts | None = None

    @property
    def gt_positive(self) -> bool:
        return self.gt_volume_mm3 > 0

    @property
    def pred_positive(self) -> bool:
        return self.pred_volume_mm3 > self.threshold_mm3


def harmonic_mean(a: float, b: float) -> float:
    """2ab/(a+b); NaN if either is undefined, 0 if both are 0."""
    if math.isnan(a) or math.isnan(b):
        return math.nan
    if a + b == 0:
        return 0.0
    return 2 * a * b / (a + b)


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


@dataclass(frozen=True)
class DetectionResult:
    cls: str
    threshold_mm3: float
    n_cases: int
    n_positive: int
    n_negative: int
    tp: int
    fn: int
    tn: int
    fp: int
    sensitivity: float
    specificity: float
    harmonic_mean: float
    gt_lesions: int
    gt_lesions_found: int
    lesion_recall: float
    pred_lesions: int
    pred_lesions_true: int
    lesion_precision: float

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(cases: Iterable[DetectionCase]) -> list[DetectionResult]:
    """Patient-level and lesion-level detection figures, one result per class (sorted by name)."""
    by_class: dict[str, list[DetectionCase]] = {}
    for c in cases:
        by_class.setdefault(c.cls, []).append(c)
    out = []
    for cls in sorted(by_class):
        items = by_class[cls]
        tp = sum(c.gt_positive and c.pred_positive for c in items)
        fn = sum(c.gt_positive and not c.pred_positive for c in items)
        tn = sum(not c.gt_positive and not c.pred_positive for c in items)
        fp = sum(not c.gt_positive and c.pred_positive for c in items)
        se, sp = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
        les = [c.lesions for c in items if c.lesions is not None]
        ng = sum(x.gt_lesions for x in les)
        nf = sum(x.gt_lesions_found for x in les)
        npred = sum(x.pred_lesions for x in les)
        nt = sum(x.pred_lesions_true for x in les)
        thresholds = {c.threshold_mm3 for c in items}
        out.append(
            DetectionResult(
                cls=cls,
                threshold_mm3=thresholds.pop() if len(thresholds) == 1 else math.nan,
                n_cases=len(items),
                n_positive=tp + fn,
                n_negative=tn + fp,
                tp=tp, fn=fn, tn=tn, fp=fp,
                sensitivity=se,
                specificity=sp,
                harmonic_mean=harmonic_mean(se, sp),
                gt_lesions=ng,
                gt_lesions_found=nf,
                lesion_recall=_ratio(nf, ng),
                pred_lesions=npred,
                pred_lesions_true=nt,
                lesion_precision=_ratio(nt, npred),
            )
        )
    return out
