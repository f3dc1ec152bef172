"""The separable cube morphology equals scipy's binary operations with a cube, voxel for voxel."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from promptseg.masks import close_cube, dilate_cube, erode_cube


@pytest.fixture(scope="module")
def masks():
    rng = np.random.default_rng(3)
    speckle = rng.random((23, 17, 11)) > 0.93           # scattered voxels, some on the faces
    blob = ndimage.gaussian_filter(rng.random((30, 26, 20)), 2) > 0.52  # organ-like regions
    full = np.ones((9, 8, 7), bool)                      # touches every face: erosion at the border
    thin = rng.random((3, 12, 2)) > 0.5                  # axes shorter than the cube's radius
    return [speckle, blob, full, thin, np.zeros((5, 6, 7), bool)]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 9, 15])
def test_cube_operations_equal_scipy(masks, size):
    cube = np.ones((size,) * 3, bool)
    for m in masks:
        assert np.array_equal(dilate_cube(m, size), ndimage.binary_dilation(m, structure=cube))
        assert np.array_equal(erode_cube(m, size), ndimage.binary_erosion(m, structure=cube))
        assert np.array_equal(close_cube(m, size), ndimage.binary_closing(m, structure=cube))
        assert dilate_cube(m, size).dtype == bool and dilate_cube(m, size) is not m
