"""DICOM-SEG and RTSTRUCT on the real sarcoma series: read the clinical RTSTRUCT, write both
objects from a label map, validate them with dciodvfy and read them back.

The NIfTI masks in sts_sarcoma/ are the reference for the series' own RTSTRUCTs; STS_001's CT
is 198 x 202 voxels, so a rows/columns mix-up cannot pass.
"""
from __future__ import annotations

import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

from promptseg.errors import InputError
from promptseg.io import (read_dicom_labels, read_dicom_seg, read_dicom_series, read_image, read_rtstruct,
                          write_dicom_seg, write_rtstruct)

CASES = [(p, m) for p in ("STS_001", "STS_002") for m in ("CT", "MR_T1", "PET")]
SEGMENTS = [
    {"name": "sarcoma", "label_value": 1, "color": (255, 0, 0), "kind": "lesion", "snomed": ("108369006", "Neoplasm")},
    {"name": "dense tissue", "label_value": 5, "color": (0, 128, 255)},  # no code: generic
    {"name": "absent", "label_value": 9, "color": (0, 255, 0), "snomed": ("10200004", "Liver")},
]


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def dciodvfy_errors(path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (dicom3tools) not installed; .ci/run installs it")
    res = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]


def series(shared_data, patient, modality):
    return shared_data / "sts_sarcoma_dicom" / patient / modality


