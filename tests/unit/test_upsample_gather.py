"""The nearest-neighbour gather of the per-class inversion equals numpy's np.ix_ indexing."""
from __future__ import annotations

import numpy as np
import pytest

from promptseg.inference.upsample import _gather
from promptseg.masks import dilate_cube
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


def _case(seed: int):
    """A network-grid result with a record that upsamples (2 x 2 x 3 mm -> 0.8 x 0.8 x 1.5 mm) and
    a body crop: one organ near the crop's edge, a halo of uncertain voxels, and false-positive
    speckle far from it."""
    from promptseg.inference.lean_masks import PROB_SCALE
    from promptseg.io.volume import Volume
    from promptseg.preprocess import get_plan, preprocess_image

    rng = np.random.default_rng(seed)
    img = np.full((60, 50, 30), -1000, np.int16)
    img[5:57, 4:46, 2:28] = 40  # the body: the plan crops to it
    pre = preprocess_image(Volume(img, (0.8, 0.8, 1.5)), get_plan({"name": "universal_ct", "spacing": [2.0, 2.0, 3.0]}))
    shape = pre.array.shape
    probs = (rng.random((2, *shape)) * 0.3 * PROB_SCALE).astype(np.uint16)
    organ = np.zeros(shape, bool)
    organ[0:7, 3:10, 2:8] = True  # touches the crop's low edge on axis 0
    halo = dilate_cube(organ, 3) & ~organ
    for k in range(2):
        probs[k][organ] = int(0.9 * PROB_SCALE)
        probs[k][halo] = (rng.random(int(halo.sum())) * PROB_SCALE).astype(np.uint16)
    speckle = rng.random(shape) > 0.995
    speckle[:12, :14, :] = False
    probs[0][speckle] = int(0.8 * PROB_SCALE)
    raw = probs > 0.5 * PROB_SCALE
    return pre.record, raw, probs, speckle & raw[0]


def test_a_post_processed_class_is_resampled_in_its_kept_box_with_the_same_result():
    """Class 0's post-processing removed far speckle (kept != raw), so its inversion works in the
    kept mask's box only; class 1 is unchanged (kept == raw). The result must equal the inversion
    of the same scan without that speckle, where nothing was removed and the box is the raw
    mask's: the same packed masks and label map, linear and nearest."""
    from promptseg.inference.upsample import invert_classes
    from promptseg.taxonomy.query import Query

    queries = [Query("organ a", None, 0, 10, 0.5, 0), Query("organ b", None, 1, 11, 0.5, 0)]
    for seed in range(3):
        record, raw, probs, speckle = _case(seed)
        kept = {"organ a": raw[0] & ~speckle, "organ b": raw[1]}
        clean_probs = probs.copy()
        clean_probs[0][speckle] = 0
        clean_raw = raw.copy()
        clean_raw[0] &= ~speckle
        assert not np.array_equal(kept["organ a"], raw[0]) and np.array_equal(kept["organ a"], clean_raw[0])
        for interpolation in ("linear", "nearest"):
            label, packed = invert_classes(queries, raw, probs, kept, record, interpolation)
            label_ref, packed_ref = invert_classes(queries, clean_raw, clean_probs, kept, record, interpolation)
            assert packed.any() and np.array_equal(packed, packed_ref), (seed, interpolation)
            assert np.array_equal(label.array, label_ref.array), (seed, interpolation)


@pytest.mark.parametrize("sizes", [((9, 7, 5), (17, 13, 5)),    # x, y move; z stays (1.5 -> 0.78 mm in-plane)
                                   ((9, 7, 5), (17, 7, 5)),     # only the first axis moves: slabs along y
                                   ((9, 7, 5), (9, 7, 5)),      # nothing moves
                                   ((9, 7, 5), (20, 15, 11))])  # all three move
def test_interpolating_the_last_axis_in_slabs_gives_the_one_go_values(sizes, monkeypatch):
    import torch

    from promptseg.inference import upsample as U

    (n_res, n_or) = sizes
    plans = [U._axis_plan(a, b, 0, a) for a, b in zip(n_res, n_or)]
    p = torch.from_numpy((np.random.default_rng(4).random(n_res) * 65000).astype(np.float32))
    whole = p.clone()
    for a in range(3):
        whole = U._lerp(whole, a, plans[a][1], plans[a][2], plans[a][3])
    monkeypatch.setattr(U, "SLAB_VOXELS", 7)  # slabs of one or two planes: many seams
    mask, prob = U._interpolate(p.clone(), plans, 30000.0, U._Scratch())
    assert mask.shape == tuple(whole.shape) == tuple(len(pl[0]) for pl in plans)
    assert np.array_equal(mask, (whole > 30000.0).numpy())
    assert prob.dtype == np.uint16 and np.array_equal(prob, whole.round().to(torch.uint16).numpy())
