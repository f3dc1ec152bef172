"""Check a DICOM series folder the way a radiology reader does before trusting its geometry.

Why: GDCM silently skips a non-DICOM or unreadable file and builds the z spacing from the first
two positions, so a missing, truncated, duplicated or re-oriented slice gave a wrong volume with
exit 0 (issue 16). Every file of the folder is read here (headers and pixel length) and the
series is refused in one line naming the folder and the slice, unless a viewer would accept
it; then a warning states the geometry that is used.

Tolerances (stated once): orientation cosines agree within 1e-4; slice steps along the normal
agree with the median step within max(0.01 mm, 1% of the step); in-plane drift of positions up
to 0.01 mm.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ..errors import InputError

ORIENTATION_TOL = 1e-4
SPACING_REL_TOL = 0.01
SPACING_ABS_TOL_MM = 0.01
_SKIP = {"DICOMDIR"}
_NON_IMAGE = {"RTSTRUCT", "SEG", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG"}


class _NotDicom(Exception):
    """A file without the DICOM preamble: an error only when the folder also holds DICOM files."""


@dataclass
class SliceInfo:
    path: Path
    position: np.ndarray
    orientation: np.ndarray
    series_uid: str
    instance: int | None


def _name(path: Path) -> str:
    return path.name


def _expected_pixel_bytes(ds) -> int | None:
    try:
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        return int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * frames * int(ds.BitsAllocated) // 8
    except (AttributeError, TypeError, ValueError):
        return None


def _read_slice(folder: Path, path: Path) -> SliceInfo | None:
    """One file's geometry; None for a non-image DICOM object (RTSTRUCT, SEG, ...) kept beside."""
    try:
        with warnings.catch_warnings():  # VR-length notes on scanner headers are not our user's problem
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            ds.get("SeriesInstanceUID")
    except InvalidDicomError:
        raise _NotDicom(path) from None
    except Exception as exc:  # truncated files fail anywhere inside pydicom's parser
        raise InputError(folder, f"slice {_name(path)} is unreadable or truncated "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if str(ds.get("Modality", "")) in _NON_IMAGE:
        return None
    if "PixelData" not in ds:
        raise InputError(folder, f"slice {_name(path)} has no pixel data (truncated or not an image)")
    if not ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian).is_compressed:
        want = _expected_pixel_bytes(ds)
        if want is not None and len(ds.PixelData) < want:
            raise InputError(folder, f"slice {_name(path)} is truncated: {len(ds.PixelData)} of {want} "
                                     "pixel bytes")
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        raise InputError(folder, f"slice {_name(path)} lacks ImagePositionPatient/ImageOrientationPatient")
    inst = ds.get("InstanceNumber")
    return SliceInfo(path, np.asarray(ds.ImagePositionPatient, dtype=np.float64),
                     np.asarray(ds.ImageOrientationPatient, dtype=np.float64),
                     str(ds.get("SeriesInstanceUID", "")), int(inst) if inst not in (None, "") else None)


def _majority(values: list[str]) -> str:
    return max(set(values), key=values.count)


def check_series_folder(folder: str | Path) -> list[Path]:
    """Validate the one image series in `folder`; return its files sorted along the slice normal."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.name not in _SKIP)
    if not files:
        raise InputError(folder, "no DICOM files found in folder")
    read, foreign = [], []
    for p in files:
        try:
            read.append(_read_slice(folder, p))
        except _NotDicom:
            foreign.append(p)
    if not read:
        raise InputError(folder, f"no DICOM files found in folder ({len(foreign)} other file(s))")
    if foreign:
        raise InputError(folder, f"slice {_name(foreign[0])} is not a DICOM file")
    slices = [s for s in read if s is not None]
    if not slices:
        raise InputError(folder, "no DICOM image slices found in folder")
    uids = [s.series_uid for s in slices]
    if len(set(uids)) > 1:
        main = _majority(uids)
        odd = next(s for s in slices if s.series_uid != main)
        raise InputError(folder, f"folder holds {len(set(uids))} DICOM series (different SeriesInstanceUIDs, "
                                 f"e.g. slice {_name(odd.path)}); put each series in its own folder")
    keys = [",".join(f"{v:.4f}" for v in s.orientation) for s in slices]
    ref = slices[keys.index(_majority(keys))].orientation
    for s in slices:
        if np.max(np.abs(s.orientation - ref)) > ORIENTATION_TOL:
            raise InputError(folder, f"slice {_name(s.path)} has orientation {np.round(s.orientation, 4).tolist()} "
                                     f"unlike the series' {np.round(ref, 4).tolist()}")
    normal = np.cross(ref[:3], ref[3:])
    slices.sort(key=lambda s: float(s.position @ normal))
    z = np.array([float(s.position @ normal) for s in slices])
    if len(slices) < 2:
        return [s.path for s in slices]
    steps = np.diff(z)
    for a, b, d in zip(slices, slices[1:], steps):
        if d < SPACING_ABS_TOL_MM:
            raise InputError(folder, f"slices {_name(a.path)} and {_name(b.path)} share position "
                                     f"{np.round(b.position, 3).tolist()} (duplicate slice)")
    step = float(np.median(steps))
    tol = max(SPACING_ABS_TOL_MM, SPACING_REL_TOL * step)
    for a, b, d in zip(slices, slices[1:], steps):
        if abs(d - step) > tol:
            gap = d / step
            what = (f"{int(round(gap)) - 1} slice(s) missing" if gap > 1.5 and abs(gap - round(gap)) < 0.1
                    else "non-uniform slice spacing")
            raise InputError(folder, f"{what}: slices {_name(a.path)} and {_name(b.path)} are {d:.4g} mm apart, "
                                     f"the series' step is {step:.4g} mm (tolerance {tol:.3g} mm); "
                                     f"{len(slices)} slices")
    for s, zz in zip(slices, z):  # positions must lie on one line along the normal (no shear / tilt)
        drift = s.position - slices[0].position - (zz - z[0]) * normal
        if np.linalg.norm(drift) > SPACING_ABS_TOL_MM:
            raise InputError(folder, f"slice {_name(s.path)} is shifted {np.linalg.norm(drift):.3g} mm in-plane "
                                     "from the slice normal (tilted or sheared stack); resample it first")
    inst = [s.instance for s in slices]
    if None not in inst:
        ordered = sorted(inst)
        if len(set(inst)) != len(inst) or ordered[-1] - ordered[0] + 1 != len(inst):
            warnings.warn(f"{folder}: InstanceNumbers {ordered[0]}..{ordered[-1]} do not count the "
                          f"{len(inst)} slices one by one; geometry used: {len(inst)} slices at positions "
                          f"{z[0]:.4g}..{z[-1]:.4g} mm along the normal, step {step:.4g} mm", stacklevel=2)
    return [s.path for s in slices]
