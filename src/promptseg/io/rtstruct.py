"""RTSTRUCT out and in, on the grid of the source series.

Writing is highdicom-based: `highdicom.SOPClass` makes the patient, study, series, equipment and
SOP common parts (checked VRs, fresh UIDs); the Structure Set, ROI Contour and RT ROI
Observations modules are added here. Contours are contourpy's iso-0.5 lines of each slice's
mask: they pass half-way between voxel centres inside and outside, so a reader that takes a
voxel when its centre is inside (3D Slicer, plastimatch, `read_rtstruct`) gets the mask back.

Why not rt-utils (tried first): its contours run through boundary voxel centres, so those
readers lose the boundary (Dice 0.85 on the 555-voxel STS_002 PET tumour); its output fails
dciodvfy (16-character DS, missing Type 2 attributes); it sizes masks [columns, rows] and scales
x by the row spacing (wrong on non-square grids); and it matches contours to slices only by
ReferencedSOPInstanceUID, which in the shared sarcoma data resolve for 0 of 32 contours.

Reading goes by geometry, as 3D Slicer does: each contour's plane -> the slice at that position
(within half a step), a voxel in when its centre lies inside the polygon (matplotlib's Path),
holes (contours inside contours) by XOR. On the shared sarcoma data this rule reproduces the
reference NIfTI masks voxel for voxel.
"""
from __future__ import annotations

import datetime as _dt
import io as _io
import warnings
from pathlib import Path

import contourpy
import highdicom as hd
import numpy as np
import pydicom
from matplotlib.path import Path as MplPath
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import RTStructureSetStorage

from ..errors import InputError
from .atomic import atomic_write
from .dicom import read_dicom_series
from .dicom_codes import SCT, SegmentSpec, dicom_safe, quiet_source, segment_specs, software_version, source_grid
from .volume import Volume

_STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management, as RT references a study


def _item(**kw) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def _ds(v: float) -> str:
    return f"{v:.10g}"  # DS holds at most 16 characters


def _slice_contours(mask_ij: np.ndarray) -> list[np.ndarray]:
    """Closed iso-0.5 contours of one slice [i, j] as (N, 2) arrays of (i, j) voxel coordinates."""
    padded = np.pad(mask_ij.astype(np.float64), 1)  # zero border: contours at the edge close too
    lines = contourpy.contour_generator(z=padded.T, line_type=contourpy.LineType.Separate).lines(0.5)
    out = []
    for line in lines:
        pts = np.asarray(line, dtype=np.float64) - 1.0  # contourpy: x = column = i, y = row = j
        if len(pts) > 1 and np.allclose(pts[0], pts[-1]):
            pts = pts[:-1]
        if len(pts) >= 3:
            out.append(pts)
    return out


def _roi_contour(spec: SegmentSpec, lab, grid: Volume, headers, ks) -> Dataset:
    item = _item(ReferencedROINumber=spec.number, ROIDisplayColor=list(spec.color))
    contours = []
    for h, k in zip(headers, ks):
        mask = lab[:, :, k] == spec.label_value
        if not mask.any():
            continue
        for pts in _slice_contours(mask):
            ijk = np.column_stack([pts, np.full(len(pts), float(k)), np.ones(len(pts))])
            xyz = (grid.affine_lps @ ijk.T).T[:, :3]
            contours.append(_item(
                ContourImageSequence=Sequence([_item(ReferencedSOPClassUID=h.SOPClassUID,
                                                     ReferencedSOPInstanceUID=h.SOPInstanceUID)]),
                ContourGeometricType="CLOSED_PLANAR", NumberOfContourPoints=len(xyz),
                ContourNumber=len(contours) + 1, ContourData=[_ds(v) for v in xyz.ravel()]))
    if contours:
        item.ContourSequence = Sequence(contours)
    return item


