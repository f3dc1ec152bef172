"""Merging overlapping class masks into one label map: layer order and probability ties."""
import numpy as np
import pytest

from promptseg.inference.merge import label_dtype, label_values, merge
from promptseg.taxonomy import default_taxonomy


def box(lo, hi, shape=(20, 20, 20)):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_values_are_taxonomy_ids_and_unknown_get_fresh_values():
    tax = default_taxonomy()
    v = label_values(["liver", "liver tumor", "my blob", "other blob"], tax)
    top = max(c.id for c in tax.classes)
    assert v == {"liver": 6, "liver tumor": 27, "my blob": top + 1, "other blob": top + 2}


def test_lesion_over_vessel_over_organ_regardless_of_order():
    liver = box((0, 0, 0), (10, 10, 10))
    vessel = box((2, 2, 2), (4, 4, 10))
    tumour = box((3, 3, 3), (6, 6, 6))
    vals = {"liver tumor": 27, "hepatic vessel": 15, "liver": 6}
    # lesion first in the dict, organ last: order of the input must not matter
    out = merge({"liver tumor": tumour, "hepatic vessel": vessel, "liver": liver}, None, values=vals)
    assert out.dtype == np.uint8
    assert (out[tumour] == 27).all()
    assert (out[vessel & ~tumour] == 15).all()
    assert (out[liver & ~vessel & ~tumour] == 6).all()
    assert (out[~liver] == 0).all()
    # low probabilities of the lesion do not matter across layers
    probs = {"liver": np.full(liver.shape, 0.99, np.float32), "hepatic vessel": np.full(liver.shape, 0.6, np.float32),
             "liver tumor": np.full(liver.shape, 0.51, np.float32)}
    assert np.array_equal(merge({"liver tumor": tumour, "hepatic vessel": vessel, "liver": liver}, probs, values=vals), out)


def test_organ_overlap_goes_to_higher_probability():
    liver = box((0, 0, 0), (10, 10, 10))
    stomach = box((8, 0, 0), (16, 10, 10))  # overlap on x = 8, 9
    p_liver = np.zeros(liver.shape, np.float32)
    p_stomach = np.zeros(liver.shape, np.float32)
    p_liver[liver] = 0.7
    p_stomach[stomach] = 0.6
    p_stomach[9] = 0.9  # stomach more confident on the second overlapping slice
    out = merge({"liver": liver, "stomach": stomach}, {"liver": p_liver, "stomach": p_stomach})
    assert (out[8, :10, :10] == 6).all()
    assert (out[9, :10, :10] == 7).all()
    assert (out[:8, :10, :10] == 6).all() and (out[10:16, :10, :10] == 7).all()


def test_uint8_probabilities_work_like_floats():
    a = box((0, 0, 0), (10, 10, 10))
    b = box((5, 0, 0), (15, 10, 10))
    pa = np.where(a, 200, 0).astype(np.uint8)
    pb = np.where(b, 100, 0).astype(np.uint8)
    out = merge({"spleen": a, "pancreas": b}, {"spleen": pa, "pancreas": pb})
    assert (out[5:10, :10, :10] == 1).all()


def test_without_probabilities_later_class_wins_in_layer():
    a = box((0, 0, 0), (10, 10, 10))
    b = box((5, 0, 0), (15, 10, 10))
    out = merge({"spleen": a, "pancreas": b}, None)
    assert (out[5:10, :10, :10] == 11).all() and (out[:5, :10, :10] == 1).all()


def test_large_values_use_uint16():
    a = box((0, 0, 0), (3, 3, 3))
    out = merge({"x": a}, None, values={"x": 300})
    assert out.dtype == np.uint16 and out.max() == 300
    assert label_dtype({"x": 255}) == np.uint8


def test_bad_input_is_reported():
    with pytest.raises(ValueError):
        merge({}, None)
    with pytest.raises(ValueError):
        merge({"liver": np.zeros((3, 3, 3), bool), "spleen": np.zeros((4, 3, 3), bool)}, None)
