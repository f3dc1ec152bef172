"""Post-processing of per-class binary masks, with rules read from the taxonomy.

Why: a sigmoid per class leaves speckle, organs on the wrong side and tumours outside any organ.
The Universal Model's code fixes these with a few anatomical rules; here every rule is driven by
the class facts in the taxonomy (single_instance, laterality/group, parent, kind) plus the small
table in `postprocess_rules.yaml`, so a new class gets the right treatment without code.

All arrays live in the network grid (after preprocessing). `direction` is that grid's 3x3
direction matrix (LPS, `Volume` convention) and tells which array axis runs to the patient's
right and which to the head; without it the grid is taken to be RAS (axis 0 -> right,
axis 2 -> superior), the orientation of every plan promptseg ships.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import cc3d
import numpy as np
import yaml
from scipy import ndimage

from ..config import read_yaml
from ..errors import ConfigError
from ..taxonomy import ClassInfo, Taxonomy, default_taxonomy
from .threads import ordered_thread_map

_RAS_DIRECTION = np.diag([-1.0, -1.0, 1.0])  # RAS grid written in the LPS convention of Volume


# --- rules -------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _packaged_rules() -> dict[str, Any]:
    text = resources.files("promptseg.inference").joinpath("postprocess_rules.yaml").read_text()
    return yaml.safe_load(text)


def load_rules(override: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The packaged rules, with the keys of `override` (a mapping or a YAML file) replacing them."""
    rules = copy.deepcopy(_packaged_rules())
    if override is None:
        return rules
    if not isinstance(override, Mapping):
        override = read_yaml(override, "post-processing rules file") or {}
    unknown = set(override) - set(rules)
    if unknown:
        raise ConfigError(f"unknown post-processing rules {sorted(unknown)}; known: {sorted(rules)}")
    rules.update(copy.deepcopy(dict(override)))
    return rules


# --- geometry helpers --------------------------------------------------------------------------
def patient_axis(direction: np.ndarray | None, toward: str) -> tuple[int, int]:
    """(array axis, sign) of the axis closest to the patient's `toward` ('right' or 'superior').

    sign = +1 when increasing the index moves toward it. `direction` columns are LPS unit vectors.
    """
    d = _RAS_DIRECTION if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    row, flip = {"right": (0, -1.0), "left": (0, 1.0), "superior": (2, 1.0), "inferior": (2, -1.0)}[toward]
    comp = d[row, :] * flip  # how much each array axis points toward `toward`
    axis = int(np.argmax(np.abs(comp)))
    return axis, (1 if comp[axis] > 0 else -1)


