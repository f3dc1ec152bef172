"""`promptseg predict --output-type dicom-seg rtstruct nifti` end to end on a real DICOM series
(issue 18, "what it must show"): the real writers, no stand-ins.

The model is a tiny random-weight U-Net that keeps the series' own spacing (a few seconds on a
CPU): this checks files, not accuracy. The DICOM-SEG must hold exactly the NIfTI label map's
masks; the RTSTRUCT, re-rasterised by `read_rtstruct`, Dice >= 0.90 with them; dciodvfy must
report no error in either (skipped where dicom3tools is absent; .ci/run installs it).
"""
from __future__ import annotations

import json

import highdicom as hd
import numpy as np
import pydicom
import pytest

# this folder is on sys.path (pytest prepend mode): the dciodvfy check and the tiny checkpoint are shared
from test_dicom_outputs import dciodvfy_errors
from test_faults_predict import ckpt  # noqa: F401  (a fixture)

from promptseg.cli import main
from promptseg.io import read_dicom_seg, read_image, read_rtstruct

PROMPTS = ["liver", "spleen", "kidney"]


@pytest.fixture(scope="module")
def outputs(ckpt, shared_data, tmp_path_factory):
    """(series folder, output folder) after one predict run writing all three output types."""
    series = shared_data / "sts_sarcoma_dicom" / "STS_001" / "CT" / "image"
    if not series.is_dir():
        pytest.skip(f"{series} not found")
    out = tmp_path_factory.mktemp("pred") / "out"
    rc = main(["predict", "-i", str(series), "-o", str(out), "-m", str(ckpt), "--prompt", *PROMPTS,
               "--output-type", "dicom-seg", "rtstruct", "nifti", "--device", "cpu", "--quiet"])
    assert rc == 0
    return series, out


def nifti_masks(out):
    """{class: bool mask} from the NIfTI label map and labels.json predict wrote."""
    label_map = read_image(out / "image.nii.gz")
    names = json.loads((out / "labels.json").read_text())
    lab = np.asarray(label_map.array)
    return label_map, {name: lab == int(v) for v, name in names.items()}


def test_all_three_outputs_are_written(outputs):
    series, out = outputs
    assert (out / "image.nii.gz").is_file()
    assert (out / "image" / "seg.dcm").is_file() and (out / "image" / "rtstruct.dcm").is_file()
    assert read_image(out / "image.nii.gz").same_grid(read_image(series), tol=1e-3)


@pytest.mark.parametrize("name", ["seg.dcm", "rtstruct.dcm"])
def test_dciodvfy_accepts_the_outputs(outputs, name):
    _, out = outputs
    assert dciodvfy_errors(out / "image" / name) == []


def test_dicom_seg_masks_equal_the_nifti_output(outputs):
    series, out = outputs
    label_map, masks = nifti_masks(out)
    assert any(m.any() for m in masks.values()), "the test must look at a non-empty class"
    back = read_dicom_seg(out / "image" / "seg.dcm", series)
    assert set(back) == set(masks)
    for name, mask in masks.items():
        assert back[name].same_grid(label_map, tol=1e-3)
        np.testing.assert_array_equal(np.asarray(back[name].array) > 0, mask, err_msg=name)
    seg = hd.seg.segread(out / "image" / "seg.dcm")
    src = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID


def test_rtstruct_rerasterised_matches_the_nifti_output(outputs):
    series, out = outputs
    _, masks = nifti_masks(out)
    back = read_rtstruct(out / "image" / "rtstruct.dcm", series)
    assert set(back) == set(masks)
    scored = 0
    for name, mask in masks.items():
        got = np.asarray(back[name].array) > 0
        if not mask.any():
            assert not got.any(), name
            continue
        score = 2.0 * (got & mask).sum() / (got.sum() + mask.sum())
        assert score >= 0.90, f"{name}: Dice {score:.4f}"
        scored += 1
    assert scored, "the test must look at a non-empty class"
    ds = pydicom.dcmread(out / "image" / "rtstruct.dcm")
    src = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    ref = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID
