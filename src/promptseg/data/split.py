"""Patient-wise hold-out: which cases a run validates on instead of training on.

Why by patient: a sarcoma patient's CT, MR and PET show the same tumour (cases `STS_001` of the
datasets sts_CT, sts_MR and sts_PET); validating on one of them while training on another
measures memory, not generalisation. So a split picks patients, and every case of a held-out
patient, in every dataset, goes to the held-out side.
"""
from __future__ import annotations

import fnmatch
import re
from typing import Iterable, Sequence, TypeVar

import numpy as np

from ..errors import ConfigError

T = TypeVar("T")


def patient_of(case_id: str, pattern: str | None = None) -> str:
    """The patient of a case: the case id, or the first group (else the whole match) of `pattern`."""
    if not pattern:
        return case_id
    m = re.search(pattern, case_id)
    if m is None:
        return case_id
    return m.group(1) if m.groups() else m.group(0)


def _selected(dataset: str, globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(dataset, g) for g in globs)


def held_out_patients(cases: Iterable, fraction: float, seed: int = 0, datasets: Sequence[str] = ("*",),
                      pattern: str | None = None) -> list[str]:
    """`fraction` of the patients of the selected datasets (at least one), drawn with `seed`."""
    patients = sorted({patient_of(c.id, pattern) for c in cases if _selected(c.dataset, datasets)})
    if not patients or fraction <= 0:
        return []
    n = min(len(patients) - 1, max(1, round(fraction * len(patients))))
    if n < 1:
        raise ConfigError(f"validation.fraction: only one patient ({patients[0]}) in {', '.join(datasets)}; "
                          f"nothing would be left to train on")
    order = np.random.default_rng(seed).permutation(len(patients))
    return sorted(patients[i] for i in order[:n])


def split_by_patient(cases: Sequence[T], patients: Iterable[str], datasets: Sequence[str] = ("*",),
                     pattern: str | None = None, setting: str = "validation.holdout") -> tuple[list[T], list[T]]:
    """(training cases, held-out cases): a case of a selected dataset whose patient is in
    `patients` is held out; unknown patient ids are a one-line error (a typo would hold out nothing)."""
    want = set(patients)
    known = {patient_of(c.id, pattern) for c in cases if _selected(c.dataset, datasets)}
    missing = sorted(want - known)
    if missing:
        raise ConfigError(f"{setting}: no case of patient(s) {', '.join(missing)} in the datasets "
                          f"{', '.join(datasets)}")
    train, held = [], []
    for c in cases:
        out = _selected(c.dataset, datasets) and patient_of(c.id, pattern) in want
        (held if out else train).append(c)
    return train, held
