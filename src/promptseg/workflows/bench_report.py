"""The bench's tables: Dice per method and class (mean +- sd over seeds) with every flagged class
marked, then the prompt diagnostics behind the flags (see evaluation/prompt_diagnostics.py).

Why a module of its own: bench.py runs the comparison; this only turns its results into text, so
the layout can be tested on hand-made results without training anything.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..evaluation.prompt_diagnostics import PRUNED_RATIO


def fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def finite_mean(values) -> float:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else math.nan


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample sd of the finite values (sd NaN for fewer than two)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan)


def _cell(values: Sequence[float], seeds: int) -> str:
    m, sd = mean_sd(values)
    return fmt(m) if seeds == 1 or not math.isfinite(sd) else f"{fmt(m)} ± {fmt(sd)}"


def by_method(rows: Sequence[Any]) -> dict[str, list[Any]]:
    """Method -> its rows (one per seed), in the order the methods ran."""
    out: dict[str, list[Any]] = {}
    for r in rows:
        out.setdefault(r.method, []).append(r)
    return out


def class_flags(runs: Sequence[Any], cls: str) -> list[str]:
    """Flags of one class over a method's seeds: 'dead' (or 'dead 2/3' when not every seed)."""
    counts: dict[str, int] = {}
    for r in runs:
        for f in (r.diagnostics.get(cls) or {}).get("flags", []):
            counts[f] = counts.get(f, 0) + 1
    return [f if n == len(runs) else f"{f} {n}/{len(runs)}" for f, n in counts.items()]


def format_table(suite, rows: Sequence[Any], command: str = "", machine: str = "",
                 pruned_ratio: float = PRUNED_RATIO) -> str:
    """Markdown: title, note, command, then method | params (M) | s/step | s/volume | Dice... |
    mean Dice | flags, and the prompt-diagnostics table when the rows carry diagnostics.
    `pruned_ratio`: the one the rows were flagged with (bench.yaml's `diagnostics`), for the legend."""
    classes = list(dict.fromkeys(c for r in rows for c in r.dice))
    methods = by_method(rows)
    seeds = max((len(v) for v in methods.values()), default=1)
    head = ["method", "params (M)", "s/step", "s/volume", *classes, "mean Dice", "flags"]
    lines = [f"### {suite.title}", "", suite.note, ""]
    if rows:
        per = f", mean ± sd over {seeds} seeds" if seeds > 1 else ""
        lines += [f"Same seed{'s' if seeds > 1 else ''}, step budget ({rows[0].steps} steps) and run YAML for every "
                  f"method; only `conditioner:` (and so each method's own training recipe) differs. Dice per class on "
                  f"the scored set{per}; timings on this machine. Flags: blind = the prompt explains under the "
                  f"threshold share of the class's logit variance; dead = the class's own voxels get a mean logit "
                  f"below the decision logit; pruned = the written masks score under {pruned_ratio:g} x the network's raw Dice "
                  f"(post-processing removed what it found).", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    if machine:
        lines += [machine, ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 2) + ["---"]) + "|")
    for method, runs in methods.items():
        cells = [method, f"{runs[0].params / 1e6:.2f}", fmt(finite_mean(r.seconds_per_step for r in runs), 2),
                 fmt(finite_mean(r.seconds_per_volume for r in runs), 2)]
        flags = []
        for c in classes:
            cell = _cell([r.dice.get(c, math.nan) for r in runs], seeds)
            f = class_flags(runs, c)
            if f:
                cell += " (" + ", ".join(f) + ")"
                flags.append(f"{c}: {', '.join(f)}")
            cells.append(cell)
        cells += [_cell([r.mean_dice for r in runs], seeds), "; ".join(flags) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if any(r.diagnostics for r in rows):
        lines += ["", diagnostics_table(methods, classes)]
    return "\n".join(lines) + "\n"


def diagnostics_table(methods: Mapping[str, Sequence[Any]], classes: Sequence[str]) -> str:
    """Per method and class: prompt share of the logit variance / mean logit on the class's voxels /
    raw Dice of the network's masks before post-processing (means over seeds)."""
    lines = ["Prompt diagnostics (share of the class's logit variance the prompt explains / mean logit on "
             "its reference voxels / Dice of the network's own masks before post-processing; blind < share "
             "threshold, dead < decision logit):", "",
             "| method | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    for method, runs in methods.items():
        cells = [method]
        for c in classes:
            share = finite_mean((r.diagnostics.get(c) or {}).get("prompt_share") for r in runs)
            logit = finite_mean((r.diagnostics.get(c) or {}).get("positive_logit") for r in runs)
            raw = finite_mean((r.diagnostics.get(c) or {}).get("raw_dice") for r in runs)
            cells.append(f"{fmt(share, 2)} / {fmt(logit, 1)} / {fmt(raw, 2)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def similarity_lines(pairs: Sequence[tuple[str, str, float]], encoder: str) -> list[str]:
    """Markdown lines of the closest class pairs under the text encoder (text/similarity.py)."""
    if not pairs:
        return []
    return ["", f"Closest class prompts under {encoder} (cosine of the text embeddings; near 1 = the "
                "text-conditioned methods get almost the same query for both):", "",
            *[f"- {a} / {b}: {c:.3f}" for a, b, c in pairs]]
