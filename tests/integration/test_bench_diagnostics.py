"""The bench's prompt diagnostics on a real checkpoint and a real CT: the raw logits are those
`predict` thresholds (the checkpoint's own inference settings, mirroring included), in the
network's grid, with the reference brought into that grid. Random weights whose heads vary with
the image: the checks are about the plumbing, not about anatomy."""
from __future__ import annotations

import math

import torch

from promptseg.checkpoint import open_checkpoint, save_checkpoint
from promptseg.workflows.bench import scan_test_case
from promptseg.workflows.bench_diagnostics import case_logits, checkpoint_diagnostics

CLASSES = ["spleen", "liver", "aorta"]
CONFIG = {"backbone": {"name": "unet", "preset": "small"}, "conditioner": {"name": "universal", "text_norm": "none"},
          "plan": {"name": "universal_ct", "spacing": [4.5, 4.5, 6.0]}, "modality": "CT",
          "inference": {"window": [32, 32, 16], "overlap": 0.25, "sw_batch_size": 2}}


def test_diagnostics_follow_the_checkpoints_inference_settings(varied_random_model, shared_data, tmp_path):
    model = varied_random_model({"name": "unet", "preset": "small"}, CLASSES, seed=1)
    case = scan_test_case(shared_data / "ct_abdomen_small")
    plain = save_checkpoint(model, tmp_path / "plain", CONFIG)
    mirrored = save_checkpoint(model, tmp_path / "mirror", {**CONFIG, "inference": {**CONFIG["inference"], "mirror": True}})

    diag = checkpoint_diagnostics(plain, [case], {"blind_share": 0.05, "dead_logit": 0.0}, device="cpu",
                                  dice={"spleen": 0.0, "liver": 0.0, "aorta": 0.0})
    assert list(diag) == CLASSES
    for c, d in diag.items():
        assert math.isfinite(d.prompt_share) and math.isfinite(d.positive_logit) and 0.0 <= d.raw_dice <= 1.0
        assert ("pruned" in d.flags) == (d.raw_dice > 0.0)   # written Dice 0 against any raw Dice > 0

    logits, masks = case_logits(open_checkpoint(plain), case.image, case.label, case.labels, CLASSES, "cpu")
    again, _ = case_logits(open_checkpoint(mirrored), case.image, case.label, case.labels, CLASSES, "cpu")
    assert logits.shape[0] == 3 and all(m is not None and m.shape == tuple(logits.shape[1:]) for m in masks)
    assert all(m.any() for m in masks)                       # each class is in the reference of this scan
    assert again.shape == logits.shape and not torch.allclose(again, logits)  # inference.mirror reached the logits
