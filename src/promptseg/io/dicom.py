"""DICOM series: read one series from a folder; write a volume as a CT series.

Why SimpleITK/GDCM: it sorts slices by ImagePositionPatient, applies RescaleSlope/Intercept and
builds the 3D geometry from ImageOrientationPatient, which is exactly what a scanner folder needs.
The writer exists so tests (and users) can produce a standards-shaped series from any volume.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import locale
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pydicom
import SimpleITK as sitk

from ..errors import InputError
from .atomic import atomic_directory
from .dicom_checks import check_series_folder
from .bounds import check_memory
from .sitk_convert import one_line, pixel_bytes, volume_from_sitk
from .volume import Volume


def read_dicom_series(folder: str | Path) -> Volume:
    """The single DICOM series in `folder` -> Volume (HU after rescale; ints stay ints).

    The folder is checked first (dicom_checks): a damaged series is refused, never read short."""
    p = Path(folder)
    if not p.is_dir():
        raise InputError(p, "DICOM series folder not found")
    files = [str(f) for f in check_series_folder(p)]
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    try:
        first.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(p, f"corrupt DICOM series ({one_line(exc, p)})") from None
    # slices are checked against their own pixel bytes (dicom_checks); the stack must fit in memory
    # (GDCM widens rescaled values to at least 4 bytes)
    size = tuple(first.GetSize()) + (1,)  # (columns, rows, frames of a multi-frame file)
    check_memory(p, (size[0], size[1], size[2] * len(files)), max(pixel_bytes(first.GetPixelID()), 4))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(p, f"corrupt DICOM series ({one_line(exc, p)})") from None
    vol = volume_from_sitk(image, p)
    a = vol.array
    # GDCM widens rescaled integer data to int32; int16 holds any CT in HU and halves memory.
    if a.dtype == np.int32 and a.size and a.min() >= -32768 and a.max() <= 32767:
        vol.array = a.astype(np.int16)
    return vol


def _fmt(values) -> str:
    return "\\".join(f"{float(v):.10g}" for v in values)


def write_dicom_series(
    volume: Volume,
    folder: str | Path,
    *,
    modality: str = "CT",
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    series_description: str = "promptseg",
    patient_name: str = "Anonymous",
    patient_id: str = "ANON",
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> Path:
    """Write one file per slice (k axis) into a new `folder` (created; must be empty or absent).

    Stored value = round((value - intercept) / slope) as signed 16 bit; readers get the values
    back through RescaleSlope/Intercept. A left-handed grid is written as its right-handed
    equivalent (k reversed), since DICOM derives the slice axis from the in-plane cross product.
    """
    from pydicom.uid import generate_uid

    out = Path(folder)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(out, "DICOM output folder exists and is not empty")
    arr = np.asarray(volume.array)
    if arr.ndim != 3:
        raise InputError(out, f"can only write a 3D volume as a DICOM series (got shape {arr.shape})")
    if rescale_slope <= 0:
        raise InputError(out, f"rescale slope must be positive, got {rescale_slope}")
    direction = np.asarray(volume.direction, dtype=np.float64)
    origin = np.asarray(volume.origin, dtype=np.float64)
    spacing = np.asarray(volume.spacing, dtype=np.float64)
    if np.linalg.det(direction) < 0:  # make it right-handed: k reversed, same voxels in space
        arr = arr[:, :, ::-1]
        origin = origin + direction[:, 2] * spacing[2] * (arr.shape[2] - 1)
        direction = direction.copy()
        direction[:, 2] *= -1
    stored = (arr.astype(np.float64) - rescale_intercept) / rescale_slope
    if arr.size and (np.rint(stored.min()) < -32768 or np.rint(stored.max()) > 32767):
        raise InputError(out, f"values {arr.min()}..{arr.max()} do not fit 16-bit storage with slope "
                              f"{rescale_slope} and intercept {rescale_intercept}")
    # Float pixels + rescale tags: GDCM stores round((v - b) / m) itself; integer input would be rejected
    # for non-integer slopes.
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr.astype(np.float64).transpose(2, 1, 0)))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(origin.tolist())
    image.SetDirection(direction.reshape(-1).tolist())

    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    common = [
        ("0008|0008", "DERIVED\\SECONDARY"),
        ("0008|0020", date), ("0008|0021", date), ("0008|0030", time), ("0008|0031", time),
        ("0008|0060", modality),
        ("0008|103e", series_description),
        ("0010|0010", patient_name), ("0010|0020", patient_id),
        ("0020|000d", study_uid), ("0020|000e", series_uid), ("0020|0052", frame_uid),
        ("0020|0011", "1"),
        ("0020|0037", _fmt(list(direction[:, 0]) + list(direction[:, 1]))),
        ("0018|0050", f"{spacing[2]:.10g}"),
        ("0018|0088", f"{spacing[2]:.10g}"),
        ("0028|1053", f"{rescale_slope:.10g}"), ("0028|1052", f"{rescale_intercept:.10g}"),
        ("0028|0100", "16"), ("0028|0101", "16"), ("0028|0102", "15"), ("0028|0103", "1"),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_directory(out) as tmp, _locale_kept():
            writer = sitk.ImageFileWriter()
            writer.KeepOriginalImageUIDOn()
            for k in range(image.GetDepth()):
                sl = image[:, :, k]
                for tag, value in common:
                    sl.SetMetaData(tag, value)
                sl.SetMetaData("0008|0018", generate_uid())
                sl.SetMetaData("0020|0013", str(k + 1))
                sl.SetMetaData("0020|0032", _fmt(image.TransformIndexToPhysicalPoint((0, 0, k))))
                writer.SetFileName(str(tmp / f"slice_{k + 1:04d}.dcm"))
                writer.Execute(sl)
    except RuntimeError as exc:
        raise InputError(out, f"cannot write DICOM series ({one_line(exc, out)})") from None
    return out


@contextlib.contextmanager
def _locale_kept() -> Iterator[None]:
    """The process's locale as it was before the block. ITK's GDCM writer leaves every category at
    "C" after writing a slice with its geometry tags (SimpleITK 2.x; seen here as the C locale of
    the rest of a test session): Python text then decodes as ASCII, and torch's inductor, which
    reads its code templates in the locale's encoding, failed to import."""
    before = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        if locale.setlocale(locale.LC_ALL) != before:
            locale.setlocale(locale.LC_ALL, before)


def slice_index(grid: Volume, position, where: str | Path) -> int:
    """k index of the grid slice whose first voxel sits at DICOM ImagePositionPatient `position`.

    Why: DICOM objects (SEG frames, RTSTRUCT contours) address slices by position or SOP UID,
    never by array index; mapping through the grid's own affine keeps orientation exact whatever
    order a library sorted the files in."""
    ijk = np.linalg.solve(grid.affine_lps[:3, :3], np.asarray(position, dtype=np.float64) - np.asarray(grid.origin))
    k = int(round(ijk[2]))
    if abs(ijk[0]) > 1e-2 or abs(ijk[1]) > 1e-2 or abs(ijk[2] - k) > 1e-2 or not 0 <= k < grid.shape[2]:
        raise InputError(where, f"slice at {np.round(position, 3).tolist()} is not on the series grid "
                                f"(voxel {np.round(ijk, 3).tolist()})")
    return k


def read_series_headers(folder: str | Path) -> list:
    """pydicom datasets (no pixels) of the checked series in `folder`, sorted along the normal."""
    files = check_series_folder(folder)
    with warnings.catch_warnings():  # scanner headers often break VR lengths (a 17-character StudyID)
        warnings.simplefilter("ignore")
        return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
