"""From the per case x class table to the averages the papers report (SAT §8.3).

- class-wise: for each class, the mean within each dataset, then the mean over datasets (macro, so
  a dataset with many cases does not dominate); the std is over all scored cases of the class.
- region-wise: the mean (and std) over the class-wise means of the classes of one body region
  (taxonomy `region`); lesion classes form their own 'lesion' region as in SAT, and classes
  outside the taxonomy fall in 'unknown'.
- dataset-wise: for each dataset, the mean (and std) over its classes of the per-class means.
NaN values (nothing to score, e.g. both masks empty) and infinite distances (one mask empty) are
left out of means; each summary keeps `n` (values used) and `n_inf` (infinite ones left out).
Plain Python + numpy + csv: no pandas.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..io.atomic import atomic_write
from .columns import COUNTED, SCORED, spell

SUMMARY_METRICS = ("dice", "nsd", "hd95", "msd", "volume_diff_mm3")
LESION_REGION = "lesion"
UNKNOWN_REGION = "unknown"

Row = dict


def _floats(values: Iterable) -> list[float]:
    out = []
    for v in values:
        if v is None or v == "":
            continue
        out.append(float(v))
    return out


def mean_std(values: Iterable) -> dict:
    """{'mean', 'std', 'n', 'n_inf'} over the finite values (population std; NaN when n == 0)."""
    vals = _floats(values)
    finite = [v for v in vals if math.isfinite(v)]
    n_inf = sum(math.isinf(v) for v in vals)
    if not finite:
        return {"mean": math.nan, "std": math.nan, "n": 0, "n_inf": n_inf}
    arr = np.asarray(finite, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size), "n_inf": n_inf}


def _mean(values: Iterable) -> float:
    return mean_std(values)["mean"]


def scored(rows: Iterable[Row]) -> list[Row]:
    """Rows that enter the means: scored, or a missing prediction scored as empty (not 'not predicted')."""
    return [r for r in rows if r.get("status", SCORED) in COUNTED]


def region_of(entry: Row, lesions_separate: bool = True) -> str:
    """The region bucket of a class: its taxonomy region, 'lesion' for lesions, 'unknown' outside."""
    if not _truthy(entry.get("in_taxonomy", True)):
        return UNKNOWN_REGION
    if lesions_separate and entry.get("kind") == "lesion":
        return LESION_REGION
    return entry.get("region") or UNKNOWN_REGION


def _truthy(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes")
    return bool(v)


def _group(rows: Iterable[Row], *keys: str) -> dict[tuple, list[Row]]:
    out: dict[tuple, list[Row]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def class_wise(rows: Iterable[Row], metrics: Sequence[str] = SUMMARY_METRICS) -> list[dict]:
    """One entry per class: macro mean over datasets, std over cases, counts."""
    rows = scored(rows)
    out = []
    for (cls,), items in sorted(_group(rows, "class").items()):
        first = items[0]
        per_ds = _group(items, "dataset")
        entry = {
            "class": cls,
            "region": first.get("region"),
            "kind": first.get("kind"),
            "in_taxonomy": _truthy(first.get("in_taxonomy", True)),
            "n_cases": len(items),
            "n_datasets": len(per_ds),
            "datasets": sorted(k[0] for k in per_ds),
        }
        for m in metrics:
            pooled = mean_std(r.get(m) for r in items)
            ds_means = [_mean(r.get(m) for r in its) for its in per_ds.values()]
            finite = [v for v in ds_means if math.isfinite(v)]
            pooled["mean"] = float(np.mean(finite)) if finite else math.nan
            entry[m] = pooled
        out.append(entry)
    return out


def region_wise(class_table: Sequence[dict], metrics: Sequence[str] = SUMMARY_METRICS, lesions_separate: bool = True) -> list[dict]:
    """One entry per body region: mean and std over the class-wise means of its classes."""
    groups: dict[str, list[dict]] = {}
    for e in class_table:
        groups.setdefault(region_of(e, lesions_separate), []).append(e)
    out = []
    for region in sorted(groups, key=lambda r: (r == UNKNOWN_REGION, r)):
        items = groups[region]
        entry = {
            "region": region,
            "n_classes": len(items),
            "classes": sorted(e["class"] for e in items),
            "n_cases": sum(e["n_cases"] for e in items),
        }
        for m in metrics:
            entry[m] = mean_std(e[m]["mean"] for e in items if m in e)
        out.append(entry)
    return out


def dataset_wise(rows: Iterable[Row], metrics: Sequence[str] = SUMMARY_METRICS) -> list[dict]:
    """One entry per dataset: mean and std over its classes of the per-class case means."""
    rows = scored(rows)
    out = []
    for (ds,), items in sorted(_group(rows, "dataset").items()):
        per_class = _group(items, "class")
        entry = {
            "dataset": ds,
            "n_cases": len({r["case"] for r in items}),
            "n_classes": len(per_class),
        }
        for m in metrics:
            entry[m] = mean_std(_mean(r.get(m) for r in its) for its in per_class.values())
        out.append(entry)
    return out


def overall(class_table: Sequence[dict], metrics: Sequence[str] = SUMMARY_METRICS) -> dict:
    """Mean over all classes of the class-wise means (SAT's 'average over all classes')."""
    entry = {"n_classes": len(class_table)}
    for m in metrics:
        entry[m] = mean_std(e[m]["mean"] for e in class_table if m in e)
    return entry


# --- the per case x class table as CSV -------------------------------------------------------
def _cell(v) -> str:
    return spell(v, none="", yes_no=("true", "false"), nan="nan", infinite=lambda x: "inf" if x > 0 else "-inf", number=repr)


def table_to_csv(rows: Sequence[Row], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def write_csv(rows: Sequence[Row], path: str | Path, columns: Sequence[str]) -> Path:
    """Write the table atomically; NaN is 'nan', infinite distances 'inf', empty cells ''."""
    return atomic_write(path, table_to_csv(rows, columns))


def read_csv(path: str | Path, numeric: Sequence[str] = ()) -> list[Row]:
    """Read a table written by `write_csv`; columns in `numeric` become floats ('' -> NaN)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for c in numeric:
            if c in r:
                r[c] = float(r[c]) if r[c] not in ("", None) else math.nan
    return rows
