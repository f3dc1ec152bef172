"""Network-grid class results -> masks and one label map on the input grid, one class at a time.

Why not nearest: putting a 1.5 mm mask on a 0.78 mm grid by nearest neighbour moves every
boundary by up to half a network voxel; for an adrenal gland that is a Dice of ~0.9 against
resampling the probabilities (nnU-Net's way). Why not resample the probabilities of all classes:
32 float32 maps of a 512x512x300 CT are 10 GB. Here each class's uint16 probability is resampled
linearly (corner-aligned, as `preprocess.invert`) only inside the bounding box of its mask plus
one voxel -- outside it all eight interpolation corners are below the threshold, so the result
is the same as resampling the whole grid -- thresholded, and OR-ed bit by bit into packed masks;
the label map is merged on the input grid on the fly (organs, vessels, lesions; higher
probability wins inside a layer, as `merge`). Float memory: one class's box at a time.

Post-processing decisions made in the network grid carry over: a voxel survives only where the
post-processed mask (grown by one voxel) is, and voxels the post-processing gave to a class
(e.g. a lung component moved to the other side) are added by nearest neighbour. So a class the
post-processing changed is resampled only in its kept mask's box (plus two voxels): false
positives it removed (speckle far from the organ) cost nothing here.
"""
from __future__ import annotations

import math
import threading
from typing import Mapping, Sequence

import numpy as np
import torch

from ..io.volume import Volume
from ..masks import bbox, dilate_cube
from ..preprocess.geometry import nearest_indices, reorient
from ..taxonomy.query import Query
from .merge import label_dtype
from .lean_masks import PROB_SCALE
from .threads import ordered_thread_map


def _axis_plan(n_res: int, n_or: int, lo: int, hi: int):
    """Oriented indices whose interpolation reads only resampled indices [lo, hi), with the two
    source indices (relative to lo) and the weight of the second: torch's trilinear, align_corners."""
    if n_res == n_or:
        idx = np.arange(lo, hi)
        rel = idx - lo
        return idx, rel, rel, np.zeros(len(idx), np.float32)
    if n_or <= 1 or n_res <= 1:
        idx = np.zeros(1 if lo == 0 else 0, dtype=np.int64)
        rel = np.zeros(len(idx), np.int64)
        return idx, rel, rel, np.zeros(len(idx), np.float32)
    scale = np.float32((n_res - 1) / (n_or - 1))
    first = max(0, math.ceil(lo / float(scale) - 1e-6))
    last = min(n_or - 1, math.floor((hi - 1) / float(scale) + 1e-6))
    idx = np.arange(first, last + 1)
    src = idx.astype(np.float32) * scale
    i0 = np.clip(np.floor(src).astype(np.int64), lo, hi - 1)
    i1 = np.minimum(i0 + 1, hi - 1)
    lam = np.clip(src - i0, 0, 1).astype(np.float32)
    return idx, i0 - lo, i1 - lo, lam