def body_mask_from_image(image: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """The patient's body: voxels above a low intensity cut, largest component, holes filled.

    The cut is `fraction` of the way from the 1st to the 99th intensity percentile, which puts it
    between air and fat for CT (any normalisation) and above the noise floor for MR.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.size == 0:
        return np.zeros(img.shape, bool)
    lo, hi = np.percentile(img, [1, 99])
    if hi <= lo:
        return np.ones(img.shape, bool)
    fg = img > lo + fraction * (hi - lo)
    fg = largest_components(fg, 1)
    if not fg.any():
        return np.ones(img.shape, bool)
    return ndimage.binary_fill_holes(fg)


def midline(body_mask: np.ndarray | None, shape: tuple[int, ...], axis: int) -> float:
    """Index along `axis` of the body's sagittal midline (centroid of the body mask)."""
    if body_mask is not None and body_mask.any():
        other = tuple(a for a in range(body_mask.ndim) if a != axis)
        profile = body_mask.sum(axis=other, dtype=np.int64)
        return float((profile * np.arange(profile.size)).sum() / profile.sum())
    return (shape[axis] - 1) / 2.0


def _side_mask(shape: tuple[int, ...], axis: int, sign: int, middle: float, side: str) -> np.ndarray:
    """Broadcastable boolean: voxels on the patient's `side` ('right'/'left') of `middle`."""
    idx = np.arange(shape[axis], dtype=np.float64)
    toward_right = sign * (idx - middle) > 0
    keep = toward_right if side == "right" else ~toward_right
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return keep.reshape(view)


def largest_components(mask: np.ndarray, k: int = 1, connectivity: int = 26, min_fraction: float = 0.0) -> np.ndarray:
    """The `k` largest connected components of `mask` (ties: lower label, i.e. scan order),
    plus any other component at least `min_fraction` of the largest (0 = exactly k).
    Labelled inside the mask's bounding box: an organ in a whole-body grid costs its own size."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    box = _bbox(mask, 0)
    labels, n = cc3d.connected_components(np.ascontiguousarray(mask[box]), connectivity=connectivity, return_N=True)
    if n <= k:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    order = np.argsort(-sizes, kind="stable")
    keep = list(order[:k])
    if min_fraction > 0:
        keep += [int(i) for i in order[k:n] if sizes[i] >= min_fraction * sizes[order[0]]]
    lut = np.zeros(n + 1, dtype=bool)
    lut[keep] = True
    out = np.zeros(mask.shape, dtype=bool)
    out[box] = lut[labels]
    return out


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    nz = [np.flatnonzero(mask.any(axis=tuple(b for b in range(mask.ndim) if b != a))) for a in range(mask.ndim)]
    return tuple(slice(max(0, int(i[0]) - margin), min(s, int(i[-1]) + margin + 1)) for i, s in zip(nz, mask.shape))


def grow_region(mask: np.ndarray, closing: int = 5, dilation: int = 5) -> np.ndarray:
    """`mask` closed then dilated with cubes of the given sides (the region a lesion may occupy).

    Computed inside the mask's bounding box plus a margin, so a small organ in a large grid costs
    little; the margin makes the result equal to working on the whole grid.
    """
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    margin = closing + dilation + 2
    box = _bbox(mask, margin)
    sub = mask[box]
    # pad so the closing's erosion never sees the crop edge as background
    sub = np.pad(sub, margin)
    if closing > 1:
        sub = ndimage.binary_closing(sub, structure=np.ones((closing,) * 3, bool))
    if dilation > 1:
        sub = ndimage.binary_dilation(sub, structure=np.ones((dilation,) * 3, bool))
    sub = sub[(slice(margin, -margin),) * 3]
    out[box] = sub
    return out


# --- the rules ----------------------------------------------------------------------------------
def _split_pair_by_components(
    left: np.ndarray, right: np.ndarray, axis: int, sign: int, middle: float, connectivity: int
) -> tuple[np.ndarray, np.ndarray]:
    """Left/right masks from the union's two largest components, assigned by centroid side."""
    union = left | right
    if not union.any():
        return union.copy(), union.copy()
    labels, n = cc3d.connected_components(union, connectivity=connectivity, return_N=True)
    if n >= 2:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        a, b = np.argsort(-sizes, kind="stable")[:2]
        ca = np.argwhere(labels == a)[:, axis].mean()
        cb = np.argwhere(labels == b)[:, axis].mean()
        right_label, left_label = (a, b) if sign * (ca - cb) > 0 else (b, a)
        return labels == left_label, labels == right_label
    # one fused component: cut it at the body midline
    right_side = _side_mask(union.shape, axis, sign, middle, "right")
    return union & ~right_side, union & right_side


def postprocess(
    masks: Mapping[str, np.ndarray],
    probs: Mapping[str, np.ndarray] | None = None,
    taxonomy: Taxonomy | None = None,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    body_mask: np.ndarray | None = None,
    direction: np.ndarray | None = None,
    rules: Mapping[str, Any] | None = None,
    notes: list[str] | None = None,
    workers: int = 1,
) -> dict[str, np.ndarray]:
    """Apply the taxonomy's rules to binary masks (class name -> bool array, network grid).

    Order: paired organs to their side of the body -> largest component of single-instance
    classes -> vessels cut below a reference organ -> lesions kept inside their (closed, dilated)
    parent -> small lesions dropped. Classes the taxonomy does not know pass through unchanged.
    `probs` is accepted for symmetry with `merge` (rules here are binary). Messages about rules
    that could not apply (e.g. a tumour whose organ was not asked) are appended to `notes`.
    `workers` threads run the per-class largest-component step side by side.
    """
    tax = taxonomy or default_taxonomy()
    rules = load_rules(rules)
    conn = int(rules.get("connectivity", 26))
    out: dict[str, np.ndarray] = {k: np.asarray(v, dtype=bool) for k, v in masks.items()}
    if not out:
        return out
    shape = next(iter(out.values())).shape
    info: dict[str, ClassInfo] = {}
    for name in out:
        c = tax.get(name)
        if c is not None:
            info[name] = c
    by_canonical = {c.name: name for name, c in info.items()}
    notes = notes if notes is not None else []

    lr_axis, lr_sign = patient_axis(direction, "right")
    middle = midline(body_mask, shape, lr_axis)

    # 1. paired organs: each side of the body gets its own class
    handled: set[str] = set()
    for group in rules.get("split_by_components") or []:
        members = tax.group_members(group)
        lname = by_canonical.get(members["left"].name) if "left" in members else None
        rname = by_canonical.get(members["right"].name) if "right" in members else None
        if lname and rname:
            out[lname], out[rname] = _split_pair_by_components(out[lname], out[rname], lr_axis, lr_sign, middle, conn)
            handled |= {lname, rname}
    if rules.get("lateral_midline", True):
        for name, c in info.items():
            if c.laterality in ("left", "right") and name not in handled:
                out[name] = out[name] & _side_mask(shape, lr_axis, lr_sign, middle, c.laterality)

    # 2. one connected component where the anatomy has one (classes side by side)
    if rules.get("largest_component", True):
        single = [name for name, c in info.items() if c.single_instance and c.kind != "lesion"]
        fraction = float(rules.get("largest_component_min_fraction") or 0)

        def keep_largest(name: str) -> np.ndarray:
            return largest_components(out[name], 1, conn, fraction)

        out.update(zip(single, list(ordered_thread_map(keep_largest, single, workers))))

    # 3. vessels cut below a reference organ's lowest slice
    si_axis, si_sign = patient_axis(direction, "superior")
    for rule in rules.get("cut_below") or []:
        target = tax.get(rule["class"])
        ref = tax.get(rule["reference"])
        tname = by_canonical.get(target.name) if target else None
        rname = by_canonical.get(ref.name) if ref else None
        if not (tname and rname) or not out[rname].any():
            continue
        other = tuple(a for a in range(3) if a != si_axis)
        occupied = np.flatnonzero(out[rname].any(axis=other))
        height = si_sign * np.arange(shape[si_axis])
        lowest = (si_sign * occupied).min()
        keep = (height >= lowest).reshape([shape[si_axis] if a == si_axis else 1 for a in range(3)])
        out[tname] = out[tname] & keep

    # 4. lesions inside their parent organ
    restrict = rules.get("restrict_to_parent") or {}
    kinds = set(restrict.get("kinds") or [])
    for name, c in info.items():
        if c.kind not in kinds or not c.parent or not out[name].any():
            continue
        parents = [by_canonical[p.name] for p in tax.parent_classes(c) if p.name in by_canonical]
        if not parents:
            notes.append(f"{name}: parent {c.parent!r} was not predicted, so the lesion is not restricted to it")
            continue
        organ = np.zeros(shape, bool)
        for p in parents:
            organ |= out[p]
        region = grow_region(organ, int(restrict.get("closing", 5)), int(restrict.get("dilation", 5)))
        out[name] = out[name] & region

    # 5. drop lesion specks below a volume
    min_mm3 = float(rules.get("min_lesion_volume_mm3") or 0)
    if min_mm3 > 0:
        voxels = int(np.ceil(min_mm3 / float(np.prod(spacing))))
        for name, c in info.items():
            if c.is_lesion and out[name].any():
                out[name] = cc3d.dust(out[name], threshold=voxels, connectivity=conn).astype(bool)
    return out