def write_rtstruct(label_map: Volume, segments: list[dict], source_series_dir, out_path) -> Path:
    """Write one ROI per segment (contours of label_map == label_value) as an RTSTRUCT that
    references the series in `source_series_dir`; same arguments as `write_dicom_seg`."""
    out_path, series_dir = Path(out_path), Path(source_series_dir)
    specs = segment_specs(segments, out_path)
    headers, grid, ks = source_grid(label_map, series_dir, out_path)
    src = headers[0]
    now = _dt.datetime.now()
    with quiet_source():
        ds = hd.SOPClass(
            study_instance_uid=src.StudyInstanceUID, series_instance_uid=hd.UID(), series_number=9902,
            sop_instance_uid=hd.UID(), sop_class_uid=RTStructureSetStorage, instance_number=1,
            modality="RTSTRUCT", manufacturer="promptseg", transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
            patient_id=src.get("PatientID"), patient_name=src.get("PatientName"),
            patient_birth_date=src.get("PatientBirthDate"), patient_sex=src.get("PatientSex") or None,
            accession_number=src.get("AccessionNumber"), study_id=(src.get("StudyID") or "")[:16] or None,
            study_date=src.get("StudyDate"), study_time=src.get("StudyTime"),
            referring_physician_name=src.get("ReferringPhysicianName"),
            series_description="promptseg contours", manufacturer_model_name="promptseg",
            software_versions=software_version())
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = src.FrameOfReferenceUID
    ds.PositionReferenceIndicator = ""
    ds.StructureSetLabel = "promptseg"
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    images = Sequence([_item(ReferencedSOPClassUID=h.SOPClassUID, ReferencedSOPInstanceUID=h.SOPInstanceUID)
                       for h in headers])
    series = _item(SeriesInstanceUID=src.SeriesInstanceUID, ContourImageSequence=images)
    study = _item(ReferencedSOPClassUID=_STUDY_SOP_CLASS, ReferencedSOPInstanceUID=src.StudyInstanceUID,
                  RTReferencedSeriesSequence=Sequence([series]))
    ds.ReferencedFrameOfReferenceSequence = Sequence([_item(
        FrameOfReferenceUID=src.FrameOfReferenceUID, RTReferencedStudySequence=Sequence([study]))])
    ds.StructureSetROISequence = Sequence([_item(
        ROINumber=s.number, ReferencedFrameOfReferenceUID=src.FrameOfReferenceUID, ROIName=s.name,
        ROIGenerationAlgorithm="AUTOMATIC") for s in specs])
    lab = np.asarray(label_map.array)
    ds.ROIContourSequence = Sequence([_roi_contour(s, lab, grid, headers, ks) for s in specs])
    ds.RTROIObservationsSequence = Sequence([_item(
        ObservationNumber=s.number, ReferencedROINumber=s.number, ROIObservationLabel=s.name[:16],
        RTROIInterpretedType="", ROIInterpreter="",
        RTROIIdentificationCodeSequence=Sequence([_item(CodeValue=s.type[0], CodingSchemeDesignator=SCT,
                                                        CodeMeaning=s.type[1])])) for s in specs])
    buf = _io.BytesIO()
    dicom_safe(ds).save_as(buf, enforce_file_format=True)
    return atomic_write(out_path, buf.getvalue())


def _fill(grid: Volume, polygons: list[np.ndarray]) -> np.ndarray:
    """One slice [i, j]: XOR of the polygons (vertices in (i, j) voxel coordinates), a voxel in
    when its centre is inside; XOR makes a contour inside another a hole."""
    ii, jj = np.meshgrid(np.arange(grid.shape[0]), np.arange(grid.shape[1]), indexing="ij")
    centres = np.column_stack([ii.ravel(), jj.ravel()])
    out = np.zeros(grid.shape[:2], dtype=bool)
    for poly in polygons:
        lo, hi = np.floor(poly[:, :2].min(0)), np.ceil(poly[:, :2].max(0))
        near = np.all((centres >= lo) & (centres <= hi), axis=1)  # bounding box first: cheap
        inside = np.zeros(len(centres), dtype=bool)
        inside[near] = MplPath(poly[:, :2]).contains_points(centres[near])
        out ^= inside.reshape(out.shape)
    return out.astype(np.uint8)


def read_rtstruct(rtstruct_path, series_dir) -> dict[str, Volume]:
    """{ROI name: binary uint8 Volume} on the grid of the series in `series_dir`."""
    rtstruct_path, series_dir = Path(rtstruct_path), Path(series_dir)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(rtstruct_path)
    except Exception as exc:
        raise InputError(rtstruct_path, f"not a readable DICOM file ({type(exc).__name__})") from None
    if ds.get("Modality") != "RTSTRUCT" or "StructureSetROISequence" not in ds:
        raise InputError(rtstruct_path, f"not an RTSTRUCT (Modality {ds.get('Modality')!r})")
    grid = read_dicom_series(series_dir)
    inv = np.linalg.inv(grid.affine_lps)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    out: dict[str, Volume] = {}
    for roi in ds.get("ROIContourSequence", []):
        name = names.get(int(roi.ReferencedROINumber), f"ROI {roi.ReferencedROINumber}")
        per_slice: dict[int, list[np.ndarray]] = {}
        for c in roi.get("ContourSequence", []):
            if c.get("ContourGeometricType", "CLOSED_PLANAR") != "CLOSED_PLANAR":
                continue  # points and open lines enclose no voxels
            xyz = np.asarray(c.ContourData, dtype=np.float64).reshape(-1, 3)
            ijk = (inv[:3, :3] @ xyz.T).T + inv[:3, 3]
            k = int(round(float(np.mean(ijk[:, 2]))))
            if np.ptp(ijk[:, 2]) > 0.1 or abs(np.mean(ijk[:, 2]) - k) > 0.5 or not 0 <= k < grid.shape[2]:
                raise InputError(rtstruct_path, f"ROI {name!r}: a contour at z index {np.mean(ijk[:, 2]):.2f} "
                                                f"does not lie on a slice of series {series_dir}")
            per_slice.setdefault(k, []).append(ijk)
        arr = np.zeros(grid.shape, dtype=np.uint8)
        for k, polys in per_slice.items():
            arr[:, :, k] = _fill(grid, polys)
        out[name] = grid.with_array(arr)
    for name in names.values():  # an ROI listed without contours is an empty mask, not a missing one
        out.setdefault(name, grid.with_array(np.zeros(grid.shape, dtype=np.uint8)))
    return out
