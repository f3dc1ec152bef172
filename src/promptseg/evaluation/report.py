"""report.html: the summary tables, a per-class Dice/NSD box plot and the worst cases drawn.

Self-contained (PNGs embedded as base64; copies are also written to `figures/` beside it), so the
file can be mailed or opened from anywhere. Figures use matplotlib's Agg backend (no display).
Slices are shown in radiological convention (patient right on the image's left, anterior and
superior up) after reorienting the arrays to the closest RAS axes.
"""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io.atomic import atomic_write
from ..masks import bbox
from .columns import COUNTED, ROW_COLUMNS, spell

GT_COLOR = "#00d000"
PRED_COLOR = "#ff2050"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _horizontal() -> dict:
    """boxplot's horizontal switch: `orientation` from matplotlib 3.10, `vert` before (deprecated after)."""
    import matplotlib

    major, minor = (int(x) for x in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


# --- figures -----------------------------------------------------------------------------------
def boxplot_png(rows: Sequence[dict], metrics: Sequence[str] = ("dice", "nsd")) -> bytes | None:
    """Horizontal box plots of per-case scores, one row per class, one panel per metric."""
    per_class: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if r.get("status") not in COUNTED:
            continue
        for m in metrics:
            v = r.get(m)
            if isinstance(v, (int, float)) and math.isfinite(v):
                per_class.setdefault(r["class"], {k: [] for k in metrics})[m].append(float(v))
    if not per_class:
        return None
    classes = sorted(per_class, key=lambda c: -np.mean(per_class[c][metrics[0]] or [0.0]))
    plt = _plt()
    height = max(3.0, 0.24 * len(classes) + 1.4)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), height), sharey=True, squeeze=False)
    labels = {"dice": "Dice (DSC)", "nsd": "NSD"}
    for ax, m in zip(axes[0], metrics):
        data = [per_class[c][m] or [np.nan] for c in classes]
        ax.boxplot(data, **_horizontal(), widths=0.6, showfliers=True, patch_artist=True,
                   boxprops={"facecolor": "#9ecae1", "edgecolor": "#08519c"},
                   medianprops={"color": "#d62728", "linewidth": 1.5},
                   flierprops={"marker": ".", "markersize": 4})
        for y, vals in enumerate(data, start=1):  # the cases themselves, jittered, so n = 1-3 is visible
            jitter = np.linspace(-0.15, 0.15, len(vals)) if len(vals) > 1 else np.zeros(1)
            ax.scatter(vals, y + jitter, s=9, color="#333333", alpha=0.6, zorder=3)
        ax.set_yticks(range(1, len(classes) + 1), labels=classes, fontsize=8)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel(labels.get(m, m))
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].invert_yaxis()  # shared y: invert once, best class on top
    fig.suptitle("Per-class scores over cases (box: quartiles, line: median)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _to_ras(arrays: list[np.ndarray], spacing, direction) -> tuple[list[np.ndarray], tuple[float, float, float]]:
    import nibabel as nib

    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(direction, float) @ np.diag(spacing)
    ornt = nib.orientations.io_orientation(affine)
    xf = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt("RAS"))
    out = [nib.orientations.apply_orientation(a, xf) for a in arrays]
    sp = [0.0, 0.0, 0.0]
    for a, (new_axis, _flip) in enumerate(xf):
        sp[int(new_axis)] = float(spacing[a])
    return out, tuple(sp)


def _slice_index(err: np.ndarray, gt: np.ndarray, axis: int) -> int:
    """The slice along `axis` with most disagreement (else most GT, else the middle)."""
    other = tuple(a for a in range(3) if a != axis)
    for m in (err, gt):
        counts = m.sum(axis=other)
        if counts.any():
            return int(np.argmax(counts))
    return err.shape[axis] // 2


