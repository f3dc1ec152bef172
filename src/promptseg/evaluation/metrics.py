"""Per-mask segmentation metrics in millimetres: DSC, NSD, HD95, mean surface distance, volumes.

Conventions (the same as MONAI's defaults, so numbers agree with `monai.metrics`):
- A mask's *surface* is its inner boundary: voxels of the mask with at least one of their six
  face neighbours outside it (`mask & ~binary_erosion(mask)`, scipy's default cross structure,
  outside the grid counts as background). This is MONAI's `get_mask_edges` without sub-voxels.
- Surface distances are Euclidean, voxel centre to voxel centre, in mm using the voxel spacing
  (exact distance transform, `scipy.ndimage.distance_transform_edt(..., sampling=spacing)`).
- NSD at tolerance tau (mm) = (#pred surface voxels within tau of the GT surface + #GT surface
  voxels within tau of the pred surface) / (#pred surface voxels + #GT surface voxels) -- the
  count form of SAT eq. 12 and MONAI's `compute_surface_dice(use_subvoxels=False)`.
- HD95 = max(95th percentile of pred->GT distances, 95th percentile of GT->pred distances),
  linear interpolation (MONAI `compute_hausdorff_distance(percentile=95)`).
- Mean surface distance = mean of all pred->GT and GT->pred distances pooled (MONAI
  `compute_average_surface_distance(symmetric=True)`).

Empty masks (explicit, never a silent 0):
- both empty: DSC and NSD are `empty_score` (NaN by default -- "nothing to score"; pass 1.0 to
  count an agreed absence as perfect); HD95 and MSD are NaN.
- exactly one empty: DSC = NSD = 0; HD95 = MSD = +inf (MONAI returns inf for MSD, NaN for HD;
  we use inf for both so "missed entirely" never looks like "not scored").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..masks import bbox

Spacing = Sequence[float]

EMPTY_SCORES = {"nan": math.nan, "one": 1.0}


def empty_score_value(mode: str | float) -> float:
    """'nan' -> NaN, 'one' -> 1.0 (the two allowed both-empty conventions); floats pass through."""
    if isinstance(mode, str):
        try:
            return EMPTY_SCORES[mode.lower()]
        except KeyError:
            raise ValueError(f"empty score must be one of {sorted(EMPTY_SCORES)}, got {mode!r}") from None
    return float(mode)


def _as_bool(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    return m if m.dtype == bool else m != 0


def _check(pred: np.ndarray, gt: np.ndarray, spacing: Spacing | None = None) -> tuple[np.ndarray, np.ndarray]:
    p, g = _as_bool(pred), _as_bool(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth shape {g.shape}")
    if spacing is not None and len(spacing) != p.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {p.ndim}-D mask")
    return p, g


def dice(pred: np.ndarray, gt: np.ndarray, empty_score: float = math.nan) -> float:
    """DSC = 2|P∩G| / (|P|+|G|); `empty_score` when both are empty."""
    p, g = _check(pred, gt)
    total = int(p.sum()) + int(g.sum())
    if total == 0:
        return float(empty_score)
    return 2.0 * int(np.logical_and(p, g).sum()) / total


def volume_mm3(mask: np.ndarray, spacing: Spacing) -> float:
    """Foreground volume in mm^3 (voxel count times voxel volume)."""
    return float(_as_bool(mask).sum()) * float(np.prod(spacing))


def union_bbox(*masks: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Bounding box (with `margin` voxels, clipped to the grid) of the union of masks; None if all empty."""
    return bbox(np.logical_or.reduce([_as_bool(m) for m in masks]), margin)


def surface(mask: np.ndarray) -> np.ndarray:
    """Inner boundary voxels: in the mask, with a face neighbour outside it (or outside the grid)."""
    m = _as_bool(mask)
    if not m.any():
        return np.zeros_like(m)
    return m & ~ndimage.binary_erosion(m, border_value=0)


@dataclass(frozen=True)
class SurfaceDistances:
    """Distances (mm) from each surface voxel of one mask to the other mask's surface."""

    pred_to_gt: np.ndarray
    gt_to_pred: np.ndarray
    pred_empty: bool
    gt_empty: bool

    @property
    def both_empty(self) -> bool:
        return self.pred_empty and self.gt_empty

    @property
    def one_empty(self) -> bool:
        return self.pred_empty != self.gt_empty


EDT_MAX_VOXELS = 1_000_000  # above this crop size a KD-tree over surface voxels is faster


