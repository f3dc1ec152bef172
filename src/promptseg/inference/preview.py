"""preview.png: three planes through the segmented structures, in radiological orientation, with a
legend -- a quick look that a prediction landed on the right anatomy (TotalSegmentator's --preview).

Radiological: the patient's right on the image's left in the axial and coronal planes, anterior
to the top of the axial plane and to the left of the sagittal plane, head at the top. The image is
first reoriented to RAS with the volume's own direction, so any input orientation shows the same.
Colours come from `class_color`, the one palette the DICOM outputs use too.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping

import numpy as np

from ..io.atomic import atomic_write
from ..io.volume import Volume
from ..preprocess.geometry import orientation_transform, reorient

_PALETTE = (  # colour-blind friendly first, then tab20's and tab20b's, no two alike; 33 colours,
    # so the 32 classes of the first taxonomy block never share one. Label value v: _PALETTE[(v - 1) % n]
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
    (204, 121, 167), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232),
    (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210),
    (57, 59, 121), (107, 110, 207), (99, 121, 57), (181, 207, 107), (140, 109, 49), (231, 186, 82),
    (132, 60, 57), (214, 97, 107), (123, 65, 115), (206, 109, 189),
)
assert len(set(_PALETTE)) == len(_PALETTE) >= 32


def class_color(label_value: int) -> tuple[int, int, int]:
    """RGB (0-255) of a label value, the same in every output of every case."""
    return _PALETTE[(int(label_value) - 1) % len(_PALETTE)]


def _radiological(plane: np.ndarray) -> np.ndarray:
    """A plane of a RAS array, (first axis, second axis) -> rows top-down, columns left-right as a
    radiologist reads it: both RAS axes point the other way on screen, so transpose and flip."""
    return np.flip(plane.T)


def _ras_centre(image: Volume, labels: list[Volume]) -> list[int]:
    """RAS voxel index of the centre of the voxels labelled in any of `labels` (else the middle)."""
    perm, flip = orientation_transform(image.affine, "RAS")
    union = None
    for label in labels:
        m = np.asarray(reorient(np.asarray(label.array) != 0, perm, flip))
        union = m if union is None else union | m
    return [int(np.mean(ix)) if len(ix) else s // 2 for ix, s in zip(np.nonzero(union), union.shape)]


def radiological_planes(image: Volume, label: Volume, centre=None) -> list[tuple[np.ndarray, np.ndarray, float, str]]:
    """(image plane, label plane, aspect, name) of the axial, coronal and sagittal planes through
    `centre` (RAS voxel index; default: the centre of the labelled voxels), ready for imshow."""
    perm, flip = orientation_transform(image.affine, "RAS")
    img = np.asarray(reorient(np.asarray(image.array), perm, flip), dtype=np.float32)
    lab = np.asarray(reorient(np.asarray(label.array), perm, flip))
    sp = [image.spacing[p] for p in perm]
    c = _ras_centre(image, [label]) if centre is None else centre
    return [  # aspect = row spacing / column spacing
        (_radiological(img[:, :, c[2]]), _radiological(lab[:, :, c[2]]), sp[1] / sp[0], "axial (R on left)"),
        (_radiological(img[:, c[1], :]), _radiological(lab[:, c[1], :]), sp[2] / sp[0], "coronal (R on left)"),
        (_radiological(img[c[0], :, :]), _radiological(lab[c[0], :, :]), sp[2] / sp[1], "sagittal (A on left)"),
    ]


def write_preview(path: Path, image: Volume, label_map: Volume, names: Mapping[int, str], title: str = "",
                  reference: Volume | None = None) -> Path:
    """Axial, coronal and sagittal planes through the centre of the labelled voxels, with a legend.

    `reference` (a ground truth on the same grid, using the same label values as `label_map`)
    adds a second row through the same planes, so prediction and truth compare at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    rows = [("prediction", label_map)] + ([("ground truth", reference)] if reference is not None else [])
    centre = _ras_centre(image, [lab for _, lab in rows])
    img = np.asarray(image.array)
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0.0, 1.0)
    present = sorted({int(v) for _, lab in rows for v in np.unique(np.asarray(lab.array)) if v != 0})
    top = max(present + [1])
    colors = np.zeros((top + 1, 4))
    for v in present:
        colors[v, :3] = np.asarray(class_color(v)) / 255.0
        colors[v, 3] = 1.0
    cmap = ListedColormap(colors)
    legend_rows = -(-len(present) // 6)  # legend rows below the planes
    legend_in = 0.2 * legend_rows + (0.1 if legend_rows else 0.0)
    height = 4.8 * len(rows) + legend_in
    fig, axes = plt.subplots(len(rows), 3, figsize=(13, height), squeeze=False)
    for ax_row, (row_name, lab_vol) in zip(axes, rows):
        for ax, (im, lb, aspect, name) in zip(ax_row, radiological_planes(image, lab_vol, centre)):
            ax.imshow(im, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            ax.imshow(np.ma.masked_where(lb == 0, lb), cmap=cmap, vmin=0, vmax=top, alpha=0.5,
                      aspect=aspect, interpolation="nearest")
            ax.set_title(f"{row_name}: {name}" if len(rows) > 1 else name)
            ax.axis("off")
    handles = [Patch(color=np.asarray(class_color(v)) / 255.0, label=names.get(v, str(v))) for v in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, legend_in / height, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return atomic_write(path, buf.getvalue())
