"""`promptseg data check` on the real-scan datasets: clean folders pass, planted defects are found."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from promptseg.cli import main

_spec = importlib.util.spec_from_file_location("_real_folders", Path(__file__).with_name("test_datasets_real.py"))
_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_real)


@pytest.fixture(scope="module")
def folders(shared_data, tmp_path_factory):
    return _real.build_real_folders(shared_data, tmp_path_factory.mktemp("check_datasets"), extra=False)


def _rows(out: str) -> list[list[str]]:
    """Table rows split on runs of 2+ spaces: [dataset, case, level, kind, problem]."""
    import re

    lines = out.strip().splitlines()
    return [re.split(r"\s{2,}", l, maxsplit=4) for l in lines[1:-1]]


def test_clean_folders_pass(folders, capsys):
    rc = main(["data", "check", *map(str, folders.values()), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "6 case(s) in 3 dataset(s): 0 error(s)" in out and "all OK" in out


def test_planted_defects_are_found(folders, tmp_path, capsys):
    bad = tmp_path / "Dataset602_Vessels"
    shutil.copytree(folders["Dataset602_Vessels"], bad)
    img_dir, lab_dir = bad / "imagesTr", bad / "labelsTr"

    # 1. ves_000: the label's spacing differs from its image's
    lab = nib.load(str(lab_dir / "ves_000.nii.gz"))
    aff = lab.affine.copy()
    aff[2, 2] = 2.5
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj), aff), str(lab_dir / "ves_000.nii.gz"))
    # 2. ves_001: a stray label value 9 (dataset.json lists 0..6)
    lab = nib.load(str(lab_dir / "ves_001.nii.gz"))
    arr = np.asarray(lab.dataobj).copy()
    arr[10:14, 10:14, 10:12] = 9
    nib.save(nib.Nifti1Image(arr, lab.affine), str(lab_dir / "ves_001.nii.gz"))
    # 3. ves_nan: NaN voxels in the image
    img = nib.load(str(img_dir / "ves_000_0000.nii.gz"))
    a = np.asarray(img.dataobj).astype(np.float32)[:, :, :40]
    a[50, 50, 5] = np.nan
    nib.save(nib.Nifti1Image(a, img.affine), str(img_dir / "ves_nan_0000.nii.gz"))
    lab = nib.load(str(folders["Dataset602_Vessels"] / "labelsTr" / "ves_000.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj)[:, :, :40], lab.affine), str(lab_dir / "ves_nan.nii.gz"))
    # 4. ves_dup: a case of another dataset copied in (same voxels, stored as float32)
    src = folders["Task03_Liver"]
    img = nib.load(str(src / "imagesTr" / "liver_0.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.float32), img.affine),
             str(img_dir / "ves_dup_0000.nii.gz"))
    shutil.copy(src / "labelsTr" / "liver_0.nii.gz", lab_dir / "ves_dup.nii.gz")
    # 5. ves_raw: CT stored as unsigned raw values (HU + 1024), not Hounsfield units
    img = nib.load(str(img_dir / "ves_000_0000.nii.gz"))
    raw = (np.asarray(img.dataobj).astype(np.int32) + 1024).clip(0).astype(np.uint16)[:, :, 40:]
    nib.save(nib.Nifti1Image(raw, img.affine), str(img_dir / "ves_raw_0000.nii.gz"))
    lab = nib.load(str(folders["Dataset602_Vessels"] / "labelsTr" / "ves_000.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj)[:, :, 40:], lab.affine), str(lab_dir / "ves_raw.nii.gz"))
    # 6. ves_nolabel: image without its label
    shutil.copy(img_dir / "ves_raw_0000.nii.gz", img_dir / "ves_nolabel_0000.nii.gz")
    # 7. ves_empty: a label with background only
    a = np.asarray(nib.load(str(img_dir / "ves_000_0000.nii.gz")).dataobj)[:, :, 60:]
    nib.save(nib.Nifti1Image(a, img.affine), str(img_dir / "ves_empty_0000.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(a.shape, np.uint8), img.affine), str(lab_dir / "ves_empty.nii.gz"))

    rc = main(["data", "check", str(bad), str(src), "--no-progress", "--workers", "2"])
    out = capsys.readouterr().out
    assert rc == 1, out
    found = {(r[1], r[3]) for r in _rows(out)}
    assert ("ves_000", "grid") in found and "spacing" in out
    assert ("ves_001", "label-values") in found and "9 (32 voxels)" in out
    assert ("ves_nan", "nan") in found and "NaN" in out
    assert ("ves_dup", "duplicate") in found or ("liver_0", "duplicate") in found
    assert "same image as" in out
    assert ("ves_raw", "intensity") in found
    assert ("ves_nolabel", "missing") in found
    assert ("ves_empty", "empty") in found
    levels = {(r[1], r[3]): r[2] for r in _rows(out)}
    assert levels[("ves_empty", "empty")] == "warning" and levels[("ves_000", "grid")] == "error"
    # nothing else is flagged: the untouched liver case and the planted ones only
    assert {c for c, _ in found} <= {"ves_000", "ves_001", "ves_nan", "ves_dup", "ves_raw", "ves_nolabel",
                                     "ves_empty", "liver_0", "-"}
    assert "numTraining" in out  # dataset.json still says 2 cases


def test_check_reads_a_saved_manifest(folders, tmp_path, capsys):
    from promptseg.data.manifest import load_dataset

    m = load_dataset(folders["Task03_Liver"])
    path = m.save(tmp_path / "liver.yaml")
    assert main(["data", "check", str(path), "--no-progress"]) == 0
    doc = json.loads(json.dumps(__import__("yaml").safe_load(path.read_text())))
    doc["cases"][0]["label"] = "labelsTr/missing.nii.gz"
    path.write_text(__import__("yaml").safe_dump(doc))
    assert main(["data", "check", str(path), "--no-progress"]) == 1
    assert "label file missing: labelsTr/missing.nii.gz" in capsys.readouterr().out
