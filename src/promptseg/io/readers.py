"""Read images and label maps into `Volume`s; bad files give one-line `InputError`s.

NIfTI goes through nibabel (it notices truncated/corrupt gzip data, which ITK's NIfTI reader
silently zero-fills, and its sform/qform choice is the one MONAI and nibabel users expect);
NRRD, MetaImage and DICOM series go through SimpleITK.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

from ..errors import InputError
from .bounds import check_declared_size, text_header_storage
from .formats import FORMATS, image_ending
from .dicom_labels import dicom_label_modality, read_dicom_label_map
from .sitk_convert import (check_dimensions, check_geometry, check_header, check_voxels, one_line, pixel_bytes,
                           volume_from_sitk)
from .volume import Volume

def image_extension(path: str | Path) -> str:
    """The format-deciding suffix, compound for '.nii.gz' ('' when there is none)."""
    return image_ending(path).lower() or Path(path).suffix.lower()


def read_image(path: str | Path) -> Volume:
    """NIfTI / NRRD / MHA(MHD) file, or a folder holding one DICOM series -> Volume.

    The on-disk dtype is kept (int16 CT stays int16); a trailing singleton 4th axis is squeezed.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "file not found")
    if p.is_dir():
        from .dicom import read_dicom_series

        return read_dicom_series(p)
    ext = image_extension(p)
    fmt = FORMATS.get(ext)
    if fmt is None:
        known = ", ".join(FORMATS)
        raise InputError(p, f"unsupported image format '{ext or p.name}' (expected {known}, or a DICOM series folder)")
    if fmt == "NIfTI":
        return _read_nifti(p)
    return _read_sitk(p, fmt)


def _read_nifti(p: Path) -> Volume:
    import nibabel as nib

    try:
        with _quiet_header_fixes():
            img = nib.load(str(p), mmap=False)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(p, f"not a NIfTI file (nibabel sees {type(img).__name__})")
        dtype = img.get_data_dtype()
        if dtype.fields is not None or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
                                            or dtype == np.bool_):
            raise InputError(p, f"non-numeric voxel type {dtype} (e.g. RGB or complex); expected integer or float values")
        check_dimensions(p, img.shape)
        _check_nifti_header(p, img)
        array = np.asanyarray(img.dataobj)
        affine = img.affine
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # nibabel, gzip (EOFError, zlib.error, BadGzipFile), struct, OSError ...
        raise InputError(p, f"corrupt or truncated NIfTI file ({type(exc).__name__}: {one_line(exc, p)})") from None
    if array.ndim > 3:
        array = array.reshape(array.shape[:3], order="F")
    array = np.asarray(array)
    vol = Volume.from_affine(array, affine, p)
    check_geometry(p, vol.spacing, vol.direction)
    vol.array = check_voxels(p, vol.array)
    return vol


@contextlib.contextmanager
def _quiet_header_fixes():
    """nibabel logs the header fixes it makes (e.g. 'setting 0 dims to 1'); `_check_nifti_header`
    judges the raw header itself and refuses in one line, so that second line is held back."""
    from nibabel.imageglobals import logger

    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_nifti_header(p: Path, img) -> None:
    """Spacing and size from the header as written, before the voxels are read.

    nibabel's loader quietly turns a pixdim of 0 into 1 mm and a negative one into its absolute
    value (it only logs a warning), so the header is re-read raw. A zero pixdim is refused even
    beside a valid sform (readers that take spacing from pixdim, as ITK does, would disagree); a
    negative one only where the affine comes from pixdim (no sform), since an sform overrides it.
    """
    from nibabel.openers import ImageOpener

    with ImageOpener(str(p)) as f:
        raw = type(img.header).from_fileobj(f, check=False)
    pix = [float(v) for v in raw["pixdim"][1:1 + min(3, len(img.shape))]]
    if not all(np.isfinite(pix)) or any(v == 0 for v in pix) or (
            int(raw["sform_code"]) == 0 and any(v < 0 for v in pix)):
        raise InputError(p, f"invalid voxel spacing in header (pixdim {[round(v, 6) for v in pix]}); "
                            "spacing must be finite and > 0 mm")
    slope, inter = img.header.get_slope_inter()
    scaled = (slope is not None and slope != 1) or (inter is not None and inter != 0)
    size = p.stat().st_size
    gz = p.name.lower().endswith(".gz")
    stored = size if gz else size - int(raw["vox_offset"])
    check_declared_size(p, img.shape, img.get_data_dtype().itemsize, stored, "gzip" if gz else "raw",
                        out_itemsize=8 if scaled else None)


def _read_sitk(p: Path, fmt: str) -> Volume:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(p, f"not a readable {fmt} file ({one_line(exc, p)})") from None
    check_header(p, reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents(), reader.GetPixelID())
    check_geometry(p, reader.GetSpacing()[:3], np.reshape(reader.GetDirection(), (reader.GetDimension(),) * 2)[:3, :3])
    stored, encoding = text_header_storage(p, fmt)
    check_declared_size(p, reader.GetSize(), pixel_bytes(reader.GetPixelID()), stored, encoding)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(p, f"corrupt or truncated {fmt} file ({one_line(exc, p)})") from None
    return volume_from_sitk(image, p)


def _smallest_int_dtype(lo: int, hi: int) -> np.dtype:
    for dt in (np.uint8, np.int16, np.int32, np.int64):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def read_label(path: str | Path, reference: Volume | None = None, series_dir: str | Path | None = None) -> Volume:
    """Integer label map; float files with integral values are cast to int, others rejected.

    With `reference` (the image), the label's grid must match it (Volume.grid_differences).
    An RTSTRUCT or DICOM-SEG file is rasterised on its image series (`series_dir`, else the
    reference's folder); values are the ROI / segment numbers (dicom_labels).
    """
    p = Path(path)
    if p.is_file() and image_extension(p) not in FORMATS and dicom_label_modality(p):
        series = series_dir or (reference.path if reference is not None else None)
        if series is None or not Path(series).is_dir():
            raise InputError(p, "a DICOM RTSTRUCT / SEG label needs its image series folder")
        return read_dicom_label_map(p, series)
    vol = read_image(path)
    a = vol.array
    if np.issubdtype(a.dtype, np.floating):
        if a.size:
            frac = np.abs(a - np.rint(a))
            if frac.max() > 1e-3:
                bad = a.ravel(order="K")[int(np.argmax(frac.ravel(order="K")))]
                raise InputError(p, f"label map has non-integer values (e.g. {float(bad):g}); expected integer labels")
            lo, hi = int(np.rint(a.min())), int(np.rint(a.max()))
        else:
            lo = hi = 0
        vol.array = np.rint(a).astype(_smallest_int_dtype(lo, hi))
    if reference is not None:
        diffs = vol.grid_differences(reference)
        if diffs:
            ref = f"image {reference.path.name}" if reference.path is not None else "the image"
            raise InputError(p, f"label grid differs from {ref} (label vs image): " + "; ".join(diffs))
    return vol
