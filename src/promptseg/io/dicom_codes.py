"""What the DICOM-SEG and RTSTRUCT writers share: the segment list (names, colours, SNOMED CT),
the source series' grid, and the clean-up of values copied from the source headers.

Why one module: both writers take the same `segments` list, check it the same way and must
write the same coded concepts. The class codes are data in the taxonomy YAML (`snomed`); the
callers pass them in each segment dict. A segment without a code gets a generic one, chosen by
its kind, so every segment still carries a valid coded concept.

A segment is a dict: name (str), label_value (int > 0, the value in the label map), color
(RGB 0-255), and optionally snomed ((code, meaning) or {code, meaning}) and kind (organ |
vessel | lesion, default organ).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pydicom

from ..errors import InputError
from .dicom import read_dicom_series, read_series_headers, slice_index
from .volume import Volume

SCT = "SCT"
# (code, meaning) of DICOM CID 7150 categories and generic property types.
ANATOMY_CATEGORY = ("123037004", "Anatomical Structure")
LESION_CATEGORY = ("49755003", "Morphologically Abnormal Structure")
GENERIC_TYPE = {"organ": ("91723000", "Anatomical structure"),
                "vessel": ("91723000", "Anatomical structure"),
                "lesion": ("49755003", "Morphologically abnormal structure")}


@dataclass(frozen=True)
class SegmentSpec:
    number: int  # 1-based, the DICOM Segment / ROI number
    name: str
    label_value: int
    color: tuple[int, int, int]
    category: tuple[str, str]
    type: tuple[str, str]


def software_version() -> str:
    try:
        return version("promptseg")
    except PackageNotFoundError:
        return "0+unknown"


def _code(raw, where, name) -> tuple[str, str] | None:
    if raw is None:
        return None
    if isinstance(raw, dict):
        raw = (raw.get("code"), raw.get("meaning"))
    if isinstance(raw, (list, tuple)) and len(raw) == 2 and all(raw):
        return str(raw[0]), str(raw[1])
    raise InputError(where, f"segment {name!r}: snomed must be (code, meaning), got {raw!r}")


def segment_specs(segments: list[dict], where: str | Path) -> list[SegmentSpec]:
    """Validate the caller's segment dicts; numbers follow the list order (1, 2, ...)."""
    if not segments:
        raise InputError(where, "no segments to write")
    out, seen = [], set()
    for n, seg in enumerate(segments, start=1):
        name = str(seg.get("name", "")).strip()
        value = seg.get("label_value")
        if not name or not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InputError(where, f"segment #{n} needs a name and a positive integer label_value, got {seg!r}")
        if value in seen:
            raise InputError(where, f"label value {value} is given to two segments")
        seen.add(value)
        color = tuple(int(c) for c in seg.get("color", (255, 0, 0)))
        if len(color) != 3 or not all(0 <= c <= 255 for c in color):
            raise InputError(where, f"segment {name!r}: color must be three values 0-255, got {seg.get('color')!r}")
        kind = seg.get("kind", "organ")
        if kind not in GENERIC_TYPE:
            raise InputError(where, f"segment {name!r}: kind {kind!r} is not one of {sorted(GENERIC_TYPE)}")
        code = _code(seg.get("snomed"), where, name) or GENERIC_TYPE[kind]
        category = LESION_CATEGORY if kind == "lesion" else ANATOMY_CATEGORY
        out.append(SegmentSpec(n, name, value, color, category, code))
    return out


def series_grid(series_dir: Path):
    """The checked series' headers (sorted), its grid, and each header's slice index k on it."""
    grid = read_dicom_series(series_dir)
    headers = read_series_headers(series_dir)
    return headers, grid, [slice_index(grid, h.ImagePositionPatient, series_dir) for h in headers]


def source_grid(label_map: Volume, series_dir: Path, out_path: Path):
    """`series_grid`, after checking that the label map lies on that grid."""
    headers, grid, ks = series_grid(series_dir)
    diff = grid.grid_differences(label_map, tol=1e-3)
    if diff:
        raise InputError(out_path, f"label map is not on the grid of DICOM series {series_dir} ({'; '.join(diff)})")
    return headers, grid, ks


@contextmanager
def quiet_source():
    """Silence notes about the source's own header values (a one-component PatientName, a
    17-character StudyID): names are kept as the source has them, lengths are cut by dicom_safe."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        warnings.filterwarnings("ignore", message=".*exceeds the maximum length")
        yield


def dicom_safe(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Cut values that the source copied in but their VR does not allow (e.g. a 17-character
    StudyID, SH holds 16), so the written object validates; identity stays in the UIDs."""
    for kw, limit in (("StudyID", 16), ("AccessionNumber", 16)):
        if kw in ds and ds.data_element(kw).value and len(str(ds.data_element(kw).value)) > limit:
            setattr(ds, kw, str(ds.data_element(kw).value)[:limit])
    return ds
