"""The nearest-neighbour gather of the per-class inversion equals numpy's np.ix_ indexing."""
from __future__ import annotations

import numpy as np

from promptseg.inference.upsample import _gather
from promptseg.preprocess.geometry import nearest_indices


def test_gather_equals_ix_indexing():
    rng = np.random.default_rng(7)
    for dtype in (bool, np.uint16):
        x = (rng.random((13, 9, 6)) * 60000).astype(dtype) if dtype is not bool else rng.random((13, 9, 6)) > 0.6
        near = [nearest_indices(13, 25), nearest_indices(9, 9), nearest_indices(6, 4)]  # up, same, down
        assert np.array_equal(near[1], np.arange(9))
        out = _gather(x, near)
        assert out.dtype == x.dtype and np.array_equal(out, x[np.ix_(*near)])
        sub = x[2:11, 1:8, :]  # a non-contiguous box, as the inversion passes
        near = [nearest_indices(9, 17)[3:14], np.arange(7), nearest_indices(6, 11)]
        assert np.array_equal(_gather(sub, near), sub[np.ix_(*near)])
