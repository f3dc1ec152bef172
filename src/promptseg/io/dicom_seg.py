"""DICOM-SEG out and in, through highdicom, on the grid of the source series.

Why highdicom: it builds a standard Segmentation IOD (references to every source instance,
plane positions, segment descriptions with coded concepts) that PACS, OHIF and 3D Slicer load,
and reads one back frame by frame against the source instances.
"""
from __future__ import annotations

import io as _io
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ..errors import InputError
from .atomic import atomic_write
from .dicom_codes import SCT, dicom_safe, quiet_source, segment_specs, series_grid, software_version, source_grid
from .sitk_convert import one_line
from .volume import Volume


def write_dicom_seg(label_map: Volume, segments: list[dict], source_series_dir, out_path) -> Path:
    """Write the label map as one binary DICOM-SEG referencing the series in `source_series_dir`.

    `label_map` holds integer label values on that series' grid; each segment dict names one
    value (see dicom_codes). Empty segments are kept (an empty frame set is valid)."""
    out_path, series_dir = Path(out_path), Path(source_series_dir)
    specs = segment_specs(segments, out_path)
    headers, _, ks = source_grid(label_map, series_dir, out_path)
    lab = np.asarray(label_map.array)
    if lab.dtype.kind not in "iub":
        raise InputError(out_path, f"label map must hold integers, got {lab.dtype}")
    # label value -> segment number; other values are background. One frame per source header,
    # in the headers' order; a frame is [rows = j, columns = i]. A label map, not one binary
    # plane per segment, keeps memory at one volume whatever the number of classes.
    lut = np.zeros(max(int(lab.max(initial=0)), max(s.label_value for s in specs)) + 1, dtype=np.uint16)
    for s in specs:
        lut[s.label_value] = s.number
    frames = np.stack([lut[np.clip(lab[:, :, k].T, 0, None)] for k in ks])
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
    with quiet_source():
        seg = hd.seg.Segmentation(
            source_images=headers, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
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
        raise InputError(seg_path, f"not a readable DICOM-SEG ({type(exc).__name__}: {one_line(exc, seg_path)})") from None
    headers, grid, ks = series_grid(series_dir)
    numbers = list(seg.get_segment_numbers())
    try:
        pix = seg.get_pixels_by_source_instance([h.SOPInstanceUID for h in headers], segment_numbers=numbers)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise InputError(seg_path, f"does not reference the series in {series_dir} ({one_line(exc, seg_path)})") from None
    out = {}
    for idx, n in enumerate(numbers):
        arr = np.zeros(grid.shape, dtype=np.uint8)
        for f, k in enumerate(ks):
            arr[:, :, k] = pix[f, :, :, idx].T
        out[seg.get_segment_description(n).segment_label] = grid.with_array(arr)
    return out
