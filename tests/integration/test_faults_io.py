"""Issue 16, "others": every image reader is bounded by its header before it allocates, and a
zero or negative spacing is refused, each in one line naming the file.

The bad files are real scans with edited header bytes/fields: a header claiming 30000^3 int16
voxels (54 TB), a pixdim of 0, a spacing of 0 in NRRD/MHA, a raw file shorter than declared."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from promptseg.errors import InputError
from promptseg.io import bounds, read_image

NIFTI_DIM, NIFTI_PIXDIM, NIFTI_QFORM, NIFTI_SFORM = 40, 76, 252, 254


@pytest.fixture(scope="module")
def nifti_bytes(shared_data):
    return gzip.decompress((shared_data / "ct_abdomen_small" / "image.nii.gz").read_bytes())


@pytest.fixture(scope="module")
def nrrd_image(shared_data):
    return sitk.ReadImage(str(shared_data / "mr_brain_tumor" / "image.nrrd"))


def patched(raw: bytes, fmt: str, offset: int, *values) -> bytes:
    b = bytearray(raw)
    struct.pack_into(fmt, b, offset, *values)
    return bytes(b)


@pytest.fixture
def refused(one_line_error):
    return lambda path, *needles: one_line_error(read_image, path, *needles)


def huge_dims(raw: bytes) -> bytes:
    return patched(raw, "<8h", NIFTI_DIM, 3, 30000, 30000, 30000, 1, 1, 1, 1)


def test_intact_nifti_copies_read(tmp_path, nifti_bytes, shared_data):
    ref = read_image(shared_data / "ct_abdomen_small" / "image.nii.gz")
    (tmp_path / "ct.nii").write_bytes(nifti_bytes)
    vol = read_image(tmp_path / "ct.nii")
    assert vol.same_grid(ref) and np.array_equal(vol.array, ref.array)


def test_nifti_header_claiming_54_tb_uncompressed(tmp_path, nifti_bytes, refused):
    p = tmp_path / "huge.nii"
    p.write_bytes(huge_dims(nifti_bytes))
    refused(p, "30000x30000x30000", "54.0 TB", "file holds")


def test_nifti_header_claiming_54_tb_gzip(tmp_path, nifti_bytes, refused):
    p = tmp_path / "huge.nii.gz"
    p.write_bytes(gzip.compress(huge_dims(nifti_bytes), 1))
    refused(p, "54.0 TB", "cannot expand")


def test_truncated_raw_nifti_refused_before_reading(tmp_path, nifti_bytes, refused):
    p = tmp_path / "short.nii"
    p.write_bytes(nifti_bytes[: len(nifti_bytes) // 2])
    refused(p, "file holds")


@pytest.mark.parametrize("value", [0.0, -3.0, float("nan")])
@pytest.mark.parametrize("sform", [True, False])
def test_nifti_pixdim_zero_or_negative(tmp_path, nifti_bytes, value, sform, refused, capfd):
    raw = nifti_bytes
    if not sform:  # affine from the qform, i.e. from pixdim itself
        raw = patched(patched(raw, "<h", NIFTI_QFORM, 1), "<h", NIFTI_SFORM, 0)
    raw = patched(raw, "<f", NIFTI_PIXDIM + 12, value)
    p = tmp_path / "pix.nii.gz"
    p.write_bytes(gzip.compress(raw, 1))
    if sform and value < 0:  # the sform decides the spacing; a sign in pixdim is ignored by every reader
        assert read_image(p).spacing == pytest.approx((3.0, 3.0, 3.0))
        return
    refused(p, "invalid voxel spacing", "pixdim")
    assert "setting" not in capfd.readouterr().err  # nibabel's own fix report is not a second line


def _edit_text_header(path, old: str, new: str) -> None:
    data = path.read_bytes()
    assert old.encode() in data, data[:400]
    path.write_bytes(data.replace(old.encode(), new.encode(), 1))


@pytest.mark.parametrize("ending,compress,field,expect", [
    (".nrrd", True, "sizes: {}", "cannot expand"),
    (".nrrd", False, "sizes: {}", "file holds"),
    (".mha", True, "DimSize = {}", "cannot expand"),
    (".mhd", False, "DimSize = {}", "file holds"),
    (".nhdr", False, "sizes: {}", "file holds"),  # detached data: measured in its data file
    (".nhdr", True, "sizes: {}", "cannot expand"),
])
def test_sitk_header_claiming_54_tb(tmp_path, nrrd_image, ending, compress, field, expect, refused):
    p = tmp_path / f"img{ending}"
    sitk.WriteImage(nrrd_image, str(p), compress)
    size = " ".join(str(s) for s in nrrd_image.GetSize())
    _edit_text_header(p, field.format(size), field.format("30000 30000 30000"))
    refused(p, "54.0 TB", expect)


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
@pytest.mark.parametrize("value", ["0", "-6.5"])
def test_sitk_zero_or_negative_spacing(tmp_path, nrrd_image, ending, value):
    img = sitk.Image(nrrd_image)
    img.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    img.SetSpacing((0.75, 0.75, 6.5))
    p = tmp_path / f"img{ending}"
    sitk.WriteImage(img, str(p), True)
    if ending == ".nrrd":
        _edit_text_header(p, "(0,0,6.5)", f"(0,0,{value})")
    else:
        _edit_text_header(p, "ElementSpacing = 0.75 0.75 6.5", f"ElementSpacing = 0.75 0.75 {value}")
    try:
        vol = read_image(p)
    except InputError as exc:
        assert "spacing" in str(exc) and "\n" not in str(exc) and str(p) in str(exc)
        return
    # NRRD space directions carry the sign in the direction: a negative length is a flipped axis
    assert ending == ".nrrd" and value.startswith("-") and min(vol.spacing) > 0


def test_header_larger_than_memory(tmp_path, nifti_bytes, monkeypatch, refused):
    p = tmp_path / "ct.nii.gz"
    p.write_bytes(gzip.compress(nifti_bytes, 1))
    monkeypatch.setattr(bounds, "available_memory", lambda: 100_000)
    refused(p, "memory available")


def test_dicom_series_larger_than_memory(tmp_path, shared_data, monkeypatch, refused):
    folder = shared_data / "sts_sarcoma_dicom" / "STS_002" / "PET" / "image"
    monkeypatch.setattr(bounds, "available_memory", lambda: 100_000)
    refused(folder, "memory available")
