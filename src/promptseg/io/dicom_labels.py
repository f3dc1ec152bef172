"""DICOM labels in: an RTSTRUCT or a DICOM-SEG beside its image series -> {name: Volume} masks.

Why: clinical label sets come as DICOM objects, not NIfTI; a dataset reader (data add, the
run YAML) calls one function and gets masks on the image series' own grid, whichever of the
two objects the folder holds.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom

from ..errors import InputError
from .dicom import read_dicom_series
from .dicom_seg import read_dicom_seg
from .rtstruct import read_rtstruct
from .volume import Volume

LABEL_MODALITIES = ("RTSTRUCT", "SEG")


def dicom_label_modality(path: str | Path) -> str | None:
    """'RTSTRUCT' or 'SEG' when `path` is such a DICOM object, else None (cheap: header only)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:
        return None
    m = str(ds.get("Modality", ""))
    return m if m in LABEL_MODALITIES else None


def read_dicom_labels(label_path: str | Path, series_dir: str | Path) -> dict[str, Volume]:
    """{ROI / segment name: binary uint8 Volume} on the grid of the series in `series_dir`."""
    kind = dicom_label_modality(label_path)
    if kind == "RTSTRUCT":
        return read_rtstruct(label_path, series_dir)
    if kind == "SEG":
        return read_dicom_seg(label_path, series_dir)
    raise InputError(label_path, "not a DICOM RTSTRUCT or DICOM-SEG label file")


def read_dicom_label_map(label_path: str | Path, series_dir: str | Path) -> Volume:
    """One integer label map on the series' grid: each voxel holds the ROI number (RTSTRUCT) or
    segment number (DICOM-SEG) that covers it, the object's own numbering, so a dataset's labels
    file can name the values; where ROIs overlap the higher number wins."""
    masks = read_dicom_labels(label_path, series_dir)
    names = dicom_label_names(label_path)
    by_name = {n: v for v, n in names.items()}
    grid = next(iter(masks.values())) if masks else read_dicom_series(series_dir)
    out = np.zeros(grid.shape, dtype=np.uint16 if max(names, default=0) > 255 else np.uint8)
    for name, vol in sorted(masks.items(), key=lambda kv: by_name.get(kv[0], 0)):
        out[np.asarray(vol.array) > 0] = by_name.get(name, 0)
    lab = grid.with_array(out)
    lab.path = Path(label_path)
    return lab


def dicom_label_names(label_path: str | Path) -> dict[int, str]:
    """{ROI or segment number: name} of an RTSTRUCT or DICOM-SEG file."""
    kind = dicom_label_modality(label_path)
    if kind is None:
        raise InputError(label_path, "not a DICOM RTSTRUCT or DICOM-SEG label file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(label_path, stop_before_pixels=True)
    if kind == "RTSTRUCT":
        return {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    return {int(s.SegmentNumber): str(s.SegmentLabel) for s in ds.get("SegmentSequence", [])}
