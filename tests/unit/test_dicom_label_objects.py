"""DICOM-SEG / RTSTRUCT writers on synthetic series of awkward geometry (oblique, flipped,
non-square), and the segment list checks. Orientation bugs show as masks that come back moved."""
from __future__ import annotations

import numpy as np
import pytest

from promptseg.errors import InputError
from promptseg.io import (Volume, read_dicom_seg, read_dicom_series, read_rtstruct, write_dicom_seg,
                          write_dicom_series, write_rtstruct)
from promptseg.io.dicom_codes import segment_specs

SEGS = [{"name": "blob", "label_value": 3, "color": (10, 20, 30), "snomed": ("10200004", "Liver")},
        {"name": "ring", "label_value": 7, "color": (200, 100, 0), "kind": "lesion"}]


def oblique(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.array([[1, 0, 0], [0, c, s], [0, -s, c]])


@pytest.mark.parametrize("direction,spacing", [(np.eye(3), (0.7, 1.1, 2.0)), (np.diag([-1.0, 1.0, -1.0]), (0.9, 0.9, 2.0)),
                                               (oblique(0.4), (0.9, 0.9, 3.0))], ids=["axial-anisotropic", "flipped", "oblique"])
def test_writers_round_trip_on_any_orientation(tmp_path, direction, spacing):
    rng = np.random.default_rng(0)
    img = rng.integers(-100, 100, size=(23, 17, 9)).astype(np.int16)  # non-square slices
    write_dicom_series(Volume(img, spacing, (10.0, -20.0, 30.0), direction), tmp_path / "s")
    grid = read_dicom_series(tmp_path / "s")
    lab = np.zeros(grid.shape, dtype=np.uint8)
    lab[2:9, 3:12, 1:5] = 3  # asymmetric: a flip or a transpose moves it
    ii, jj = np.meshgrid(np.arange(23), np.arange(17), indexing="ij")
    r = np.hypot(ii - 16, jj - 10)
    lab[:, :, 5:8][(r < 5) & (r > 2)] = 7
    lm = grid.with_array(lab)
    seg = read_dicom_seg(write_dicom_seg(lm, SEGS, tmp_path / "s", tmp_path / "seg.dcm"), tmp_path / "s")
    rs = read_rtstruct(write_rtstruct(lm, SEGS, tmp_path / "s", tmp_path / "rs.dcm"), tmp_path / "s")
    for s in SEGS:
        want = lab == s["label_value"]
        assert np.array_equal(seg[s["name"]].array > 0, want)
        assert np.array_equal(rs[s["name"]].array > 0, want)


@pytest.mark.parametrize("bad,needle", [
    ([{"name": "a", "label_value": 0, "color": (1, 2, 3)}], "positive integer"),
    ([{"name": "a", "label_value": 1}, {"name": "b", "label_value": 1}], "two segments"),
    ([{"name": "a", "label_value": 1, "snomed": "10200004"}], "snomed must be"),
    ([{"name": "a", "label_value": 1, "color": (300, 0, 0)}], "color"),
    ([{"name": "a", "label_value": 1, "kind": "bone"}], "kind"),
    ([], "no segments"),
])
def test_bad_segment_lists_are_one_line_errors(bad, needle):
    with pytest.raises(InputError, match=needle):
        segment_specs(bad, "out.dcm")


def test_codes_default_by_kind():
    a, b = segment_specs(SEGS, "out.dcm")
    assert (a.number, a.type, a.category[0]) == (1, ("10200004", "Liver"), "123037004")
    assert (b.number, b.type[0], b.category[0]) == (2, "49755003", "49755003")
