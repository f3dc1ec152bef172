"""promptseg.io on synthetic files: round trips keep the grid, bad inputs give one-line errors."""
from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from promptseg.errors import InputError
from promptseg.io import Volume, read_image, read_label, write_dicom_series, write_image
from promptseg.io import writers as writers_mod
from promptseg.io.sitk_convert import volume_from_sitk


def _oblique_direction() -> np.ndarray:
    """A proper rotation that also permutes axes (the hard case for axis conventions)."""
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    perm = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=float)
    return rot @ perm


def _volume(shape=(7, 6, 5), dtype=np.int16, direction=None, spacing=(0.8, 1.1, 2.5), origin=(-12.5, 30.25, 7.0)):
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1000, size=shape).astype(dtype)
    return Volume(arr, spacing, origin, _oblique_direction() if direction is None else direction)


def _assert_one_line(err: pytest.ExceptionInfo, name: str, *words: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert name in msg, msg
    assert any(w.lower() in msg.lower() for w in words), msg


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("direction", ["oblique", "lps", "left_handed"])
def test_write_read_keeps_grid_and_voxels(tmp_path, ext, direction):
    d = {"oblique": _oblique_direction(), "lps": np.eye(3), "left_handed": np.diag([-1.0, 1.0, 1.0]) @ _oblique_direction()}[direction]
    vol = _volume(direction=d)
    out = write_image(vol, tmp_path / "sub" / f"img{ext}")  # parent folder created
    back = read_image(out)
    assert back.array.dtype == np.int16
    assert back.shape == vol.shape
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.same_grid(vol), back.grid_differences(vol)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
    assert os.listdir(tmp_path / "sub") == [out.name]


def test_nifti_affine_same_via_simpleitk_and_nibabel(tmp_path):
    vol = _volume()
    path = write_image(vol, tmp_path / "x.nii.gz")
    via_nib = read_image(path)
    via_sitk = volume_from_sitk(sitk.ReadImage(str(path)), path)
    np.testing.assert_allclose(via_sitk.affine, via_nib.affine, atol=1e-4)
    np.testing.assert_array_equal(via_sitk.array, via_nib.array)
    # and the RAS affine nibabel reports is the Volume's RAS affine
    np.testing.assert_allclose(nib.load(str(path)).affine, vol.affine, atol=1e-4)


def test_write_dtype_and_bool(tmp_path):
    vol = _volume()
    out = read_image(write_image(vol.with_array(vol.array.astype(np.float32) + 0.4), tmp_path / "a.nrrd", dtype=np.int16))
    assert out.array.dtype == np.int16
    np.testing.assert_array_equal(out.array, vol.array)  # rounded, not truncated
    mask = read_image(write_image(vol.with_array(vol.array > 0), tmp_path / "m.nii.gz"))
    assert mask.array.dtype == np.uint8 and mask.array.max() == 1
    with pytest.raises(InputError) as err:
        write_image(vol, tmp_path / "b.nii.gz", dtype=np.uint8)
    _assert_one_line(err, "b.nii.gz", "fit")


def test_trailing_singleton_4d_is_squeezed(tmp_path):
    arr = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7, 1)
    aff = np.diag([2.0, 3.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(arr, aff), tmp_path / "s4.nii.gz")
    vol = read_image(tmp_path / "s4.nii.gz")
    assert vol.shape == (5, 6, 7)
    np.testing.assert_array_equal(vol.array, arr[..., 0])
    np.testing.assert_allclose(vol.affine, aff)
    img = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((4, 3, 2), np.int16))])  # 4D, size (2,3,4,1)
    sitk.WriteImage(img, str(tmp_path / "s4.nrrd"))
    assert read_image(tmp_path / "s4.nrrd").shape == (2, 3, 4)


# ---------------------------------------------------------------- label maps

def test_read_label_casts_integral_floats_and_checks_grid(tmp_path):
    vol = _volume()
    lab = vol.with_array((vol.array > 0).astype(np.float32) * 3)
    path = write_image(lab, tmp_path / "lab.nii.gz")
    got = read_label(path, reference=vol)
    assert np.issubdtype(got.array.dtype, np.integer)
    np.testing.assert_array_equal(got.array, (vol.array > 0) * 3)

    frac = write_image(vol.with_array(np.full(vol.shape, 1.5, np.float32)), tmp_path / "frac.nii.gz")
    with pytest.raises(InputError) as err:
        read_label(frac)
    _assert_one_line(err, "frac.nii.gz", "non-integer")

    other = Volume(np.zeros(vol.shape, np.uint8), (0.8, 1.1, 3.0), vol.origin, vol.direction)
    bad = write_image(other, tmp_path / "shifted_label.nrrd")
    with pytest.raises(InputError) as err:
        read_label(bad, reference=vol)
    _assert_one_line(err, "shifted_label.nrrd", "grid")
    assert "spacing" in str(err.value)

    small = write_image(Volume(np.zeros((7, 6, 4), np.uint8), vol.spacing, vol.origin, vol.direction), tmp_path / "small.nii.gz")
    with pytest.raises(InputError) as err:
        read_label(small, reference=vol)
    _assert_one_line(err, "small.nii.gz", "shape")


