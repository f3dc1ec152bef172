"""Masked back-propagation: BCE + soft Dice only on the classes a sample's dataset annotates.

Why masked: in partially labelled data a class a dataset does not annotate is unknown, not
background. Unannotated (sample, class) pairs are *selected out* before any arithmetic, so they
receive exactly zero gradient whatever the image contains (a multiplied-by-zero mask would still
propagate NaN/inf from the excluded entries).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_bce_dice(
    logits: torch.Tensor,
    targets: torch.Tensor,
    annotated: torch.Tensor,
    dice_weight: float = 1.0,
    bce_weight: float = 1.0,
    smooth: float = 1e-5,
) -> tuple[torch.Tensor, dict[str, float]]:
    """logits, targets: [B, K, *spatial]; annotated: bool [B, K]. Returns (loss, parts).

    BCE is the voxel mean per (sample, class); Dice is the soft Dice per (sample, class);
    both are averaged over annotated pairs only. With no annotated pair the loss is a zero that
    still carries a graph (so DDP sees every parameter and nothing receives gradient).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    annotated = annotated.to(torch.bool)
    if not bool(annotated.any()):
        zero = logits.sum() * 0.0
        return zero, {"bce": 0.0, "dice": 0.0, "pairs": 0}
    sel_logits = logits[annotated].flatten(1).float()      # [P, V]
    sel_targets = targets[annotated].flatten(1).float()
    bce = F.binary_cross_entropy_with_logits(sel_logits, sel_targets, reduction="none").mean(dim=1)
    probs = torch.sigmoid(sel_logits)
    inter = (probs * sel_targets).sum(dim=1)
    denom = probs.sum(dim=1) + sel_targets.sum(dim=1)
    dice = 1.0 - (2.0 * inter + smooth) / (denom + smooth)
    loss = bce_weight * bce.mean() + dice_weight * dice.mean()
    return loss, {"bce": float(bce.detach().mean()), "dice": float(dice.detach().mean()), "pairs": int(annotated.sum())}


def with_deep_supervision(
    loss: torch.Tensor, outputs: list[tuple[float, torch.Tensor]], targets: torch.Tensor, annotated: torch.Tensor,
    dice_weight: float = 1.0,
) -> torch.Tensor:
    """nnU-Net's deep supervision: (loss + sum_i w_i L_i) / (1 + sum_i w_i), L_i the masked loss
    of a coarser output against the targets resized to it (nearest, like nnU-Net's order-0
    down-sampling). `outputs`: the conditioner's (w_i, logits [B, K, *coarser]); none: `loss`."""
    if not outputs:
        return loss
    total, weights = loss, 1.0
    for w, logits in outputs:
        small = F.interpolate(targets.float(), size=tuple(logits.shape[2:]), mode="nearest")
        total = total + float(w) * masked_bce_dice(logits, small, annotated, dice_weight=dice_weight)[0]
        weights += float(w)
    return total / weights


def soft_targets_loss(
    logits: torch.Tensor, soft: torch.Tensor, mask: torch.Tensor, smooth: float = 1e-5
) -> tuple[torch.Tensor, dict[str, float]]:
    """Same loss against soft targets in [0, 1] (pseudo-labels from an old model)."""
    return masked_bce_dice(logits, soft.clamp(0, 1), mask, smooth=smooth)
