"""Packed per-class masks hand out each class's mask in the writer's (Fortran) layout, unchanged."""
from __future__ import annotations

import numpy as np
import pytest

from promptseg.inference.prediction import PackedMasks, fortran_copy
from promptseg.io.volume import Volume


@pytest.mark.parametrize("shape", [(37, 70, 19), (1, 5, 3), (16, 64, 16), (33, 1, 40)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_fortran_copy_is_a_fortran_ordered_copy_with_the_same_values(shape, dtype):
    a = (np.random.default_rng(1).random(shape) * 200).astype(dtype)
    out = fortran_copy(a)
    assert out.flags.f_contiguous and out.dtype == a.dtype and np.array_equal(out, a)
    assert not np.shares_memory(out, a)


@pytest.mark.parametrize("workers", [1, 2])
def test_packed_masks_unpack_every_class_after_the_planes_are_prepared(workers):
    rng = np.random.default_rng(2)
    names = [f"class {i}" for i in range(11)]  # two byte planes, the second one part-filled
    masks = rng.random((11, 9, 8, 7)) > 0.7
    packed = np.packbits(masks, axis=0)
    like = Volume(np.zeros((9, 8, 7), np.uint8), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    pm = PackedMasks(packed, names, like)
    pm.prepare(workers)
    for i, n in enumerate(names):
        got = pm[n].array
        assert got.flags.f_contiguous and got.dtype == np.uint8
        assert np.array_equal(got, masks[i].astype(np.uint8)), n
        assert pm.voxel_count(n) == int(masks[i].sum())