def overlay_png(gt: np.ndarray, pred: np.ndarray, spacing, image: np.ndarray | None = None, title: str = "",
                direction=None) -> bytes:
    """Axial, coronal and sagittal slices with GT (green) and prediction (red) contours."""
    plt = _plt()
    direction = np.eye(3) if direction is None else direction
    arrays = [np.asarray(gt, bool), np.asarray(pred, bool)]
    if image is not None:
        arrays.append(np.asarray(image, np.float32))
    arrays, sp = _to_ras(arrays, spacing, direction)
    g, p = arrays[0], arrays[1]
    if image is not None:
        bg = arrays[2]
        if bg.size and float(bg.min()) <= -500:  # CT in HU: soft-tissue window (W 400, L 40)
            lo, hi = -160.0, 240.0
        else:
            lo, hi = np.percentile(bg, [1, 99]) if bg.size else (0, 1)
        bg = np.clip((bg - lo) / max(hi - lo, 1e-6), 0, 1)
    else:
        bg = 0.35 * g.astype(np.float32)
    # zoom on the structure (with context) so that small ones stay visible
    offset = [0, 0, 0]
    union = g | p
    tight = bbox(union)
    if tight is not None:
        box = bbox(union, [max(12, (s.stop - s.start) // 2) for s in tight])
        g, p, bg = g[box], p[box], bg[box]
        offset = [s.start for s in box]
    err = g ^ p
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    views = (("axial", 2, (0, 1)), ("coronal", 1, (0, 2)), ("sagittal", 0, (1, 2)))
    for ax, (name, axis, (h, v)) in zip(axes, views):
        k = _slice_index(err, g, axis)
        take = lambda a: np.take(a, k, axis=axis).T  # rows = vertical axis v, cols = horizontal h
        ax.imshow(take(bg), cmap="gray", origin="lower", vmin=0, vmax=1, aspect=sp[v] / sp[h], interpolation="nearest")
        for m, color in ((g, GT_COLOR), (p, PRED_COLOR)):
            sl = take(m)
            if sl.any() and not sl.all():
                ax.contour(sl.astype(np.float32), levels=[0.5], colors=[color], linewidths=1.2)
            elif sl.all():
                ax.contour(np.pad(sl, 1).astype(np.float32), levels=[0.5], colors=[color], linewidths=1.2)
        ax.invert_xaxis()  # radiological: patient right (R) on the image's left, anterior left in sagittal
        ax.set_title(f"{name} slice {k + offset[axis]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    from matplotlib.lines import Line2D

    fig.legend(handles=[Line2D([], [], color=GT_COLOR, label="ground truth"), Line2D([], [], color=PRED_COLOR, label="prediction")],
               loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return _png(fig)


# --- HTML ----------------------------------------------------------------------------------------
def _fmt(v, digits: int = 3) -> str:
    return spell(v, none="–", yes_no=("yes", "no"), nan="–", infinite=lambda x: "∞", number=lambda x: f"{x:.{digits}f}",
                 other=lambda x: html.escape(str(x)))


def _ms(stat: dict | None, digits: int = 3) -> str:
    """'mean ± std (n)' for one aggregate cell."""
    if not stat or stat.get("mean") is None or (isinstance(stat["mean"], float) and math.isnan(stat["mean"])):
        extra = f" ({stat['n_inf']} ∞)" if stat and stat.get("n_inf") else ""
        return "–" + extra
    s = f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    if stat.get("n_inf"):
        s += f" <span class=dim>({stat['n_inf']} ∞ left out)</span>"
    return s


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _list_section(title: str, items: list[str], empty: str) -> str:
    if not items:
        return f"<h3>{html.escape(title)}</h3><p class=ok>{html.escape(empty)}</p>"
    lis = "".join(f"<li>{i}</li>" for i in items)
    return f"<h3>{html.escape(title)} ({len(items)})</h3><ul class=warn>{lis}</ul>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1250px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:28px}
h3{font-size:15px;margin:14px 0 6px} table{border-collapse:collapse;font-size:12.5px;margin:6px 0 12px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left} th{background:#f1f4f8} tr:nth-child(even) td{background:#fafafa}
td:nth-child(n+2){font-variant-numeric:tabular-nums} .dim{color:#888} .warn{color:#a33} .ok{color:#2a7}
img{max-width:100%;border:1px solid #eee;margin:4px 0} .kpi{display:inline-block;margin:4px 18px 4px 0;font-size:15px}
.kpi b{font-size:20px} details{margin:8px 0} code{background:#f4f4f4;padding:1px 4px}
"""


def render_html(summary: dict, rows: Sequence[dict], boxplot: bytes | None, worst_pngs: dict[int, bytes]) -> str:
    ov = summary.get("overall", {})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>promptseg evaluation</title><style>{CSS}</style></head><body>",
             "<h1>promptseg evaluation</h1>",
             f"<p class=dim>promptseg {html.escape(str(summary.get('promptseg_version', '')))} · "
             f"{summary.get('n_cases', 0)} cases · {ov.get('n_classes', 0)} classes · NSD tolerance "
             f"{_fmt(summary['settings']['tolerance_mm'], 2)} mm · both-empty score: {html.escape(summary['settings']['empty_score'])}</p>"]
    parts.append(f"<div class=kpi>mean DSC <b>{_ms(ov.get('dice'))}</b></div><div class=kpi>mean NSD <b>{_ms(ov.get('nsd'))}</b></div>"
                 "<p class=dim>Means over classes of the class-wise means (each class: mean within each dataset, then over datasets).</p>")

    parts.append("<h2>Per-class Dice and NSD</h2>")
    parts.append(_img(boxplot, "per-class Dice and NSD box plot") if boxplot else "<p>No scored cases.</p>")

    parts.append("<h2>Region-wise averages</h2>")
    parts.append(_table(["region", "classes", "cases", "DSC", "NSD", "HD95 (mm)", "MSD (mm)"],
                        [[html.escape(e["region"]), f"{e['n_classes']} <span class=dim>({html.escape(', '.join(e['classes']))})</span>",
                          str(e["n_cases"]), _ms(e.get("dice")), _ms(e.get("nsd")), _ms(e.get("hd95"), 2), _ms(e.get("msd"), 2)]
                         for e in summary.get("region_wise", [])]))

    parts.append("<h2>Class-wise averages</h2>")
    parts.append(_table(["class", "region", "kind", "in taxonomy", "cases", "datasets", "DSC", "NSD", "HD95 (mm)", "MSD (mm)", "vol. diff (mm³)"],
                        [[html.escape(e["class"]), html.escape(str(e["region"])), html.escape(str(e["kind"])), _fmt(e["in_taxonomy"]),
                          str(e["n_cases"]), str(e["n_datasets"]), _ms(e.get("dice")), _ms(e.get("nsd")), _ms(e.get("hd95"), 2),
                          _ms(e.get("msd"), 2), _ms(e.get("volume_diff_mm3"), 0)]
                         for e in summary.get("class_wise", [])]))

    parts.append("<h2>Dataset-wise averages</h2>")
    parts.append(_table(["dataset", "cases", "classes", "DSC", "NSD", "HD95 (mm)", "MSD (mm)"],
                        [[html.escape(e["dataset"]), str(e["n_cases"]), str(e["n_classes"]), _ms(e.get("dice")), _ms(e.get("nsd")),
                          _ms(e.get("hd95"), 2), _ms(e.get("msd"), 2)] for e in summary.get("dataset_wise", [])]))

    parts.append("<h2>Tumour detection</h2>")
    det = summary.get("detection", [])
    if det:
        parts.append(_table(["class", "threshold (mm³)", "cases +/−", "TP", "FN", "TN", "FP", "sensitivity", "specificity",
                             "harmonic mean", "lesions found", "lesion recall", "lesion precision"],
                            [[html.escape(d["cls"]), _fmt(d["threshold_mm3"], 1), f"{d['n_positive']} / {d['n_negative']}",
                              str(d["tp"]), str(d["fn"]), str(d["tn"]), str(d["fp"]), _fmt(d["sensitivity"]), _fmt(d["specificity"]),
                              _fmt(d["harmonic_mean"]), f"{d['gt_lesions_found']} / {d['gt_lesions']}", _fmt(d["lesion_recall"]),
                              _fmt(d["lesion_precision"])] for d in det]))
        parts.append("<p class=dim>Patient level: a case is positive when its ground truth has the lesion; predicted positive when "
                     "the predicted volume exceeds the threshold. Lesions: 26-connected components.</p>")
    else:
        parts.append("<p class=dim>No lesion classes in the ground truth.</p>")

    parts.append("<h2>Cases and classes not scored</h2>")
    parts.append(_list_section("Missing predictions (in ground truth, not in predictions)",
                               [f"{html.escape(m['dataset'])} / <b>{html.escape(m['case'])}</b>" for m in summary.get("missing_cases", [])],
                               "None: every ground-truth case has a prediction."))
    parts.append(_list_section("Extra predictions (no ground truth)",
                               [f"{html.escape(m['dataset'])} / <b>{html.escape(m['case'])}</b>" for m in summary.get("extra_cases", [])],
                               "None."))
    parts.append(_list_section("Classes not predicted (in the ground truth's label set, not in the prediction's)",
                               [f"{html.escape(m['dataset'])} / <b>{html.escape(m['class'])}</b> ({m['n_cases']} cases)"
                                for m in summary.get("not_predicted", [])], "None."))
    parts.append(_list_section("Classes outside the taxonomy (scored by their own name, region 'unknown')",
                               [html.escape(c) for c in summary.get("outside_taxonomy", [])], "None."))
    parts.append(_list_section("Label values without a name",
                               [f"{html.escape(u['side'])} {html.escape(u['case'])}: {u['values']}" for u in summary.get("unlabelled_values", [])],
                               "None."))

    worst = summary.get("worst_cases", [])
    parts.append("<h2>Worst cases</h2>")
    if worst:
        for i, w in enumerate(worst):
            parts.append(f"<h3>{i + 1}. {html.escape(w['case'])} / {html.escape(w['class'])} — DSC {_fmt(w['dice'])}, NSD {_fmt(w['nsd'])}, "
                         f"HD95 {_fmt(w.get('hd95'), 2)} mm</h3>")
            if i in worst_pngs:
                parts.append(_img(worst_pngs[i], f"{w['case']} {w['class']}"))
    else:
        parts.append("<p class=dim>None drawn.</p>")

    cols = [c for c in ROW_COLUMNS if c not in ("gt_name", "pred_name")]
    parts.append(f"<h2>Per case × class</h2><details><summary>{len(rows)} rows (also in metrics.csv)</summary>")
    parts.append(_table(cols, [[_fmt(r.get(c)) for c in cols] for r in rows]))
    parts.append("</details>")

    parts.append("<h2>Settings and conventions</h2>")
    parts.append(_table(["setting", "value"], [[html.escape(k), html.escape(str(v))] for k, v in summary.get("settings", {}).items()]))
    parts.append(_table(["convention", "meaning"], [[html.escape(k), html.escape(str(v))] for k, v in summary.get("conventions", {}).items()]))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(summary: dict, rows: Sequence[dict], path: str | Path) -> Path:
    """Write report.html (and figures/boxplot.png) next to the other outputs."""
    path = Path(path)
    box = boxplot_png(rows)
    if box is not None:
        atomic_write(path.parent / "figures" / "boxplot.png", box)
    worst_pngs = {}
    for i, w in enumerate(summary.get("worst_cases", [])):
        p = path.parent / w["png"]
        if p.is_file():
            worst_pngs[i] = p.read_bytes()
    return atomic_write(path, render_html(summary, rows, box, worst_pngs))
