"""Faults of `promptseg predict` (issue 16) and its user habits (issue 18), each reproduced as written.

Inputs are real scans from ../shared/data copied into a temporary folder (so that "the input stays
byte-identical" is checked on a file the test may lose); the model has random weights: these are
checks of files, errors and geometry, not of accuracy.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from promptseg.cli import main
from promptseg.io import Volume, read_image, write_dicom_series, write_image

CLASSES = ["liver", "spleen", "right kidney", "left kidney", "pancreas", "stomach", "aorta", "liver tumor"]
FAST = {"window": [64, 64, 32], "sw_batch_size": 2}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A native-spacing MR/CT checkpoint (so each case runs in about a second)."""
    from promptseg.models.build import build_model
    from promptseg.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model({"backbone": {"name": "unet", "preset": "small"}, "conditioner": {"name": "universal"}},
                        CLASSES, embeddings=torch.randn(len(CLASSES), 384))
    run_config = {"modality": "CT", "backbone": {"name": "unet", "preset": "small"},
                  "conditioner": {"name": "universal"}, "plan": {"name": "universal_ct", "spacing": None},
                  "inference": FAST}
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "model", run_config)


@pytest.fixture
def ct(shared_data, tmp_path) -> Path:
    """DIR/ct.nii.gz: a copy of a real CT in a folder of its own."""
    d = tmp_path / "DIR"
    d.mkdir()
    shutil.copy(shared_data / "ct_abdomen_small" / "image.nii.gz", d / "ct.nii.gz")
    return d / "ct.nii.gz"


def run(*args: str) -> int:
    return main(["predict", *[str(a) for a in args], "--quiet"])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


# --- issue 16, defect 1: never overwrite an input ---------------------------------------------
def test_output_folder_of_the_input_file_is_refused(ckpt, ct, capsys):
    """`promptseg predict -i DIR/ct.nii.gz -o DIR` used to replace the CT by its label map."""
    before = sha(ct)
    assert run("-i", ct, "-o", ct.parent, "-m", ckpt) == 2
    err = one_line_error(capsys)
    assert "would overwrite" in err and "ct.nii.gz" in err
    assert sha(ct) == before
    assert sorted(p.name for p in ct.parent.iterdir()) == ["ct.nii.gz"], "nothing written"


def test_input_folder_as_output_folder_is_refused(ckpt, ct, capsys):
    """Same for `-i DIR -o DIR`."""
    before = sha(ct)
    assert run("-i", ct.parent, "-o", ct.parent, "-m", ckpt) == 2
    assert "would overwrite" in one_line_error(capsys)
    assert sha(ct) == before
    assert sorted(p.name for p in ct.parent.iterdir()) == ["ct.nii.gz"]


def test_output_file_equal_to_the_input_is_refused(ckpt, ct, capsys):
    before = sha(ct)
    assert run("-i", ct, "-o", ct, "-m", ckpt) == 2
    assert "would overwrite" in one_line_error(capsys)
    assert sha(ct) == before


def test_dicom_series_folder_is_not_replaced_by_its_case_folder(ckpt, shared_data, tmp_path, capsys):
    """`-i DIR/series -o DIR`: the case folder DIR/series/ (masks) would be the series itself."""
    vol = read_image(shared_data / "ct_abdomen_small" / "image.nii.gz")
    series = write_dicom_series(Volume(np.asarray(vol.array)[:, :, :6].astype(np.int16), vol.spacing, vol.origin,
                                       vol.direction), tmp_path / "DIR" / "series")
    series = Path(series) if series else tmp_path / "DIR" / "series"
    before = {p.name: sha(p) for p in series.iterdir()}
    assert run("-i", series, "-o", tmp_path / "DIR", "-m", ckpt) == 2
    assert "would overwrite" in one_line_error(capsys)
    assert {p.name: sha(p) for p in series.iterdir()} == before


