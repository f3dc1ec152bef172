"""`evaluate_folders` on small synthetic folders: name matching through the taxonomy, organ + lesion
masks, paired-organ lesions, missing/extra cases, folder layouts, label JSON shapes, bad input."""
from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from promptseg.errors import InputError
from promptseg.evaluation import evaluate_folders
from promptseg.evaluation.cases import find_cases
from promptseg.io.labeltable import parse_label_mapping

AFF = np.diag([1.0, 1.0, 2.0, 1.0])


def save(path, arr, affine=AFF):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(arr, np.uint8), affine), str(path))


def labels(path, mapping):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mapping))


def scores(res):
    return {(r["case"], r["class"]): r for r in res.rows}


def body():
    """Two kidneys and a liver on a 30x20x12 grid, as one array per structure."""
    shape = (30, 20, 12)
    right, left, liver = (np.zeros(shape, bool) for _ in range(3))
    right[3:10, 5:12, 3:9] = True  # array axis 0 increasing = patient left in this affine
    left[20:27, 5:12, 3:9] = True
    liver[11:19, 2:18, 2:10] = True
    return right, left, liver


def test_names_match_through_taxonomy_whatever_the_values(tmp_path):
    right, left, liver = body()
    g = np.zeros(right.shape, np.uint8)
    g[left], g[right], g[liver] = 1, 2, 3
    p = np.zeros_like(g)
    p[left], p[right], p[liver] = 11, 5, 7
    save(tmp_path / "gt/c1.nii.gz", g)
    labels(tmp_path / "gt/labels.json", {"1": "kidney_left", "2": "kidney_right", "3": "liver"})
    save(tmp_path / "pred/c1.nii.gz", p)
    labels(tmp_path / "pred/labels.json", {"11": "left kidney", "5": "Kidney (right)", "7": "hepar"})
    res = evaluate_folders(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", progress=False, report=False)
    s = scores(res)
    assert set(s) == {("c1", "left kidney"), ("c1", "right kidney"), ("c1", "liver")}
    assert all(r["dice"] == 1.0 and r["nsd"] == 1.0 for r in s.values())
    assert (tmp_path / "out/metrics.csv").is_file() and (tmp_path / "out/summary.json").is_file()
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["missing_cases"] == [] and summary["extra_cases"] == []


def test_organ_mask_includes_its_lesions_on_both_sides(tmp_path):
    _, _, liver = body()
    tumour = np.zeros_like(liver)
    tumour[13:16, 6:9, 4:6] = True
    g = np.zeros(liver.shape, np.uint8)
    g[liver], g[tumour] = 1, 2  # the tumour overrides the liver
    p = np.zeros_like(g)
    p[liver] = 6  # the prediction has no tumour class: its liver covers the tumour
    save(tmp_path / "gt/c1.nii.gz", g)
    labels(tmp_path / "gt/labels.json", {"1": "liver", "2": "liver tumor"})
    save(tmp_path / "pred/c1.nii.gz", p)
    labels(tmp_path / "pred/labels.json", {"6": "liver"})
    res = evaluate_folders(tmp_path / "pred", tmp_path / "gt", None, progress=False)
    s = scores(res)
    assert s[("c1", "liver")]["dice"] == 1.0
    assert s[("c1", "liver tumor")]["status"] == "not predicted"
    assert math.isnan(s[("c1", "liver tumor")].get("dice", math.nan))
    assert res.summary["not_predicted"] == [{"dataset": "gt", "class": "liver tumor", "n_cases": 1}]
    own = scores(evaluate_folders(tmp_path / "pred", tmp_path / "gt", None, progress=False, include_children=False))
    n_l, n_t = int(liver.sum()), int((tumour & liver).sum())
    assert own[("c1", "liver")]["dice"] == pytest.approx(2 * (n_l - n_t) / (2 * n_l - n_t))


def test_paired_organ_lesion_goes_to_its_own_side(tmp_path):
    right, left, _ = body()
    tumour = np.zeros_like(right)
    tumour[4:7, 6:9, 4:7] = True  # inside the right kidney
    g = np.zeros(right.shape, np.uint8)
    g[right], g[left] = 2, 3  # the ground truth calls the tumour kidney
    p = np.zeros_like(g)
    p[right], p[left], p[tumour] = 2, 3, 26  # Universal Model numbering: 26 = kidney tumor
    save(tmp_path / "gt/c1.nii.gz", g)
    labels(tmp_path / "gt/labels.json", {"2": "right kidney", "3": "left kidney"})
    save(tmp_path / "pred/c1.nii.gz", p)
    labels(tmp_path / "pred/labels.json", {"2": "right kidney", "3": "left kidney", "26": "kidney tumor"})
    s = scores(evaluate_folders(tmp_path / "pred", tmp_path / "gt", None, progress=False))
    assert s[("c1", "right kidney")]["dice"] == 1.0
    assert s[("c1", "left kidney")]["dice"] == 1.0  # the right-side tumour is not added to the left


def test_group_label_is_scored_against_both_sides(tmp_path):
    right, left, _ = body()
    tumour = np.zeros_like(right)
    tumour[22:25, 6:9, 4:7] = True
    g = np.zeros(right.shape, np.uint8)
    g[right | left], g[tumour] = 1, 2  # KiTS style: one 'kidney' label plus tumour
    p = np.zeros_like(g)
    p[right], p[left] = 2, 3
    save(tmp_path / "gt/c1.nii.gz", g)
    labels(tmp_path / "gt/dataset.json", {"labels": {"background": 0, "kidney": 1, "kidney tumor": 2}})
    save(tmp_path / "pred/c1.nii.gz", p)
    labels(tmp_path / "pred/labels.json", {"2": "right kidney", "3": "left kidney"})
    res = evaluate_folders(tmp_path / "pred", tmp_path / "gt", None, progress=False)
    s = scores(res)
    assert s[("c1", "kidney")]["dice"] == 1.0  # kidney (with its tumour) vs left + right
    assert s[("c1", "kidney")]["in_taxonomy"] is True
    assert s[("c1", "kidney tumor")]["status"] == "not predicted"


def test_missing_extra_outside_taxonomy_and_unlabelled_values(tmp_path):
    right, left, liver = body()
    g = np.zeros(right.shape, np.uint8)
    g[liver], g[right] = 1, 9
    for c in ("a", "b", "c"):
        save(tmp_path / f"gt/{c}.nii.gz", g)
    labels(tmp_path / "gt/labels.json", {"1": "liver", "9": "funny_bone"})
    p = g.copy()
    p[left] = 4  # a value the prediction's JSON does not name
    for c in ("a", "b", "zz"):
        save(tmp_path / f"pred/{c}.nii.gz", p)
    labels(tmp_path / "pred/labels.json", {"1": "liver", "9": "funny bone"})
    # allow_missing: case c is listed, not scored (its Dice-0 default is in test_faults_evaluate)
    res = evaluate_folders(tmp_path / "pred", tmp_path / "gt", None, progress=False, report=False, allow_missing=True)
    sm = res.summary
    assert sm["missing_cases"] == [{"dataset": "gt", "case": "c"}]
    assert sm["extra_cases"] == [{"dataset": "gt", "case": "zz"}]
    assert sm["outside_taxonomy"] == ["funny bone"]
    funny = [r for r in res.rows if r["class"] == "funny bone"]
    assert len(funny) == 2 and all(r["region"] == "unknown" and r["dice"] == 1.0 for r in funny)
    assert [e["region"] for e in sm["region_wise"]] == ["abdomen", "unknown"]
    assert {(u["case"], u["side"], tuple(u["values"])) for u in sm["unlabelled_values"]} == {("a", "pred", (4,)), ("b", "pred", (4,))}


def test_shared_data_layout_and_single_case_folder(tmp_path):
    right, _, liver = body()
    g = np.zeros(right.shape, np.uint8)
    g[liver] = 5
    save(tmp_path / "gt/caseA/labels.nii.gz", g)
    save(tmp_path / "gt/caseA/image.nii.gz", g)
    labels(tmp_path / "gt/caseA/labels.json", {"5": "liver"})
    folder = find_cases(tmp_path / "gt")
    assert list(folder.cases) == ["caseA"] and folder.cases["caseA"].image.name == "image.nii.gz"
    single = find_cases(tmp_path / "gt/caseA")
    assert list(single.cases) == ["caseA"]
    save(tmp_path / "pred/caseA.nii.gz", np.where(g, 1, 0))
    labels(tmp_path / "pred/caseA.json", {"labels": {"liver": 1}})  # a per-case JSON
    save(tmp_path / "pred/caseA/liver.nii.gz", g > 0)  # promptseg predict's per-class masks: not a case
    labels(tmp_path / "pred/labels.json", {"3": "spleen"})  # the per-case JSON wins over the folder's
    assert list(find_cases(tmp_path / "pred").cases) == ["caseA"]
    res = evaluate_folders(tmp_path / "pred", tmp_path / "gt", None, progress=False, report=False)
    assert res.rows[0]["dice"] == 1.0


def test_label_json_shapes():
    src = None
    assert parse_label_mapping({"0": "background", "1": "spleen", "2": "liver"}, src) == {"spleen": (1,), "liver": (2,)}
    assert parse_label_mapping({"labels": {"background": 0, "liver": 1, "tumour": [2, 3]}}, src) == {"liver": (1,), "tumour": (2, 3)}
    assert parse_label_mapping([{"name": "liver", "value": 4}], src) == {"liver": (4,)}
    assert parse_label_mapping({"classes": {"3": {"name": "aorta"}}}, src) == {"aorta": (3,)}
    with pytest.raises(InputError):
        parse_label_mapping({"liver": "one"}, src)
    with pytest.raises(InputError):
        parse_label_mapping("liver", src)


def test_bad_input_is_one_line_naming_the_file(tmp_path):
    right, _, _ = body()
    save(tmp_path / "gt/c1.nii.gz", right)
    labels(tmp_path / "gt/labels.json", {"1": "liver"})
    save(tmp_path / "pred/c1.nii.gz", right[:, :, :10])
    labels(tmp_path / "pred/labels.json", {"1": "liver"})
    with pytest.raises(InputError) as e:
        evaluate_folders(tmp_path / "pred", tmp_path / "gt", None, progress=False)
    assert "c1.nii.gz" in str(e.value) and "\n" not in str(e.value)
    save(tmp_path / "nolabels/c1.nii.gz", right)
    with pytest.raises(InputError, match="labels.json"):
        find_cases(tmp_path / "nolabels")
    with pytest.raises(InputError, match="not a folder"):
        find_cases(tmp_path / "nowhere")


def _main(argv):
    """The `promptseg` dispatcher's job for this one verb (the full CLI imports every stage)."""
    import argparse

    from promptseg.errors import PromptsegError
    from promptseg.evaluation.cli import register

    parser = argparse.ArgumentParser(prog="promptseg")
    register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except PromptsegError as exc:
        print(f"promptseg: error: {exc}", file=__import__("sys").stderr)
        return 2


def test_cli_verb(tmp_path, capsys):
    main = _main
    _, _, liver = body()
    save(tmp_path / "gt/a.nii.gz", liver)
    save(tmp_path / "gt/b.nii.gz", liver)
    labels(tmp_path / "gt/labels.json", {"1": "liver"})
    save(tmp_path / "pred/a.nii.gz", liver)
    labels(tmp_path / "pred/labels.json", {"1": "liver"})
    args = ["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "-o", str(tmp_path / "o"), "--no-report", "--quiet",
            "--tolerance", "2", "--class-tolerance", "liver=3", "--empty-score", "one"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "liver" in out.out and "missing prediction: gt/b" in out.err
    summary = json.loads((tmp_path / "o/summary.json").read_text())
    assert summary["settings"]["class_tolerance_mm"] == {"liver": 3.0}
    assert summary["class_wise"][0]["dice"]["mean"] == 0.5  # b has no prediction: Dice 0, in the mean
    assert main(args + ["--strict"]) == 3
    assert main(["evaluate", str(tmp_path / "pred")]) == 2  # PRED without GT: one-line error
    assert "PRED GT pairs" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--tolerance", "-1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "NSD tolerance" in err and err.count("\n") == 1
