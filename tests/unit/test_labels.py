"""Label semantics on synthetic volumes: hierarchy, regions, left/right split, annotated classes."""
from __future__ import annotations

import numpy as np
import pytest

from promptseg.data.labels import annotated_classes, body_midline, label_to_targets, label_to_targets_with_info
from promptseg.data.manifest import LabelMapping as M

SHAPE = (40, 24, 16)


def _box(arr, x0, x1, y0=8, y1=16, z0=4, z1=12, value=1):
    arr[x0:x1, y0:y1, z0:z1] = value
    return arr


def _body(shift=0):
    """A 'CT' with air (-1000) around an off-centre soft-tissue body (40 HU)."""
    img = np.full(SHAPE, -1000.0, np.float32)
    img[4 + shift:36 + shift, 2:22, :] = 40.0
    return img


def test_annotated_classes_expand_groups_and_follow_taxonomy_order():
    maps = [M(0, "background", None, "background"), M(1, "liver", "liver", "synonym"),
            M(2, "kidney", "kidney", "synonym"), M(3, "x", None, "unmapped"), M(4, "ivc", "postcava", "synonym")]
    assert annotated_classes(maps) == ["right kidney", "left kidney", "liver", "postcava"]


def test_single_kidney_label_split_by_body_midline():
    lab = np.zeros(SHAPE, np.uint8)
    _box(lab, 6, 12)      # low x: patient's left in RAS
    _box(lab, 26, 33)     # high x: patient's right
    maps = [M(1, "kidney", "kidney", "synonym")]
    t, info = label_to_targets_with_info(lab, maps, ["right kidney", "left kidney"], image=_body())
    assert t.dtype == bool and t.shape == (2,) + SHAPE
    assert t[0][26:33, 8:16, 4:12].all() and t[0].sum() == 7 * 8 * 8
    assert t[1][6:12, 8:16, 4:12].all() and t[1].sum() == 6 * 8 * 8
    assert info["kidney"]["rule"] == "body centroid" and 19 < info["kidney"]["midline"] < 21
    # an LAS-like space (right toward low index) swaps the sides
    t2 = label_to_targets(lab, maps, ["right kidney", "left kidney"], image=_body(), right_is_high=False)
    assert np.array_equal(t2[0], t[1]) and np.array_equal(t2[1], t[0])
    # the left-right axis can be another array axis
    t3 = label_to_targets(np.moveaxis(lab, 0, 1), maps, ["right kidney", "left kidney"], lr_axis=1)
    assert np.array_equal(t3[0], np.moveaxis(t[0], 0, 1))


def test_single_kidney_without_image_uses_component_midpoint_and_keeps_organs_whole():
    lab = np.zeros(SHAPE, np.uint8)
    _box(lab, 2, 9)
    _box(lab, 14, 30)     # a big right kidney crossing the grid centre (x = 19.5) stays whole
    maps = [M(1, "kidney", "kidney", "synonym")]
    t, info = label_to_targets_with_info(lab, maps, ["right kidney", "left kidney"])
    assert info["kidney"]["rule"].startswith("midpoint") and info["kidney"]["straddling"] == 0
    assert t[0].sum() == 16 * 64 and t[1].sum() == 7 * 64


def test_one_kidney_only_goes_to_its_side_of_the_body():
    lab = _box(np.zeros(SHAPE, np.uint8), 6, 12)  # nephrectomy: only the left kidney remains
    t = label_to_targets(lab, [M(1, "kidney", "kidney", "synonym")], ["right kidney", "left kidney"], image=_body())
    assert t[0].sum() == 0 and t[1].sum() == 6 * 64


def test_component_straddling_the_midline_is_cut_by_the_plane():
    lab = _box(np.zeros(SHAPE, np.uint8), 10, 30)  # horseshoe: one component across the midline
    t, info = label_to_targets_with_info(lab, [M(1, "kidney", "kidney", "synonym")],
                                         ["right kidney", "left kidney"], image=_body())
    assert info["kidney"]["straddling"] == 1
    assert t[0].any() and t[1].any() and not (t[0] & t[1]).any() and (t[0] | t[1]).sum() == 20 * 64
    assert t[0][:20].sum() == 0 and t[1][21:].sum() == 0


def test_lesion_counts_as_its_organ_and_sided_parent_takes_the_lesion_by_component():
    lab = np.zeros(SHAPE, np.uint8)
    _box(lab, 6, 12, value=3)               # left kidney (explicit)
    _box(lab, 26, 33, value=2)              # right kidney (explicit)
    lab[30:33, 8:11, 4:6] = 4               # tumour inside the right kidney
    lab[12:14, 8:10, 4:6] = 4               # tumour touching the left kidney
    maps = [M(2, "kidney_right", "right kidney", "synonym"), M(3, "kidney_left", "left kidney", "synonym"),
            M(4, "tumor", "kidney tumor", "synonym (context: kidney tumor)")]
    cls = annotated_classes(maps)
    assert cls == ["right kidney", "left kidney", "kidney tumor"]
    t = label_to_targets(lab, maps, cls, image=_body())
    assert t[2].sum() == (lab == 4).sum()
    assert t[0].sum() == ((lab == 2) | ((lab == 4) & (np.arange(40)[:, None, None] > 20))).sum()
    assert t[1][12:14, 8:10, 4:6].all()                       # the tumour touching the left kidney
    assert (t[0] & t[2]).sum() + (t[1] & t[2]).sum() == t[2].sum()  # each tumour voxel in one kidney


def test_hierarchy_is_transitive_and_ignored_values_are_background():
    lab = np.zeros(SHAPE, np.uint8)
    _box(lab, 10, 30, value=1)              # liver
    lab[12:14, 9:11, 5:7] = 2               # hepatic vessel
    lab[20:22, 9:11, 5:7] = 3               # hepatic vessel tumour (parent: liver)
    lab[0:2, 0:2, 0:2] = 7                  # something unmapped
    maps = [M(1, "liver", "liver", "synonym"), M(2, "vessel", "hepatic vessel", "synonym"),
            M(3, "tumour", "hepatic vessel tumor", "synonym"), M(7, "rib", None, "unmapped")]
    t = label_to_targets(lab, maps, ["liver", "hepatic vessel", "hepatic vessel tumor"])
    assert t[0].sum() == 20 * 64 and t[1].sum() == 8 and t[2].sum() == 8
    assert not t[:, 0:2, 0:2, 0:2].any()
    # a class the dataset does not map stays empty (the caller's annotated set excludes it)
    assert not label_to_targets(lab, maps, ["spleen"]).any()


def test_region_values_form_one_overlapping_class():
    lab = np.zeros(SHAPE, np.uint8)
    lab[2:6] = 1
    lab[6:10] = 2
    maps = [M(1, "kidney+tumour", "right kidney", "user", values=[1, 2]), M(2, "tumour", "kidney tumor", "user")]
    t = label_to_targets(lab, maps, ["right kidney", "kidney tumor"])
    assert t[0].sum() == 8 * 24 * 16 and t[1].sum() == 4 * 24 * 16 and (t[0] & t[1]).sum() == t[1].sum()


def test_body_midline():
    assert body_midline(_body(shift=3)) == pytest.approx(22.5, abs=0.01)
    assert body_midline(np.zeros(SHAPE)) is None
