"""Label semantics: a dataset label map -> one binary mask per annotated class.

Rules (SPEC "Common ground"; Universal Model journal §4.1.1):
- Each class is its own binary mask, so classes overlap freely (liver includes liver tumour).
- A parent includes its children: voxels of a lesion/vessel whose taxonomy `parent` is an
  annotated class also count as that class, transitively (hepatic vessel tumour -> liver).
- A paired-organ label without side ("kidney") is split into left and right. Midline rule:
    1. with an image: the centroid, along the left-right axis, of the body mask
       (`promptseg.masks.body_mask`, the one post-processing uses; works on HU and on
       normalised intensities);
    2. without an image: the midpoint between the centroids of the two largest components of
       the group's voxels (when the second has >= 10 % of the first's size);
    3. otherwise the centre of the grid.
  Sides are assigned per connected component (26-connectivity) of the group's voxels together
  with its children's (kidney + kidney tumour + kidney cyst), so one kidney is never cut in two:
  a component holding explicitly sided voxels (a dataset with "left kidney" and "kidney tumor")
  takes the majority side of those; otherwise it goes to the side holding >= 80 % of its voxels;
  a component straddling the midline (horseshoe kidney, merged lungs) is cut by the plane.
- Orientation: arrays are in RAS plan space, so array axis 0 increases toward the patient's
  Right (`lr_axis=0, right_is_high=True`); checked on ct_abdomen_small, whose liver lies at high
  axis-0 indices.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..masks import body_mask, centroid, components, half_space, two_largest
from ..taxonomy import default_taxonomy, normalize
from .records import LabelMapping


def _taxonomy(taxonomy):
    if taxonomy is None:
        return default_taxonomy()
    return taxonomy


def annotated_classes(mappings: Sequence[LabelMapping], taxonomy=None) -> list[str]:
    """Canonical classes a dataset annotates: mapped targets, groups expanded to both sides, by id."""
    tx = _taxonomy(taxonomy)
    out: dict[str, int] = {}
    for m in mappings:
        if m.target is None:
            continue
        info = tx.get(m.target)
        if info is not None:
            out[info.name] = info.id
            continue
        for c in tx.group_members(m.target).values():
            out[c.name] = c.id
    return sorted(out, key=lambda n: out[n])


def body_midline(image: np.ndarray, lr_axis: int = 0) -> float | None:
    """Left-right centroid (voxel index) of the body (`masks.body_mask`); None without a body."""
    img = np.asarray(image)
    body = body_mask(img[0] if img.ndim == 4 else img, fallback=False)
    return None if body is None else centroid(body, lr_axis)


def _mask_midline(mask: np.ndarray, lr_axis: int) -> float | None:
    """Midpoint of the centroids of the two largest components (the second >= 10 % of the first)."""
    comps, _n, a, b = two_largest(mask, 26, min_ratio=0.1)
    if a is None:
        return None
    return (centroid(comps == a, lr_axis) + centroid(comps == b, lr_axis)) / 2


def _descendants(name: str, tx, seen=None) -> list[str]:
    """Classes whose voxels also count as `name`: children whose parent is `name` itself (not a
    paired group, those are shared out by side), grandchildren, ..."""
    seen = set() if seen is None else seen
    out = []
    for c in tx.children(name):
        if c.name in seen or (c.parent and tx.get(c.parent) is None and tx.is_group(c.parent)):
            continue
        seen.add(c.name)
        out.append(c.name)
        out.extend(_descendants(c.name, tx, seen))
    return out


def _group_descendants(group: str, tx) -> list[str]:
    """Classes whose parent is the paired group (kidney tumour -> kidney), and their descendants."""
    out = []
    for c in tx.classes:
        if c.parent and normalize(c.parent) == normalize(group) and tx.get(c.parent) is None:
            out.append(c.name)
            out.extend(d for d in _descendants(c.name, tx) if d not in out)
    return out


def label_to_targets(label: np.ndarray, mappings: Sequence[LabelMapping], classes: Sequence[str], taxonomy=None,
                     image: np.ndarray | None = None, lr_axis: int = 0, right_is_high: bool = True) -> np.ndarray:
    """bool [len(classes), X, Y, Z]: one mask per requested class (see the module rules)."""
    return label_to_targets_with_info(label, mappings, classes, taxonomy, image, lr_axis, right_is_high)[0]


def label_to_targets_with_info(label: np.ndarray, mappings: Sequence[LabelMapping], classes: Sequence[str],
                               taxonomy=None, image: np.ndarray | None = None, lr_axis: int = 0,
                               right_is_high: bool = True) -> tuple[np.ndarray, dict]:
    """`label_to_targets` plus a record of each left/right split (midline, rule, voxels per side)."""
    tx = _taxonomy(taxonomy)
    label = np.asarray(label)
    shape = label.shape
    classes = [tx.resolve(c).name for c in classes]

    # 1. direct masks per canonical class and per group (one pass over the mappings)
    direct: dict[str, np.ndarray] = {}
    group_direct: dict[str, np.ndarray] = {}
    for m in mappings:
        if m.target is None:
            continue
        mask = np.isin(label, m.all_values) if len(m.all_values) > 1 else (label == m.all_values[0])
        info = tx.get(m.target)
        if info is not None:
            key, store = info.name, direct
        else:
            members = tx.group_members(m.target)
            if not members:
                raise ValueError(f"label target {m.target!r} is neither a class nor a paired group")
            key, store = next(iter(members.values())).group, group_direct
        store[key] = store[key] | mask if key in store else mask

    # 2. groups to split: every group with group-level voxels, or with sided children to share out
    want = set(classes)
    out = np.zeros((len(classes),) + shape, dtype=bool)
    from_groups: dict[str, np.ndarray] = {}
    info_out: dict[str, dict] = {}
    midline_cache: dict[str, tuple[float, str]] = {}

    def midline(union: np.ndarray) -> tuple[float, str]:
        if image is not None:
            if "body" not in midline_cache:
                x = body_midline(image, lr_axis)
                if x is not None:
                    midline_cache["body"] = (x, "body centroid")
            if "body" in midline_cache:
                return midline_cache["body"]
        x = _mask_midline(union, lr_axis)
        if x is not None:
            return x, "midpoint of the two largest components"
        return (shape[lr_axis] - 1) / 2, "grid centre"

    groups = {c.group for c in tx.classes if c.group and c.name in want}
    for g in sorted(groups):
        members = tx.group_members(g)
        left, right = members.get("left"), members.get("right")
        if left is None or right is None:
            continue
        gvox = group_direct.get(g)
        child_names = [d for d in _group_descendants(g, tx) if d in direct]
        child = None
        for d in child_names:
            child = direct[d] if child is None else (child | direct[d])
        shared = gvox if child is None else (child if gvox is None else gvox | child)
        if shared is None or not shared.any():
            continue
        sl, sr = direct.get(left.name), direct.get(right.name)
        union = shared.copy()
        for s in (sl, sr):
            if s is not None:
                union |= s
        x0, rule = midline(union)
        on_right = half_space(shape, lr_axis, 1 if right_is_high else -1, x0, "right")
        comps, n = components(union)
        counts_r = np.bincount(comps[np.broadcast_to(on_right, shape)], minlength=n + 1)
        counts_all = np.bincount(comps.ravel(), minlength=n + 1)
        exp_l = np.bincount(comps[sl], minlength=n + 1) if sl is not None else np.zeros(n + 1, int)
        exp_r = np.bincount(comps[sr], minlength=n + 1) if sr is not None else np.zeros(n + 1, int)
        side = np.zeros(n + 1, dtype=np.int8)  # 1 right, -1 left, 0 cut by the plane
        for k in range(1, n + 1):
            if exp_l[k] + exp_r[k] > 0 and exp_l[k] != exp_r[k]:
                side[k] = 1 if exp_r[k] > exp_l[k] else -1
            else:
                frac = counts_r[k] / max(counts_all[k], 1)
                side[k] = 1 if frac >= 0.8 else (-1 if frac <= 0.2 else 0)
        right_mask = side[comps] == 1
        right_mask |= (side[comps] == 0) & (comps > 0) & on_right
        r_part, l_part = shared & right_mask, shared & ~right_mask
        from_groups[right.name], from_groups[left.name] = r_part, l_part
        info_out[g] = {"midline": round(float(x0), 2), "rule": rule, "axis": lr_axis,
                       "right_is_high": right_is_high, "components": int(n),
                       "straddling": int((side[1:] == 0).sum()),
                       "left_voxels": int(l_part.sum()), "right_voxels": int(r_part.sum())}

    # 3. each requested class: own voxels + group share + descendants (non-group parents)
    for i, name in enumerate(classes):
        mask = out[i]
        if name in direct:
            mask |= direct[name]
        if name in from_groups:
            mask |= from_groups[name]
        for d in _descendants(name, tx):
            if d in direct:
                mask |= direct[d]
    return out, info_out
