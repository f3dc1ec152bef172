"""taxonomy.query: a prompt resolved once; and the body crop as a step of the preprocessing record."""
from __future__ import annotations

import numpy as np
import pytest

from promptseg.errors import TaxonomyError
from promptseg.io import Volume
from promptseg.preprocess import get_plan, invert, preprocess_image
from promptseg.taxonomy import default_taxonomy
from promptseg.taxonomy.query import resolve_queries

KNOWN = ["spleen", "right kidney", "left kidney", "liver", "liver tumor", "hepatic vessel"]


def strict(tax):
    def canonical(p: str) -> str:
        info = tax.get(p)
        if info is None or info.name not in KNOWN:
            raise TaxonomyError(f"this model cannot segment {p!r}")
        return info.name
    return canonical


def test_queries_carry_every_fact_once():
    tax = default_taxonomy()
    qs = resolve_queries(["kidney", "Hepar", "liver", "hepatic tumour", "hepatic vessel"], tax, KNOWN, strict(tax),
                         thresholds={"Liver": 0.7})
    assert [q.name for q in qs] == ["right kidney", "left kidney", "liver", "liver tumor", "hepatic vessel"]
    assert [q.index for q in qs] == [1, 2, 3, 4, 5]
    assert [q.label_value for q in qs] == [tax.get(q.name).id for q in qs]
    assert [q.threshold for q in qs] == [0.5, 0.5, 0.7, 0.5, 0.5]
    assert [q.layer for q in qs] == [0, 0, 0, 2, 1]  # organ, vessel, lesion: the merge order
    assert [q.name for q in resolve_queries(None, tax, KNOWN, strict(tax))] == KNOWN
    with pytest.raises(TaxonomyError, match="brain stem"):
        resolve_queries(["liver", "brain stem"], tax, KNOWN, strict(tax))


def test_free_text_class_gets_the_next_free_label_value():
    tax = default_taxonomy()
    qs = resolve_queries(["liver", "my odd blob"], tax, [], lambda p: tax.get(p).name if tax.get(p) else p)
    top = max(c.id for c in tax.classes)
    assert [(q.label_value, q.index, q.layer, q.info is None) for q in qs] == [(6, -1, 0, False), (top + 1, -1, 0, True)]


def test_body_crop_is_a_record_step_inverted_exactly():
    rng = np.random.default_rng(0)
    arr = rng.normal(0, 50, (30, 26, 12)).astype(np.float32)
    vol = Volume(arr, (1.2, 1.0, 2.5), (5.0, -3.0, 8.0))
    pre = preprocess_image(vol, get_plan("universal_ct", spacing=None, crop=None))
    box = (slice(4, 25), slice(3, 20), slice(2, 11))
    cut = pre.crop(box)
    assert cut.array.shape == (21, 17, 9)
    np.testing.assert_array_equal(cut.array, pre.array[box])
    assert cut.record.crop_lo == (4, 3, 2) and cut.record.network.shape == (21, 17, 9)
    marks = (cut.array > 0).astype(np.uint8)
    full = np.zeros(pre.array.shape, np.uint8)
    full[box] = marks
    np.testing.assert_array_equal(invert(marks, cut.record).array, invert(full, pre.record).array)
    assert pre.crop((slice(None),) * 3) is pre
