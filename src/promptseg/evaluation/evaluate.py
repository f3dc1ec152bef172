"""Folders of predictions and ground truth -> metrics.csv, summary.json, report.html.

`evaluate_folders(pred_dir, gt_dir, out_dir)` is the Python API behind `promptseg evaluate`.
Cases are matched by name; a ground-truth case without a prediction is scored as an empty
prediction (DSC 0 for every class it holds, as nnU-Net counts it; status 'missing prediction')
unless `allow_missing`, which lists it without scoring it; extra predictions are listed; a pair
of folders without any matching case is an error. Label
values are mapped to classes through each folder's label JSON and the taxonomy, so a prediction
with 32 classes can be scored against a dataset that annotates 2. Only the ground truth's classes
are scored; one the prediction does not name is reported as 'not predicted' (not as 0).
See `metrics` for the empty-mask conventions and `labelmap` for organ + lesion masks.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .._version import __version__
from ..errors import ConfigError, InputError
from ..taxonomy import Taxonomy, default_taxonomy
from ..io.atomic import atomic_write
from ..io import read_image, read_label
from .aggregate import class_wise, dataset_wise, overall, region_wise, write_csv
from .cases import CaseFile, find_cases
from .columns import MISSING, NOT_PREDICTED, ROW_COLUMNS, SCORED
from .detection import DetectionCase, lesion_counts, summarize
from .labelmap import LabelMap, class_ref, union_boxes
from .metrics import all_metrics, empty_score_value
from .report import overlay_png, write_report



@dataclass
class EvaluationSettings:
    """Every choice that changes a number; all of it is written into summary.json."""

    tolerance_mm: float = 1.0  # NSD tolerance (SAT: 1 mm); per-class overrides below
    class_tolerance_mm: dict[str, float] = field(default_factory=dict)
    empty_score: str = "nan"  # DSC/NSD when both masks are empty: 'nan' (not scored) or 'one'
    percentile: float = 95.0  # HD percentile
    detect: tuple[str, ...] = ()  # classes for detection besides the taxonomy's lesions
    detect_threshold_mm3: float = 0.0  # predicted volume above which a case is called positive
    class_detect_threshold_mm3: dict[str, float] = field(default_factory=dict)
    lesion_overlap_voxels: int = 1  # overlap for a true lesion to count as found
    include_children: bool = True  # organ masks include their lesions/vessels (taxonomy parent)
    lesions_separate: bool = True  # region-wise: lesions form their own region (SAT)
    worst_n: int = 5  # worst (case, class) pairs drawn in the report
    report: bool = True
    allow_missing: bool = False  # True: a GT case without prediction is listed, not scored (else Dice 0)


@dataclass
class EvaluationResult:
    rows: list[dict]
    summary: dict
    files: dict[str, Path]


def _validate(s: EvaluationSettings) -> None:
    """Bad settings fail before any file is read, with a one-line message."""
    def finite_nonneg(v) -> bool:
        return isinstance(v, (int, float)) and math.isfinite(v) and v >= 0

    problems = []
    if s.empty_score not in ("nan", "one"):
        problems.append(f"empty_score must be 'nan' or 'one', got {s.empty_score!r}")
    if not finite_nonneg(s.tolerance_mm):
        problems.append(f"NSD tolerance must be a number >= 0 mm, got {s.tolerance_mm!r}")
    for k, v in s.class_tolerance_mm.items():
        if not finite_nonneg(v):
            problems.append(f"NSD tolerance of {k!r} must be a number >= 0 mm, got {v!r}")
    if not (isinstance(s.percentile, (int, float)) and 0 <= s.percentile <= 100):
        problems.append(f"percentile must be in [0, 100], got {s.percentile!r}")
    for k, v in {"(default)": s.detect_threshold_mm3, **s.class_detect_threshold_mm3}.items():
        if not finite_nonneg(v):
            problems.append(f"detection threshold {k} must be a volume >= 0 mm^3, got {v!r}")
    if not (isinstance(s.lesion_overlap_voxels, int) and s.lesion_overlap_voxels >= 1):
        problems.append(f"lesion_overlap_voxels must be an integer >= 1, got {s.lesion_overlap_voxels!r}")
    if problems:
        raise ConfigError("evaluation settings: " + "; ".join(problems))


def _keyed(mapping: dict[str, float], taxonomy: Taxonomy) -> dict[str, float]:
    return {class_ref(k, taxonomy).key: float(v) for k, v in mapping.items()}


def _read_pair(pred: CaseFile, gt: CaseFile):
    g = read_label(gt.path)
    p = read_label(pred.path, reference=g)
    return p, g


def _score_case(pred: CaseFile | None, gt: CaseFile, dataset: str, s: EvaluationSettings, taxonomy: Taxonomy,
                tolerances: dict[str, float], thresholds: dict[str, float], detect_keys: set[str]):
    """Rows of one case; `pred` None (a missing prediction) scores an empty map naming every GT class."""
    if pred is None:
        gv = read_label(gt.path)
        pv = gv.with_array(np.zeros(gv.shape, np.uint8))
        pred_labels, pred_path, status = gt.labels, gt.path, MISSING
    else:
        pv, gv = _read_pair(pred, gt)
        pred_labels, pred_path, status = pred.labels, pred.path, SCORED
    spacing = gv.spacing
    gmap = LabelMap(gv.array, gt.labels, spacing, taxonomy, gt.path, s.include_children)
    pmap = LabelMap(pv.array, pred_labels, spacing, taxonomy, pred_path, s.include_children)
    empty = empty_score_value(s.empty_score)
    rows, det = [], []
    for key in gmap.keys:
        ref = gmap.refs[key]
        tol = tolerances.get(key, s.tolerance_mm)
        row = {
            "dataset": dataset, "case": gt.case, "class": key, "gt_name": ref.raw,
            "pred_name": pmap.refs[key].raw if key in pmap.refs and pred is not None else "",
            "region": ref.region, "kind": ref.kind, "in_taxonomy": ref.in_taxonomy, "tolerance_mm": tol,
        }
        if not pmap.can_score(key, ref.group):
            row["status"] = NOT_PREDICTED
            rows.append(row)
            continue
        box = union_boxes([gmap.box(gmap.involved_values(key, ref.group)),
                           pmap.box(pmap.involved_values(key, ref.group))], gv.shape, margin=1)
        if box is None:  # both empty: score on one background voxel, same conventions
            gm = pm = np.zeros((1, 1, 1), dtype=bool)
        else:
            gm, pm = gmap.mask(key, box, ref.group), pmap.mask(key, box, ref.group)
        row.update(all_metrics(pm, gm, spacing, tolerance=tol, empty_score=empty, percentile=s.percentile))
        row.update(status=status, gt_voxels=int(gm.sum()), pred_voxels=int(pm.sum()))
        rows.append(row)
        if ref.kind == "lesion" or key in detect_keys:
            det.append(DetectionCase(dataset, gt.case, key, row["volume_gt_mm3"], row["volume_pred_mm3"],
                                     thresholds.get(key, s.detect_threshold_mm3),
                                     lesion_counts(pm, gm, min_overlap_voxels=s.lesion_overlap_voxels)))
    unlabelled = {"gt": gmap.unlabelled_values(), "pred": pmap.unlabelled_values() if pred is not None else []}
    return rows, det, unlabelled


def json_safe(obj):
    """NaN and +-inf become null (JSON has neither); tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    return obj


