"""Evaluation on the real label maps of ../shared/data: agreement with MONAI, the CLI end to end,
and region-wise grouping of the 41 TotalSegmentator classes of ct_abdomen_small."""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CT = DATA / "ct_abdomen_small"
LUNG = DATA / "ct_chest_lung_tumor"

pytestmark = pytest.mark.skipif(not (CT / "labels.nii.gz").is_file(), reason=f"real scans not found at {DATA} (shared data absent)")


def perturb(labels: np.ndarray, how: str) -> np.ndarray:
    """Each class eroded / dilated by one voxel, or the whole map shifted by (1, -1, 1) voxels."""
    if how == "shift":
        out = np.zeros_like(labels)
        out[1:, :-1, 1:] = labels[:-1, 1:, :-1]
        return out
    out = np.zeros_like(labels)
    for v in np.unique(labels):
        if v == 0:
            continue
        m = labels == v
        m = ndimage.binary_erosion(m) if how == "erode" else ndimage.binary_dilation(m)
        out[m & (out == 0)] = v
    return out


def write_pred(folder: Path, case: str, gt_dir: Path, how: str) -> None:
    from promptseg.io import read_label, write_image

    gt_file = next(p for p in gt_dir.iterdir() if p.name.startswith("labels.") and not p.name.endswith(".json"))
    vol = read_label(gt_file)
    folder.mkdir(parents=True, exist_ok=True)
    write_image(vol.with_array(perturb(np.asarray(vol.array), how).astype(np.int16)), folder / f"{case}.nii.gz")
    (folder / f"{case}.json").write_text((gt_dir / "labels.json").read_text())


def cropped_case(src: Path, dst: Path, margin: int = 12) -> Path:
    """A copy of a large case cropped around its labels (same world geometry), to keep tests fast."""
    from promptseg.io import Volume, read_label, write_image

    gt_file = next(p for p in src.iterdir() if p.name.startswith("labels.") and not p.name.endswith(".json"))
    vol = read_label(gt_file)
    nz = np.argwhere(np.asarray(vol.array) > 0)
    lo = np.maximum(nz.min(0) - margin, 0)
    hi = np.minimum(nz.max(0) + margin + 1, vol.shape)
    arr = np.asarray(vol.array)[tuple(slice(a, b) for a, b in zip(lo, hi))]
    origin = np.asarray(vol.origin) + vol.direction @ (np.asarray(vol.spacing) * lo)
    dst.mkdir(parents=True)
    write_image(Volume(arr.astype(np.int16), vol.spacing, tuple(origin), vol.direction), dst / "labels.nii.gz")
    (dst / "labels.json").write_text((src / "labels.json").read_text())
    return dst


def monai_scores(pred: np.ndarray, gt: np.ndarray, values, spacing, tolerance):
    """MONAI's DSC, NSD, HD95 and symmetric MSD per label value (one-hot, all classes at once)."""
    import torch
    from monai.metrics import DiceMetric, compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    oh = lambda a: torch.as_tensor(np.stack([a == v for v in values])[None].astype(np.float32))
    p, g = oh(pred), oh(gt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # MONAI's many small torch ops are ~10x slower with threads on a busy machine
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dsc = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p, g)[0]
            nsd = compute_surface_dice(p, g, [tolerance] * len(values), include_background=True, spacing=spacing)[0]
            hd = compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=spacing)[0]
            msd = compute_average_surface_distance(p, g, include_background=True, symmetric=True, spacing=spacing)[0]
    finally:
        torch.set_num_threads(threads)
    return {"dice": dsc.numpy(), "nsd": nsd.numpy(), "hd95": hd.numpy(), "msd": msd.numpy()}


