"""The per case x class table: its columns, row states and how a cell value is spelled.

Shared by the evaluator (which fills rows), the CSV writer and the HTML report (which read them),
so none of those imports another for a constant.
"""
from __future__ import annotations

import math
from typing import Callable

ROW_COLUMNS = (
    "dataset", "case", "class", "gt_name", "pred_name", "region", "kind", "in_taxonomy", "status",
    "tolerance_mm", "dice", "nsd", "hd95", "msd", "volume_gt_mm3", "volume_pred_mm3",
    "volume_diff_mm3", "volume_rel_diff", "gt_voxels", "pred_voxels",
)
NUMERIC_COLUMNS = ROW_COLUMNS[9:]
SCORED, NOT_PREDICTED, MISSING = "scored", "not predicted", "missing prediction"
#: row states that enter the means: a missing prediction scores as an empty one (nnU-Net's rule)
COUNTED = (SCORED, MISSING)


def spell(v, *, none: str, yes_no: tuple[str, str], nan: str, infinite: Callable[[float], str],
          number: Callable[[float], str], other: Callable[[object], str] = str) -> str:
    """A cell value as text, each kind (None, bool, NaN, +-inf, finite float, other) its own way."""
    if v is None:
        return none
    if isinstance(v, bool):
        return yes_no[0] if v else yes_no[1]
    if isinstance(v, float):
        if math.isnan(v):
            return nan
        return number(v) if math.isfinite(v) else infinite(v)
    return other(v)
