"""One label map as per-class binary masks, with classes matched through the taxonomy.

Why a class is more than its own label values: in a one-value-per-voxel map a lesion overrides its
organ ("liver tumor" voxels are not "liver" voxels), but clinically -- and in the papers' organ
masks -- the liver contains its tumours. So the mask of a class is its own values **plus** those
of every class whose taxonomy `parent` is it (recursively: liver + liver tumor + hepatic vessel +
hepatic vessel tumor). The same rule is applied to prediction and ground truth. When the parent is
a paired organ (kidney tumor -> kidney = left + right kidney), each lesion component goes to the
side whose organ voxels are nearest and in contact with it. A map that names the group itself
("kidney") gets all of its lesions, and a class named by a group ("kidney") is matched against a
prediction's left + right classes when the prediction has no "kidney" of its own.

Class keys: the taxonomy's canonical name ('kidney_left' and 'left kidney' are both 'left
kidney'); a taxonomy group name; or, for names outside the taxonomy, the normalised raw name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import InputError, TaxonomyError
from ..masks import components
from ..taxonomy import ClassInfo, Taxonomy, normalize

UNKNOWN = "unknown"

Box = tuple[slice, ...]


@dataclass(frozen=True)
class ClassRef:
    """How a label name is known: canonical key, taxonomy facts, and whether it is in the taxonomy."""

    key: str
    raw: str
    info: ClassInfo | None
    group: str | None
    region: str
    kind: str
    in_taxonomy: bool


def class_ref(raw: str, taxonomy: Taxonomy) -> ClassRef:
    info = taxonomy.get(raw)
    if info is not None:
        return ClassRef(info.name, raw, info, None, info.region, info.kind, True)
    key = normalize(raw)
    members = taxonomy.group_members(key)
    if members:
        first = members[sorted(members)[0]]
        return ClassRef(key, raw, None, key, first.region, first.kind, True)
    return ClassRef(key, raw, None, None, UNKNOWN, UNKNOWN, False)


def union_boxes(boxes, shape, margin: int = 1) -> Box | None:
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    out = []
    for a in range(len(shape)):
        lo = min(b[a].start for b in boxes)
        hi = max(b[a].stop for b in boxes)
        out.append(slice(max(lo - margin, 0), min(hi + margin, shape[a])))
    return tuple(out)


def _paste(coords: tuple[np.ndarray, ...], box: Box, shape: tuple[int, ...]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    keep = np.ones(coords[0].shape, dtype=bool)
    for a, s in enumerate(box):
        keep &= (coords[a] >= s.start) & (coords[a] < s.stop)
    m[tuple(c[keep] - s.start for c, s in zip(coords, box))] = True
    return m


class LabelMap:
    """A label array, its value -> class names, and class masks on demand (cropped to a box)."""

    def __init__(self, array: np.ndarray, labels: dict[str, tuple[int, ...]], spacing, taxonomy: Taxonomy,
                 path: Path | None = None, include_children: bool = True):
        a = np.asarray(array)
        if not np.issubdtype(a.dtype, np.integer):
            a = a.astype(np.int64)
        if a.size and int(a.min()) < 0:
            raise InputError(path, f"label map has negative values (min {int(a.min())})")
        self.array = a
        self.spacing = tuple(float(s) for s in spacing)
        self.taxonomy = taxonomy
        self.path = path
        self.include_children = include_children
        self.refs: dict[str, ClassRef] = {}
        self.values: dict[str, tuple[int, ...]] = {}
        for raw, vals in labels.items():
            ref = class_ref(raw, taxonomy)
            self.refs.setdefault(ref.key, ref)
            self.values[ref.key] = tuple(sorted(set(self.values.get(ref.key, ()) + tuple(vals))))
        self._boxes = ndimage.find_objects(a) if a.size else []
        self._side_cache: dict[str, dict[str, tuple[np.ndarray, ...]]] = {}

    # --- what is in the map -----------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        """Class keys in order of their smallest label value."""
        return sorted(self.values, key=lambda k: (min(self.values[k]), k))

    def present_values(self) -> set[int]:
        return {i + 1 for i, b in enumerate(self._boxes) if b is not None}

    def unlabelled_values(self) -> list[int]:
        named = {v for vals in self.values.values() for v in vals}
        return sorted(self.present_values() - named)

    def group_members_present(self, group: str) -> list[str]:
        members = self.taxonomy.group_members(group)
        return [members[s].name for s in sorted(members) if members[s].name in self.values]

    def can_score(self, key: str, group: str | None = None) -> bool:
        """True when this map names the class (or, for a group, one of its sides)."""
        return key in self.values or bool(group and self.group_members_present(group))

    # --- parent / child relations -------------------------------------------------------------
    def _relation(self, child: ClassRef, parent_key: str) -> str | None:
        """'whole' if all of child's voxels belong to parent_key, 'side' if one side of a pair, else None."""
        if not self.include_children or child.info is None or not child.info.parent:
            return None
        if normalize(child.info.parent) == parent_key:
            return "whole"
        try:
            parents = self.taxonomy.parent_classes(child.info)
        except TaxonomyError:
            return None
        names = [p.name for p in parents]
        if parent_key not in names:
            return None
        return "whole" if len(names) == 1 else "side"

    def _children(self, key: str) -> list[tuple[str, str]]:
        out = []
        for ck, cref in self.refs.items():
            if ck != key:
                rel = self._relation(cref, key)
                if rel:
                    out.append((ck, rel))
        return out

    def involved_values(self, key: str, group: str | None = None, _seen: frozenset = frozenset()) -> set[int]:
        """Every label value that can enter the class mask (for the bounding box)."""
        if key in _seen:
            return set()
        seen = _seen | {key}
        vals = set(self.values.get(key, ()))
        if not vals and group:
            for m in self.group_members_present(group):
                vals |= self.involved_values(m, None, seen)
        for ck, rel in self._children(key):
            vals |= self.involved_values(ck, None, seen)
            if rel == "side":
                for p in self.taxonomy.parent_classes(self.refs[ck].info):
                    vals |= set(self.values.get(p.name, ()))
        return vals

    def box(self, values) -> Box | None:
        boxes = [self._boxes[v - 1] for v in values if 0 < v <= len(self._boxes)]
        return union_boxes(boxes, self.array.shape, margin=0)

    def mask(self, key: str, box: Box, group: str | None = None, _seen: frozenset = frozenset()) -> np.ndarray:
        """Binary mask of the class within `box` (own values + children, see module doc)."""
        sub = self.array[box]
        seen = _seen | {key}
        own = self.values.get(key, ())
        m = np.isin(sub, own) if own else np.zeros(sub.shape, dtype=bool)
        if not own and group:
            for member in self.group_members_present(group):
                m |= self.mask(member, box, None, seen)
        for ck, rel in self._children(key):
            if ck in seen:
                continue
            if rel == "whole":
                m |= self.mask(ck, box, None, seen)
            else:
                coords = self._side_assignment(ck).get(key)
                if coords is not None:
                    m |= _paste(coords, box, sub.shape)
        return m

    def _side_assignment(self, child_key: str) -> dict[str, tuple[np.ndarray, ...]]:
        """Split a lesion of a paired organ by side: each component goes to the nearest side organ
        it touches (within one diagonal voxel). Returns side key -> voxel coordinates (full grid)."""
        if child_key in self._side_cache:
            return self._side_cache[child_key]
        sides = [p.name for p in self.taxonomy.parent_classes(self.refs[child_key].info) if p.name in self.values]
        out: dict[str, tuple[np.ndarray, ...]] = {}
        vals = self.involved_values(child_key) | {v for s in sides for v in self.values[s]}
        box = union_boxes([self.box(vals)], self.array.shape, margin=1)
        if box is not None and sides:
            lesion = self.mask(child_key, box)
            organ = np.zeros(lesion.shape, dtype=np.int16)
            for i, s in enumerate(sides, start=1):
                organ[np.isin(self.array[box], self.values[s]) & ~lesion] = i
            if lesion.any() and organ.any():
                dist, idx = ndimage.distance_transform_edt(organ == 0, sampling=self.spacing, return_indices=True)
                nearest = organ[tuple(idx)]
                contact = math.sqrt(sum(s * s for s in self.spacing)) * 1.001
                comps, n = components(lesion, 26)
                near = lesion & (dist <= contact)
                k = len(sides) + 1  # votes[c, side] = touching voxels of component c nearest that side
                votes = np.bincount(comps[near].astype(np.int64) * k + nearest[near], minlength=(n + 1) * k)
                votes = votes.reshape(n + 1, k)[:, 1:]
                side_of = np.where(votes.sum(axis=1) > 0, np.argmax(votes, axis=1) + 1, 0)
                side_of[0] = 0
                assigned = side_of[comps]
                for i, s in enumerate(sides, start=1):
                    local = np.nonzero(lesion & (assigned == i))
                    out[s] = tuple(c + b.start for c, b in zip(local, box))
        self._side_cache[child_key] = out
        return out
