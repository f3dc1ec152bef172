"""DICOM-SEG out and in, through highdicom, on the grid of the source series.

Why highdicom: it builds a standard Segmentation IOD (references to every source instance,
plane positions, segment descriptions with coded concepts) that PACS, OHIF and 3D Slicer load,
and reads one back frame by frame against the source instances.
"""
from __future__ import annotations

import io as _io
import warnings
from contextlib import contextmanager
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ..errors import InputError
from .atomic import atomic_write
from .dicom import read_dicom_series, read_series_headers, slice_index
from .dicom_codes import SCT, segment_specs, software_version
from .volume import Volume


def _source_grid(label_map: Volume, series_dir: Path, out_path: Path):
    """The series' headers, its grid, and each header's slice index k; the label map must be on it."""
    grid = read_dicom_series(series_dir)
    diff = grid.grid_differences(label_map, tol=1e-3)
    if diff:
        raise InputError(out_path, f"label map is not on the grid of DICOM series {series_dir} ({'; '.join(diff)})")
    headers = read_series_headers(series_dir)
    ks = [slice_index(grid, h.ImagePositionPatient, series_dir) for h in headers]
    return headers, grid, ks


@contextmanager
def _quiet_source():
    """Silence notes about the source's own header values (a one-component PatientName, a
    17-character StudyID): names are kept as the source has them, lengths are cut by dicom_safe."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        warnings.filterwarnings("ignore", message=".*exceeds the maximum length")
        yield


def dicom_safe(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Cut values that the source copied in but their VR does not allow (e.g. a 17-character
    StudyID, SH holds 16), so the written object validates; identity stays in the UIDs."""
    for kw, limit in (("StudyID", 16), ("AccessionNumber", 16)):
        if kw in ds and ds.data_element(kw).value and len(str(ds.data_element(kw).value)) > limit:
            setattr(ds, kw, str(ds.data_element(kw).value)[:limit])
    return ds


def write_dicom_seg(label_map: Volume, segments: list[dict], source_series_dir, out_path) -> Path:
    """Write the label map as one binary DICOM-SEG referencing the series in `source_series_dir`.

    `label_map` holds integer label values on that series' grid; each segment dict names one
    value (see dicom_codes). Empty segments are kept (an empty frame set is valid)."""
    out_path, series_dir = Path(out_path), Path(source_series_dir)
    specs = segment_specs(segments, out_path)
    headers, _, ks = _source_grid(label_map, series_dir, out_path)
    lab = np.asarray(label_map.array)
    # frames follow the headers' order; a frame is [rows = j, columns = i]
    stack = np.stack([lab[:, :, k].T for k in ks])
    masks = np.stack([stack == s.label_value for s in specs], axis=-1).astype(np.uint8)
    algo = hd.AlgorithmIdentificationSequence(
        name="promptseg", version=software_version(),
        family=codes.DCM.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=s.number, segment_label=s.name,
            segmented_property_category=Code(s.category[0], SCT, s.category[1]),
            segmented_property_type=Code(s.type[0], SCT, s.type[1]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo,
            display_color=hd.color.CIELabColor.from_rgb(*s.color))
        for s in specs]
    with _quiet_source():
        seg = hd.seg.Segmentation(
            source_images=headers, pixel_array=masks, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9901,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="promptseg",
            manufacturer_model_name="promptseg", software_versions=software_version(),
            device_serial_number="0", series_description="promptseg segmentation", omit_empty_frames=False)
    buf = _io.BytesIO()
    dicom_safe(seg).save_as(buf, enforce_file_format=True)
    return atomic_write(out_path, buf.getvalue())


def read_dicom_seg(seg_path, series_dir) -> dict[str, Volume]:
    """{segment label: binary uint8 Volume} on the grid of the series the SEG was drawn on."""
    seg_path, series_dir = Path(seg_path), Path(series_dir)
    try:
        seg = hd.seg.segread(seg_path)
    except Exception as exc:  # pydicom/highdicom raise many types for a non-SEG file
        raise InputError(seg_path, f"not a readable DICOM-SEG ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    grid = read_dicom_series(series_dir)
    headers = read_series_headers(series_dir)
    ks = [slice_index(grid, h.ImagePositionPatient, series_dir) for h in headers]
    numbers = list(seg.get_segment_numbers())
    try:
        pix = seg.get_pixels_by_source_instance([h.SOPInstanceUID for h in headers], segment_numbers=numbers)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise InputError(seg_path, f"does not reference the series in {series_dir} ({str(exc).splitlines()[0]})") from None
    out = {}
    for idx, n in enumerate(numbers):
        arr = np.zeros(grid.shape, dtype=np.uint8)
        for f, k in enumerate(ks):
            arr[:, :, k] = pix[f, :, :, idx].T
        out[seg.get_segment_description(n).segment_label] = grid.with_array(arr)
    return out