# --- issue 16: batch goes on past a bad case; outputs appear whole ---------------------------------
def test_batch_goes_past_a_bad_case_and_lists_it(ckpt, shared_data, tmp_path, capsys):
    """One unreadable case used to abort the batch after earlier cases were written."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(shared_data / "mr_abdomen_small" / "image.nii.gz", src / "a.nii.gz")
    (src / "b.nii.gz").write_bytes(b"\x1f\x8b" + b"not really a gzip NIfTI" * 10)
    shutil.copy(shared_data / "ct_abdomen_small" / "image.nii.gz", src / "c.nii.gz")
    out = tmp_path / "out"
    rc = main(["predict", "-i", str(src), "-o", str(out), "-m", str(ckpt), "--prompt", "liver", "spleen", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 1
    assert captured.out.count("classes found") == 2  # a and c
    tail = captured.err.strip().splitlines()
    assert "1 failed" in tail[-2] and tail[-1].strip().startswith("b: ")
    assert "Traceback" not in captured.err
    assert (out / "a.nii.gz").is_file() and (out / "c.nii.gz").is_file()
    assert not (out / "b.nii.gz").exists() and not (out / "b").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [], "no temporary leftovers"


def test_a_failing_case_leaves_no_label_map_and_no_partial_folder(ckpt, ct, tmp_path, monkeypatch):
    """Outputs appear all at once: a failure while writing masks leaves nothing of the case."""
    from promptseg.errors import InputError
    from promptseg.inference import predict, writing

    calls = []

    def flaky(volume, path, dtype=None):
        calls.append(path)
        if len(calls) == 3:
            raise InputError(path, "disk full (simulated)")
        return write_image(volume, path, dtype)

    monkeypatch.setattr(writing, "write_image", flaky)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="disk full"):
        predict(str(ckpt), ct, out, prompts=["liver", "spleen", "kidney"], device="cpu", progress=False)
    assert not (out / "ct.nii.gz").exists()
    assert list(out.iterdir()) == [] if out.exists() else True


def test_killed_predict_leaves_no_label_map_without_its_masks(ckpt, ct, tmp_path):
    """kill -9 while the masks are being written: the label map is absent (it is renamed in last)."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "promptseg", "predict", "-i", str(ct), "-o", str(out), "-m", str(ckpt), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if out.is_dir() and any(p.name.startswith(".ct.") and p.is_dir() for p in out.iterdir()):
                break  # the case folder is being built
            time.sleep(0.005)
        assert proc.poll() is None, "predict ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "ct.nii.gz").exists(), "a label map without its masks"
    assert not (out / "ct").exists() or len(list((out / "ct").iterdir())) == len(CLASSES)


# --- issue 16: tiny inputs ----------------------------------------------------------------------
def test_tiny_inputs_are_padded_or_refused_in_one_line(ckpt, shared_data, tmp_path, capsys):
    """Inputs of <= 16 voxels along an axis used to end in a torch traceback."""
    vol = read_image(shared_data / "ct_abdomen_small" / "image.nii.gz")
    a = np.asarray(vol.array)
    small = tmp_path / "small.nii.gz"
    write_image(Volume(a[40:50, 40:50, 10:20], vol.spacing, vol.origin, vol.direction), small)  # 10^3 voxels
    assert run("-i", small, "-o", tmp_path / "out", "-m", ckpt, "--prompt", "liver") == 0
    got = read_image(tmp_path / "out" / "small.nii.gz")
    assert got.same_grid(read_image(small))
    capsys.readouterr()
    flat = tmp_path / "flat.nii.gz"
    write_image(Volume(a[:, :, 15:16], vol.spacing, vol.origin, vol.direction), flat)
    assert run("-i", flat, "-o", tmp_path / "out2", "-m", ckpt) == 2
    err = one_line_error(capsys)
    assert "flat.nii.gz" in err and "at least 2 voxels" in err
    assert not (tmp_path / "out2" / "flat.nii.gz").exists()


# --- issue 18: what predict writes ----------------------------------------------------------------
def test_statistics_volume_is_voxels_times_voxel_volume(ckpt, ct, tmp_path):
    out = tmp_path / "out"
    assert run("-i", ct, "-o", out, "-m", ckpt, "--statistics", "--prompt", "liver", "--prompt", "kidney") == 0
    stats = json.loads((out / "ct" / "statistics.json").read_text())
    assert set(stats) == {"liver", "right kidney", "left kidney"}
    ref = nib.load(str(ct))
    voxel_ml = float(np.prod(ref.header.get_zooms()[:3])) / 1000.0
    image = np.asarray(ref.dataobj, dtype=np.float64)
    for name, s in stats.items():
        mask = np.asarray(nib.load(str(out / "ct" / f"{name.replace(' ', '_')}.nii.gz")).dataobj) > 0
        assert s["voxels"] == int(mask.sum())
        assert s["volume"] == pytest.approx(s["voxels"] * voxel_ml, rel=1e-9)
        if s["voxels"]:
            assert s["intensity"] == pytest.approx(image[mask].mean(), abs=1e-3)
            assert s["intensity_std"] == pytest.approx(image[mask].std(), abs=1e-3)
    assert any(s["voxels"] > 0 for s in stats.values()), "the test must look at a non-empty class"


def test_preview_is_a_png_in_radiological_orientation():
    """The patient's right shows on the image's left, anterior at the top, head at the top."""
    from promptseg.inference.preview import radiological_planes

    arr = np.zeros((20, 30, 40), np.float32)  # LPS: index 0 of axis 0 is the patient's right
    arr[2, 25, 35] = 1.0  # right, posterior, superior
    for direction in (np.eye(3), np.diag([-1.0, -1.0, 1.0])):
        vol = Volume(arr if direction[0, 0] > 0 else arr[::-1, ::-1].copy(), (1.0, 1.0, 1.0), direction=direction)
        axial, coronal, sagittal = radiological_planes(vol, centre=None, label=vol)
        for plane, (row_half, col_half) in ((axial[0], ("bottom", "left")), (coronal[0], ("top", "left")),
                                            (sagittal[0], ("top", "right"))):
            r, c = np.argwhere(plane > 0)[0]
            assert (r < plane.shape[0] / 2) == (row_half == "top"), (direction, plane.shape, r, c)
            assert (c < plane.shape[1] / 2) == (col_half == "left"), (direction, plane.shape, r, c)


