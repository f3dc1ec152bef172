"""promptseg.masks: the one box / component / body / left-right implementation every stage uses."""
from __future__ import annotations

import numpy as np
import pytest

from promptseg import masks


def test_bbox_margins_clip_and_empty():
    m = np.zeros((10, 8, 6), bool)
    m[2:4, 3, 1:5] = True
    assert masks.bbox(m) == (slice(2, 4), slice(3, 4), slice(1, 5))
    assert masks.bbox(m, 2) == (slice(0, 6), slice(1, 6), slice(0, 6))  # clipped to the grid
    assert masks.bbox(m, [0, 1, 0]) == (slice(2, 4), slice(2, 5), slice(1, 5))
    assert masks.bbox(np.zeros((3, 3, 3), bool)) is None
    assert masks.bbox(np.eye(4, dtype=bool)) == (slice(0, 4), slice(0, 4))  # any dimension


def test_largest_components_and_two_largest():
    m = np.zeros((20, 5, 5), bool)
    m[0:2], m[5:10], m[14:17] = True, True, True  # sizes 50, 125, 75
    assert masks.largest_components(m, 1).sum() == 125
    assert masks.largest_components(m, 2).sum() == 200
    labels, n, a, b = masks.two_largest(m)
    assert n == 3 and (labels == a).sum() == 125 and (labels == b).sum() == 75
    assert masks.two_largest(m, min_ratio=0.7)[2] is None  # 75 < 0.7 * 125


def test_body_mask_fallback_and_midline():
    img = np.full((30, 20, 10), -1000.0, np.float32)
    img[8:24, 4:16] = 40.0
    img[10:12, 8:10, 4:6] = -1000.0  # air inside the body: filled
    body = masks.body_mask(img)
    assert body[8:24, 4:16].all() and body.sum() == 16 * 12 * 10
    assert masks.midline(body, body.shape, 0) == pytest.approx(15.5)
    flat = np.zeros((4, 4, 4))
    assert masks.body_mask(flat).all() and masks.body_mask(flat, fallback=False) is None
    assert masks.midline(None, (30, 20, 10), 0) == pytest.approx(14.5)


@pytest.mark.parametrize("sign", [1, -1])
def test_split_left_right_by_components_and_by_plane(sign):
    union = np.zeros((20, 4, 4), bool)
    union[2:6] = union[13:18] = True
    left, right = masks.split_left_right(union, 0, sign, 9.5)
    high, low = union.copy(), union.copy()
    high[:10], low[10:] = False, False
    assert np.array_equal(right, high if sign == 1 else low) and np.array_equal(left, low if sign == 1 else high)
    fused = np.zeros((20, 4, 4), bool)
    fused[4:16] = True  # one component: cut at the plane
    left, right = masks.split_left_right(fused, 0, sign, 9.5)
    assert right.sum() == left.sum() == 6 * 16 and not (left & right).any()
    assert np.array_equal(right, fused & masks.half_space(fused.shape, 0, sign, 9.5, "right"))


def test_fill_holes_equals_scipy():
    """Cavities fill; background that reaches any face of the grid stays (scipy's rule)."""
    from scipy import ndimage

    from promptseg.masks import fill_holes

    rng = np.random.default_rng(5)
    shell = np.zeros((12, 11, 10), bool)
    shell[2:10, 2:9, 2:8] = True
    shell[4:8, 4:7, 4:6] = False                      # a closed cavity: filled
    open_hole = shell.copy()
    open_hole[5, 5, 0:5] = False                       # a tunnel to a face: stays open
    blobs = ndimage.gaussian_filter(rng.random((25, 21, 18)), 1.5) > 0.5
    cases = [shell, open_hole, blobs, ~blobs, np.zeros((4, 5, 6), bool), np.ones((4, 5, 6), bool),
             rng.random((9, 1, 7)) > 0.5]
    for m in cases:
        got = fill_holes(m)
        assert got.dtype == bool and np.array_equal(got, ndimage.binary_fill_holes(m))
    assert fill_holes(shell)[5, 5, 5] and not fill_holes(open_hole)[5, 5, 3]