@pytest.mark.parametrize("case_dir,tolerance", [(CT, 3.0), (LUNG, 1.0)], ids=["ct_abdomen_small", "ct_chest_lung_tumor"])
def test_pipeline_agrees_with_monai_on_perturbed_real_label_maps(case_dir, tolerance, tmp_path):
    from promptseg.evaluation import evaluate_folders
    from promptseg.evaluation.cases import find_cases
    from promptseg.io import read_label

    if case_dir == LUNG:  # 512x512x48: crop around the tumour, keep the 0.57 x 0.57 x 5 mm voxels
        case_dir = cropped_case(LUNG, tmp_path / LUNG.name)
    gt_case = find_cases(case_dir).cases[case_dir.name]
    gt = read_label(gt_case.path)
    names = {v[0]: k for k, v in gt_case.labels.items()}
    values = sorted(names)
    worst = {"dice": 0.0, "nsd": 0.0, "hd95": 0.0, "msd": 0.0}
    n_missed = 0
    for how in ("erode", "dilate", "shift"):
        pred_dir = tmp_path / how
        write_pred(pred_dir, case_dir.name, case_dir, how)
        res = evaluate_folders(pred_dir, case_dir, None, tolerance_mm=tolerance, include_children=False, progress=False, report=False)
        rows = {r["gt_name"]: r for r in res.rows}
        assert len(rows) == len(values)
        ref = monai_scores(read_label(pred_dir / f"{case_dir.name}.nii.gz").array, np.asarray(gt.array), values, gt.spacing, tolerance)
        for i, v in enumerate(values):
            r = rows[names[v]]
            for k in worst:
                a, b = r[k], float(ref[k][i])
                if k == "hd95" and np.isnan(b) and r["pred_voxels"] == 0:
                    assert a == np.inf  # documented difference: a missed class is inf for us, NaN for MONAI
                    n_missed += 1
                    continue
                if np.isinf(b) or np.isnan(b):
                    assert a == b or (np.isnan(a) and np.isnan(b)), (how, names[v], k, a, b)
                    continue
                worst[k] = max(worst[k], abs(a - b))
        assert any(0.0 < r["nsd"] < 1.0 for r in rows.values())  # the tolerance makes NSD non-trivial
    print(f"\n{case_dir.name}: max |ours - MONAI| over {len(values)} classes x 3 perturbations: "
          + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()) + f"; {n_missed} classes eroded away")
    assert max(worst.values()) < 1e-3, worst


def gt_case_folders() -> dict[str, int]:
    """The case folders of ../shared/data (those holding a label map) -> number of named labels."""
    out = {}
    for p in sorted(DATA.iterdir()):
        if p.is_dir() and any(f.name.startswith("labels.") and not f.name.endswith(".json") for f in p.iterdir()):
            out[p.name] = len(json.loads((p / "labels.json").read_text()))
    return out


