"""A prompt resolved once: class, index in the model, label value, threshold, merge layer.

Why: the predictor, the thresholds, the label values, post-processing and the merge each used to
look the prompt up again (3-5 lookups per case, each free to disagree with the others). Here a
list of prompts becomes a list of `Query` objects at the start of a prediction and every later
step reads the facts it needs from them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from .registry import KINDS, ClassInfo, Taxonomy


@dataclass(frozen=True)
class Query:
    """One class asked of a model (several spellings of one class give one Query)."""

    name: str                 # canonical class name (the model's spelling)
    info: ClassInfo | None    # taxonomy facts; None for a free-text class the taxonomy lacks
    index: int                # position in the model's class list; -1 for an open vocabulary
    label_value: int          # value in the merged label map
    threshold: float          # probability cut-off
    layer: int                # merge layer: organs 0, vessels 1, lesions 2 (unknown: organ)

    @property
    def kind(self) -> str:
        return self.info.kind if self.info is not None else KINDS[0]


def layer_of(info: ClassInfo | None) -> int:
    """Merge layer of a class: its kind's position in KINDS (organ, vessel, lesion)."""
    return KINDS.index(info.kind) if info is not None and info.kind in KINDS else 0


def label_values(names: Sequence[str], taxonomy: Taxonomy) -> dict[str, int]:
    """Label value per class: its taxonomy id, or the next free value above all ids."""
    values: dict[str, int] = {}
    next_free = max((c.id for c in taxonomy.classes), default=0) + 1
    for n in names:
        c = taxonomy.get(n)
        if c is not None:
            values[n] = int(c.id)
        else:
            values[n] = next_free
            next_free += 1
    return values


def expand_groups(prompts: Sequence[str], taxonomy: Taxonomy) -> list[str]:
    """Prompts with a paired-organ group name ('kidney', 'lung') replaced by both sides."""
    out: list[str] = []
    for p in prompts:
        members = taxonomy.group_members(p) if taxonomy.get(p) is None else {}
        if members:
            out.extend(members[side].name for side in ("right", "left") if side in members)
        else:
            out.append(p)
    return list(dict.fromkeys(out))  # a side asked twice counts once


def canonical_thresholds(given: Mapping[str, float] | None, taxonomy: Taxonomy) -> dict[str, float]:
    """User thresholds keyed by canonical class name (any spelling accepted)."""
    out: dict[str, float] = {}
    for k, t in (given or {}).items():
        info = taxonomy.get(k)
        out[info.name if info else k] = float(t)
    return out


def resolve_queries(
    prompts: Sequence[str] | str | None,
    taxonomy: Taxonomy,
    known: Sequence[str],
    canonical: Callable[[str], str],
    thresholds: Mapping[str, float] | None = None,
) -> list[Query]:
    """Queries for `prompts` (every class in `known` when None), in the order asked.

    `canonical(prompt)` is the model's own name check (it raises the one-line error for a class
    the model cannot segment); `thresholds` are the user's cut-offs (any spelling), which win
    over the taxonomy's. Group names expand to both sides; two spellings of a class give one query.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    asked = expand_groups(prompts, taxonomy) if prompts else list(known)
    names = list(dict.fromkeys(canonical(p) for p in asked))
    index = {n: i for i, n in enumerate(known)}
    values = label_values(names, taxonomy)
    given = canonical_thresholds(thresholds, taxonomy)
    out = []
    for n in names:
        info = taxonomy.get(n)
        cut = given.get(n, info.threshold if info is not None else 0.5)
        out.append(Query(n, info, index.get(n, -1), values[n], float(cut), layer_of(info)))
    return out
