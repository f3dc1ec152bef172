"""Issue 16, defect 3: a damaged DICOM series is refused in one line naming the folder and the
slice (or, where a viewer would read it, read with a warning stating the geometry), never read
with a slice silently dropped or the z spacing squashed.

Each case copies a real series (STS_002 PET, 48 slices) into tmp_path and damages it."""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from promptseg.errors import InputError
from promptseg.io import read_dicom_series, read_image
from promptseg.io.dicom_checks import check_series_folder


@pytest.fixture
def series(shared_data, tmp_path):
    src = shared_data / "sts_sarcoma_dicom" / "STS_002" / "PET" / "image"
    dst = tmp_path / "PET"
    shutil.copytree(src, dst)
    return dst


def sorted_files(folder):
    return check_series_folder(folder)


def edit(path, **values):
    ds = pydicom.dcmread(path)
    for k, v in values.items():
        setattr(ds, k, v)
    ds.save_as(path)


@pytest.fixture
def refused(one_line_error):
    def check(folder, *needles):
        msg = one_line_error(read_dicom_series, folder, *needles)
        with pytest.raises(InputError):  # the generic image reader (predict, data add) takes the same path
            read_image(folder)
        return msg
    return check


def test_intact_copy_reads_as_the_original(series, shared_data):
    vol = read_dicom_series(series)
    ref = read_image(shared_data / "sts_sarcoma" / "STS_002" / "PET_image.nii.gz")
    assert vol.shape == ref.shape and vol.same_grid(ref, tol=1e-3)


def test_missing_slice(series, refused):
    files = sorted_files(series)
    files[20].unlink()
    msg = refused(series, "1 slice(s) missing", files[19].name, files[21].name)
    assert "tolerance" in msg


def test_truncated_slice(series, refused):
    victim = sorted_files(series)[10]
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) - 700])
    refused(series, victim.name, "truncated")


def test_non_dicom_slice(series, refused):
    victim = sorted_files(series)[5]
    victim.write_text("this is not an image\n")
    refused(series, victim.name, "not a DICOM file")


def test_duplicated_slice_position(series, refused):
    files = sorted_files(series)
    copy = series / "zz_copy.dcm"
    shutil.copy(files[30], copy)
    edit(copy, SOPInstanceUID=generate_uid(), InstanceNumber=999)
    refused(series, "duplicate slice", copy.name, files[30].name)


def test_slice_with_another_orientation(series, refused):
    victim = sorted_files(series)[12]
    edit(victim, ImageOrientationPatient=[1, 0, 0, 0, 0.8, -0.6])
    refused(series, victim.name, "orientation")


def test_slice_of_another_series(series, refused):
    victim = sorted_files(series)[3]
    edit(victim, SeriesInstanceUID=generate_uid())
    refused(series, victim.name, "2 DICOM series")


def test_non_uniform_spacing(series, refused):
    files = sorted_files(series)
    ds = pydicom.dcmread(files[25])
    pos = [float(v) for v in ds.ImagePositionPatient]
    edit(files[25], ImagePositionPatient=[pos[0], pos[1], pos[2] + 1.0])  # step 3.27 mm -> 4.27 / 2.27
    refused(series, "non-uniform slice spacing", files[25].name)


def test_small_position_jitter_within_tolerance_is_read(series):
    files = sorted_files(series)
    ds = pydicom.dcmread(files[25])
    pos = [float(v) for v in ds.ImagePositionPatient]
    edit(files[25], ImagePositionPatient=[pos[0], pos[1], pos[2] + 0.005])  # scanners round positions
    assert read_dicom_series(series).shape[2] == len(files)


def test_instance_numbers_with_a_gap_warn_with_the_geometry_used(series):
    files = sorted_files(series)
    for n, f in enumerate(files):
        edit(f, InstanceNumber=n + 1 + (5 if n >= 10 else 0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = read_dicom_series(series)
    text = " ".join(str(w.message) for w in caught)
    assert "geometry used" in text and f"{len(files)} slices" in text and "step 3.27 mm" in text
    assert vol.shape[2] == len(files)
    assert np.isclose(vol.spacing[2], 3.27, atol=0.01)


def test_rtstruct_beside_the_images_is_not_a_slice(series, shared_data):
    shutil.copy(shared_data / "sts_sarcoma_dicom" / "STS_002" / "PET" / "mask" / "RS.dcm", series / "RS.dcm")
    assert read_dicom_series(series).shape[2] == 48