class _Scratch(threading.local):
    """Float buffers one resampling thread reuses from class to class for the interpolation passes
    before the last (which `_interpolate` runs in slabs). A fresh array of a class's box half-way
    to the input grid (~75 MB for a whole-body class of a 512x512x224 CT) costs more in page
    faults on first touch than the interpolation that fills it: reused, one class's resampling
    takes 0.22 s instead of 0.50 s (benchmarks/predict_speed.py --scale clinical). Two pairs, so a
    pass never writes over the tensor it reads; every class starts on the first pair, so each pair
    grows only to the size its pass needs."""

    def __init__(self):
        self.pairs = [[torch.empty(0), torch.empty(0)], [torch.empty(0), torch.empty(0)]]
        self.last = 1  # the pair holding the latest result

    def start(self) -> "_Scratch":
        """A new class: its first pass takes the first pair."""
        self.last = 1
        return self

    def pair(self, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        self.last = 1 - self.last
        n = math.prod(shape)
        bufs = self.pairs[self.last]
        for j in range(2):
            if bufs[j].numel() < n:
                bufs[j] = torch.empty(n)
        return bufs[0][:n].view(*shape), bufs[1][:n].view(*shape)


def _still(n: int, i0: np.ndarray, lam: np.ndarray) -> bool:
    """An axis of `n` samples keeps them: no interpolation (`lam` all 0), no re-indexing (`i0`)."""
    return not lam.any() and len(i0) == n and np.array_equal(i0, np.arange(n))


def _lerp(x: torch.Tensor, axis: int, i0: np.ndarray, i1: np.ndarray, lam: np.ndarray,
          scratch: _Scratch | None = None) -> torch.Tensor:
    """x resampled along `axis`: x[i0] + lam * (x[i1] - x[i0]) (torch.lerp), into `scratch`'s
    buffers when given (the result then lives there until the scratch's next pair)."""
    if _still(x.shape[axis], i0, lam):
        return x  # axis not resampled (e.g. z at 1.5 mm both sides): no copy
    if not lam.any():
        return x.index_select(axis, torch.as_tensor(i0))
    shape = list(x.shape)
    shape[axis] = len(i0)
    first, second = torch.as_tensor(i0), torch.as_tensor(i1)
    if scratch is not None:
        a, b = scratch.pair(shape)
        a, b = torch.index_select(x, axis, first, out=a), torch.index_select(x, axis, second, out=b)
    else:
        a, b = x.index_select(axis, first), x.index_select(axis, second)
    view = [1, 1, 1]
    view[axis] = -1
    return a.lerp_(b, torch.as_tensor(lam).view(view))


#: input-grid voxels per slab of the last interpolation pass (~1 MB of float32: stays in cache)
SLAB_VOXELS = 1 << 18


def _interpolate(p: torch.Tensor, plans, cut: float, scratch: _Scratch | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(p > cut, round(p) as uint16) of `p` resampled along every axis (`_axis_plan` per axis).

    The last axis that moves is interpolated slab by slab along another axis, straight into the
    two outputs: its float result, the largest array of a class (~150 MB for a whole-body class
    of a 512x512x224 CT, two of them per thread), never exists whole, and each slab is compared
    and rounded while in cache. Every value is the one interpolating in one go gives."""
    moving = [a for a in range(3) if not _still(p.shape[a], plans[a][1], plans[a][3])]
    if scratch is not None:
        scratch.start()
    for a in moving[:-1]:
        p = _lerp(p, a, plans[a][1], plans[a][2], plans[a][3], scratch)
    shape = [len(plans[a][1]) if a in moving else p.shape[a] for a in range(3)]
    mask = torch.empty(shape, dtype=torch.bool)
    prob = torch.empty(shape, dtype=torch.uint16)  # values in [0, PROB_SCALE]: no int32 detour
    if not moving:
        torch.gt(p, cut, out=mask)
        prob.copy_(p.round())
        return mask.numpy(), prob.numpy()
    last = moving[-1]
    along = 1 if last == 0 else 0
    step = max(1, SLAB_VOXELS // max(1, math.prod(shape) // max(1, shape[along])))
    for lo in range(0, shape[along], step):
        n = min(step, shape[along] - lo)
        v = _lerp(p.narrow(along, lo, n), last, plans[last][1], plans[last][2], plans[last][3])
        torch.gt(v, cut, out=mask.narrow(along, lo, n))
        prob.narrow(along, lo, n).copy_(v.round_())
    return mask.numpy(), prob.numpy()


def _gather(x: np.ndarray, near: Sequence[np.ndarray]) -> np.ndarray:
    """`x[np.ix_(*near)]` (nearest-neighbour indices per axis) as one torch index_select per axis
    that moves: the same values, ~4x faster on an organ box of a 512^2 CT (bool read as uint8)."""
    t = torch.from_numpy(np.ascontiguousarray(x).view(np.uint8) if x.dtype == bool else np.ascontiguousarray(x))
    for axis, idx in enumerate(near):
        if len(idx) == t.shape[axis] and np.array_equal(idx, np.arange(len(idx))):
            continue  # this axis is not resampled
        t = t.index_select(axis, torch.as_tensor(idx, dtype=torch.long))
    out = t.numpy()
    return out.view(bool) if x.dtype == bool else out


def _padded(x: np.ndarray, sub, ext) -> np.ndarray:
    """x[sub] grown by `ext` (before, after) per axis: x's own voxels where `sub` can grow inside
    x, zeros past its edge (outside the network crop nothing was predicted)."""
    lo = [max(0, sub[a].start - ext[a][0]) for a in range(3)]
    hi = [min(x.shape[a], sub[a].stop + ext[a][1]) for a in range(3)]
    inner = x[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    before = [sub[a].start - ext[a][0] - lo[a] for a in range(3)]  # -1 where padding is needed
    if all(b == 0 for b in before) and all(hi[a] == sub[a].stop + ext[a][1] for a in range(3)):
        return np.ascontiguousarray(inner)
    out = np.zeros([sub[a].stop - sub[a].start + ext[a][0] + ext[a][1] for a in range(3)], dtype=x.dtype)
    at = [-b for b in before]
    out[at[0]:at[0] + inner.shape[0], at[1]:at[1] + inner.shape[1], at[2]:at[2] + inner.shape[2]] = inner
    return out


def invert_classes(
    queries: Sequence[Query],
    raw: np.ndarray,
    probs: np.ndarray,
    kept: Mapping[str, np.ndarray],
    record,
    interpolation: str = "linear",
    timings: dict[str, float] | None = None,
    workers: int = 1,
) -> tuple[Volume, np.ndarray]:
    """(label map Volume, packed masks uint8 [ceil(K/8), *original]) on the record's original grid.

    queries: the resolved prompts (class name, label value, threshold, merge layer), one per
    channel of raw / probs: [K, *network] threshold masks and uint16 probabilities (x PROB_SCALE)
    on the record's network grid (body crop included); kept: class -> post-processed mask.
    interpolation "nearest" skips the probability resampling (faster, blockier). `timings`
    receives the seconds spent merging ("merge"), which is interleaved with the resampling.
    `workers` threads resample classes side by side (torch and numpy release the GIL); the
    merge stays in class order, so the result does not depend on it.
    """
    import time

    merge_s = 0.0
    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation must be linear or nearest, got {interpolation!r}")
    orig_shape = record.original.shape
    classes = [q.name for q in queries]
    k = len(classes)
    packed = np.zeros((max(1, (k + 7) // 8),) + orig_shape, dtype=np.uint8)
    label = np.zeros(orig_shape, dtype=label_dtype({q.name: q.label_value for q in queries}), order="F")
    best = np.empty(orig_shape, dtype=np.uint16)  # winning probability of the current layer (0 = none)
    label_o = reorient(label, record.perm, record.flip)  # views in the oriented axis order
    best_o = reorient(best, record.perm, record.flip)
    offset = [int(lo) for lo in record.crop_lo]
    crop_shape = raw.shape[1:]
    n_res, n_or = record.resampled.shape, record.oriented.shape
    scratch = _Scratch()  # per thread; dropped with this call

    def resample(i: int):
        """Class i on the oriented input grid: (region, mask, uint16 probability) or None."""
        keep = np.asarray(kept[classes[i]], dtype=bool)
        changed = interpolation == "linear" and not np.array_equal(keep, raw[i])  # by post-processing
        if interpolation == "nearest" or changed:
            # the mask cannot leave the post-processed one grown by a voxel (see below), so the
            # box is the kept mask's, plus that voxel and one for the interpolation's corners:
            # speckle the post-processing removed far away costs nothing to resample
            sub = bbox(keep, 1 if interpolation == "nearest" else 2)
        else:
            sub = bbox(raw[i], 1)
        if sub is None:
            return None
        # one more voxel where the box meets the crop's edge: outside the crop is probability 0,
        # and the reference (resampling the un-cropped grid) blends toward it there
        ext = [(int(sub[a].start > 0 or offset[a] > 0), int(sub[a].stop < crop_shape[a] or
                                                           sub[a].stop + offset[a] < n_res[a])) for a in range(3)]
        lo = [sub[a].start - ext[a][0] + offset[a] for a in range(3)]  # resampled grid
        hi = [sub[a].stop + ext[a][1] + offset[a] for a in range(3)]
        plans = [_axis_plan(n_res[a], n_or[a], lo[a], hi[a]) for a in range(3)]
        if any(len(p[0]) == 0 for p in plans):
            return None
        keep_s = _padded(keep, sub, ext)
        near = [np.clip(nearest_indices(n_res[a], n_or[a])[plans[a][0]] - lo[a], 0, hi[a] - lo[a] - 1)
                for a in range(3)]
        if interpolation == "linear":
            p = torch.from_numpy(_padded(probs[i], sub, ext)).float()
            mask, prob = _interpolate(p, plans, PROB_SCALE * float(queries[i].threshold), scratch)
            if changed:
                grown = dilate_cube(keep_s, 3)
                mask &= _gather(grown, near)
                added = keep_s & ~_padded(raw[i], sub, ext)
                if added.any():
                    mask |= _gather(added, near)
        else:
            mask = _gather(keep_s, near)
            prob = _gather(_padded(probs[i], sub, ext), near)
        if not mask.any():
            return None
        region = tuple(slice(int(p[0][0]), int(p[0][-1]) + 1) for p in plans)
        return region, mask, prob

    order = sorted(range(k), key=lambda j: (queries[j].layer, j))
    layer = -1
    for i, done in zip(order, ordered_thread_map(resample, order, int(workers))):
        if queries[i].layer != layer:
            layer = queries[i].layer
            best.fill(0)
        if done is None:
            continue
        region, mask, prob = done
        bits = reorient(packed[i // 8], record.perm, record.flip)
        bits[region] |= mask.view(np.uint8) * np.uint8(1 << (7 - i % 8))  # numpy multiplies 2.5x faster than it shifts
        t0 = time.perf_counter()
        b = best_o[region]
        take = mask & (prob > b)
        b[take] = prob[take]
        label_o[region][take] = queries[i].label_value
        merge_s += time.perf_counter() - t0
    if timings is not None:
        timings["merge"] = timings.get("merge", 0.0) + merge_s
    o = record.original
    return Volume(label, o.spacing, o.origin, o.matrix), packed
