"""promptseg.preprocess on synthetic volumes: plans, intensity steps, and exact inversion geometry."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from promptseg.errors import ConfigError, InputError
from promptseg.io import Volume
from promptseg.preprocess import (Plan, Record, apply_to_label, clip_scale, clip_zscore, get_plan, invert,
                                  mean_std, nearest_indices, percentile_zscore, plan_names, preprocess_image,
                                  resampled_size, zscore)


def _oblique_permuted() -> np.ndarray:
    """Rotated by 0.3 rad about one axis and with permuted axes: array axis 0 runs mostly S/I."""
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    perm = np.array([[0, 1, 0], [0, 0, -1], [1, 0, 0]], dtype=float)
    return rot @ perm


DIRECTIONS = {
    "lps": np.eye(3),
    "ras": np.diag([-1.0, -1.0, 1.0]),
    "oblique_permuted": _oblique_permuted(),
    "left_handed": np.diag([1.0, -1.0, -1.0]) @ _oblique_permuted() @ np.diag([1.0, 1.0, -1.0]),
}


def _geom_plan(spacing=None, crop=None) -> Plan:
    return get_plan({"name": "test", "modality": "CT", "orientation": "RAS", "spacing": spacing,
                     "intensity": {"method": "none"}, "crop": crop})


def _world(vol_or_grid, idx):
    aff = vol_or_grid.affine_lps
    idx = np.asarray(idx, dtype=np.float64)
    return idx @ aff[:3, :3].T + aff[:3, 3]


# ---------------------------------------------------------------- plans

def test_every_builtin_plan_loads_and_round_trips():
    names = plan_names()
    for expected in ("universal_ct", "universal_mr", "hermes_ct", "hermes_mr", "uniseg_ct", "uniseg_mr",
                     "sat_ct", "sat_mr"):
        assert expected in names
    for name in names:
        plan = get_plan(name)
        assert get_plan(plan.to_dict()) == plan
        assert json.loads(json.dumps(plan.to_dict())) == plan.to_dict()
    um = get_plan("universal_ct")
    assert um.orientation == "RAS" and um.spacing == (1.5, 1.5, 1.5)
    assert um.intensity == {"method": "clip_scale", "lower": -175.0, "upper": 250.0, "out_min": 0.0, "out_max": 1.0}
    assert get_plan("hermes_ct").crop["margin"] == 20
    assert get_plan("hermes_ct").intensity["lower"] == -991.0
    assert get_plan("uniseg_ct").spacing == (1.5, 1.5, 3.0)
    assert get_plan("sat_ct").spacing == (1.0, 1.0, 3.0)
    assert get_plan("sat_mr").intensity == {"method": "percentile_zscore", "lower_pct": 0.5, "upper_pct": 99.5}


def test_plan_overrides_and_dict_forms():
    assert get_plan("universal_ct", spacing=None).spacing is None
    assert get_plan({"name": "universal_ct", "spacing": None}).spacing is None
    assert get_plan({"name": "universal_ct"}) == get_plan("universal_ct")
    p = get_plan({"base": "uniseg_ct", "name": "uniseg_task3", "spacing": [0.8, 0.8, 2.5]})
    assert p.name == "uniseg_task3" and p.spacing == (0.8, 0.8, 2.5) and p.intensity["upper"] == 325.0
    assert get_plan(p) == p


@pytest.mark.parametrize("bad", [
    dict(spacing=[1.5, 1.5]), dict(spacing=[1.5, -1, 1]), dict(orientation="RAR"), dict(orientation="XYZ"),
    dict(intensity={"method": "fancy"}), dict(intensity={"method": "clip_scale", "lower": 1}),
    dict(intensity={"method": "clip_scale", "lower": 5, "upper": 1}), dict(crop={"margin": -1}),
    dict(crop={"threshold": "max"}), dict(colour="blue"),
])
def test_bad_plan_values_raise_config_error(bad):
    with pytest.raises(ConfigError):
        get_plan("universal_ct", **bad)


def test_unknown_plan_lists_known_names():
    with pytest.raises(ConfigError) as err:
        get_plan("universal_us")
    assert "universal_us" in str(err.value)
    for name in plan_names():
        assert name in str(err.value)
    with pytest.raises(ConfigError):
        get_plan({"name": "custom", "spacing": [1, 1, 1]})  # not built-in and incomplete


# ---------------------------------------------------------------- intensity

def test_intensity_functions():
    hu = np.array([-1000, -175, 37.5, 250, 3000], dtype=np.float32)
    np.testing.assert_allclose(clip_scale(hu, -175, 250), [0, 0, 0.5, 1, 1], atol=1e-6)
    x = np.random.default_rng(0).normal(40, 300, 100_000).astype(np.float32)
    z = clip_zscore(x, -991, 500)
    assert z.dtype == np.float32 and abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-4
    clipped = np.clip(x, -991, 500)
    np.testing.assert_allclose(z, (clipped - clipped.mean()) / clipped.std(), atol=1e-4)
    p = percentile_zscore(x, 2, 98)
    lo, hi = np.percentile(x, [2, 98])
    ref = np.clip(x, lo, hi)
    np.testing.assert_allclose(p, (ref - ref.mean()) / ref.std(), atol=1e-4)
    assert np.all(zscore(np.full(10, 7.0)) == 0)  # constant image: no division by zero
    m, s = mean_std(x)
    assert abs(m - x.astype(np.float64).mean()) < 1e-6 and abs(s - x.astype(np.float64).std()) < 1e-6


def test_intensity_inplace_only_when_asked():
    x = np.linspace(-500, 500, 11, dtype=np.float32)
    before = x.copy()
    y = clip_scale(x, -175, 250)
    np.testing.assert_array_equal(x, before)
    z = clip_scale(x, -175, 250, inplace=True)
    assert z is x and np.array_equal(y, x)


# ---------------------------------------------------------------- orientation

@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_orientation_is_exact_permutation_and_keeps_world_positions(direction):
    shape = (5, 7, 4)
    arr = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    vol = Volume(arr, (0.9, 1.3, 2.7), (11.0, -40.5, 3.25), DIRECTIONS[direction])
    pre = preprocess_image(vol, _geom_plan())
    rec = pre.record
    ornt = ornt_transform(io_orientation(vol.affine), axcodes2ornt("RAS"))
    np.testing.assert_array_equal(pre.array, apply_orientation(arr, ornt).astype(np.float32))
    net = pre.volume
    assert "".join(nib.aff2axcodes(net.affine)) == "RAS"
    # every network voxel sits at the same place in the patient as the original voxel it holds
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in net.shape], indexing="ij"), -1).reshape(-1, 3)
    src = np.stack(np.unravel_index(pre.array.astype(np.int64).reshape(-1), shape), -1)
    np.testing.assert_allclose(_world(net, idx), _world(vol, src), atol=1e-9)
    back = invert(pre.array, rec)
    np.testing.assert_array_equal(back.array, arr)
    assert back.shape == vol.shape and back.spacing == vol.spacing and back.origin == vol.origin
    assert np.array_equal(back.direction, vol.direction)


# ---------------------------------------------------------------- resampling

def test_corner_aligned_sizes():
    assert resampled_size(30, 3.0, 1.5) == (59, 1.5)
    assert resampled_size(59, 1.5, 3.0) == (30, 3.0)
    n, s = resampled_size(512, 0.5703125, 1.5)
    assert n == 195 and abs((n - 1) * s - 511 * 0.5703125) < 1e-9
    assert resampled_size(1, 5.0, 1.5) == (1, 1.5)
    assert resampled_size(10, 1.5, None) == (10, 1.5)
    np.testing.assert_array_equal(nearest_indices(4, 7), [0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(nearest_indices(7, 4), [0, 2, 4, 6])


@pytest.mark.parametrize("direction", ["lps", "oblique_permuted", "left_handed"])
def test_3mm_to_1p5mm_label_round_trip_is_exact(direction):
    rng = np.random.default_rng(1)
    lab = rng.integers(0, 5, size=(12, 9, 7)).astype(np.uint8)
    vol = Volume(lab, (3.0, 3.0, 3.0), (-20.0, 5.0, 100.0), DIRECTIONS[direction])
    pre = preprocess_image(vol.with_array(lab.astype(np.int16)), _geom_plan(spacing=[1.5, 1.5, 1.5]))
    assert pre.record.resampled.shape == tuple(2 * n - 1 for n in pre.record.oriented.shape)
    np.testing.assert_allclose(pre.record.network.spacing, 1.5)
    moved = apply_to_label(vol, pre.record)
    assert moved.dtype == np.uint8 and moved.shape == pre.array.shape
    back = invert(moved, pre.record, interpolation="nearest")
    np.testing.assert_array_equal(back.array, lab)


@pytest.mark.parametrize("direction", ["ras", "oblique_permuted", "left_handed"])
def test_linear_resampling_is_geometrically_aligned(direction):
    """Trilinear reproduces a linear function of position exactly, so any misplaced voxel shows."""
    shape, spacing = (21, 17, 9), (0.77, 1.1, 3.3)
    vol = Volume(np.zeros(shape, np.float32), spacing, (3.0, -8.0, 40.0), DIRECTIONS[direction])
    coef = np.array([0.7, -0.4, 0.25])
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    vol.array = (_world(vol, idx) @ coef).astype(np.float32)
    pre = preprocess_image(vol, _geom_plan(spacing=[1.0, 1.0, 1.0]))
    net = pre.volume
    nidx = np.stack(np.meshgrid(*[np.arange(n) for n in net.shape], indexing="ij"), -1)
    np.testing.assert_allclose(pre.array, _world(net, nidx) @ coef, atol=2e-4)
    back = invert(pre.array, pre.record, interpolation="linear")
    np.testing.assert_allclose(back.array, vol.array, atol=2e-4)
    assert back.same_grid(vol)


# ---------------------------------------------------------------- crop

def _ct_with_box(lo, hi, shape=(30, 24, 16)) -> Volume:
    arr = np.full(shape, -1000, np.int16)
    arr[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 60
    return Volume(arr, (1.5, 1.5, 1.5), (0.0, 0.0, 0.0), DIRECTIONS["ras"])


def test_foreground_crop_box_margin_and_geometry():
    vol = _ct_with_box((5, 6, 7), (12, 15, 10))  # RAS grid at 1.5 mm: no reorientation, no resampling
    pre = preprocess_image(vol, get_plan("universal_ct"))
    rec = pre.record
    assert (rec.crop_lo, rec.crop_hi) == ((5, 6, 7), (12, 15, 10))
    assert pre.array.shape == (7, 9, 3) and pre.array.min() == pytest.approx(235 / 425)
    np.testing.assert_allclose(_world(pre.volume, [0, 0, 0]), _world(vol, [5, 6, 7]))
    margin = preprocess_image(vol, get_plan("universal_ct", crop={"threshold": 0.0, "margin": 6}))
    assert (margin.record.crop_lo, margin.record.crop_hi) == ((0, 0, 1), (18, 21, 16))  # clamped
    lab = vol.with_array((vol.array > 0).astype(np.uint8) * 2)
    back = invert(apply_to_label(lab, rec), rec)
    np.testing.assert_array_equal(back.array, lab.array)
    filled = invert(np.ones(pre.array.shape, np.int16), rec, fill=-5)
    assert (filled.array == -5).sum() == vol.array.size - pre.array.size


def test_no_foreground_means_no_crop():
    vol = _ct_with_box((0, 0, 0), (0, 0, 0))  # all air
    pre = preprocess_image(vol, "universal_ct")
    assert pre.array.shape == vol.shape and pre.record.crop_hi == vol.shape


def test_min_threshold_crop_for_zscored_images():
    arr = np.zeros((20, 20, 20), np.int16)
    arr[4:9, 10:16, 3:18] = 500  # 5.6 % of the volume: above the 2nd-98th percentile clip
    vol = Volume(arr, (1.5, 1.5, 1.5), direction=DIRECTIONS["ras"])
    pre = preprocess_image(vol, get_plan("hermes_mr", crop={"threshold": "min", "margin": 2}))
    assert pre.record.intensity["clip_upper"] == 500
    assert (pre.record.crop_lo, pre.record.crop_hi) == ((2, 8, 1), (11, 18, 20))


# ---------------------------------------------------------------- record and invert

def test_record_json_round_trip_and_network_volume():
    rng = np.random.default_rng(3)
    vol = Volume(rng.integers(-1000, 500, (16, 12, 8)).astype(np.int16), (0.8, 0.8, 2.5), (1, 2, 3),
                 DIRECTIONS["oblique_permuted"])
    pre = preprocess_image(vol, "hermes_ct")
    d = json.loads(json.dumps(pre.record.to_dict()))
    rec = Record.from_dict(d)
    assert rec == pre.record
    assert rec.intensity["std"] > 0 and rec.plan["name"] == "hermes_ct"
    a = invert(pre.array, pre.record, "linear").array
    np.testing.assert_array_equal(invert(pre.array, rec, "linear").array, a)
    nv = rec.network_volume(pre.array)
    assert nv.shape == pre.array.shape and nv.spacing == rec.network.spacing


def test_invert_channels_numpy_and_torch():
    rng = np.random.default_rng(4)
    vol = Volume(rng.integers(0, 3, (10, 11, 6)).astype(np.int16), (2.0, 2.0, 3.0), (0, 0, 0), DIRECTIONS["lps"])
    pre = preprocess_image(vol, _geom_plan(spacing=[1.0, 1.0, 1.5]))
    lab = apply_to_label(vol, pre.record)
    onehot = np.stack([lab == k for k in range(3)]).astype(np.float32)
    for arr in (onehot, torch.from_numpy(onehot)):
        soft = invert(arr, pre.record, interpolation="linear")
        assert soft.array.shape == (3,) + vol.shape and soft.array.dtype == np.float32
        np.testing.assert_array_equal(soft.array.argmax(0), vol.array)
        hard = invert(arr, pre.record, interpolation="nearest")
        np.testing.assert_array_equal(hard.array.argmax(0), vol.array)
    t = invert(torch.from_numpy(lab), pre.record)
    assert t.array.dtype == np.int16
    np.testing.assert_array_equal(t.array, vol.array)


def test_shape_and_grid_mismatches_raise_input_error():
    vol = Volume(np.zeros((8, 8, 8), np.int16), (1.0, 1.0, 1.0))
    pre = preprocess_image(vol, _geom_plan(spacing=[2.0, 2.0, 2.0]))
    with pytest.raises(InputError) as err:
        invert(np.zeros((3, 3, 3)), pre.record)
    assert "does not match" in str(err.value)
    other = Volume(np.zeros((8, 8, 8), np.uint8), (1.0, 1.0, 1.2), path="lab.nii.gz")
    with pytest.raises(InputError) as err:
        apply_to_label(other, pre.record)
    assert "lab.nii.gz" in str(err.value) and "spacing" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.uint8, np.float64, np.float32, ">i2", bool])
def test_the_float32_copy_equals_numpys_cast_for_any_layout(dtype):
    """The image is copied to float32 tile by tile (a transposing copy of a Fortran-ordered NIfTI
    array); values and C order are numpy's for every layout, flips included, across tile seams."""
    from promptseg.preprocess.pipeline import _float32_copy

    a = (np.random.default_rng(0).random((7, 6, 5)) * 30000).astype(dtype)
    frozen = np.asfortranarray(a)
    frozen.flags.writeable = False
    for view in (a, np.asfortranarray(a), a[::-1, :, ::-1], np.asfortranarray(a)[:, ::-1].transpose(2, 0, 1), frozen):
        out = _float32_copy(view, tile=2)
        assert out.dtype == np.float32 and out.flags.c_contiguous
        assert np.array_equal(out, np.ascontiguousarray(view, dtype=np.float32))
        assert not np.shares_memory(out, view)
