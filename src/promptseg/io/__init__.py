"""Image I/O: NIfTI, NRRD, MetaImage and DICOM series <-> `Volume` (array [i, j, k] + LPS geometry).

Bad files raise `promptseg.errors.InputError` with one line naming the file and the problem.
"""
from __future__ import annotations

from .dicom import read_dicom_series, write_dicom_series
from .formats import FORMATS, IMAGE_ENDINGS, WRITABLE, case_id, image_ending
from .readers import image_extension, read_image, read_label
from .volume import Volume
from .writers import write_image

__all__ = [
    "Volume",
    "read_image",
    "read_label",
    "write_image",
    "read_dicom_series",
    "write_dicom_series",
    "image_extension",
    "FORMATS",
    "WRITABLE",
    "IMAGE_ENDINGS",
    "image_ending",
    "case_id",
]