def test_preview_and_file_output(ckpt, ct, tmp_path):
    """`-o seg.nii.gz` writes that label map; --preview a PNG."""
    seg = tmp_path / "res" / "seg.nii.gz"
    assert run("-i", ct, "-o", seg, "-m", ckpt, "--prompt", "liver", "spleen", "--preview", "--no-masks") == 0
    assert seg.is_file() and read_image(seg).same_grid(read_image(ct))
    png = tmp_path / "res" / "seg" / "preview.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "res" / "seg_labels.json").read_text()) == {"1": "spleen", "6": "liver"}


def test_dicom_output_from_a_nifti_input_is_one_line(ckpt, ct, tmp_path, capsys):
    assert run("-i", ct, "-o", tmp_path / "out", "-m", ckpt, "--output-type", "nifti", "dicom-seg") == 2
    err = one_line_error(capsys)
    assert "ct.nii.gz" in err and "DICOM series" in err
    assert not (tmp_path / "out").exists()


def test_fast_and_roi_on_native_spacing_say_why_before_reading(ckpt, tmp_path, capsys):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")  # reading it would fail: the flag's error must come first
    for flag in ("--fast", "--roi"):
        assert run("-i", broken, "-o", tmp_path / "out", "-m", ckpt, flag, "--prompt", "liver") == 2
        err = one_line_error(capsys)
        assert f"{flag} cannot run" in err and "keeps each image's own voxel spacing" in err


def test_omp_num_threads_is_respected_without_threads(ckpt, monkeypatch):
    from promptseg.inference.settings import inference_settings

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert inference_settings({})["threads"] == 1
    assert inference_settings({"threads": 2})["threads"] == 2  # --threads wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert inference_settings({})["threads"] is None


def test_quiet_silences_every_bar(ckpt, shared_data, tmp_path, capfd):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b"):
        shutil.copy(shared_data / "mr_abdomen_small" / "image.nii.gz", src / f"{name}.nii.gz")
    assert run("-i", src, "-o", tmp_path / "out", "-m", ckpt, "--prompt", "liver") == 0
    err = capfd.readouterr().err
    assert "%|" not in err and "it/s" not in err and "case/s" not in err


def test_python_api_takes_path_volume_and_nibabel(ckpt, ct, tmp_path):
    import promptseg

    by_path = promptseg.predict(ct, ckpt, "liver", device="cpu")
    by_volume = promptseg.predict(read_image(ct), ckpt, ["liver"], device="cpu")
    by_nib = promptseg.predict(nib.load(str(ct)), ckpt, ["Hepar"], device="cpu", output=tmp_path / "o.nii.gz")
    for p in (by_volume, by_nib):
        assert p.label_map.same_grid(by_path.label_map)
        np.testing.assert_array_equal(p.label_map.array, by_path.label_map.array)
    assert read_image(tmp_path / "o.nii.gz").same_grid(by_path.label_map)
    assert promptseg.predict.__doc__ and "nibabel" in promptseg.predict.__doc__


def test_dicom_output_types_reach_the_io_writers(ckpt, shared_data, tmp_path, monkeypatch):
    """--output-type dicom-seg rtstruct hands the label map, the segments (name, label value,
    colour) and the source series to io.dicom_seg / io.rtstruct (recorded here: this checks the
    wiring; the writers' own tests validate the DICOM files)."""
    import importlib
    import types

    vol = read_image(shared_data / "ct_abdomen_small" / "image.nii.gz")
    series = tmp_path / "series"
    write_dicom_series(Volume(np.asarray(vol.array)[:, :, 8:16].astype(np.int16), vol.spacing, vol.origin,
                              vol.direction), series)
    calls = []
    for mod, fn in (("promptseg.io.dicom_seg", "write_dicom_seg"), ("promptseg.io.rtstruct", "write_rtstruct")):
        fake = types.ModuleType(mod)

        def writer(label_map, segments, source_series_dir, out_path, _fn=fn):
            calls.append((_fn, label_map, segments, Path(source_series_dir), Path(out_path)))
            Path(out_path).write_bytes(b"DICM")
        setattr(fake, fn, writer)
        monkeypatch.setitem(sys.modules, mod, fake)
        monkeypatch.setattr(importlib.import_module("promptseg.io"), mod.rsplit(".", 1)[1], fake, raising=False)
    out = tmp_path / "out"
    assert run("-i", series, "-o", out, "-m", ckpt, "--prompt", "liver", "spleen",
               "--output-type", "nifti", "dicom-seg", "rtstruct") == 0
    assert [c[0] for c in calls] == ["write_dicom_seg", "write_rtstruct"]
    for _, label_map, segments, source, path in calls:
        assert source == series and path.parent.name.startswith(".series.")  # built in the hidden folder
        assert label_map.same_grid(read_image(series))
        assert [(s["name"], s["label_value"]) for s in segments] == [("liver", 6), ("spleen", 1)]
        assert all(len(s["color"]) == 3 for s in segments)
    assert (out / "series" / "seg.dcm").is_file() and (out / "series" / "rtstruct.dcm").is_file()
    assert (out / "series.nii.gz").is_file()
