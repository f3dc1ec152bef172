"""Prompt diagnostics on hand-made logits: the share the prompt explains, the positive logit, flags."""
import math

import numpy as np
import pytest
import torch

from promptseg.evaluation.prompt_diagnostics import (ClassDiagnostics, diagnose, flag_pruned, flagged, overlaps,
                                                     positive_logits, prompt_shares)


def test_a_task_blind_output_has_zero_prompt_share():
    f = torch.randn(4, 5, 6)
    logits = torch.stack([f + 3.0, f - 1.0, f])  # the same map for every prompt, only offsets differ
    assert all(abs(s) < 1e-12 for s in prompt_shares(logits))


def test_prompt_share_by_hand():
    # two classes, four voxels: z0 = [1, -1, 0, 0], z1 = [0, 0, 2, -2]; mean map = [.5, -.5, 1, -1]
    logits = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 2.0, -2.0]])
    # class 0: (z0 - mean) = [.5, -.5, -1, 1] -> mean square 0.625; var z0 = 0.5 -> 1.25
    # class 1: (z1 - mean) = [-.5, .5, 1, -1] -> 0.625; var z1 = 2.0 -> 0.3125
    assert prompt_shares(logits) == pytest.approx([1.25, 0.3125])
    assert math.isnan(prompt_shares(logits[:1])[0])  # one prompt: nothing to compare with


def test_positive_logit_is_the_mean_on_reference_voxels():
    logits = torch.tensor([[4.0, 2.0, -7.0], [1.0, 1.0, 1.0]])
    masks = [np.array([True, True, False]), None]
    assert positive_logits(logits, masks) == [(6.0, 2), (0.0, 0)]


def test_dead_and_blind_classes_are_flagged_and_pooled_over_cases():
    rng = torch.Generator().manual_seed(0)
    shape = (8, 8, 8)
    liver = np.zeros(shape, bool)
    liver[:4] = True
    spleen = np.zeros(shape, bool)
    spleen[4:] = True
    live = torch.where(torch.from_numpy(liver), 6.0, -6.0) + 0.1 * torch.randn(shape, generator=rng)
    dead = torch.full(shape, -20.0) + 0.1 * torch.randn(shape, generator=rng)  # positives at -20: dead class
    case = (torch.stack([live, dead]), [liver, spleen])
    d = diagnose([case, case], ["liver", "spleen"])
    assert d["liver"].positive_logit == pytest.approx(6.0, abs=0.1) and d["liver"].flags == []
    assert d["spleen"].positive_logit == pytest.approx(-20.0, abs=0.1) and "dead" in d["spleen"].flags
    assert flagged(d) == {"spleen": d["spleen"].flags}
    blind = torch.stack([live, live + 0.01 * torch.randn(shape, generator=rng)])
    b = diagnose([(blind, [liver, spleen])], ["liver", "spleen"])
    assert "blind" in b["liver"].flags and "blind" in b["spleen"].flags
    assert b["spleen"].flags == ["blind", "dead"]  # spleen's voxels get liver's map: -6
    with pytest.raises(ValueError):
        diagnose([(blind, [liver])], ["liver", "spleen"])


def test_raw_dice_is_the_networks_own_mask_pooled_over_cases():
    logits = torch.tensor([[3.0, 2.0, -1.0, 5.0], [-4.0, -4.0, -4.0, -4.0]])
    ref = np.array([True, True, True, False])
    assert overlaps(logits, [ref, None]) == [(2, 6), (0, 0)]  # mask = voxels 0, 1, 3
    other = (torch.tensor([[1.0, -1.0, -1.0, -1.0], [0.0, 0.0, 0.0, 0.0]]), [np.array([True, False, False, False]), None])
    d = diagnose([(logits, [ref, None]), other], ["liver", "spleen"])
    assert d["liver"].raw_dice == pytest.approx(2 * 3 / 8)  # (2 + 1) shared of (6 + 2) voxels
    assert math.isnan(d["spleen"].raw_dice)                # no reference anywhere: not measurable


def test_raw_masks_are_cut_at_each_class_threshold_as_predict_cuts_them():
    logits = torch.tensor([[3.0, 2.0, -1.0, 5.0], [3.0, 2.0, -1.0, 5.0]])
    ref = np.array([True, True, True, False])
    # p > 0.95 is logit > 2.94: voxels 0 and 3 only; p > 0.2 is logit > -1.39: every voxel
    assert overlaps(logits, [ref, ref], [0.95, 0.2]) == [(1, 5), (3, 7)]
    d = diagnose([(logits, [ref, ref])], ["liver", "spleen"], thresholds=[0.95, 0.2])
    assert d["liver"].raw_dice == pytest.approx(2 / 5) and d["spleen"].raw_dice == pytest.approx(6 / 7)


def test_pruned_when_the_written_masks_lose_what_the_network_found():
    d = {"kept": ClassDiagnostics(raw_dice=0.8), "lost": ClassDiagnostics(raw_dice=0.8, flags=["dead"]),
         "weak": ClassDiagnostics(raw_dice=0.1), "unscored": ClassDiagnostics(raw_dice=0.8)}
    flag_pruned(d, {"kept": 0.75, "lost": 0.0, "weak": 0.06, "unscored": math.nan})
    assert flagged(d) == {"lost": ["dead", "pruned"]}
    flag_pruned(d, {"kept": 0.75, "lost": 0.0, "weak": 0.06})
    assert d["lost"].flags == ["dead", "pruned"]  # once


def test_the_bench_cuts_raw_masks_where_predict_cuts_them(varied_random_model):
    """A checkpoint's inference.thresholds (any spelling) win over the default 0.5, as in predict."""
    from types import SimpleNamespace

    from promptseg.workflows.bench_diagnostics import class_thresholds

    model = varied_random_model({"name": "unet", "preset": "small"}, ["liver", "spleen"], 0)
    ckpt = SimpleNamespace(model=model, config={"inference": {"thresholds": {"Liver": 0.7}}})
    assert class_thresholds(ckpt, ["liver", "spleen"]) == [0.7, 0.5]
