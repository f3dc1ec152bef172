"""SAT's vocabulary: every SAT term and every TotalSegmentator name of the real scans resolves."""
from __future__ import annotations

import json

import pytest

from promptseg.errors import TaxonomyError
from promptseg.taxonomy import default_taxonomy
from promptseg.taxonomy.sat_vocabulary import resolve_sat_term, sat_vocabulary


def test_vocabulary_facts():
    vocab = sat_vocabulary()
    assert len(vocab) == 451
    assert sum(len(t.modalities) for t in vocab.values()) == 498
    assert set(vocab["liver"].modalities) == {"ct", "mri"}
    assert all(t.regions and t.modalities for t in vocab.values())


def test_every_term_resolves_to_itself():
    assert [t for t in sat_vocabulary() if resolve_sat_term(t) != t] == []


@pytest.mark.parametrize("folder", ["ct_abdomen_pelvis", "ct_abdomen_small", "mr_abdomen_small"])
def test_totalsegmentator_names_resolve(shared_data, folder):
    names = json.loads((shared_data / folder / "labels.json").read_text()).values()
    resolved = {n: resolve_sat_term(n) for n in names}
    assert all(t in sat_vocabulary() for t in resolved.values())
    if "vertebrae_L1" in resolved:
        assert resolved["vertebrae_L1"] == "lumbar vertebrae 1 (l1)"
    if "lung_upper_lobe_left" in resolved:
        assert resolved["lung_upper_lobe_left"] == "left lung upper lobe"


def test_registry_synonyms_and_errors():
    assert resolve_sat_term("kidney tumour") == "kidney tumor"
    assert resolve_sat_term("Kidney_Left") == "left kidney"
    assert resolve_sat_term("gall bladder") == "gallbladder"
    with pytest.raises(TaxonomyError, match="'prostate' or 'uterus'"):
        resolve_sat_term("prostate/uterus", default_taxonomy())
    with pytest.raises(TaxonomyError, match="closest SAT terms"):
        resolve_sat_term("flux capacitor")