def _worst(rows: Sequence[dict], n: int) -> list[dict]:
    cand = [r for r in rows if r.get("status") == SCORED and math.isfinite(r.get("dice", math.nan))
            and (r.get("gt_voxels", 0) or r.get("pred_voxels", 0))]
    cand.sort(key=lambda r: (r["dice"], r.get("nsd", 0.0) if math.isfinite(r.get("nsd", math.nan)) else 0.0))
    return cand[:n]


def _some(names: set[str], n: int = 3) -> str:
    """'3 cases: a, b, c' / '40 cases: a, b, c, ...' for a one-line message."""
    shown = sorted(names)[:n]
    return f"{len(names)} case{'s' if len(names) != 1 else ''}: " + ", ".join(shown) + (", ..." if len(names) > n else "")


def evaluate_pairs(
    pairs: Sequence[tuple[str | Path, str | Path] | tuple[str | Path, str | Path, str | None]],
    out_dir: str | Path | None = None,
    settings: EvaluationSettings | None = None,
    taxonomy: Taxonomy | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate one or more (pred_dir, gt_dir[, dataset_name]) pairs together (one dataset each)."""
    from tqdm.auto import tqdm

    s = settings or EvaluationSettings()
    _validate(s)
    tax = taxonomy or default_taxonomy()
    tolerances = _keyed(s.class_tolerance_mm, tax)
    thresholds = _keyed(s.class_detect_threshold_mm3, tax)
    detect_keys = {class_ref(n, tax).key for n in s.detect}

    jobs, datasets_info, missing, extra = [], [], [], []
    for pair in pairs:
        pred_dir, gt_dir = Path(pair[0]), Path(pair[1])
        name = pair[2] if len(pair) > 2 else None
        gt = find_cases(gt_dir, dataset=name)
        pred = find_cases(pred_dir)
        ds = gt.dataset
        gt_names, pred_names = set(gt.cases), set(pred.cases)
        miss, ext = sorted(gt_names - pred_names), sorted(pred_names - gt_names)
        missing += [{"dataset": ds, "case": c} for c in miss]
        extra += [{"dataset": ds, "case": c} for c in ext]
        datasets_info.append({"dataset": ds, "pred_dir": str(pred_dir), "gt_dir": str(gt_dir),
                              "n_gt_cases": len(gt_names), "n_pred_cases": len(pred_names),
                              "n_matched": len(gt_names & pred_names), "missing_cases": miss, "extra_cases": ext})
        if not gt_names & pred_names:
            raise InputError(pred_dir, f"no prediction matches a ground-truth case of {gt_dir} "
                                       f"({_some(gt_names)} there; {_some(pred_names)} here)")
        jobs += [(ds, pred.cases.get(c), gt.cases[c]) for c in sorted(gt_names if not s.allow_missing else gt_names & pred_names)]

    rows, det_cases, unlabelled = [], [], []
    for ds, pc, gc in tqdm(jobs, desc="evaluate", unit="case", disable=not progress):
        r, d, u = _score_case(pc, gc, ds, s, tax, tolerances, thresholds, detect_keys)
        rows += r
        det_cases += d
        for side, vals in u.items():
            if vals:
                unlabelled.append({"dataset": ds, "case": gc.case, "side": side, "values": vals,
                                   "file": str((gc if side == "gt" else pc).path)})

    summary = build_summary(rows, det_cases, s, datasets_info, missing, extra, unlabelled)
    files: dict[str, Path] = {}
    if out_dir is not None:
        out = Path(out_dir)
        files["metrics.csv"] = write_csv(rows, out / "metrics.csv", ROW_COLUMNS)
        if s.report and s.worst_n > 0:
            summary["worst_cases"] = _draw_worst(rows, jobs, s.worst_n, out, tax, s.include_children)
        files["summary.json"] = atomic_write(out / "summary.json", json.dumps(json_safe(summary), indent=1) + "\n")
        if s.report:
            files["report.html"] = write_report(summary, rows, out / "report.html")
    return EvaluationResult(rows, summary, files)


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, out_dir: str | Path | None = None, *,
                     dataset: str | None = None, settings: EvaluationSettings | None = None,
                     taxonomy: Taxonomy | None = None, progress: bool = True, **overrides) -> EvaluationResult:
    """Score a prediction folder against a ground-truth folder; write the three files to `out_dir`.

    Keyword `overrides` are `EvaluationSettings` fields (e.g. tolerance_mm=2.0, empty_score='one').
    """
    s = settings or EvaluationSettings()
    if overrides:
        unknown = set(overrides) - set(EvaluationSettings.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown evaluation settings: {sorted(unknown)}")
        s = EvaluationSettings(**{**asdict(s), **overrides})
    return evaluate_pairs([(pred_dir, gt_dir, dataset)], out_dir, s, taxonomy, progress)


def build_summary(rows, det_cases: Iterable[DetectionCase], s: EvaluationSettings, datasets_info, missing, extra,
                  unlabelled) -> dict:
    classes = class_wise(rows)
    not_pred: dict[tuple[str, str], int] = {}
    for r in rows:
        if r["status"] == NOT_PREDICTED:
            not_pred[(r["dataset"], r["class"])] = not_pred.get((r["dataset"], r["class"]), 0) + 1
    outside = sorted({r["class"] for r in rows if not r["in_taxonomy"]})
    return {
        "promptseg_version": __version__,
        "settings": asdict(s),
        "conventions": {
            "both_empty": f"DSC and NSD = {s.empty_score}; HD95 and MSD = NaN (null here)",
            "one_empty": "DSC = NSD = 0; HD95 = MSD = inf (null here, 'inf' in metrics.csv, left out of means and counted as n_inf)",
            "surface": "inner 6-connected boundary voxels; Euclidean voxel-centre distances in mm (MONAI conventions)",
            "organ_masks": "include voxels of lesions/vessels whose taxonomy parent is the organ" if s.include_children else "own label values only",
            "class_wise": "mean within each dataset, then mean over datasets; std over all cases",
            "region_wise": "mean/std over class-wise means; lesions as region 'lesion'" if s.lesions_separate else "mean/std over class-wise means",
            "dataset_wise": "mean/std over the dataset's per-class means",
            "missing_prediction": "listed in missing_cases, not scored (allow_missing)" if s.allow_missing
            else "scored as an empty prediction (DSC = NSD = 0 where the GT has the class), status 'missing prediction'",
        },
        "datasets": datasets_info,
        "n_cases": len({(r["dataset"], r["case"]) for r in rows}),
        "n_rows": len(rows),
        "missing_cases": missing,
        "extra_cases": extra,
        "not_predicted": [{"dataset": d, "class": c, "n_cases": n} for (d, c), n in sorted(not_pred.items())],
        "outside_taxonomy": outside,
        "unlabelled_values": unlabelled,
        "overall": overall(classes),
        "class_wise": classes,
        "region_wise": region_wise(classes, lesions_separate=s.lesions_separate),
        "dataset_wise": dataset_wise(rows),
        "detection": [d.as_dict() for d in summarize(det_cases)],
    }


def _draw_worst(rows, jobs, n, out: Path, taxonomy: Taxonomy, include_children: bool) -> list[dict]:
    """Render three orthogonal slices (pred and GT contours) for the n lowest-Dice rows."""
    files = {(ds, gc.case): (pc, gc) for ds, pc, gc in jobs}
    out_list = []
    for i, r in enumerate(_worst(rows, n), start=1):
        pc, gc = files[(r["dataset"], r["case"])]
        pv, gv = _read_pair(pc, gc)
        gmap = LabelMap(gv.array, gc.labels, gv.spacing, taxonomy, gc.path, include_children)
        pmap = LabelMap(pv.array, pc.labels, gv.spacing, taxonomy, pc.path, include_children)
        full = tuple(slice(0, d) for d in gv.shape)
        group = gmap.refs[r["class"]].group
        gm, pm = gmap.mask(r["class"], full, group), pmap.mask(r["class"], full, group)
        image = None
        if gc.image is not None:
            try:
                iv = read_image(gc.image)
                if iv.shape[:3] == gv.shape[:3]:
                    image = np.asarray(iv.array, dtype=np.float32)
            except InputError as exc:
                print(f"promptseg: note: no background image for {gc.case}: {exc}", file=sys.stderr)
        title = f"{r['case']} / {r['class']}: DSC {r['dice']:.3f}, NSD {r['nsd']:.3f}"
        png = overlay_png(gm, pm, gv.spacing, image=image, title=title, direction=gv.direction)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{r['case']}_{r['class']}")
        path = atomic_write(out / "figures" / f"worst_{i:02d}_{safe}.png", png)
        out_list.append({k: r[k] for k in ("dataset", "case", "class", "dice", "nsd", "hd95")} | {"png": str(path.relative_to(out))})
    return out_list
