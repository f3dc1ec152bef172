"""Operations on binary masks shared by data preparation, inference and evaluation: bounding
boxes, connected components, the body mask and its midline, and the patient's left/right halves.

Why one module: the same box, the same "largest component" and the same body midline must be
used when training targets are split into left/right and when predictions are post-processed,
or the two disagree about where the patient's middle is. Depends only on numpy, scipy and cc3d
(no promptseg stage), so every stage may import it.
"""
from __future__ import annotations

from typing import Sequence

import cc3d
import numpy as np
from scipy import ndimage


# --- boxes --------------------------------------------------------------------------------------
def bbox(mask: np.ndarray, margin: int | Sequence[int] = 0) -> tuple[slice, ...] | None:
    """Slices of the True voxels' bounding box grown by `margin` voxels (one per axis or one for
    all) and clipped to the grid; None when the mask is empty."""
    mask = np.asarray(mask)
    margins = [int(m) for m in margin] if isinstance(margin, (list, tuple)) else [int(margin)] * mask.ndim
    out = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        out.append(slice(max(0, int(hits[0]) - margins[axis]), min(mask.shape[axis], int(hits[-1]) + 1 + margins[axis])))
    return tuple(out)


# --- morphology with cubes ----------------------------------------------------------------------
def _cube_filter(mask: np.ndarray, size: int, scipy_op, logical) -> np.ndarray:
    """`scipy_op(mask, np.ones((size,) * ndim))` as 1-D passes along each axis (a cube is
    separable), each the OR (`logical` = np.logical_or: dilation) or AND (erosion) of the mask
    shifted by 1..size//2 voxels both ways: for the small cubes post-processing uses, 7-8x faster
    than scipy's 1-D maximum filter (a 243x193x224 network grid: 3^3 0.018 s against 0.144 s,
    5^3 0.024 s against 0.19 s). Outside the grid is background, so erosion clears the faces.
    Odd sizes; an even cube is not centred, so it keeps scipy's own origin convention."""
    mask = np.asarray(mask, dtype=bool)
    size = int(size)
    if size <= 1:
        return mask.copy()
    if size % 2 == 0:
        return scipy_op(mask, structure=np.ones((size,) * mask.ndim, bool))
    r = size // 2
    out = mask
    for axis in range(mask.ndim):
        n = mask.shape[axis]

        def along(sl: slice) -> tuple[slice, ...]:
            return tuple(sl if a == axis else slice(None) for a in range(mask.ndim))

        acc = out.copy()
        for d in range(1, min(r, n - 1) + 1):  # a shift past the axis' length reads nothing
            hi, lo = along(slice(d, None)), along(slice(None, n - d))
            logical(acc[hi], out[lo], out=acc[hi])
            logical(acc[lo], out[hi], out=acc[lo])
        if logical is np.logical_and:  # the voxels within r of a face see background outside
            acc[along(slice(None, r))] = False
            acc[along(slice(max(n - r, 0), None))] = False
        out = acc
    return out


def dilate_cube(mask: np.ndarray, size: int) -> np.ndarray:
    """`ndimage.binary_dilation(mask, np.ones((size,) * ndim))`, the same voxels, as shifted ORs
    along each axis: 3 x (size - 1) operations per voxel instead of size^3. Outside the grid counts
    as background."""
    return _cube_filter(mask, size, ndimage.binary_dilation, np.logical_or)


def erode_cube(mask: np.ndarray, size: int) -> np.ndarray:
    """`ndimage.binary_erosion(mask, np.ones((size,) * ndim))` as shifted ANDs (see `dilate_cube`);
    outside the grid counts as background, so the mask erodes at the grid's faces as scipy's does."""
    return _cube_filter(mask, size, ndimage.binary_erosion, np.logical_and)


def close_cube(mask: np.ndarray, size: int) -> np.ndarray:
    """`ndimage.binary_closing(mask, np.ones((size,) * ndim))`: dilation, then erosion."""
    return erode_cube(dilate_cube(mask, size), size)


