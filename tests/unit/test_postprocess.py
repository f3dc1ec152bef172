"""Post-processing rules on synthetic masks with known answers (RAS grid: axis 0 -> patient right)."""
import numpy as np
import pytest

from promptseg.errors import ConfigError
from promptseg.inference.postprocess import (
    body_mask_from_image,
    grow_region,
    largest_components,
    load_rules,
    midline,
    postprocess,
)
from promptseg.io.volume import patient_axis

SHAPE = (40, 30, 30)
LPS_GRID = np.eye(3)  # a grid stored LPS: axis 0 runs toward the patient's LEFT


def box(lo, hi, shape=SHAPE):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_patient_axis_ras_and_lps():
    assert patient_axis(None, "right") == (0, 1)
    assert patient_axis(None, "superior") == (2, 1)
    assert patient_axis(LPS_GRID, "right") == (0, -1)
    # axes permuted: array axis 2 runs toward the patient's right (LPS x negative)
    d = np.array([[0, 0, -1.0], [1.0, 0, 0], [0, 1.0, 0]])
    assert patient_axis(d, "right") == (2, 1)
    assert patient_axis(d, "superior") == (1, 1)


def test_largest_component_keeps_biggest_blob_only():
    big = box((2, 2, 2), (10, 10, 10))
    small = box((20, 20, 20), (23, 23, 23))
    out = postprocess({"liver": big | small})["liver"]
    assert np.array_equal(out, big)


def test_diagonal_neighbours_are_one_component():
    m = np.zeros((5, 5, 5), bool)
    m[1, 1, 1] = m[2, 2, 2] = True  # corner contact: 26-connected
    m[4, 4, 0] = True
    assert largest_components(m, 1).sum() == 2


def test_multi_instance_class_untouched():
    blobs = box((2, 2, 2), (6, 6, 6)) | box((20, 20, 20), (23, 23, 23))
    out = postprocess({"colon": blobs})["colon"]  # colon: single_instance false
    assert np.array_equal(out, blobs)


def test_single_instance_lesion_keeps_its_largest_component():
    """The taxonomy's single_instance holds for lesions too: a soft-tissue sarcoma is one mass
    (IBSI's GTV), so a second blob is a false positive; a liver tumour may be many."""
    mass, speck = box((2, 2, 2), (10, 10, 10)), box((20, 20, 20), (23, 23, 23))
    out = postprocess({"soft tissue sarcoma": mass | speck, "liver tumor": mass | speck})
    assert np.array_equal(out["soft tissue sarcoma"], mass)
    assert np.array_equal(out["liver tumor"], mass | speck)  # no liver asked: kept as is


def test_lesion_kept_only_near_parent():
    liver = box((10, 5, 5), (20, 15, 15))
    inside = box((12, 7, 7), (14, 9, 9))
    touching = box((20, 8, 8), (22, 10, 10))  # 2 voxels beyond the edge: inside the 5^3 dilation
    far = box((30, 20, 20), (33, 23, 23))
    out = postprocess({"liver": liver, "liver tumor": inside | touching | far})
    assert np.array_equal(out["liver tumor"], inside | touching)
    assert np.array_equal(out["liver"], liver)


@pytest.mark.parametrize("workers", [1, 2])
def test_lesions_sharing_a_parent_are_each_kept_near_it(workers):
    """Liver tumour and hepatic vessel tumour share the liver's grown region (grown once, side by
    side with the kidneys' for the kidney tumour); each lesion keeps only its own voxels near it."""
    body = box((0, 0, 0), SHAPE)
    liver = box((10, 5, 5), (20, 15, 15))
    kidney = box((28, 18, 18), (34, 24, 24))
    near_liver, far = box((12, 7, 7), (14, 9, 9)), box((30, 2, 2), (33, 5, 5))
    vessel = box((21, 6, 6), (22, 8, 8))  # 1 voxel beyond the liver: inside the dilation
    near_kidney = box((29, 19, 19), (31, 21, 21))
    masks = {"liver": liver, "right kidney": kidney, "liver tumor": near_liver | far,
             "hepatic vessel tumor": vessel | far | near_kidney, "kidney tumor": near_kidney | near_liver}
    out = postprocess(masks, body_mask=body, workers=workers)
    assert np.array_equal(out["liver tumor"], near_liver)
    assert np.array_equal(out["hepatic vessel tumor"], vessel)
    assert np.array_equal(out["kidney tumor"], near_kidney)


def test_lesion_parent_group_uses_both_kidneys():
    body = box((0, 0, 0), SHAPE)
    right = box((28, 10, 10), (34, 16, 16))  # axis 0 high = patient right
    left = box((4, 10, 10), (10, 16, 16))
    tum = box((5, 11, 11), (7, 13, 13)) | box((30, 11, 11), (32, 13, 13)) | box((18, 25, 25), (20, 27, 27))
    out = postprocess(
        {"right kidney": right, "left kidney": left, "kidney tumor": tum}, body_mask=body
    )
    expected = box((5, 11, 11), (7, 13, 13)) | box((30, 11, 11), (32, 13, 13))
    assert np.array_equal(out["kidney tumor"], expected)


def test_lesion_without_parent_kept_with_note():
    tum = box((5, 5, 5), (8, 8, 8))
    notes = []
    out = postprocess({"liver tumor": tum}, notes=notes)
    assert np.array_equal(out["liver tumor"], tum)
    assert notes and "liver" in notes[0]


def test_lesion_removed_when_parent_predicted_empty():
    out = postprocess({"liver": np.zeros(SHAPE, bool), "liver tumor": box((5, 5, 5), (8, 8, 8))})
    assert not out["liver tumor"].any()