# ---------------------------------------------------------------- bad files

def test_missing_file(tmp_path):
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "nope.nii.gz")
    _assert_one_line(err, "nope.nii.gz", "not found")


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_file(tmp_path, ext):
    path = write_image(_volume(shape=(40, 30, 20)), tmp_path / f"full{ext}")
    data = path.read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        read_image(cut)
    _assert_one_line(err, cut.name, "truncated", "corrupt")


@pytest.mark.parametrize("name", ["notes.nii.gz", "notes.nii", "notes.nrrd", "notes.mha"])
def test_text_file_with_image_extension(tmp_path, name):
    (tmp_path / name).write_text("this is not an image\n")
    with pytest.raises(InputError) as err:
        read_image(tmp_path / name)
    _assert_one_line(err, name, "corrupt", "not a", "readable")


def test_gzip_of_garbage_named_nifti(tmp_path):
    (tmp_path / "g.nii.gz").write_bytes(gzip.compress(b"\x00" * 100))
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "g.nii.gz")
    _assert_one_line(err, "g.nii.gz", "corrupt", "truncated")


def test_unsupported_extension(tmp_path):
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "scan.png")
    _assert_one_line(err, "scan.png", "unsupported")


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_2d_image(tmp_path, ext):
    path = tmp_path / f"flat{ext}"
    if ext == ".nii.gz":
        nib.save(nib.Nifti1Image(np.zeros((5, 6), np.int16), np.eye(4)), path)
    else:
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 5), np.int16)), str(path))
    with pytest.raises(InputError) as err:
        read_image(path)
    _assert_one_line(err, path.name, "2D")


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_4d_image(tmp_path, ext):
    path = tmp_path / f"series{ext}"
    if ext == ".nii.gz":
        nib.save(nib.Nifti1Image(np.zeros((5, 6, 7, 3), np.int16), np.eye(4)), path)
    else:
        img = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((4, 3, 2), np.int16))] * 3)
        sitk.WriteImage(img, str(path))
    with pytest.raises(InputError) as err:
        read_image(path)
    _assert_one_line(err, path.name, "4D")
    assert "3 volumes" in str(err.value)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_rgb_image(tmp_path, ext):
    path = tmp_path / f"rgb{ext}"
    if ext == ".nii.gz":  # NIfTI RGB24 is a structured dtype
        rgb = np.zeros((4, 5, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    else:
        sitk.WriteImage(sitk.Image([4, 5, 6], sitk.sitkVectorUInt8, 3), str(path))
    with pytest.raises(InputError) as err:
        read_image(path)
    _assert_one_line(err, path.name, "non-numeric", "non-scalar")


def test_complex_image(tmp_path):
    path = tmp_path / "cplx.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.complex64), np.eye(4)), path)
    with pytest.raises(InputError) as err:
        read_image(path)
    _assert_one_line(err, "cplx.nii.gz", "non-numeric")


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_inf_voxels(tmp_path, ext, value):
    arr = np.zeros((4, 5, 6), np.float32)
    arr[1, 2, 3] = value
    path = tmp_path / f"bad{ext}"
    if ext == ".nii.gz":
        nib.save(nib.Nifti1Image(arr, np.eye(4)), path)
    else:
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    with pytest.raises(InputError) as err:
        read_image(path)
    _assert_one_line(err, path.name, "NaN")
    assert "1 voxel NaN" in str(err.value)


# ---------------------------------------------------------------- DICOM

def test_dicom_series_roundtrip_oblique_anisotropic(tmp_path):
    vol = _volume(shape=(9, 7, 5), spacing=(0.7, 0.9, 2.5))
    folder = write_dicom_series(vol, tmp_path / "series")
    back = read_image(folder)
    assert back.same_grid(vol), back.grid_differences(vol)
    np.testing.assert_array_equal(back.array, vol.array)
    assert np.issubdtype(back.array.dtype, np.integer)


def test_writing_a_dicom_series_leaves_the_locale_as_it_was(tmp_path):
    """ITK's GDCM writer sets the C locale (ASCII text) and leaves it; the rest of the process
    (torch's inductor imports, say) must not inherit it."""
    import locale

    before = locale.setlocale(locale.LC_ALL)
    try:
        locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
        expected = locale.setlocale(locale.LC_ALL)
        write_dicom_series(_volume(shape=(5, 4, 3)), tmp_path / "series")
        assert locale.setlocale(locale.LC_ALL) == expected
    finally:
        locale.setlocale(locale.LC_ALL, before)


def test_dicom_left_handed_grid_reads_back_equivalent(tmp_path):
    vol = _volume(shape=(6, 5, 4), direction=np.diag([1.0, 1.0, -1.0]), spacing=(1.0, 1.0, 3.0))
    back = read_image(write_dicom_series(vol, tmp_path / "lh"))
    # same voxels at the same places; DICOM stores it right-handed (k reversed)
    np.testing.assert_array_equal(back.array, vol.array[:, :, ::-1])
    np.testing.assert_allclose(back.affine_lps @ [0, 0, 3, 1], vol.affine_lps @ [0, 0, 0, 1], atol=1e-4)
    np.testing.assert_allclose(back.direction[:, 2], [0, 0, 1], atol=1e-6)


def test_dicom_float_values_use_rescale_slope(tmp_path):
    vol = _volume(shape=(5, 4, 3)).with_array(np.linspace(-100, 100, 60, dtype=np.float32).reshape(5, 4, 3))
    back = read_image(write_dicom_series(vol, tmp_path / "f", rescale_slope=0.25, rescale_intercept=0.0))
    np.testing.assert_allclose(back.array, vol.array, atol=0.125 + 1e-6)


def test_dicom_folder_with_two_series(tmp_path):
    vol = _volume(shape=(5, 4, 3))
    write_dicom_series(vol, tmp_path / "a")
    write_dicom_series(vol, tmp_path / "b")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for sub in ("a", "b"):
        for f in (tmp_path / sub).iterdir():
            os.replace(f, mixed / f"{sub}_{f.name}")
    with pytest.raises(InputError) as err:
        read_image(mixed)
    _assert_one_line(err, "mixed", "series")
    assert "2 DICOM series" in str(err.value)


def test_dicom_folder_without_dicom(tmp_path):
    folder = tmp_path / "empty_study"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    with pytest.raises(InputError) as err:
        read_image(folder)
    _assert_one_line(err, "empty_study", "no DICOM")


def test_dicom_writer_refuses_non_empty_folder(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(InputError) as err:
        write_dicom_series(_volume(shape=(3, 3, 2)), tmp_path / "full")
    _assert_one_line(err, "full", "not empty")


# ---------------------------------------------------------------- failed writes

def test_unsupported_output_extension_writes_nothing(tmp_path):
    with pytest.raises(InputError) as err:
        write_image(_volume(), tmp_path / "out.png")
    _assert_one_line(err, "out.png", "unsupported")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exc", [RuntimeError("disk full\nsecond line"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_no_partial_file(tmp_path, monkeypatch, exc):
    def half_write(image, path, *args, **kwargs):
        with open(path, "wb") as fh:  # some bytes reach the disk, then the write dies
            fh.write(b"\x00" * 1000)
        raise exc

    monkeypatch.setattr(writers_mod.sitk, "WriteImage", half_write)
    target = tmp_path / "pred.nii.gz"
    with pytest.raises((InputError, KeyboardInterrupt)) as err:
        write_image(_volume(), target)
    if isinstance(exc, RuntimeError):
        _assert_one_line(err, "pred.nii.gz", "cannot write")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_previous_file(tmp_path, monkeypatch):
    vol = _volume()
    target = write_image(vol, tmp_path / "pred.nrrd")
    before = target.read_bytes()

    def boom(image, path, *args, **kwargs):
        open(path, "wb").close()
        raise RuntimeError("boom")

    monkeypatch.setattr(writers_mod.sitk, "WriteImage", boom)
    with pytest.raises(InputError):
        write_image(vol.with_array(vol.array * 0), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["pred.nrrd"]


@pytest.mark.parametrize("ext", [".mhd", ".nhdr"])
def test_detached_header_formats(tmp_path, ext):
    vol = _volume()
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.array.transpose(2, 1, 0)))
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(vol.direction.reshape(-1).tolist())
    sitk.WriteImage(img, str(tmp_path / f"scan{ext}"))
    back = read_image(tmp_path / f"scan{ext}")
    assert back.same_grid(vol)
    np.testing.assert_array_equal(back.array, vol.array)
    for data_file in tmp_path.iterdir():  # the detached voxel file goes missing
        if data_file.suffix not in (".mhd", ".nhdr"):
            data_file.unlink()
    with pytest.raises(InputError) as err:
        read_image(tmp_path / f"scan{ext}")
    _assert_one_line(err, f"scan{ext}", "corrupt", "truncated", "readable")
