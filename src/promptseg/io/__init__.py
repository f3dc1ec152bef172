"""Image I/O: NIfTI, NRRD, MetaImage and DICOM series <-> `Volume` (array [i, j, k] + LPS geometry);
DICOM-SEG and RTSTRUCT label objects out and in, on the source series' grid.

Bad files raise `promptseg.errors.InputError` with one line naming the file and the problem.
"""
from __future__ import annotations

from .dicom import read_dicom_series, write_dicom_series
from .dicom_labels import read_dicom_labels
from .dicom_seg import read_dicom_seg, write_dicom_seg
from .formats import FORMATS, IMAGE_ENDINGS, WRITABLE, case_id, image_ending
from .readers import image_extension, read_image, read_label
from .rtstruct import read_rtstruct, write_rtstruct
from .volume import Volume
from .writers import write_image

__all__ = [
    "Volume",
    "read_image",
    "read_label",
    "write_image",
    "read_dicom_series",
    "write_dicom_series",
    "read_rtstruct",
    "write_rtstruct",
    "read_dicom_seg",
    "write_dicom_seg",
    "read_dicom_labels",
    "image_extension",
    "FORMATS",
    "WRITABLE",
    "IMAGE_ENDINGS",
    "image_ending",
    "case_id",
]
