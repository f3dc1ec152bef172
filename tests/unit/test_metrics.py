"""Known-answer tests for DSC, NSD, HD95, MSD and the empty-mask conventions."""
from __future__ import annotations

import math

import numpy as np
import pytest

from promptseg.evaluation import metrics as M


def cube(shape, start, side):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(s, s + side) for s in start)] = True
    return m


def ball(shape, center, radius, spacing=(1.0, 1.0, 1.0)):
    grid = np.indices(shape, dtype=np.float64)
    d2 = sum(((grid[a] - center[a]) * spacing[a]) ** 2 for a in range(3))
    return d2 <= radius**2


# --- DSC -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [0, 1, 3, 7])
def test_dice_of_shifted_cubes_is_analytic(shift):
    a = 10
    g = cube((24, 16, 16), (2, 3, 3), a)
    p = cube((24, 16, 16), (2 + shift, 3, 3), a)
    assert M.dice(p, g) == pytest.approx((a - shift) / a, abs=1e-12)


def test_dice_of_shifted_balls_matches_sphere_intersection_volume():
    # two balls of radius R, centres d apart: |P∩G| = pi (4R + d)(2R - d)^2 / 12, DSC = |P∩G| / V
    R, d = 14.0, 6.0
    shape = (48, 40, 40)
    g = ball(shape, (20, 20, 20), R)
    p = ball(shape, (20 + d, 20, 20), R)
    expected = (math.pi * (4 * R + d) * (2 * R - d) ** 2 / 12) / (4 / 3 * math.pi * R**3)
    assert M.dice(p, g) == pytest.approx(expected, abs=0.01)


def test_dice_disjoint_is_zero_and_identical_is_one():
    g = cube((10, 10, 10), (0, 0, 0), 3)
    p = cube((10, 10, 10), (6, 6, 6), 3)
    assert M.dice(p, g) == 0.0
    assert M.dice(g, g) == 1.0


# --- NSD / HD95 / MSD on a cube shifted by one voxel ---------------------------------------------
# pred = GT shifted by one voxel along axis 0 (spacing s0 <= the other spacings). Surface voxels of an
# a-cube: 6a^2 - 12a + 8. Those on the four side faces that both cubes share (x in the overlap)
# are at distance 0: (a-1)(4a-4); all the others are exactly s0 away. Same both ways by symmetry.
A = 10
N_SURF = 6 * A * A - 12 * A + 8
N_ZERO = (A - 1) * (4 * A - 4)


def shifted_cube_pair(axis=0):
    shape = (16, 16, 16)
    g = cube(shape, (3, 3, 3), A)
    start = [3, 3, 3]
    start[axis] += 1
    return cube(shape, tuple(start), A), g


def test_surface_voxel_count_of_cube():
    _, g = shifted_cube_pair()
    assert int(M.surface(g).sum()) == N_SURF


@pytest.mark.parametrize("s0", [0.5, 0.8, 1.0])
def test_nsd_shifted_cube_within_tolerance_is_one(s0):
    p, g = shifted_cube_pair()
    assert M.nsd(p, g, (s0, 1.0, 1.0), tolerance=1.0) == pytest.approx(1.0)


@pytest.mark.parametrize("s0", [1.2, 1.5, 2.0])
def test_nsd_shifted_cube_beyond_tolerance_is_the_shared_face_fraction(s0):
    p, g = shifted_cube_pair()
    # other spacings >= s0, so no surface voxel is nearer another face than s0
    sp = (s0, 2.0, 2.0)
    assert M.nsd(p, g, sp, tolerance=1.0) == pytest.approx(N_ZERO / N_SURF, abs=1e-12)
    # a tolerance of s0 (inclusive, as MONAI's <=) accepts everything again
    assert M.nsd(p, g, sp, tolerance=s0) == pytest.approx(1.0)


def test_anisotropic_spacing_changes_nsd_as_it_should():
    """The same one-voxel shift is within 1 mm along a 0.8 mm axis, not along a 3 mm axis."""
    p0, g = shifted_cube_pair(axis=0)
    p2, _ = shifted_cube_pair(axis=2)
    sp = (0.8, 0.8, 3.0)
    assert M.nsd(p0, g, sp, tolerance=1.0) == pytest.approx(1.0)
    nsd_z = M.nsd(p2, g, sp, tolerance=1.0)
    # along z (3 mm) only the shared side faces are within 1 mm, plus, on the face that moved
    # into the other cube, the ring one in-plane voxel (0.8 mm) from a side face: 4(a-3) voxels
    assert nsd_z == pytest.approx((N_ZERO + 4 * (A - 3)) / N_SURF, abs=1e-12)
    # with isotropic 1 mm voxels that ring would be exactly 1 mm away too
    assert M.nsd(p2, g, (3.0, 3.0, 3.0), tolerance=1.0) == pytest.approx(N_ZERO / N_SURF, abs=1e-12)
    # 2 mm tolerance (the other common choice) adds the next ring (1.6 mm, 4(a-5) voxels), 3 mm all
    assert M.nsd(p2, g, sp, tolerance=2.0) == pytest.approx((N_ZERO + 4 * (A - 3) + 4 * (A - 5)) / N_SURF, abs=1e-12)
    assert M.nsd(p2, g, sp, tolerance=3.0) == pytest.approx(1.0)
    # and the distances are in mm: hd95 = the 3 mm slice thickness
    assert M.hd95(p2, g, sp) == pytest.approx(3.0)


