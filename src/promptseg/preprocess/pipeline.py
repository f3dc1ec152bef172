"""preprocess_image / apply_to_label / invert: a plan applied to a Volume, and undone exactly.

Order (as in the Universal Model code): reorient -> resample -> intensity -> foreground crop.
The image is copied once into float32 (while reorienting); everything after works in place or
on the smaller resampled array.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..io.volume import Volume
from .geometry import (Grid, copy_in_tiles, crop_grid, foreground_box, gather, nearest_indices, reorient,
                       reorient_grid, resample_grid, resample_linear, orientation_transform)
from .intensity import apply_intensity
from .plan import Plan, get_plan
from .record import Record

_IDENTITY = ((0, 1, 2), (False, False, False))


@dataclass
class Preprocessed:
    """`array`: float32 [X, Y, Z] in the plan's space; `record`: how to get back."""

    array: np.ndarray
    record: Record

    @property
    def volume(self) -> Volume:
        """The array on its own (network-space) grid, e.g. to write it for inspection."""
        return self.record.network_volume(self.array)

    def crop(self, box) -> "Preprocessed":
        """The array cut to `box` (3 slices of the network grid) with the cut added to the record,
        so the inverse puts results made on the smaller array back on the input grid exactly."""
        box = tuple(slice(b.start or 0, n if b.stop is None else b.stop) for b, n in zip(box, self.array.shape))
        if all(b.start == 0 and b.stop == n for b, n in zip(box, self.array.shape)):
            return self
        array = np.ascontiguousarray(self.array[box])
        return Preprocessed(array, self.record.cropped([b.start for b in box], [b.stop for b in box]))


def _as_plan(plan) -> Plan:
    return plan if isinstance(plan, Plan) else get_plan(plan)


def _float32_copy(x: np.ndarray, tile: int = 32) -> np.ndarray:
    """A new C-ordered float32 array with `x`'s values (a transposing copy for a Fortran-ordered
    NIfTI array: `copy_in_tiles`)."""
    x = np.asarray(x)
    out = np.empty(x.shape, dtype=np.float32)
    if x.ndim != 3 or x.flags.c_contiguous:
        out[...] = x
        return out
    return copy_in_tiles(x, out, (tile,) * 3)


