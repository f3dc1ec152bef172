"""Write a `Volume` exactly on its grid, atomically.

Atomic because predictions are often written next to inputs by long jobs: a crash must never
leave a half-written file that a later step mistakes for a result. The data goes to a temporary
file in the destination folder (same filesystem) and is moved into place (`io.atomic`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .atomic import atomic_path
from .formats import COMPRESSED, WRITABLE
from .readers import image_extension
from .sitk_convert import one_line, sitk_from_volume
from .volume import Volume



def _cast(array: np.ndarray, dtype, path: Path) -> np.ndarray:
    """To the requested dtype (floats rounded, not truncated, into integer types)."""
    a = np.asarray(array)
    if dtype is None:
        if a.dtype == np.bool_:
            return a.astype(np.uint8)
        if a.dtype == np.float16:
            return a.astype(np.float32)
        return a
    dt = np.dtype(dtype)
    if dt == np.bool_:
        dt = np.dtype(np.uint8)
    if np.issubdtype(dt, np.integer) and np.issubdtype(a.dtype, np.floating):
        if a.size and not np.all(np.isfinite(a)):
            raise InputError(path, "cannot write NaN/inf values as integers")
        a = np.rint(a)
    if np.issubdtype(dt, np.integer) and a.size:
        info = np.iinfo(dt)
        lo, hi = a.min(), a.max()
        if lo < info.min or hi > info.max:
            raise InputError(path, f"values {lo}..{hi} do not fit dtype {dt}")
    return a.astype(dt, copy=False)


def write_image(volume: Volume, path: str | Path, dtype=None) -> Path:
    """Write `volume` to `path` (.nii.gz, .nii, .nrrd or .mha by extension); returns the path.

    Origin, spacing and direction are copied exactly (no resampling); parent folders are made.
    """
    p = Path(path)
    ext = image_extension(p)
    if ext not in WRITABLE:
        raise InputError(p, f"unsupported output format '{ext or p.name}' (use one of {', '.join(WRITABLE)})")
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise InputError(p, f"can only write a 3D volume (got array shape {tuple(array.shape)})")
    image = sitk_from_volume(Volume(_cast(array, dtype, p), volume.spacing, volume.origin, volume.direction))
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(p, f"cannot create output folder ({one_line(exc, p)})") from None
    try:
        with atomic_path(p) as tmp:
            sitk.WriteImage(image, str(tmp), COMPRESSED[ext])
    except (RuntimeError, OSError) as exc:
        raise InputError(p, f"cannot write image ({one_line(exc, p)})") from None
    return p
