"""Image I/O: NIfTI, NRRD, MetaImage and DICOM series <-> `Volume` (array [i, j, k] + LPS geometry).

Bad files raise `promptseg.errors.InputError` with one line naming the file and the problem.
"""
from __future__ import annotations

from .dicom import read_dicom_series, write_dicom_series
from .readers import FORMATS, image_extension, read_image, read_label
from .volume import Volume
from .writers import WRITABLE, write_image

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
]