def test_cli_on_shared_data_writes_the_three_files(tmp_path, capsys):
    """Two of the shared cases predicted: the others are missing predictions and score Dice 0
    (nnU-Net's rule), so the class means fall; the sarcoma folders (no label map) are no cases."""
    from promptseg.cli import main

    pred = tmp_path / "pred"
    write_pred(pred, "ct_abdomen_small", CT, "erode")
    write_pred(pred, "ct_chest_lung_tumor", LUNG, "dilate")
    out = tmp_path / "out"
    assert main(["evaluate", str(pred), str(DATA), "-o", str(out), "--quiet", "--worst", "2"]) == 0
    printed = capsys.readouterr()
    print(printed.out)
    for name in ("metrics.csv", "summary.json", "report.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    cases = gt_case_folders()
    others = sorted(set(cases) - {"ct_abdomen_small", "ct_chest_lung_tumor"})
    assert others and not any(c.startswith("sts_") for c in cases)
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == sum(cases.values())  # every class of every GT case has its row
    assert {r["case"] for r in rows} == set(cases)
    missing_rows = [r for r in rows if r["case"] in others]
    assert {r["status"] for r in missing_rows} == {"missing prediction"}
    assert all(float(r["dice"]) == 0.0 and r["pred_voxels"] == "0" for r in missing_rows if int(r["gt_voxels"]) > 0)
    summary = json.loads((out / "summary.json").read_text())
    assert [m["case"] for m in summary["missing_cases"]] == others  # listed, and counted
    assert all(f"missing prediction: data/{c} (scored as an empty prediction: Dice 0)" in printed.err for c in others)
    assert summary["n_cases"] == len(cases)
    det = next(d for d in summary["detection"] if d["cls"] == "lung tumor")
    assert det["tp"] == 1 and det["sensitivity"] == 1.0 and det["specificity"] is None
    liver_rows = {r["case"]: r for r in rows if r["class"] == "liver"}
    small = float(liver_rows["ct_abdomen_small"]["dice"])
    assert 0.5 < small < 1.0 and liver_rows["ct_abdomen_small"]["status"] == "scored"
    assert {c for c, r in liver_rows.items() if r["status"] == "missing prediction"} == set(liver_rows) - {"ct_abdomen_small"}
    liver = next(e for e in summary["class_wise"] if e["class"] == "liver")
    assert liver["dice"]["n"] == len(liver_rows) >= 2
    assert liver["dice"]["mean"] == pytest.approx(small / len(liver_rows))  # the zeros are in the mean
    assert len(summary["worst_cases"]) == 2 and all((out / w["png"]).is_file() for w in summary["worst_cases"])
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 3 and "ct_abdomen_pelvis" in html

    # --allow-missing: the same two cases scored, the others listed but out of the means
    out2 = tmp_path / "out2"
    assert main(["evaluate", str(pred), str(DATA), "-o", str(out2), "--quiet", "--no-report", "--allow-missing"]) == 0
    err2 = capsys.readouterr().err
    assert all(f"missing prediction: data/{c} (left out of the means: --allow-missing)" in err2 for c in others)
    with open(out2 / "metrics.csv") as fh:
        rows2 = list(csv.DictReader(fh))
    assert len(rows2) == cases["ct_abdomen_small"] + cases["ct_chest_lung_tumor"]
    summary2 = json.loads((out2 / "summary.json").read_text())
    assert [m["case"] for m in summary2["missing_cases"]] == others
    liver2 = next(e for e in summary2["class_wise"] if e["class"] == "liver")
    assert liver2["dice"]["n"] == 1 and liver2["dice"]["mean"] == pytest.approx(small)


def test_region_wise_groups_the_41_classes_by_taxonomy_region(tmp_path):
    from promptseg.evaluation import evaluate_folders
    from promptseg.evaluation.labelmap import class_ref
    from promptseg.taxonomy import default_taxonomy

    tax = default_taxonomy()
    pred = tmp_path / "pred"
    write_pred(pred, "ct_abdomen_small", CT, "dilate")
    res = evaluate_folders(pred, CT, None, progress=False, report=False)  # the case folder itself as GT
    raw = json.loads((CT / "labels.json").read_text()).values()
    assert len(raw) == 41
    expected: dict[str, set[str]] = {}
    outside = set()
    for name in raw:
        ref = class_ref(name, tax)
        region = "lesion" if ref.kind == "lesion" else ref.region
        if tax.get(name) is None and not tax.is_group(name):
            region = "unknown"
            outside.add(ref.key)
        expected.setdefault(region, set()).add(ref.key)
    got = {e["region"]: set(e["classes"]) for e in res.summary["region_wise"]}
    assert got == expected
    assert sum(len(v) for v in got.values()) == 41
    assert "abdomen" in got and {"liver", "spleen", "left kidney", "postcava"} <= got["abdomen"]
    assert set(res.summary["outside_taxonomy"]) == outside
    assert "rib left 7" in outside and "vertebrae l1" in outside  # not (yet) in the taxonomy: listed as such
    for e in res.summary["region_wise"]:
        assert e["n_classes"] == len(e["classes"]) and 0.0 < e["dice"]["mean"] < 1.0