def _nearest(from_mask: np.ndarray, to_mask: np.ndarray, sampling: tuple[float, ...], method: str) -> np.ndarray:
    """Distance (mm) from each voxel of `from_mask` to the nearest voxel of `to_mask`."""
    if method == "edt":
        return ndimage.distance_transform_edt(~to_mask, sampling=sampling)[from_mask]
    from scipy.spatial import cKDTree

    scale = np.asarray(sampling, dtype=np.float64)
    return cKDTree(np.argwhere(to_mask) * scale).query(np.argwhere(from_mask) * scale, k=1)[0]


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Spacing, margin: int = 1,
                      method: str = "auto") -> SurfaceDistances:
    """Both directed surface-distance sets, computed on the union bounding box for speed.

    Cropping is exact: every surface voxel lies inside the union box, and the voxels just outside
    it are background, which is what erosion assumes at the crop border. `method`: 'edt' (exact
    distance transform with `sampling`), 'kdtree' (exact nearest surface voxel; what MONAI does on
    CPU) or 'auto' (EDT for crops up to EDT_MAX_VOXELS, else KD-tree). All give the same numbers.
    """
    if method not in ("auto", "edt", "kdtree"):
        raise ValueError(f"method must be 'auto', 'edt' or 'kdtree', got {method!r}")
    p, g = _check(pred, gt, spacing)
    p_empty, g_empty = not p.any(), not g.any()
    box = union_bbox(p, g, margin=margin)
    if box is None or p_empty or g_empty:
        sp = surface(p[box]) if box is not None else np.zeros(0, bool)
        sg = surface(g[box]) if box is not None else np.zeros(0, bool)
        # distances to an empty surface are infinite
        return SurfaceDistances(
            np.full(int(sp.sum()), np.inf), np.full(int(sg.sum()), np.inf), p_empty, g_empty
        )
    pc, gc = p[box], g[box]
    sp, sg = surface(pc), surface(gc)
    sampling = tuple(float(s) for s in spacing)
    if method == "auto":
        method = "edt" if pc.size <= EDT_MAX_VOXELS else "kdtree"
    return SurfaceDistances(_nearest(sp, sg, sampling, method), _nearest(sg, sp, sampling, method), False, False)


def nsd_from_distances(d: SurfaceDistances, tolerance: float, empty_score: float = math.nan) -> float:
    """Normalised surface distance (surface Dice) at `tolerance` mm."""
    if tolerance < 0 or not math.isfinite(tolerance):
        raise ValueError(f"NSD tolerance must be a finite number >= 0 mm, got {tolerance}")
    if d.both_empty:
        return float(empty_score)
    if d.one_empty:
        return 0.0
    n = d.pred_to_gt.size + d.gt_to_pred.size
    ok = int((d.pred_to_gt <= tolerance).sum()) + int((d.gt_to_pred <= tolerance).sum())
    return ok / n


def hd_from_distances(d: SurfaceDistances, percentile: float = 95.0) -> float:
    """Symmetric percentile Hausdorff distance (mm): NaN if both empty, inf if one is."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    if d.both_empty:
        return math.nan
    if d.one_empty:
        return math.inf
    return float(max(np.percentile(d.pred_to_gt, percentile), np.percentile(d.gt_to_pred, percentile)))


def msd_from_distances(d: SurfaceDistances) -> float:
    """Mean symmetric surface distance (mm), all distances of both directions pooled."""
    if d.both_empty:
        return math.nan
    if d.one_empty:
        return math.inf
    return float(np.concatenate([d.pred_to_gt, d.gt_to_pred]).mean())


def nsd(pred: np.ndarray, gt: np.ndarray, spacing: Spacing, tolerance: float = 1.0, empty_score: float = math.nan) -> float:
    """Normalised surface distance at `tolerance` mm (SAT: tau = 1 mm)."""
    return nsd_from_distances(surface_distances(pred, gt, spacing), tolerance, empty_score)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Spacing, percentile: float = 95.0) -> float:
    """95th-percentile symmetric Hausdorff distance in mm."""
    return hd_from_distances(surface_distances(pred, gt, spacing), percentile)


def mean_surface_distance(pred: np.ndarray, gt: np.ndarray, spacing: Spacing) -> float:
    """Mean symmetric surface distance in mm."""
    return msd_from_distances(surface_distances(pred, gt, spacing))


METRIC_NAMES = ("dice", "nsd", "hd95", "msd", "volume_gt_mm3", "volume_pred_mm3", "volume_diff_mm3", "volume_rel_diff")


def all_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Spacing,
    tolerance: float = 1.0,
    empty_score: float = math.nan,
    percentile: float = 95.0,
    surface_metrics: bool = True,
) -> dict[str, float]:
    """Every metric of one (prediction, ground truth) mask pair; surfaces are computed once.

    volume_diff = pred - GT (mm^3); volume_rel_diff = (pred - GT) / GT (NaN when GT is empty).
    """
    p, g = _check(pred, gt, spacing)
    vg, vp = volume_mm3(g, spacing), volume_mm3(p, spacing)
    out = {
        "dice": dice(p, g, empty_score),
        "volume_gt_mm3": vg,
        "volume_pred_mm3": vp,
        "volume_diff_mm3": vp - vg,
        "volume_rel_diff": (vp - vg) / vg if vg > 0 else math.nan,
    }
    if surface_metrics:
        d = surface_distances(p, g, spacing)
        out["nsd"] = nsd_from_distances(d, tolerance, empty_score)
        out["hd95"] = hd_from_distances(d, percentile)
        out["msd"] = msd_from_distances(d)
    else:
        out["nsd"] = out["hd95"] = out["msd"] = math.nan
    return out
