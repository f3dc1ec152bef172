"""Which classes a training step asks for (the conditioner's `training_queries` default).

Why here and not in the trainer: the rule is the method's (SAT's positive-first sampling of
annotated classes), and a new method may want another one without touching `train/`.
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from ...errors import ConfigError


def sample_queries(
    annotated: Sequence[str],
    present: Sequence[str],
    max_queries: int = 32,
    rng: random.Random | int | None = None,
    neg_ratio: float = 0.5,
) -> list[str]:
    """Classes to query for one training sample (SAT's positive-first sampling).

    `annotated`: classes the sample's dataset labels; `present`: those with foreground in the
    crop. An annotated class absent from the crop is a **negative** (its target is all zeros, which
    is a real label because the dataset annotates it); classes the dataset does not annotate are
    never queried. As in the authors' loader (`_select_pos_labels`, neg_label_ratio_threshold 0.5):
    - no positive: a random subset of at most `max_queries` annotated classes (all negatives);
    - up to `max_queries` positives: all of them, plus at most
      min(max_queries - P, int(neg_ratio * P)) randomly chosen negatives;
    - more positives than `max_queries`: a random subset of `max_queries` positives.
    Returned in the order of `annotated`, so the result does not depend on the order of `present`.
    """
    if max_queries < 1:
        raise ConfigError(f"max_queries must be >= 1, got {max_queries}")
    gen = rng if isinstance(rng, random.Random) else random.Random(rng)
    annotated = list(dict.fromkeys(annotated))
    present_set = set(present)
    pos = [c for c in annotated if c in present_set]
    neg = [c for c in annotated if c not in present_set]
    if not pos:
        chosen = set(gen.sample(neg, min(max_queries, len(neg))))
    elif len(pos) > max_queries:
        chosen = set(gen.sample(pos, max_queries))
    else:
        n_neg = min(max_queries - len(pos), int(neg_ratio * len(pos)), len(neg))
        chosen = set(pos) | set(gen.sample(neg, n_neg))
    return [c for c in annotated if c in chosen]


def training_queries(classes: Sequence[str], annotated: np.ndarray, present: np.ndarray, max_queries: int,
                     rng: np.random.Generator) -> list[str]:
    """Prompts for one step: the classes any sample of the batch annotates (others would get no
    loss, and the full-resolution per-class head is the costliest part of a step). When that is
    more than `max_queries`, each sample's queries are drawn by `sample_queries` (its positives
    first plus some annotated negatives) and the union is capped. `annotated`, `present`: [B, K]
    bool over `classes`."""
    classes = list(classes)
    wanted = [i for i in range(len(classes)) if annotated[:, i].any()]
    if len(wanted) <= max_queries:
        return [classes[i] for i in wanted] or classes[:1]
    chosen: set[str] = set()
    seed = int(rng.integers(2**31))
    for b in range(annotated.shape[0]):
        names = [classes[i] for i in range(len(classes)) if annotated[b, i]]
        here = [classes[i] for i in range(len(classes)) if annotated[b, i] and present[b, i]]
        chosen |= set(sample_queries(names, here, max_queries, rng=seed + b))
    picked = [c for c in classes if c in chosen]
    if len(picked) > max_queries:
        keep = set(rng.choice(len(picked), max_queries, replace=False).tolist())
        picked = [c for j, c in enumerate(picked) if j in keep]
    return picked


def loss_pairs(annotated: np.ndarray, present: np.ndarray, negative_ratio: float | str, max_queries: int,
               rng: np.random.Generator) -> np.ndarray:
    """[B, K] bool: the (sample, class) pairs of one step that count in the loss.

    `annotated`, `present`: [B, K] over the step's queried classes. "all": every annotated pair
    (a negative -- annotated, absent from the crop -- is a real all-zero target). A number r: each
    sample keeps SAT's per-sample draw (`sample_queries`: its positives plus at most int(r * P)
    of its negatives; a sample without positives, at most `max_queries` negatives), so a crop
    holding one organ of a 20-class dataset is not trained 19 times on "nothing here" for each
    time on the organ. Drawn from `rng`, so a resumed run draws the same pairs.
    """
    annotated = np.asarray(annotated, dtype=bool)
    if negative_ratio == "all":
        return annotated.copy()
    keep = np.zeros_like(annotated)
    seed = int(rng.integers(2**31))
    cols = np.arange(annotated.shape[1])
    for b in range(annotated.shape[0]):
        mine = cols[annotated[b]].tolist()
        here = cols[annotated[b] & np.asarray(present[b], dtype=bool)].tolist()
        chosen = sample_queries(mine, here, max_queries, rng=seed + b, neg_ratio=float(negative_ratio))
        keep[b, chosen] = True
    return keep
