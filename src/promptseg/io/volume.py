"""`Volume`: a voxel array with the geometry that places it in the patient.

Convention (documented once, used everywhere):
- `array` is indexed [i, j, k] -- the file's voxel axes in NIfTI order (x fastest in the file).
  This is nibabel's and MONAI's order; SimpleITK's numpy view is the transpose [k, j, i].
- `spacing[a]` is the voxel size in mm along array axis a.
- `origin` is the world position (LPS mm, ITK convention) of voxel (0, 0, 0)'s centre.
- `direction` is 3x3; column a is the LPS unit vector of array axis a (ITK convention).
So world_LPS = origin + direction @ (spacing * index).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])  # also the LPS direction of a RAS grid


def patient_axis(direction: np.ndarray | None, toward: str) -> tuple[int, int]:
    """(array axis, sign) of the axis closest to the patient's `toward` ('right', 'left',
    'superior' or 'inferior'); sign = +1 when increasing the index moves toward it.

    `direction`: 3x3, columns the LPS unit vectors of the array axes (`Volume.direction`, a
    preprocessing record's network grid); None = a RAS grid. The one place that says which array
    axis is the patient's left-right one (augmentation, label splitting, post-processing and
    test-time mirroring all ask here).
    """
    d = _LPS_TO_RAS if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    row, flip = {"right": (0, -1.0), "left": (0, 1.0), "superior": (2, 1.0), "inferior": (2, -1.0)}[toward]
    comp = d[row, :] * flip  # how much each array axis points toward `toward`
    axis = int(np.argmax(np.abs(comp)))
    return axis, (1 if comp[axis] > 0 else -1)


@dataclass
class Volume:
    """An image or label map with its geometry: array indexed [i, j, k], spacing (mm), origin and
    direction in LPS world coordinates (as SimpleITK/DICOM). Every reader returns one and every
    writer takes one, so geometry travels with the voxels."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    path: Path | None = None

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 voxel index -> LPS world (mm)."""
        a = np.eye(4)
        a[:3, :3] = self.direction @ np.diag(self.spacing)
        a[:3, 3] = self.origin
        return a

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel index -> RAS world (mm): the NIfTI / nibabel / MONAI affine."""
        a = self.affine_lps
        a[:3, :] = _LPS_TO_RAS @ a[:3, :]
        return a

    @classmethod
    def from_affine(cls, array: np.ndarray, affine_ras: np.ndarray, path: Path | None = None) -> "Volume":
        """Build from a RAS affine (nibabel convention)."""
        lps = np.asarray(affine_ras, dtype=np.float64).copy()
        lps[:3, :] = _LPS_TO_RAS @ lps[:3, :]
        m = lps[:3, :3]
        spacing = np.linalg.norm(m, axis=0)
        direction = m / spacing
        return cls(array, tuple(spacing), tuple(lps[:3, 3]), direction, path)

    @property
    def orientation(self) -> str:
        """Axis codes in RAS terms, e.g. 'RAS' or 'LPS' (nibabel's aff2axcodes)."""
        import nibabel as nib

        return "".join(nib.aff2axcodes(self.affine))

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, new voxels (shape must match)."""
        if tuple(array.shape[-3:]) != self.shape[-3:]:
            raise ValueError(f"array shape {array.shape} does not fit grid {self.shape}")
        return replace(self, array=array)

    def same_grid(self, other: "Volume", tol: float = 1e-4) -> bool:
        return not self.grid_differences(other, tol)

    def grid_differences(self, other: "Volume", tol: float = 1e-4) -> list[str]:
        """Human-readable list of how two grids differ (empty when they match)."""
        out = []
        if self.shape[:3] != other.shape[:3]:
            out.append(f"shape {self.shape[:3]} vs {other.shape[:3]}")
        if not np.allclose(self.spacing, other.spacing, atol=tol):
            out.append(f"spacing {np.round(self.spacing, 4).tolist()} vs {np.round(other.spacing, 4).tolist()}")
        if not np.allclose(self.origin, other.origin, atol=tol * max(1.0, max(map(abs, self.origin)))):
            out.append(f"origin {np.round(self.origin, 3).tolist()} vs {np.round(other.origin, 3).tolist()}")
        if not np.allclose(self.direction, other.direction, atol=tol):
            out.append("direction differs")
        return out
