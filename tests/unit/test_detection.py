"""Tumour detection: hand-computed sensitivity / specificity / harmonic mean, lesion-level recall."""
from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from promptseg.evaluation import evaluate_folders
from promptseg.evaluation.detection import DetectionCase, harmonic_mean, lesion_counts, summarize
from promptseg.taxonomy import default_taxonomy

SPACING = 1.5  # mm, isotropic -> one voxel = 3.375 mm^3
VOX = SPACING**3


def box(a, lo, side, value):
    a[lo[0]:lo[0] + side, lo[1]:lo[1] + side, lo[2]:lo[2] + side] = value


def test_harmonic_mean_edges():
    assert harmonic_mean(1.0, 0.5) == pytest.approx(2 / 3)
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert math.isnan(harmonic_mean(math.nan, 1.0))


def test_lesion_counts_by_connected_components():
    g = np.zeros((20, 20, 20), np.uint8)
    box(g, (1, 1, 1), 3, 1)
    box(g, (10, 10, 10), 3, 1)
    box(g, (15, 2, 2), 2, 1)
    p = np.zeros_like(g)
    p[2, 2, 2] = 1  # hits lesion 1
    box(p, (11, 11, 11), 4, 1)  # hits lesion 2
    box(p, (2, 15, 15), 2, 1)  # false positive component
    c = lesion_counts(p, g)
    assert (c.gt_lesions, c.gt_lesions_found, c.pred_lesions, c.pred_lesions_true) == (3, 2, 3, 2)
    # a stricter overlap requirement drops the one-voxel hit
    c2 = lesion_counts(p, g, min_overlap_voxels=2)
    assert c2.gt_lesions_found == 1
    # diagonal neighbours are one lesion with 26-connectivity, two with 6
    d = np.zeros((5, 5, 5), np.uint8)
    d[1, 1, 1] = d[2, 2, 2] = 1
    assert lesion_counts(d, d).gt_lesions == 1
    assert lesion_counts(d, d, connectivity=6).gt_lesions == 2


def test_patient_level_counts_on_constructed_cases():
    # 4 tumour cases (3 found), 3 tumour-free (1 false alarm); threshold 10 mm^3, strictly above
    cases = [
        DetectionCase("d", "t1", "liver tumor", 100.0, 80.0, 10.0),
        DetectionCase("d", "t2", "liver tumor", 50.0, 11.0, 10.0),
        DetectionCase("d", "t3", "liver tumor", 20.0, 500.0, 10.0),
        DetectionCase("d", "t4", "liver tumor", 30.0, 10.0, 10.0),  # exactly at the threshold: negative
        DetectionCase("d", "n1", "liver tumor", 0.0, 0.0, 10.0),
        DetectionCase("d", "n2", "liver tumor", 0.0, 9.0, 10.0),
        DetectionCase("d", "n3", "liver tumor", 0.0, 40.0, 10.0),
    ]
    (r,) = summarize(cases)
    assert (r.tp, r.fn, r.tn, r.fp) == (3, 1, 2, 1)
    assert r.sensitivity == pytest.approx(3 / 4)
    assert r.specificity == pytest.approx(2 / 3)
    assert r.harmonic_mean == pytest.approx(2 * (3 / 4) * (2 / 3) / (3 / 4 + 2 / 3))
    assert math.isnan(r.lesion_recall)  # no lesion evidence given


def test_no_negative_cases_leaves_specificity_undefined():
    (r,) = summarize([DetectionCase("d", "a", "kidney tumor", 5.0, 5.0, 0.0)])
    assert r.sensitivity == 1.0 and math.isnan(r.specificity) and math.isnan(r.harmonic_mean)


def _write(path, arr):
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), np.diag([SPACING, SPACING, SPACING, 1.0])), str(path))


@pytest.fixture
def detection_folders(tmp_path):
    """10 cases: 6 with liver tumours, 4 without; GT uses {1 liver, 2 liver tumor}; the prediction
    uses the 32-class Universal Model numbering (liver 6, liver tumor 27)."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    (gt_dir / "dataset.json").write_text(json.dumps({"name": "toyLiver", "labels": {"background": 0, "liver": 1, "liver tumor": 2}}))
    tax = default_taxonomy()
    (pred_dir / "labels.json").write_text(json.dumps({str(c.id): c.name for c in tax.classes if c.id <= 32}))
    liver_v, tumor_v = tax.resolve("liver").id, tax.resolve("liver tumor").id
    for i in range(10):
        g = np.zeros((24, 24, 24), np.uint8)
        box(g, (3, 3, 3), 18, 1)
        p = np.where(g == 1, liver_v, 0).astype(np.uint8)
        if i < 6:
            box(g, (6, 6, 6), 3, 2)
        if i == 0:
            box(g, (14, 14, 14), 3, 2)  # a second lesion, missed by the prediction
        if i < 5:
            box(p, (7, 7, 7), 3, tumor_v)  # overlaps the true lesion
        elif i == 5:
            p[18, 4, 4] = tumor_v  # one voxel (3.4 mm^3), elsewhere: below the 10 mm^3 threshold
        elif i == 8:
            p[10, 10, 10] = p[10, 10, 11] = tumor_v  # 6.75 mm^3: below the threshold
        elif i == 9:
            box(p, (10, 10, 10), 2, tumor_v)  # 27 mm^3: a false alarm
        _write(gt_dir / f"case{i:02d}.nii.gz", g)
        _write(pred_dir / f"case{i:02d}.nii.gz", p)
    return pred_dir, gt_dir


def test_detection_through_evaluate_folders(detection_folders, tmp_path):
    pred_dir, gt_dir = detection_folders
    res = evaluate_folders(pred_dir, gt_dir, None, progress=False, class_detect_threshold_mm3={"hepatic tumour": 10.0})
    (d,) = res.summary["detection"]
    assert d["cls"] == "liver tumor"
    # by hand: tumour cases 0-4 found, case 5 below threshold -> se 5/6; tumour-free 6, 7, 8 quiet, 9 alarm -> sp 3/4
    assert (d["tp"], d["fn"], d["tn"], d["fp"]) == (5, 1, 3, 1)
    assert d["sensitivity"] == pytest.approx(5 / 6)
    assert d["specificity"] == pytest.approx(3 / 4)
    assert d["harmonic_mean"] == pytest.approx(15 / 19)
    # lesions: 7 true (case 0 has two), found in cases 0-4 once each -> 5/7
    assert (d["gt_lesions"], d["gt_lesions_found"]) == (7, 5)
    assert d["lesion_recall"] == pytest.approx(5 / 7)
    # the default threshold (any voxel) turns case 5 into a hit and case 8 into a false alarm
    res0 = evaluate_folders(pred_dir, gt_dir, None, progress=False)
    (d0,) = res0.summary["detection"]
    assert (d0["tp"], d0["fn"], d0["tn"], d0["fp"]) == (6, 0, 2, 2)
    assert d0["harmonic_mean"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    # the 32-class prediction is scored only on the ground truth's 2 classes
    assert {r["class"] for r in res.rows} == {"liver", "liver tumor"}
    assert res.summary["dataset_wise"][0]["dataset"] == "toyLiver"
