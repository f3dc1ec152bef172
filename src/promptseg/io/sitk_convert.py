"""SimpleITK image <-> `Volume`, and the checks every reader applies to what it read.

Why one place: NIfTI (nibabel), NRRD/MHA and DICOM (SimpleITK) must all end in the same
Volume convention (array [i, j, k], LPS origin/direction) and reject the same bad inputs
with the same one-line messages.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .volume import Volume

# SimpleITK pixel types that are not one real number per voxel.
_NON_SCALAR = {
    getattr(sitk, name)
    for name in ("sitkComplexFloat32", "sitkComplexFloat64", "sitkLabelUInt8", "sitkLabelUInt16",
                 "sitkLabelUInt32", "sitkLabelUInt64")
    if hasattr(sitk, name)
}


def one_line(exc: BaseException, path: str | Path | None = None, limit: int = 180) -> str:
    """A library error squeezed to one short line (ITK messages span many lines with paths).

    The file's full path is shortened to its name: the InputError already names the file.
    """
    text = str(exc) or type(exc).__name__
    if path is not None:
        text = text.replace(str(path), Path(path).name)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or [type(exc).__name__]
    itk = any(("ITK" in ln or "sitk::" in ln or ln.startswith("[nrrd]")) for ln in lines)
    if itk:
        # ITK puts the location first and the reason last ("fread got only N things");
        # a trailing "Reason: <errno text>" is often misleading, so skip it.
        useful = [ln for ln in lines if not ln.startswith(("Exception thrown in SimpleITK", "Reason:"))] or lines
        msg = useful[-1]
    else:
        msg = lines[0]
    for prefix in ("ITK ERROR:", "sitk::ERROR:", "[nrrd]"):
        if msg.startswith(prefix):
            msg = msg[len(prefix):].strip()
    head, sep, tail = msg.partition("): ")
    if sep and "IO(" in head and head.count("(") == 1:  # "NrrdImageIO(0x55..): Read: ..." -> "Read: ..."
        msg = tail
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def check_header(path: Path, dimension: int, size, components: int, pixel_id: int) -> None:
    """Reject 2D, true 4D and non-scalar images before their voxels are read."""
    if components != 1:
        raise InputError(path, f"non-scalar image ({components} components per voxel, e.g. RGB/vector); "
                               "expected one grey value per voxel")
    if pixel_id in _NON_SCALAR:
        raise InputError(path, f"non-numeric pixel type {sitk.GetPixelIDValueAsString(pixel_id)}")
    check_dimensions(path, tuple(size), xyz_first=True)


def pixel_bytes(pixel_id: int) -> int:
    """Bytes per voxel of a SimpleITK pixel type (all components), from a 1-voxel image."""
    one = sitk.Image([1, 1, 1], pixel_id)
    return int(one.GetSizeOfPixelComponent()) * int(one.GetNumberOfComponentsPerPixel())


def check_dimensions(path: Path, shape: tuple[int, ...], xyz_first: bool = True) -> None:
    """3D is fine; 4D only with a trailing singleton (squeezed by the caller)."""
    if len(shape) < 3:
        raise InputError(path, f"2D image (size {list(shape)}); expected a 3D volume")
    extra = [int(s) for s in shape[3:]]
    if any(s != 1 for s in extra):
        n = int(np.prod(extra))
        raise InputError(path, f"{len(shape)}D image with {n} volumes (size {list(shape)}); expected a single 3D volume")


def check_voxels(path: Path, array: np.ndarray) -> np.ndarray:
    """Numeric dtype and finite values; bool becomes uint8 (no format writes bool)."""
    dt = array.dtype
    if dt == np.bool_:
        return array.astype(np.uint8)
    if dt.fields is not None or not (np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating)):
        raise InputError(path, f"non-numeric voxel type {dt} (e.g. RGB or complex); expected integer or float values")
    if np.issubdtype(dt, np.floating):
        bad = _count_nonfinite(array)
        if bad:
            raise InputError(path, f"{bad} voxel{'s' if bad != 1 else ''} NaN or inf; expected finite values")
    return array


def _count_nonfinite(array: np.ndarray, chunk: int = 1 << 22) -> int:
    """Count NaN/inf without a full-size boolean temporary for big volumes."""
    flat = array.ravel(order="K")  # a view for C- or F-ordered arrays
    bad = 0
    for start in range(0, flat.size, chunk):
        part = flat[start:start + chunk]
        if not np.isfinite(part.sum(dtype=np.float64)):  # fast path: a clean chunk sums to a number
            bad += int(part.size - np.count_nonzero(np.isfinite(part)))
    return bad


def check_geometry(path: Path, spacing, direction: np.ndarray) -> None:
    sp = np.asarray(spacing, dtype=np.float64)
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(path, f"invalid voxel spacing {np.round(sp, 6).tolist()}")
    d = np.asarray(direction, dtype=np.float64)
    if not np.all(np.isfinite(d)) or abs(np.linalg.det(d)) < 1e-6:
        raise InputError(path, "invalid (singular) orientation matrix in header")


def volume_from_sitk(image: sitk.Image, path: Path) -> Volume:
    """SimpleITK's numpy view is [k, j, i] (or [t, k, j, i]); Volume wants [i, j, k]."""
    check_header(path, image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel(),
                 image.GetPixelID())
    array = sitk.GetArrayFromImage(image)
    dim = image.GetDimension()
    if dim > 3:
        array = array.reshape(array.shape[dim - 3:])  # leading singleton axes are t, ...
    array = array.transpose(2, 1, 0)  # F-ordered view, no copy (same layout as nibabel's)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    spacing = tuple(image.GetSpacing())[:3]
    origin = tuple(image.GetOrigin())[:3]
    check_geometry(path, spacing, direction)
    array = check_voxels(path, array)
    return Volume(array, spacing, origin, direction, Path(path))


def sitk_from_volume(volume: Volume) -> sitk.Image:
    """Exactly the volume's grid: spacing, origin and direction copied, no resampling."""
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {array.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in volume.spacing])
    image.SetOrigin([float(o) for o in volume.origin])
    image.SetDirection([float(v) for v in np.asarray(volume.direction, dtype=np.float64).reshape(-1)])
    return image