def test_lateral_class_loses_wrong_side_ras():
    body = box((0, 0, 0), (40, 30, 30))  # midline at index 19.5
    rk = box((25, 5, 5), (32, 10, 10)) | box((5, 5, 5), (8, 8, 8))
    out = postprocess({"right kidney": rk}, body_mask=body, rules={"largest_component": False})
    assert np.array_equal(out["right kidney"], box((25, 5, 5), (32, 10, 10)))


def test_lateral_side_follows_direction_and_body_midline():
    # LPS grid: axis 0 runs to the patient's left, so a right organ sits at LOW indices.
    body = box((0, 0, 0), (20, 30, 30))  # body only in the first half: midline 9.5, not 19.5
    lk = box((12, 5, 5), (15, 8, 8)) | box((2, 5, 5), (6, 8, 8))
    out = postprocess({"left kidney": lk}, body_mask=body, direction=LPS_GRID,
                      rules={"largest_component": False})
    assert np.array_equal(out["left kidney"], box((12, 5, 5), (15, 8, 8)))


def test_lungs_split_by_components_and_centroid():
    body = box((0, 0, 0), SHAPE)
    a = box((2, 5, 5), (15, 20, 25))   # low index: patient left in RAS
    b = box((22, 5, 5), (38, 20, 25))  # high index: patient right
    speck = box((18, 27, 27), (19, 28, 28))
    # the network put both lungs (and a speck) into both classes
    out = postprocess({"right lung": a | b | speck, "left lung": a | b}, body_mask=body)
    assert np.array_equal(out["right lung"], b)
    assert np.array_equal(out["left lung"], a)


def test_fused_lungs_cut_at_midline():
    body = box((0, 0, 0), SHAPE)
    fused = box((2, 5, 5), (38, 20, 25))
    out = postprocess({"right lung": fused, "left lung": np.zeros(SHAPE, bool)}, body_mask=body)
    assert np.array_equal(out["right lung"], box((20, 5, 5), (38, 20, 25)))
    assert np.array_equal(out["left lung"], box((2, 5, 5), (20, 20, 25)))
    assert not (out["left lung"] & out["right lung"]).any()


def test_portal_vein_cut_below_pancreas():
    pancreas = box((10, 10, 12), (20, 15, 18))
    vein = box((15, 5, 4), (17, 7, 25))  # z 4..24; pancreas lowest slice z=12 (axis 2 = superior)
    out = postprocess({"pancreas": pancreas, "portal vein and splenic vein": vein})
    assert np.array_equal(out["portal vein and splenic vein"], box((15, 5, 12), (17, 7, 25)))
    kept = postprocess({"portal vein and splenic vein": vein})  # no pancreas asked: unchanged
    assert np.array_equal(kept["portal vein and splenic vein"], vein)


def test_min_lesion_volume_drops_specks():
    liver = box((5, 5, 5), (30, 25, 25))
    tum = box((8, 8, 8), (12, 12, 12)) | box((20, 20, 20), (21, 21, 21))
    out = postprocess({"liver": liver, "liver tumor": tum}, spacing=(2.0, 2.0, 2.0),
                      rules={"min_lesion_volume_mm3": 16})  # 2 voxels of 8 mm^3
    assert np.array_equal(out["liver tumor"], box((8, 8, 8), (12, 12, 12)))


def test_unknown_class_passes_through():
    m = box((2, 2, 2), (4, 4, 4)) | box((10, 10, 10), (12, 12, 12))
    assert np.array_equal(postprocess({"my custom blob": m})["my custom blob"], m)


def test_grow_region_matches_whole_grid_operation():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    m = np.zeros((30, 30, 30), bool)
    m[8:20, 10:22, 9:14] = rng.random((12, 12, 5)) > 0.3
    k = np.ones((5, 5, 5), bool)
    ref = ndimage.binary_dilation(ndimage.binary_closing(np.pad(m, 12), k), k)[12:-12, 12:-12, 12:-12]
    assert np.array_equal(grow_region(m, 5, 5), ref)


def test_body_mask_and_midline():
    img = np.zeros((40, 30, 20), np.float32)
    img[10:30, 5:25, :] = 1.0  # body offset toward high index
    img[2:4, 2:4, 2:4] = 1.0  # a separate speck (table/noise)
    body = body_mask_from_image(img)
    assert body[10:30, 5:25, :].all() and not body[2:4, 2:4, 2:4].any()
    assert midline(body, body.shape, 0) == pytest.approx(19.5)
    assert midline(None, (40, 30, 20), 0) == pytest.approx(19.5)


def test_rules_override_and_unknown_key():
    assert load_rules({"connectivity": 6})["connectivity"] == 6
    with pytest.raises(ConfigError):
        load_rules({"no_such_rule": 1})


def test_min_fraction_keeps_comparable_halves_only():
    half_a = box((2, 2, 2), (8, 8, 8))      # 216 voxels
    half_b = box((20, 2, 2), (26, 8, 7))    # 180 voxels: 83 % of the largest
    speck = box((30, 20, 20), (32, 22, 22))  # 8 voxels
    m = half_a | half_b | speck
    assert np.array_equal(largest_components(m, 1), half_a)
    assert np.array_equal(largest_components(m, 1, min_fraction=0.5), half_a | half_b)
    out = postprocess({"pancreas": m}, rules={"largest_component_min_fraction": 0.5})["pancreas"]
    assert np.array_equal(out, half_a | half_b)
