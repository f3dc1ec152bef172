"""`promptseg evaluate PRED GT [PRED2 GT2 ...] [-o OUT]`: a thin layer over `evaluate_pairs`."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..errors import InputError


def _name_value(text: str, what: str) -> tuple[str, float]:
    """'liver tumor=100' -> ('liver tumor', 100.0)."""
    name, sep, value = text.rpartition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must look like 'CLASS=NUMBER', got {text!r}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score predictions against ground truth (DSC, NSD, HD95, detection) and write a report",
        description="Match cases by name, map label values to classes through the folders' label JSONs and the "
        "taxonomy, and write metrics.csv (per case x class), summary.json and report.html. Several "
        "PRED GT pairs (one dataset each) give dataset-wise and macro class-wise averages.",
    )
    p.add_argument("folders", nargs="+", metavar="PRED GT", help="prediction folder and ground-truth folder (pairs)")
    p.add_argument("-o", "--out", default=None, help="output folder (default: PRED/evaluation)")
    p.add_argument("--tolerance", type=float, default=1.0, metavar="MM", help="NSD tolerance in mm (default 1, as SAT)")
    p.add_argument("--class-tolerance", action="append", default=[], metavar="CLASS=MM",
                   type=lambda s: _name_value(s, "--class-tolerance"), help="per-class NSD tolerance (repeatable)")
    p.add_argument("--empty-score", choices=("nan", "one"), default="nan",
                   help="DSC/NSD when prediction and ground truth are both empty (default nan = not scored)")
    p.add_argument("--percentile", type=float, default=95.0, help="Hausdorff percentile (default 95)")
    p.add_argument("--detect", action="append", default=[], metavar="CLASS",
                   help="also report detection for this class (taxonomy lesions always are)")
    p.add_argument("--detect-threshold", type=float, default=0.0, metavar="MM3",
                   help="predicted volume (mm^3) above which a case counts as positive (default 0 = any voxel)")
    p.add_argument("--class-detect-threshold", action="append", default=[], metavar="CLASS=MM3",
                   type=lambda s: _name_value(s, "--class-detect-threshold"), help="per-class detection threshold (repeatable)")
    p.add_argument("--dataset", action="append", default=[], metavar="NAME",
                   help="dataset name for each pair, in order (default: dataset.json 'name' or the GT folder name)")
    p.add_argument("--no-children", action="store_true",
                   help="score organs by their own label values only (default: include their lesions/vessels)")
    p.add_argument("--lesions-in-regions", action="store_true",
                   help="region-wise: keep lesions in their organ's region instead of a separate 'lesion' region")
    p.add_argument("--worst", type=int, default=5, metavar="N", help="draw the N lowest-Dice (case, class) pairs (default 5)")
    p.add_argument("--no-report", action="store_true", help="write metrics.csv and summary.json only")
    p.add_argument("--allow-missing", action="store_true",
                   help="leave ground-truth cases without a prediction out of the means (default: they score Dice 0, as in nnU-Net)")
    p.add_argument("--strict", action="store_true", help="exit with status 3 when cases are missing or extra")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _fmt(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None or math.isnan(stat["mean"]):
        return "   -   "
    return f"{stat['mean']:.3f}±{stat['std']:.3f}"


def run(args) -> int:
    from .evaluate import EvaluationSettings, evaluate_pairs

    if len(args.folders) % 2:
        raise InputError(None, f"evaluate needs PRED GT pairs; got {len(args.folders)} folder(s)")
    pairs = [(args.folders[i], args.folders[i + 1]) for i in range(0, len(args.folders), 2)]
    if args.dataset and len(args.dataset) != len(pairs):
        raise InputError(None, f"--dataset given {len(args.dataset)} time(s) for {len(pairs)} PRED GT pair(s)")
    names = args.dataset or [None] * len(pairs)
    pairs = [(p, g, n) for (p, g), n in zip(pairs, names)]
    settings = EvaluationSettings(
        tolerance_mm=args.tolerance,
        class_tolerance_mm=dict(args.class_tolerance),
        empty_score=args.empty_score,
        percentile=args.percentile,
        detect=tuple(args.detect),
        detect_threshold_mm3=args.detect_threshold,
        class_detect_threshold_mm3=dict(args.class_detect_threshold),
        include_children=not args.no_children,
        lesions_separate=not args.lesions_in_regions,
        worst_n=args.worst,
        report=not args.no_report,
        allow_missing=args.allow_missing,
    )
    out = Path(args.out) if args.out else Path(pairs[0][0]) / "evaluation"
    res = evaluate_pairs(pairs, out, settings, progress=not args.quiet)
    s = res.summary
    print(f"{s['n_cases']} cases, {len(s['class_wise'])} classes scored; NSD tolerance {args.tolerance:g} mm")
    print(f"{'class':<34} {'region':<10} {'n':>3}  {'DSC':<12} {'NSD':<12}")
    for e in s["class_wise"]:
        print(f"{e['class'][:34]:<34} {str(e['region'])[:10]:<10} {e['n_cases']:>3}  {_fmt(e['dice']):<12} {_fmt(e['nsd']):<12}")
    print("region-wise:")
    for e in s["region_wise"]:
        print(f"  {e['region']:<12} {e['n_classes']:>3} classes  DSC {_fmt(e['dice'])}  NSD {_fmt(e['nsd'])}")
    print(f"overall (mean over classes): DSC {_fmt(s['overall']['dice'])}  NSD {_fmt(s['overall']['nsd'])}")
    for d in s["detection"]:
        print(f"detection {d['cls']}: sensitivity {d['sensitivity']:.3f} ({d['tp']}/{d['n_positive']}), "
              f"specificity {d['specificity']:.3f} ({d['tn']}/{d['n_negative']}), harmonic mean {d['harmonic_mean']:.3f}")
    detected = {d["cls"] for d in s["detection"]}
    scored_classes = {e["class"] for e in s["class_wise"]}
    for name in args.detect:
        from ..taxonomy import default_taxonomy
        from .labelmap import class_ref

        key = class_ref(name, default_taxonomy()).key
        if key not in detected:
            why = "scored but" if key in scored_classes else "not in any ground truth's label set, so"
            print(f"note: --detect {name!r}: {why} no detection computed", file=sys.stderr)
    problems = 0
    why = "left out of the means: --allow-missing" if args.allow_missing else "scored as an empty prediction: Dice 0"
    for key, what, note in (("missing_cases", "missing prediction", f" ({why})"), ("extra_cases", "prediction without ground truth", "")):
        for m in s[key]:
            print(f"{what}: {m['dataset']}/{m['case']}{note}", file=sys.stderr)
            problems += 1
    for m in s["not_predicted"]:
        print(f"not predicted: {m['dataset']}/{m['class']} ({m['n_cases']} cases)", file=sys.stderr)
    if s["outside_taxonomy"]:
        print(f"outside the taxonomy ({len(s['outside_taxonomy'])}): {', '.join(s['outside_taxonomy'])}")
    for name, path in res.files.items():
        print(f"wrote {path}")
    return 3 if (args.strict and problems) else 0
