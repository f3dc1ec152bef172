"""Is the prompt doing anything? Per-class figures that tell a task-blind model and a dead class
apart from a class that is merely hard, so a 0 Dice is explained, never silently scored.

- prompt share: of class k's logit variance over voxels, the part that differs from the mean
  logit map over all prompts (z_k - mean_j z_j, each centred). A model whose output ignores the
  prompt gives the same map for every class: share ~ 0 ("blind"). It exceeds 1 where the class's
  map runs against the mean map (it lights up where the other classes are dark).
- positive logit: the mean logit on the class's reference voxels. Below the decision logit
  (0 = probability 0.5) the model calls the class's own voxels background on average ("dead").
- raw Dice: the network's own mask (probability above the class's cut-off, as `predict` applies it,
  network grid, before any post-processing) against the reference, pooled over cases. A written mask far below it
  ("pruned") means post-processing threw away what the network found -- e.g. the keep-the-largest-
  component rule keeping a false-positive blob that outgrew the true organ.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

BLIND = "blind"
DEAD = "dead"
PRUNED = "pruned"
#: Default of bench.yaml's `diagnostics.pruned_ratio`: written Dice under this share of the raw Dice.
PRUNED_RATIO = 0.5


@dataclass
class ClassDiagnostics:
    """Figures of one class, pooled over cases (NaN: not measurable, e.g. one prompt only)."""

    prompt_share: float = math.nan
    positive_logit: float = math.nan
    flags: list[str] = field(default_factory=list)
    raw_dice: float = math.nan


def prompt_shares(logits: torch.Tensor) -> list[float]:
    """Per class, the share of its logit variance the prompt explains; logits [K, *spatial]."""
    z = logits.detach().double().flatten(1)
    if z.shape[0] < 2:
        return [math.nan] * z.shape[0]
    z = z - z.mean(dim=1, keepdim=True)            # per-class constant offsets say nothing spatial
    own = (z - z.mean(dim=0, keepdim=True)).pow(2).mean(dim=1)
    total = z.pow(2).mean(dim=1)
    return [float(o / t) if t > 0 else math.nan for o, t in zip(own.tolist(), total.tolist())]


def _as_masks(masks: Sequence[np.ndarray | torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Reference masks as bool tensors, converted once per case (None stays None: the reference
    does not name the class)."""
    return [m if m is None or (isinstance(m, torch.Tensor) and m.dtype == torch.bool)
            else torch.as_tensor(np.asarray(m, dtype=bool)) for m in masks]


def positive_logits(logits: torch.Tensor, masks: Sequence[np.ndarray | torch.Tensor | None]
                    ) -> list[tuple[float, int]]:
    """Per class, (sum of logits on its reference voxels, voxel count); a None mask counts 0."""
    out = []
    for k, sel in enumerate(_as_masks(masks)):
        n = 0 if sel is None else int(sel.sum())
        out.append((float(logits[k][sel].double().sum()), n) if n else (0.0, 0))
    return out


def overlaps(logits: torch.Tensor, masks: Sequence[np.ndarray | torch.Tensor | None],
             thresholds: Sequence[float] | None = None) -> list[tuple[int, int]]:
    """Per class, (|network mask & reference|, |network mask| + |reference|); a None mask: (0, 0).
    The network mask is probability > the class's threshold (0.5 each when None)."""
    refs = _as_masks(masks)
    probs = [0.5] * len(refs) if thresholds is None else [float(t) for t in thresholds]
    cuts = torch.logit(torch.tensor(probs, dtype=torch.float64)).tolist()  # the cut-offs as logits
    out = []
    for k, ref in enumerate(refs):
        if ref is None:
            out.append((0, 0))
            continue
        pred = logits[k] > cuts[k]
        out.append((int((pred & ref).sum()), int(pred.sum()) + int(ref.sum())))
    return out


def diagnose(per_case: Sequence[tuple[torch.Tensor, Sequence[np.ndarray | None]]], classes: Sequence[str],
             blind_share: float = 0.05, dead_logit: float = 0.0,
             thresholds: Sequence[float] | None = None) -> dict[str, ClassDiagnostics]:
    """Class -> figures over cases: prompt share averaged over cases, positive logit and raw Dice
    pooled over all reference voxels; flagged `blind` below `blind_share`, `dead` below `dead_logit`.
    `thresholds`: each class's probability cut-off for the raw masks (0.5 when None)."""
    shares: dict[str, list[float]] = {c: [] for c in classes}
    sums = {c: [0.0, 0] for c in classes}
    dice_parts = {c: [0, 0] for c in classes}
    for logits, masks in per_case:
        if logits.shape[0] != len(classes) or len(masks) != len(classes):
            raise ValueError(f"{logits.shape[0]} logit maps and {len(masks)} masks for {len(classes)} classes")
        for c, s in zip(classes, prompt_shares(logits)):
            if math.isfinite(s):
                shares[c].append(s)
        refs = _as_masks(masks)
        for c, (total, n) in zip(classes, positive_logits(logits, refs)):
            sums[c][0] += total
            sums[c][1] += n
        for c, (inter, size) in zip(classes, overlaps(logits, refs, thresholds)):
            dice_parts[c][0] += inter
            dice_parts[c][1] += size
    out = {}
    for c in classes:
        inter, size = dice_parts[c]
        d = ClassDiagnostics(float(np.mean(shares[c])) if shares[c] else math.nan,
                             sums[c][0] / sums[c][1] if sums[c][1] else math.nan,
                             raw_dice=2.0 * inter / size if size else math.nan)
        if math.isfinite(d.prompt_share) and d.prompt_share < blind_share:
            d.flags.append(BLIND)
        if math.isfinite(d.positive_logit) and d.positive_logit < dead_logit:
            d.flags.append(DEAD)
        out[c] = d
    return out


def flag_pruned(diagnostics: Mapping[str, ClassDiagnostics], dice: Mapping[str, float],
                ratio: float = PRUNED_RATIO) -> None:
    """Flag `pruned` (in place) where the written masks' Dice is below `ratio` x the raw Dice."""
    for c, d in diagnostics.items():
        final = dice.get(c, math.nan)
        if math.isfinite(d.raw_dice) and math.isfinite(final) and final < ratio * d.raw_dice and PRUNED not in d.flags:
            d.flags.append(PRUNED)


def flagged(diagnostics: Mapping[str, ClassDiagnostics]) -> dict[str, list[str]]:
    """Only the classes with a flag: class -> flags."""
    return {c: list(d.flags) for c, d in diagnostics.items() if d.flags}
