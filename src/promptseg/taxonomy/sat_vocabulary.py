"""SAT's vocabulary (sat_vocabulary.yaml) and how any name a user types becomes one of its terms.

Why: SAT is prompted with its own training names ("left lung upper lobe", "lumbar vertebrae 1 (l1)");
users type TotalSegmentator names ("lung_upper_lobe_left", "vertebrae_L1") or the registry's synonyms
("kidney tumour"). A name resolves, in order, by: its own spelling; TotalSegmentator's naming rules
(laterality word to the front, vertebra codes spelled out, a plural's singular); the registry class it names, through that
class's spellings. More than one SAT term at the first step that finds any is an error listing them.
"""
from __future__ import annotations

import re
from difflib import SequenceMatcher
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from ..errors import TaxonomyError
from .registry import Taxonomy, default_taxonomy, normalize

_SPINE = {"c": "cervical", "t": "thoracic", "l": "lumbar", "s": "sacral"}


@dataclass(frozen=True)
class SATTerm:
    name: str
    modalities: tuple[str, ...]
    regions: tuple[str, ...]


def _keys(name: str) -> set[str]:
    """Lookup keys of a term: its normalised spelling, and without a trailing '(code)'."""
    key = normalize(name)
    out = {key}
    bare = re.sub(r"\s*\([^)]*\)\s*$", "", name.strip())
    if bare != name.strip():
        out.add(normalize(bare))
    return out


@lru_cache(maxsize=1)
def sat_vocabulary() -> dict[str, SATTerm]:
    """Term name -> SATTerm, from the packaged data file."""
    doc = yaml.safe_load(resources.files("promptseg.taxonomy").joinpath("sat_vocabulary.yaml").read_text(encoding="utf-8"))
    return {t["name"]: SATTerm(t["name"], tuple(t["modalities"]), tuple(t["regions"])) for t in doc["terms"]}


@lru_cache(maxsize=1)
def _index() -> dict[str, tuple[str, ...]]:
    index: dict[str, set[str]] = {}
    for term in sat_vocabulary():
        for key in _keys(term):
            index.setdefault(key, set()).add(term)
    return {k: tuple(sorted(v)) for k, v in index.items()}


def totalsegmentator_spelling(name: str) -> str:
    """TotalSegmentator's 'organ_part_left' / 'vertebrae_L1' naming -> SAT's word order."""
    key = normalize(name)
    m = re.fullmatch(r"vertebrae ([ctls])(\d+)", key)
    if m:
        return f"{_SPINE[m.group(1)]} vertebrae {m.group(2)} ({m.group(1)}{m.group(2)})"
    words = key.split()
    side = [w for w in words if w in ("left", "right")]
    if len(side) == 1 and words[0] != side[0]:
        words.remove(side[0])
        return " ".join([side[0], *words])
    return key


def _lookup(name: str) -> set[str]:
    found: set[str] = set()
    for key in _keys(name):
        found.update(_index().get(key, ()))
    return found


def resolve_sat_term(name: str, taxonomy: Taxonomy | None = None) -> str:
    """The SAT term `name` means; unknown -> closest terms listed; ambiguous -> every candidate listed."""
    ts = totalsegmentator_spelling(name)
    steps = [lambda: _lookup(name), lambda: _lookup(ts),
             lambda: _lookup(ts[:-1]) if ts.endswith("s") else set()]  # TotalSegmentator plurals
    tax = taxonomy or default_taxonomy()

    def via_registry() -> set[str]:
        info = tax.get(name)
        if info is None:
            return set()
        exact = _lookup(info.name)
        return exact or {t for s in info.synonyms for t in _lookup(s)}

    for step in [*steps, via_registry]:
        found = step()
        if len(found) == 1:
            return found.pop()
        if found:
            raise TaxonomyError(f"{name!r} could mean SAT's {' or '.join(repr(t) for t in sorted(found))}; "
                                f"ask for one of them")
    close = sorted(sat_vocabulary(), key=lambda t: _distance(normalize(name), normalize(t)))[:3]
    raise TaxonomyError(f"SAT does not know {name!r}; closest SAT terms: {', '.join(repr(c) for c in close)}")


def _distance(a: str, b: str) -> float:
    return 1.0 - SequenceMatcher(None, a, b).ratio()
