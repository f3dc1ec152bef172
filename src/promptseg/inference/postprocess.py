"""Post-processing of per-class binary masks, with rules read from the taxonomy.

Why: a sigmoid per class leaves speckle, organs on the wrong side and tumours outside any organ.
The reference code (SPEC.md, post-processing) fixes these with a few anatomical rules; here every rule is driven by
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

from ..config import read_yaml
from ..errors import ConfigError
from ..io.volume import patient_axis
from ..masks import bbox, close_cube, dilate_cube, half_space, largest_components, midline, split_left_right
from ..masks import body_mask as body_mask_from_image  # noqa: F401  (public name of inference)
from ..taxonomy import ClassInfo, Taxonomy, default_taxonomy
from .threads import ordered_thread_map

# --- rules -------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _packaged_rules() -> dict[str, Any]:
    text = resources.files("promptseg.inference").joinpath("postprocess_rules.yaml").read_text(encoding="utf-8")
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
    box = bbox(mask, margin)
    sub = mask[box]
    # pad so the closing's erosion never sees the crop edge as background
    sub = np.pad(sub, margin)
    if closing > 1:
        sub = close_cube(sub, closing)
    if dilation > 1:
        sub = dilate_cube(sub, dilation)
    sub = sub[(slice(margin, -margin),) * 3]
    out[box] = sub
    return out


# --- the rules ----------------------------------------------------------------------------------
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
    classes: Mapping[str, ClassInfo | None] | None = None,
) -> dict[str, np.ndarray]:
    """Apply the taxonomy's rules to binary masks (class name -> bool array, network grid).

    Order: paired organs to their side of the body -> largest component of single-instance
    classes -> vessels cut below a reference organ -> lesions kept inside their (closed, dilated)
    parent -> small lesions dropped. Classes the taxonomy does not know pass through unchanged.
    `probs` is accepted for symmetry with `merge` (rules here are binary). Messages about rules
    that could not apply (e.g. a tumour whose organ was not asked) are appended to `notes`.
    `workers` threads run the per-class largest-component step and the lesions' parent regions
    side by side. `classes`: the taxonomy facts of each mask's class when the caller already
    resolved them (the predictor's queries); otherwise they are looked up by name.
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
        c = classes[name] if classes is not None and name in classes else tax.get(name)
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
            out[lname], out[rname] = split_left_right(out[lname] | out[rname], lr_axis, lr_sign, middle, conn)
            handled |= {lname, rname}
    if rules.get("lateral_midline", True):
        for name, c in info.items():
            if c.laterality in ("left", "right") and name not in handled:
                out[name] = out[name] & half_space(shape, lr_axis, lr_sign, middle, c.laterality)

    # 2. one connected component where the anatomy has one (classes side by side)
    if rules.get("largest_component", True):
        single = [name for name, c in info.items() if c.single_instance]
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
        ref_box = bbox(out[rname])[si_axis]
        height = si_sign * np.arange(shape[si_axis])
        lowest = min(si_sign * ref_box.start, si_sign * (ref_box.stop - 1))
        keep = (height >= lowest).reshape([shape[si_axis] if a == si_axis else 1 for a in range(3)])
        out[tname] = out[tname] & keep

    # 4. lesions inside their parent organ. One grown region per set of parents (liver tumour and
    # hepatic vessel tumour share the liver's), side by side; every region is grown from the masks
    # as they stand before this step, so the order of the lesions does not matter
    restrict = rules.get("restrict_to_parent") or {}
    kinds = set(restrict.get("kinds") or [])
    lesions: list[tuple[str, tuple[str, ...]]] = []
    for name, c in info.items():
        if c.kind not in kinds or not c.parent or not out[name].any():
            continue
        parents = tuple(by_canonical[p.name] for p in tax.parent_classes(c) if p.name in by_canonical)
        if not parents:
            notes.append(f"{name}: parent {c.parent!r} was not predicted, so the lesion is not restricted to it")
            continue
        lesions.append((name, parents))
    parent_sets = list(dict.fromkeys(parents for _, parents in lesions))

    def region_of(parents: tuple[str, ...]) -> np.ndarray:
        organ = np.zeros(shape, bool)
        for p in parents:
            organ |= out[p]
        return grow_region(organ, int(restrict.get("closing", 5)), int(restrict.get("dilation", 5)))

    regions = dict(zip(parent_sets, ordered_thread_map(region_of, parent_sets, workers)))
    for name, parents in lesions:
        out[name] = out[name] & regions[parents]

    # 5. drop lesion specks below a volume
    min_mm3 = float(rules.get("min_lesion_volume_mm3") or 0)
    if min_mm3 > 0:
        voxels = int(np.ceil(min_mm3 / float(np.prod(spacing))))
        for name, c in info.items():
            if c.is_lesion and out[name].any():
                out[name] = cc3d.dust(out[name], threshold=voxels, connectivity=conn).astype(bool)
    return out
