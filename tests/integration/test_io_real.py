"""promptseg.io on the real scans in ../shared/data: every scan reads, writes back (NIfTI and NRRD)
with the same grid and voxels, NIfTI geometry agrees between nibabel and SimpleITK, and a DICOM
series written from a CT reads back with the same geometry and HU."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from promptseg.io import read_image, read_label, write_dicom_series, write_image
from promptseg.io.sitk_convert import volume_from_sitk

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SCANS = {  # folder: (image file, label file)
    "ct_abdomen_small": ("image.nii.gz", "labels.nii.gz"),
    "ct_abdomen_pelvis": ("image.nii.gz", "labels.nii.gz"),
    "mr_abdomen_small": ("image.nii.gz", "labels.nii.gz"),
    "ct_chest_lung_tumor": ("image.nrrd", "labels.nrrd"),
    "mr_brain_tumor": ("image.nrrd", "labels.nrrd"),
}


def _scan(name: str) -> tuple[Path, Path]:
    if not DATA.is_dir():
        pytest.skip(f"real scans not found at {DATA} (they live in ../shared/data beside the clone)")
    image, label = (DATA / name / f for f in SCANS[name])
    if not image.is_file():
        pytest.skip(f"{image} is missing")
    return image, label


@pytest.mark.parametrize("name", list(SCANS))
def test_read_write_round_trip(name, tmp_path):
    image_path, label_path = _scan(name)
    image = read_image(image_path)
    label = read_label(label_path, reference=image)
    assert image.array.ndim == 3 and np.issubdtype(image.array.dtype, np.integer)
    assert np.issubdtype(label.array.dtype, np.integer) and label.array.max() >= 1
    for vol, stem in ((image, "image"), (label, "label")):
        for ext in (".nii.gz", ".nrrd"):
            back = read_image(write_image(vol, tmp_path / f"{stem}{ext}"))
            assert back.same_grid(vol), (ext, back.grid_differences(vol))
            np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
            assert back.array.dtype == vol.array.dtype
            np.testing.assert_array_equal(back.array, vol.array)


def test_scans_cover_ras_and_lps_grids():
    orientations = {name: read_image(_scan(name)[0]).orientation for name in SCANS}
    assert orientations["ct_abdomen_small"] == "RAS"
    assert orientations["ct_chest_lung_tumor"] == "LPS"
    assert orientations["mr_abdomen_small"] == "LPS"


@pytest.mark.parametrize("name", [n for n, (img, _) in SCANS.items() if img.endswith(".nii.gz")])
def test_nifti_geometry_same_via_nibabel_and_simpleitk(name):
    image_path, _ = _scan(name)
    via_nib = read_image(image_path)
    via_sitk = volume_from_sitk(sitk.ReadImage(str(image_path)), image_path)
    np.testing.assert_allclose(via_sitk.affine, via_nib.affine, atol=1e-4)
    assert via_sitk.same_grid(via_nib)
    np.testing.assert_array_equal(via_sitk.array, via_nib.array)


def test_dicom_series_from_real_ct(tmp_path):
    image_path, _ = _scan("ct_abdomen_small")
    ct = read_image(image_path)
    folder = write_dicom_series(ct, tmp_path / "ct_series")
    files = sorted(folder.iterdir())
    assert len(files) == ct.shape[2]
    import pydicom

    first = pydicom.dcmread(files[0])
    assert first.Modality == "CT" and float(first.RescaleIntercept) == -1024.0
    assert len({pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in files}) == 1
    back = read_image(folder)
    assert back.shape == ct.shape
    np.testing.assert_allclose(back.spacing, ct.spacing, atol=1e-4)
    np.testing.assert_allclose(back.origin, ct.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, ct.direction, atol=1e-4)
    np.testing.assert_array_equal(back.array, ct.array)  # integer HU: exact