def label_map(shared_data, patient, modality):
    """Tumour (1) from the reference NIfTI, and a class (5) of two components, one with a hole,
    on a few slices away from the tumour."""
    grid = read_dicom_series(series(shared_data, patient, modality) / "image")
    tumour = np.asarray(read_image(shared_data / "sts_sarcoma" / patient / f"{modality}_mask.nii.gz").array) > 0
    lab = np.zeros(grid.shape, dtype=np.uint8)
    ni, nj, _ = grid.shape
    ii, jj = np.meshgrid(np.arange(ni), np.arange(nj), indexing="ij")
    r = np.hypot(ii - ni // 5, jj - nj // 5)
    ring = (r <= ni / 8) & (r >= ni / 20)
    lab[:, :, 1:4][ring] = 5
    lab[ni - ni // 6:ni - 2, 1:nj // 6, 1:3] = 5  # a second, square component touching the border
    lab[tumour] = 1
    return grid.with_array(lab)


def written(writer, shared_data, tmp_path, patient, modality):
    """(series folder, label map, written file) after dciodvfy found no error in the file."""
    d = series(shared_data, patient, modality) / "image"
    lab = label_map(shared_data, patient, modality)
    out = writer(lab, SEGMENTS, d, tmp_path / "out.dcm")
    assert dciodvfy_errors(out) == []
    return d, lab, out


@pytest.mark.parametrize("patient,modality", CASES)
def test_read_rtstruct_matches_reference_mask(shared_data, patient, modality):
    d = series(shared_data, patient, modality)
    rois = read_rtstruct(d / "mask" / "RS.dcm", d / "image")
    assert list(rois) == [f"GTV_Mass_{modality}"]
    vol = rois[f"GTV_Mass_{modality}"]
    ref = read_image(shared_data / "sts_sarcoma" / patient / f"{modality}_mask.nii.gz")
    assert vol.same_grid(ref, tol=1e-3)
    score = dice(vol.array, ref.array)
    assert score >= 0.95, f"{patient} {modality}: Dice {score:.4f}"  # measured 1.0000 in all six
    assert read_dicom_labels(d / "mask" / "RS.dcm", d / "image").keys() == rois.keys()


@pytest.mark.parametrize("patient,modality", [("STS_001", "CT"), ("STS_002", "PET")])
def test_dicom_seg_written_valid_and_read_back_identical(shared_data, tmp_path, patient, modality):
    d, lab, out = written(write_dicom_seg, shared_data, tmp_path, patient, modality)
    back = read_dicom_seg(out, d)
    for s in SEGMENTS:
        assert np.array_equal(back[s["name"]].array, (lab.array == s["label_value"]).astype(np.uint8)), s["name"]
        assert back[s["name"]].same_grid(lab)
    seg = hd.seg.segread(out)
    src = pydicom.dcmread(next(d.iterdir()), stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    desc = {seg.get_segment_description(n).segment_label: seg.get_segment_description(n)
            for n in seg.get_segment_numbers()}
    assert desc["sarcoma"].segmented_property_type.value == "108369006"
    assert desc["sarcoma"].segmented_property_category.value == "49755003"
    assert desc["dense tissue"].segmented_property_type.value == "91723000"  # generic code
    assert desc["absent"].segmented_property_type.meaning == "Liver"
    rgb = hd.color.CIELabColor.from_dicom_value(desc["sarcoma"].RecommendedDisplayCIELabValue).to_rgb()
    assert np.allclose(rgb, (255, 0, 0), atol=2)


@pytest.mark.parametrize("patient,modality", [("STS_001", "CT"), ("STS_002", "PET")])
def test_rtstruct_written_valid_and_rerasterised(shared_data, tmp_path, patient, modality):
    d, lab, out = written(write_rtstruct, shared_data, tmp_path, patient, modality)
    back = read_rtstruct(out, d)
    assert list(back) == [s["name"] for s in SEGMENTS]
    for s in SEGMENTS[:2]:
        score = dice(back[s["name"]].array, lab.array == s["label_value"])
        assert score >= 0.90, f"{s['name']}: Dice {score:.4f}"
    assert not back["absent"].array.any()
    ds = pydicom.dcmread(out)
    src = pydicom.dcmread(next(d.iterdir()), stop_before_pixels=True)
    ref_series = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == src.SeriesInstanceUID
    assert len(ref_series.ContourImageSequence) == len(list(d.iterdir()))
    assert [int(v) for v in ds.ROIContourSequence[0].ROIDisplayColor] == [255, 0, 0]
    assert ds.RTROIObservationsSequence[0].RTROIIdentificationCodeSequence[0].CodeValue == "108369006"


def test_label_map_off_the_series_grid_is_refused(shared_data, tmp_path):
    d = series(shared_data, "STS_002", "PET") / "image"
    lab = label_map(shared_data, "STS_002", "PET")
    shifted = lab.with_array(lab.array)
    shifted.origin = (lab.origin[0] + 5.0, lab.origin[1], lab.origin[2])
    for writer in (write_dicom_seg, write_rtstruct):
        with pytest.raises(InputError, match="not on the grid of DICOM series"):
            writer(shifted, SEGMENTS, d, tmp_path / "x.dcm")
    assert not list(tmp_path.iterdir())
    with pytest.raises(InputError, match="not a DICOM RTSTRUCT or DICOM-SEG"):
        read_dicom_labels(next(d.iterdir()), d)


def test_dicom_series_with_rtstruct_is_a_dataset(shared_data, tmp_path):
    """`promptseg data add` / `data check` on case folders of image/ (series) + mask/RS.dcm."""
    from promptseg.data.check import check_datasets
    from promptseg.data.manifest import scan_folder
    from promptseg.io import read_label

    root = tmp_path / "sts_dicom"
    for p in ("STS_001", "STS_002"):
        shutil.copytree(series(shared_data, p, "PET"), root / p)
    (root / "labels.json").write_text('{"1": "sarcoma"}')
    m = scan_folder(root, modality="PET", overrides={"sarcoma": "liver tumor"})
    assert [c.id for c in m.cases] == ["STS_001", "STS_002"]
    assert all(c.images[0].is_dir() and c.label.name == "RS.dcm" for c in m.cases)
    assert check_datasets([m]).ok
    for c in m.cases:
        lab = read_label(c.label, reference=read_image(c.images[0]))
        ref = read_image(shared_data / "sts_sarcoma" / c.id / "PET_mask.nii.gz")
        assert lab.same_grid(ref, tol=1e-3) and dice(lab.array == 1, ref.array) >= 0.95