def preprocess_image(volume: Volume, plan) -> Preprocessed:
    """Reorient, resample (trilinear, corner-aligned), normalise and crop one image."""
    plan = _as_plan(plan)
    if np.ndim(volume.array) != 3:
        raise InputError(volume.path, f"expected a 3D image, got array shape {np.shape(volume.array)}")
    original = Grid.of(volume)
    perm, flip = orientation_transform(volume.affine, plan.orientation) if plan.orientation else _IDENTITY
    oriented = reorient_grid(original, perm, flip)
    resampled = resample_grid(oriented, plan.spacing)

    x = _float32_copy(reorient(np.asarray(volume.array), perm, flip))
    if resampled.shape != oriented.shape:
        x = resample_linear(x, resampled.shape)
    x, stats = apply_intensity(x, plan.intensity, inplace=True)

    lo, hi = (0, 0, 0), resampled.shape
    if plan.crop is not None and x.size:
        thr = plan.crop["threshold"]
        if thr == "min":
            vmin, vmax = float(x.min()), float(x.max())
            thr = vmin + 1e-4 * (vmax - vmin)  # above background, robust to interpolation rounding
        lo, hi = foreground_box(x > thr, plan.crop["margin"])
        if (lo, hi) != ((0, 0, 0), resampled.shape):
            x = np.ascontiguousarray(x[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    record = Record(
        original=original, perm=perm, flip=flip, oriented=oriented, resampled=resampled,
        crop_lo=tuple(lo), crop_hi=tuple(hi), network=crop_grid(resampled, lo, hi),
        plan=plan.to_dict(), intensity=stats,
        source=None if volume.path is None else str(volume.path),
    )
    return Preprocessed(x, record)


def _check_on_original(volume: Volume, record: Record) -> None:
    ref = Volume(np.broadcast_to(np.zeros((), np.uint8), record.original.shape), record.original.spacing,
                 record.original.origin, record.original.matrix)
    diffs = volume.grid_differences(ref)
    if diffs:
        raise InputError(volume.path, "label grid differs from the preprocessed image's grid (label vs image): "
                                      + "; ".join(diffs))


def apply_to_label(label_volume: Volume, record: Record) -> np.ndarray:
    """The record's geometric steps on a label map: reorient, nearest resample, crop (dtype kept).

    Nearest resampling and crop are one index gather, so this costs one pass over the output.
    """
    _check_on_original(label_volume, record)
    view = reorient(np.asarray(label_volume.array), record.perm, record.flip)
    idx = [nearest_indices(n0, n1)[lo:hi] for n0, n1, lo, hi in
           zip(record.oriented.shape, record.resampled.shape, record.crop_lo, record.crop_hi)]
    return np.ascontiguousarray(gather(view, idx))


def _numpy_dtype(x) -> np.dtype:
    if isinstance(x, np.ndarray):
        return x.dtype
    import torch

    if x.dtype == torch.bfloat16:  # numpy has no bfloat16
        return np.dtype(np.float32)
    return torch.empty(0, dtype=x.dtype).numpy().dtype


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    import torch

    x = x.detach()
    return (x.float() if x.dtype == torch.bfloat16 else x).cpu().numpy()


def _pad_to_resampled(x, record: Record, fill):
    """Un-crop one 3D channel into the full resampled grid (fill elsewhere)."""
    shape = record.resampled.shape
    if tuple(x.shape) == shape:
        return x
    lo, hi = record.crop_lo, record.crop_hi
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    if isinstance(x, np.ndarray):
        full = np.full(shape, fill, dtype=x.dtype)
    else:
        import torch

        full = torch.full(shape, fill, dtype=x.dtype, device=x.device)
    full[box] = x
    return full


def _invert_nearest(x, record: Record, fill):
    """Un-crop + nearest resample as one gather; voxels that map outside the crop get `fill`."""
    src = [nearest_indices(n_res, n_or) for n_res, n_or in zip(record.resampled.shape, record.oriented.shape)]
    inside = [(s >= lo) & (s < hi) for s, lo, hi in zip(src, record.crop_lo, record.crop_hi)]
    local = [np.clip(s - lo, 0, hi - lo - 1) for s, lo, hi in zip(src, record.crop_lo, record.crop_hi)]
    out = gather(x, local)
    for axis, ok in enumerate(inside):
        if not ok.all():
            index = [slice(None)] * 3
            index[axis] = np.flatnonzero(~ok) if isinstance(out, np.ndarray) else _torch_index(~ok, out)
            out[tuple(index)] = fill
    return out


def _torch_index(mask: np.ndarray, like):
    import torch

    return torch.as_tensor(np.flatnonzero(mask), device=like.device)


def invert(array, record: Record, interpolation: str = "nearest", fill=0) -> Volume:
    """Network-space array ([X,Y,Z] or [C,X,Y,Z], numpy or torch on any device) -> Volume on the
    ORIGINAL grid: un-crop (pad with `fill`), resample to the original voxel count, undo the
    orientation. Geometry is copied from the record, so it is exact. nearest keeps the dtype;
    linear returns float32 (probabilities: invert them linearly, then threshold). `record` may be a
    Record or its `to_dict()`. The result is a numpy array in CPU memory, written channel by
    channel straight into the original axis order (no second full-size copy)."""
    if interpolation not in ("nearest", "linear"):
        raise ValueError(f"interpolation must be 'nearest' or 'linear', got {interpolation!r}")
    if isinstance(record, dict):
        record = Record.from_dict(record)
    if tuple(array.shape[-3:]) != record.network.shape or array.ndim not in (3, 4):
        raise InputError(None, f"array of shape {tuple(array.shape)} does not match the preprocessed grid "
                               f"{record.network.shape} (expected [X,Y,Z] or [C,X,Y,Z])")
    lead = tuple(array.shape[:-3])
    dtype = np.dtype(np.float32) if interpolation == "linear" else _numpy_dtype(array)
    out = np.empty(lead + record.original.shape, dtype=dtype)
    out_oriented = reorient(out, record.perm, record.flip)  # writable view: fill it in oriented order
    for idx in np.ndindex(*lead) if lead else [()]:
        x = array[idx] if idx else array
        if interpolation == "nearest":
            y = _invert_nearest(x, record, fill)
        else:
            if isinstance(x, np.ndarray) and not np.issubdtype(x.dtype, np.floating):
                x = x.astype(np.float32)
            elif not isinstance(x, np.ndarray) and not x.dtype.is_floating_point:
                x = x.float()
            y = resample_linear(_pad_to_resampled(x, record, fill), record.oriented.shape)
        out_oriented[idx] = _to_numpy(y)
    return Volume(out, record.original.spacing, record.original.origin, record.original.matrix)