def test_hd95_and_msd_of_shifted_cube():
    p, g = shifted_cube_pair()
    s0 = 1.5
    sp = (s0, 2.0, 2.0)
    # 1/3 of the distances are s0 (> 5%), so the 95th percentile is s0
    assert M.hd95(p, g, sp) == pytest.approx(s0)
    assert M.mean_surface_distance(p, g, sp) == pytest.approx(s0 * (N_SURF - N_ZERO) / N_SURF, abs=1e-12)


def test_nsd_of_balls_shifted_by_k_voxels():
    """Every surface voxel moves by exactly k * spacing: NSD = 1 at that tolerance, < 1 below it."""
    shape = (40, 40, 40)
    sp = (1.2, 1.0, 1.0)
    g = ball(shape, (20, 20, 20), 10)
    p = np.roll(g, 2, axis=0)
    assert M.nsd(p, g, sp, tolerance=2.4) == pytest.approx(1.0)
    assert M.nsd(p, g, sp, tolerance=2.3) < 1.0
    assert M.hd95(p, g, sp) <= 2.4 + 1e-9


def test_surface_distance_is_symmetric_and_zero_on_identity():
    g = ball((30, 30, 30), (15, 15, 15), 8)
    assert M.nsd(g, g, (1, 1, 1), tolerance=0.0) == 1.0
    assert M.hd95(g, g, (1, 1, 1)) == 0.0
    p = np.roll(g, 3, axis=1)
    a = M.all_metrics(p, g, (1.0, 0.7, 2.0), tolerance=1.0)
    b = M.all_metrics(g, p, (1.0, 0.7, 2.0), tolerance=1.0)
    for k in ("dice", "nsd", "hd95", "msd"):
        assert a[k] == pytest.approx(b[k])


def test_crop_to_union_box_gives_the_same_answer_as_the_full_grid():
    """Masks touching the grid border: the border counts as background both ways."""
    g = cube((12, 12, 12), (0, 0, 0), 6)
    p = cube((12, 12, 12), (0, 1, 0), 6)
    d = M.surface_distances(p, g, (1, 1, 1), margin=1)
    big_g = np.pad(g, 5)
    big_p = np.pad(p, 5)
    d2 = M.surface_distances(big_p, big_g, (1, 1, 1), margin=50)
    # padding adds no boundary voxels where the border already was background -> identical sets
    assert sorted(d.pred_to_gt) == sorted(d2.pred_to_gt)
    assert sorted(d.gt_to_pred) == sorted(d2.gt_to_pred)


# --- empty masks ---------------------------------------------------------------------------------
def test_both_empty_is_nan_by_default_and_one_when_asked():
    z = np.zeros((8, 8, 8), bool)
    m = M.all_metrics(z, z, (1, 1, 1))
    assert math.isnan(m["dice"]) and math.isnan(m["nsd"])
    assert math.isnan(m["hd95"]) and math.isnan(m["msd"])
    one = M.all_metrics(z, z, (1, 1, 1), empty_score=M.empty_score_value("one"))
    assert one["dice"] == 1.0 and one["nsd"] == 1.0
    assert math.isnan(one["hd95"])


@pytest.mark.parametrize("which", ["pred", "gt"])
def test_one_empty_is_zero_and_infinite_distance(which):
    z = np.zeros((8, 8, 8), bool)
    c = cube((8, 8, 8), (2, 2, 2), 3)
    p, g = (z, c) if which == "pred" else (c, z)
    m = M.all_metrics(p, g, (1, 1, 1), empty_score=1.0)
    assert m["dice"] == 0.0 and m["nsd"] == 0.0
    assert m["hd95"] == math.inf and m["msd"] == math.inf
    if which == "gt":
        assert math.isnan(m["volume_rel_diff"])
        assert m["volume_diff_mm3"] == 27.0


def test_empty_score_value_rejects_unknown_modes():
    assert math.isnan(M.empty_score_value("nan"))
    assert M.empty_score_value("one") == 1.0
    with pytest.raises(ValueError):
        M.empty_score_value("zero")


def test_volume_uses_spacing():
    c = cube((8, 8, 8), (0, 0, 0), 2)
    assert M.volume_mm3(c, (0.5, 2.0, 3.0)) == pytest.approx(8 * 3.0)


def test_shape_mismatch_and_bad_tolerance_raise():
    with pytest.raises(ValueError):
        M.dice(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)))
    with pytest.raises(ValueError):
        M.nsd(np.ones((3, 3, 3)), np.ones((3, 3, 3)), (1, 1, 1), tolerance=-1)

# Agreement with MONAI is tested on the real label maps in tests/integration/test_evaluate_real.py
# (importing monai costs ~10 s, too much for a unit test).


def test_edt_and_kdtree_distances_are_identical():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    g = ndimage.gaussian_filter(rng.random((40, 30, 20)), 2.5) > 0.5
    p = ndimage.binary_dilation(np.roll(g, 2, axis=1))
    sp = (0.7, 1.3, 2.5)
    a = M.surface_distances(p, g, sp, method="edt")
    b = M.surface_distances(p, g, sp, method="kdtree")
    np.testing.assert_allclose(a.pred_to_gt, b.pred_to_gt, atol=1e-9)
    np.testing.assert_allclose(a.gt_to_pred, b.gt_to_pred, atol=1e-9)
    assert 0 < M.nsd_from_distances(a, 1.0) < 1

