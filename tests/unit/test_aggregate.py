"""Class-wise (macro over datasets), region-wise and dataset-wise averages; CSV round trip."""
from __future__ import annotations

import math

import numpy as np
import pytest

from promptseg.evaluation import aggregate as A


def row(ds, case, cls, dice, nsd=None, region="abdomen", kind="organ", in_tax=True, status="scored", hd95=1.0):
    return {"dataset": ds, "case": case, "class": cls, "region": region, "kind": kind, "in_taxonomy": in_tax,
            "status": status, "dice": dice, "nsd": dice if nsd is None else nsd, "hd95": hd95, "msd": 0.5,
            "volume_diff_mm3": 0.0}


@pytest.fixture
def rows():
    return [
        # liver: dataset A has three cases (mean 0.8), dataset B one (0.6) -> macro 0.7, pooled 0.75
        row("A", "a1", "liver", 0.9), row("A", "a2", "liver", 0.8), row("A", "a3", "liver", 0.7),
        row("B", "b1", "liver", 0.6),
        # spleen only in A; one case has nothing to score (both empty -> NaN), one missed (inf HD)
        row("A", "a1", "spleen", 0.5), row("A", "a2", "spleen", math.nan, hd95=math.nan),
        row("A", "a3", "spleen", 0.0, hd95=math.inf),
        row("B", "b1", "left lung", 0.95, region="thorax"),
        row("B", "b1", "liver tumor", 0.4, kind="lesion"),
        row("B", "b1", "rib left 7", 0.3, region="unknown", kind="unknown", in_tax=False),
        row("B", "b1", "gall bladder", math.nan, status="not predicted"),
    ]


def by(entries, key, name):
    (e,) = [x for x in entries if x[key] == name]
    return e


def test_class_wise_is_macro_over_datasets(rows):
    cw = A.class_wise(rows)
    liver = by(cw, "class", "liver")
    assert liver["dice"]["mean"] == pytest.approx(0.7)  # (0.8 + 0.6) / 2, not 0.75
    assert liver["dice"]["std"] == pytest.approx(np.std([0.9, 0.8, 0.7, 0.6]))  # over cases
    assert liver["n_cases"] == 4 and liver["n_datasets"] == 2 and liver["dice"]["n"] == 4
    spleen = by(cw, "class", "spleen")
    assert spleen["dice"]["mean"] == pytest.approx(0.25) and spleen["dice"]["n"] == 2
    assert spleen["hd95"] == {"mean": 1.0, "std": 0.0, "n": 1, "n_inf": 1}
    # a class that was not predicted is not averaged as 0
    assert "gall bladder" not in {e["class"] for e in cw}


def test_region_wise_groups_class_means(rows):
    cw = A.class_wise(rows)
    rw = A.region_wise(cw)
    regions = [e["region"] for e in rw]
    assert regions == ["abdomen", "lesion", "thorax", "unknown"]  # unknown last
    ab = by(rw, "region", "abdomen")
    assert ab["classes"] == ["liver", "spleen"]
    assert ab["dice"]["mean"] == pytest.approx((0.7 + 0.25) / 2)
    assert ab["dice"]["std"] == pytest.approx(np.std([0.7, 0.25]))
    assert by(rw, "region", "lesion")["classes"] == ["liver tumor"]
    assert by(rw, "region", "unknown")["classes"] == ["rib left 7"]
    # lesions inside their organ's region when asked
    rw2 = A.region_wise(cw, lesions_separate=False)
    assert "liver tumor" in by(rw2, "region", "abdomen")["classes"]


def test_dataset_wise_and_overall(rows):
    dw = A.dataset_wise(rows)
    a = by(dw, "dataset", "A")
    assert a["n_cases"] == 3 and a["n_classes"] == 2
    assert a["dice"]["mean"] == pytest.approx((0.8 + 0.25) / 2)
    b = by(dw, "dataset", "B")
    assert b["n_classes"] == 4  # the not-predicted class is not counted
    assert b["dice"]["mean"] == pytest.approx(np.mean([0.6, 0.95, 0.4, 0.3]))
    ov = A.overall(A.class_wise(rows))
    assert ov["n_classes"] == 5
    assert ov["dice"]["mean"] == pytest.approx(np.mean([0.7, 0.25, 0.95, 0.4, 0.3]))


def test_mean_std_ignores_nan_counts_inf():
    s = A.mean_std([1.0, math.nan, math.inf, 3.0, "", None])
    assert s == {"mean": 2.0, "std": 1.0, "n": 2, "n_inf": 1}
    e = A.mean_std([math.nan])
    assert math.isnan(e["mean"]) and e["n"] == 0


def test_csv_round_trip(rows, tmp_path):
    cols = ("dataset", "case", "class", "status", "dice", "hd95")
    path = A.write_csv(rows, tmp_path / "m.csv", cols)
    text = path.read_text().splitlines()
    assert text[0] == ",".join(cols)
    assert "inf" in text[7] and "nan" in text[6]
    back = A.read_csv(path, numeric=("dice", "hd95"))
    assert len(back) == len(rows)
    assert back[0]["dice"] == 0.9 and math.isinf(back[6]["hd95"]) and math.isnan(back[5]["dice"])
    # re-aggregating the file gives the same class-wise means
    for r, orig in zip(back, rows):
        r.update(region=orig["region"], kind=orig["kind"], in_taxonomy=orig["in_taxonomy"])
    assert by(A.class_wise(back, ("dice",)), "class", "liver")["dice"]["mean"] == pytest.approx(0.7)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file