# --- components ---------------------------------------------------------------------------------
def components(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """(labels, n): connected components of `mask` (0 = background, 1..n in scan order)."""
    return cc3d.connected_components(np.ascontiguousarray(mask, dtype=bool), connectivity=connectivity, return_N=True)


def largest_components(mask: np.ndarray, k: int = 1, connectivity: int = 26, min_fraction: float = 0.0) -> np.ndarray:
    """The `k` largest connected components of `mask` (ties: lower label, i.e. scan order),
    plus any other component at least `min_fraction` of the largest (0 = exactly k).
    Labelled inside the mask's bounding box: an organ in a whole-body grid costs its own size."""
    mask = np.asarray(mask, dtype=bool)
    box = bbox(mask)
    if box is None:
        return mask.copy()
    labels, n = components(mask[box], connectivity)
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


# --- body and midline ---------------------------------------------------------------------------
def body_mask(image: np.ndarray, fraction: float = 0.1, fallback: bool = True) -> np.ndarray | None:
    """The patient's body: voxels above a low intensity cut, largest component, holes filled.

    The cut is `fraction` of the way from the 1st to the 99th intensity percentile, which puts it
    between air and fat for CT (any normalisation) and above the noise floor for MR. An image
    without contrast has no detectable body: all True with `fallback`, else None.
    """
    img = np.asarray(image, dtype=np.float32)
    nobody = np.ones(img.shape, bool) if fallback else None
    if img.size == 0:
        return np.zeros(img.shape, bool) if fallback else None
    lo, hi = np.percentile(img, [1, 99])
    if hi <= lo:
        return nobody
    fg = largest_components(img > lo + fraction * (hi - lo), 1)
    if not fg.any():
        return nobody
    return fill_holes(fg)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """`ndimage.binary_fill_holes(mask)`, the same voxels: background not connected to the grid's
    faces (6-connectivity) becomes foreground. One labelling of the background with cc3d instead of
    scipy's dilation until nothing changes: a 243x193x224 body mask in 0.07 s against 0.32 s."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3 or mask.size == 0:
        return ndimage.binary_fill_holes(mask)
    background = cc3d.connected_components(~mask, connectivity=6)
    faces = [background[0], background[-1], background[:, 0], background[:, -1],
             background[:, :, 0], background[:, :, -1]]
    outside = np.unique(np.concatenate([f.ravel() for f in faces]))
    filled = np.ones(int(background.max()) + 1, dtype=bool)  # label 0 = the mask itself
    filled[outside[outside > 0]] = False
    return filled[background]


def centroid(mask: np.ndarray, axis: int) -> float | None:
    """Mean index of the True voxels along `axis`; None for an empty mask."""
    other = tuple(a for a in range(mask.ndim) if a != axis)
    profile = np.asarray(mask).sum(axis=other, dtype=np.int64)
    total = profile.sum()
    return float((profile * np.arange(profile.size)).sum() / total) if total else None


def midline(body: np.ndarray | None, shape: tuple[int, ...], axis: int) -> float:
    """Index along `axis` of the body's sagittal midline (centroid of `body`); the grid centre
    when there is no body mask."""
    c = centroid(body, axis) if body is not None else None
    return (shape[axis] - 1) / 2.0 if c is None else c


# --- left / right -------------------------------------------------------------------------------
def half_space(shape: tuple[int, ...], axis: int, sign: int, middle: float, side: str) -> np.ndarray:
    """Broadcastable boolean: voxels on the patient's `side` ('right'/'left') of the plane
    `index == middle` along `axis`; `sign` = +1 when increasing the index moves to the right."""
    idx = np.arange(shape[axis], dtype=np.float64)
    toward_right = sign * (idx - middle) > 0
    keep = toward_right if side == "right" else ~toward_right
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return keep.reshape(view)


def two_largest(mask: np.ndarray, connectivity: int = 26, min_ratio: float = 0.0):
    """(labels, n, a, b): the components and the labels of the two largest (a >= b), or a = b =
    None when there are fewer than two or the second is under `min_ratio` of the first."""
    labels, n = components(mask, connectivity)
    if n < 2:
        return labels, n, None, None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    a, b = (int(i) for i in np.argsort(-sizes, kind="stable")[:2])
    if sizes[b] < min_ratio * sizes[a]:
        return labels, n, None, None
    return labels, n, a, b


def split_left_right(union: np.ndarray, axis: int, sign: int, middle: float,
                     connectivity: int = 26) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) of a paired organ's mask: its two largest components, assigned by centroid
    side; a single fused component is cut at the plane `middle` (see `half_space`)."""
    union = np.asarray(union, dtype=bool)
    if not union.any():
        return union.copy(), union.copy()
    labels, _n, a, b = two_largest(union, connectivity)
    if a is not None:
        ca, cb = centroid(labels == a, axis), centroid(labels == b, axis)
        right_label, left_label = (a, b) if sign * (ca - cb) > 0 else (b, a)
        return labels == left_label, labels == right_label
    right = half_space(union.shape, axis, sign, middle, "right")
    return union & ~right, union & right
