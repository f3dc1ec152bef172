"""report.html opens in headless Chromium and its screenshot shows the per-class box plot."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CT = DATA / "ct_abdomen_small"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.skipif(not (CT / "labels.nii.gz").is_file(), reason=f"real scans not found at {DATA} (shared data absent)"),
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (Debian package 'chromium'; .ci/run installs it)"),
]

# colours only the box plot uses (report.boxplot_png): box face #9ecae1 and median line #d62728
BOX_FACE = np.array([0x9E, 0xCA, 0xE1])
MEDIAN = np.array([0xD6, 0x27, 0x28])


def near(img: np.ndarray, color: np.ndarray, tol: int = 24) -> np.ndarray:
    return (np.abs(img[..., :3].astype(int) - color).max(axis=-1) <= tol)


def screenshot(html: Path, png: Path, profile: Path) -> None:
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1200,1600", html.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.is_file(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-800:]}"


def test_report_renders_with_the_box_plot(tmp_path):
    from matplotlib.image import imread

    from promptseg.evaluation import evaluate_folders
    from promptseg.io import read_label, write_image
    from scipy import ndimage

    # two predictions of the same scan (eroded, dilated) so each class has a box, not only a line
    gt = read_label(CT / "labels.nii.gz")
    pred = tmp_path / "pred"
    pred.mkdir()
    for name, op in (("ct_abdomen_small", ndimage.binary_erosion), ("ct_abdomen_small_dil", ndimage.binary_dilation)):
        a = np.asarray(gt.array)
        out = np.zeros_like(a)
        for v in np.unique(a)[1:]:
            out[op(a == v) & (out == 0)] = v
        write_image(gt.with_array(out), pred / f"{name}.nii.gz")
    (pred / "labels.json").write_text((CT / "labels.json").read_text())
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    for name in ("ct_abdomen_small", "ct_abdomen_small_dil"):
        write_image(gt, gt_dir / f"{name}.nii.gz")
    (gt_dir / "labels.json").write_text((CT / "labels.json").read_text())

    res = evaluate_folders(pred, gt_dir, tmp_path / "out", tolerance_mm=3.0, worst_n=2, progress=False)
    html = res.files["report.html"]
    png = tmp_path / "shot.png"
    screenshot(html, png, tmp_path / "profile")

    img = imread(str(png))
    img = (img * 255).astype(np.uint8) if img.dtype != np.uint8 else img
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    gray = img[..., :3].mean(axis=-1)
    assert gray.std() > 20, "screenshot is blank"
    # the box plot sits near the top of the page: its box faces and median lines are on screen
    top = img[: img.shape[0] * 3 // 4]
    n_box, n_median = int(near(top, BOX_FACE).sum()), int(near(top, MEDIAN).sum())
    assert n_box > 2000, f"box plot boxes not visible ({n_box} px)"
    assert n_median > 200, f"box plot medians not visible ({n_median} px)"
    rows, cols = np.nonzero(near(top, BOX_FACE))
    assert cols.max() - cols.min() > 300  # boxes spread over both panels (Dice and NSD)
