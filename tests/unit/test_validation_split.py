"""Validation holds out PATIENTS: every scan of a held-out patient, in every modality, is held out."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from promptseg.config import resolve_config
from promptseg.data.split import held_out_patients, patient_of, split_by_patient
from promptseg.errors import ConfigError
from promptseg.train.validate import split_cases


@dataclass
class C:
    id: str
    dataset: str
    modality: str = "CT"


def _sarcoma():
    """25 patients: CT for some, MR for most, PET for all (as sts_sarcoma), plus an abdomen scan."""
    cases = [C(f"STS_{i:03d}", "sts_PET", "PET") for i in range(1, 26)]
    cases += [C(f"STS_{i:03d}", "sts_MR", "MR") for i in range(1, 26) if i % 7]
    cases += [C(f"STS_{i:03d}", "sts_CT", "CT") for i in range(1, 26) if i % 3]
    return cases + [C("abdomen", "ct_abdomen")]


def _patients_sides(train, held):
    return {c.id for c in train if c.dataset.startswith("sts")}, {c.id for c in held}


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_fraction_split_never_puts_a_patient_on_both_sides(seed):
    cases = _sarcoma()
    patients = held_out_patients(cases, 0.2, seed, ["sts_*"])
    assert len(patients) == 5
    train, held = split_by_patient(cases, patients, ["sts_*"])
    tr, he = _patients_sides(train, held)
    assert not tr & he and he == set(patients)
    for p in patients:  # all of the patient's modalities are held out
        assert {c.modality for c in held if c.id == p} == {c.modality for c in cases if c.id == p}
    assert any(c.id == "abdomen" for c in train) and len(train) + len(held) == len(cases)


def test_split_is_reproducible_and_seeded():
    cases = _sarcoma()
    assert held_out_patients(cases, 0.2, 3, ["sts_*"]) == held_out_patients(list(reversed(cases)), 0.2, 3, ["sts_*"])
    assert held_out_patients(cases, 0.2, 3, ["sts_*"]) != held_out_patients(cases, 0.2, 4, ["sts_*"])


def test_patient_pattern_groups_scans_of_one_patient():
    assert patient_of("P07_scan2", r"^(P\d+)_") == "P07" and patient_of("other") == "other"
    cases = [C("P07_scan1", "a"), C("P07_scan2", "a"), C("P08_scan1", "a")]
    train, held = split_by_patient(cases, ["P07"], pattern=r"^(P\d+)_")
    assert [c.id for c in held] == ["P07_scan1", "P07_scan2"] and [c.id for c in train] == ["P08_scan1"]


def test_holdout_ids_from_the_run_config_and_typos():
    cases = _sarcoma()
    config = {"validation": {"holdout": ["STS_002", "STS_014"], "split_datasets": ["sts_*"]}}
    train, held = split_cases(config, cases)
    assert {c.id for c in held} == {"STS_002", "STS_014"} and len(held) == 2 + 2 + 1
    with pytest.raises(ConfigError, match="STS_999"):
        split_cases({"validation": {"holdout": ["STS_999"], "split_datasets": ["sts_*"]}}, cases)


def test_test_patients_are_neither_trained_nor_validated_on():
    """`test` patients leave both sides before the validation split; a `fraction` is then drawn
    from the remaining patients only."""
    cases = _sarcoma()
    test = ["STS_002", "STS_008", "STS_014"]
    config = {"validation": {"holdout": ["STS_005"], "test": test, "split_datasets": ["sts_*"]}}
    train, held = split_cases(config, cases)
    tr, he = _patients_sides(train, held)
    assert he == {"STS_005"} and not tr & set(test) and not tr & he
    assert len(train) + len(held) + sum(c.id in test for c in cases) == len(cases)
    config = {"validation": {"fraction": 0.2, "seed": 0, "test": test, "split_datasets": ["sts_*"]}}
    train, held = split_cases(config, cases)
    tr, he = _patients_sides(train, held)
    assert he and not he & set(test) and not tr & set(test) and not tr & he
    with pytest.raises(ConfigError, match="validation.test: .*STS_999"):
        split_cases({"validation": {"test": ["STS_999"], "split_datasets": ["sts_*"]}}, cases)


def test_validation_section_is_checked():
    with pytest.raises(ConfigError, match="validation.every"):
        resolve_config({"validation": {"every": -1}})
    with pytest.raises(ConfigError, match="nothing to validate"):
        resolve_config({"validation": {"every": 10}})
    with pytest.raises(ConfigError, match="not both"):
        resolve_config({"validation": {"holdout": ["a"], "fraction": 0.2}})
    with pytest.raises(ConfigError, match="both `holdout` and `test`"):
        resolve_config({"validation": {"holdout": ["a"], "test": ["a", "b"]}})
    with pytest.raises(ConfigError, match="validation.test"):
        resolve_config({"validation": {"test": "STS_002"}})
    with pytest.raises(ConfigError, match="validation.evry"):
        resolve_config({"validation": {"evry": 10}})
