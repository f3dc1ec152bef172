"""DICOM labels in: an RTSTRUCT or a DICOM-SEG beside its image series -> {name: Volume} masks.

Why: clinical label sets come as DICOM objects, not NIfTI; a dataset reader (data add, the
run YAML) calls one function and gets masks on the image series' own grid, whichever of the
two objects the folder holds.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pydicom

from ..errors import InputError
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
