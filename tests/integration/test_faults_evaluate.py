"""Faults of `promptseg evaluate` (issue 16), on real label maps of ../shared/data: a missing
prediction counts as an empty one (Dice 0, nnU-Net's rule) unless --allow-missing, and folders
that share no case are a one-line error that writes nothing."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage


def _label_file(case_dir: Path) -> Path:
    return next(p for p in case_dir.iterdir() if p.name.startswith("labels.") and not p.name.endswith(".json"))


def _gt_and_pred(shared_data: Path, tmp_path: Path, gt_cases: dict[str, str], pred_cases: dict[str, str]):
    """Flat nnU-Net-like folders: GT case name -> shared folder; predictions are the same maps
    with every label eroded by one voxel (a realistic, imperfect prediction)."""
    from promptseg.io import read_label, write_image

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for root, cases, erode in ((gt, gt_cases, False), (pred, pred_cases, True)):
        root.mkdir()
        for case, src in cases.items():
            vol = read_label(_label_file(shared_data / src))
            arr = np.asarray(vol.array).astype(np.int16)
            if erode:
                out = np.zeros_like(arr)
                for v in np.unique(arr)[1:]:
                    out[ndimage.binary_erosion(arr == v)] = v
                arr = out
            write_image(vol.with_array(arr), root / f"{case}.nii.gz")
            shutil.copyfile(shared_data / src / "labels.json", root / f"{case}.json")
    return pred, gt


def _run(args: list[str], capsys) -> tuple[int, str]:
    from promptseg.cli import main

    code = main(["evaluate", *args, "--quiet", "--no-report"])
    return code, capsys.readouterr().err


def _rows(out: Path) -> list[dict]:
    with open(out / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def _class_mean(out: Path, cls: str) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    return next(e for e in summary["class_wise"] if e["class"] == cls)["dice"]


# case table: (id, GT cases, predicted cases, extra CLI args, exit code)
CASES = [
    ("missing-counts", {"a": "ct_abdomen_small", "b": "ct_abdomen_small"}, {"a": "ct_abdomen_small"}, [], 0),
    ("missing-allowed", {"a": "ct_abdomen_small", "b": "ct_abdomen_small"}, {"a": "ct_abdomen_small"}, ["--allow-missing"], 0),
    ("missing-strict", {"a": "ct_abdomen_small", "b": "ct_abdomen_small"}, {"a": "ct_abdomen_small"}, ["--strict"], 3),
    ("missing-lesion-is-missed", {"a": "ct_abdomen_small", "lung": "ct_chest_lung_tumor"}, {"a": "ct_abdomen_small"}, [], 0),
    ("no-match", {"a": "ct_abdomen_small"}, {"zz": "ct_abdomen_small"}, [], 2),
    ("no-match-allow-missing", {"a": "ct_abdomen_small"}, {"zz": "ct_abdomen_small"}, ["--allow-missing"], 2),
]


@pytest.mark.parametrize("name, gt_cases, pred_cases, extra, code", CASES, ids=[c[0] for c in CASES])
def test_evaluate_faults(shared_data, tmp_path, capsys, name, gt_cases, pred_cases, extra, code):
    pred, gt = _gt_and_pred(shared_data, tmp_path, gt_cases, pred_cases)
    out = tmp_path / "out"
    got, err = _run([str(pred), str(gt), "-o", str(out), *extra], capsys)
    assert got == code, err
    if name.startswith("no-match"):
        assert err.count("\n") == 1 and str(pred) in err and "no prediction matches" in err and "a" in err
        assert not out.exists()  # nothing written
        return
    rows = _rows(out)
    scored_a = [r for r in rows if r["case"] == "a"]
    liver_a = float(next(r for r in scored_a if r["class"] == "liver")["dice"])
    assert 0.5 < liver_a < 1.0 and all(r["status"] == "scored" for r in scored_a)
    missing = sorted(set(gt_cases) - set(pred_cases))
    assert f"missing prediction: gt/{missing[0]}" in err
    summary = json.loads((out / "summary.json").read_text())
    assert [m["case"] for m in summary["missing_cases"]] == missing
    if name == "missing-allowed":
        assert {r["case"] for r in rows} == {"a"}
        assert _class_mean(out, "liver")["mean"] == pytest.approx(liver_a)
        assert "left out of the means" in err
        return
    b_rows = [r for r in rows if r["case"] == missing[0]]
    assert b_rows and {r["status"] for r in b_rows} == {"missing prediction"}
    assert all(float(r["dice"]) == 0.0 and r["pred_voxels"] == "0" for r in b_rows if int(r["gt_voxels"]) > 0)
    if name == "missing-lesion-is-missed":
        (det,) = summary["detection"]
        assert det["cls"] == "lung tumor" and det["n_positive"] == 1 and det["tp"] == 0 and det["sensitivity"] == 0.0
        return
    liver = _class_mean(out, "liver")
    assert liver["n"] == 2 and liver["mean"] == pytest.approx(liver_a / 2)  # the missing case's 0 is in the mean
    assert "Dice 0" in err


def test_empty_prediction_folder_is_one_line(shared_data, tmp_path, capsys):
    pred, gt = _gt_and_pred(shared_data, tmp_path, {"a": "ct_abdomen_small"}, {})
    got, err = _run([str(pred), str(gt), "-o", str(tmp_path / "out")], capsys)
    assert got == 2 and err.count("\n") == 1 and str(pred) in err
    assert not (tmp_path / "out").exists()
