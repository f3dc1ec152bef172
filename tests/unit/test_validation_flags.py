"""Validation names a dead class instead of scoring it 0 like a hard one (train/validate.py)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from promptseg.io.readers import read_image, read_label
from promptseg.models.build import build_model
from promptseg.train.validate import validate

CLASSES = ["soft tissue sarcoma", "liver"]


def sarcoma_case(shared_data, size: int = 32) -> SimpleNamespace:
    """A 32^3 crop of a real MR-T1 around its hand-drawn tumour, as a prepared case."""
    folder = shared_data / "sts_sarcoma" / "STS_003"
    image = read_image(folder / "MR_T1_image.nii.gz")
    mask = read_label(folder / "MR_T1_mask.nii.gz", reference=image).array > 0
    centre = np.argwhere(mask).mean(axis=0).round().astype(int)
    lo = [int(np.clip(c - size // 2, 0, n - size)) for c, n in zip(centre, mask.shape)]
    box = tuple(slice(a, a + size) for a in lo)
    img = image.array[box].astype(np.float32)
    img = (img - img.mean()) / (img.std() + 1e-6)
    return SimpleNamespace(image=img[None], targets=mask[box][None].astype(np.uint8), classes=["soft tissue sarcoma"],
                           modality="MR", dataset="sts_MR")


def test_a_constant_head_is_flagged_and_a_live_one_is_not(shared_data):
    torch.manual_seed(0)
    model = build_model({"backbone": {"name": "unet", "preset": "small"},
                         "conditioner": {"name": "universal", "head": "mlp"}}, CLASSES,
                        embeddings=torch.randn(len(CLASSES), 384))
    case = sarcoma_case(shared_data)
    live = validate(model, [case], window=[32, 32, 32])
    assert "MR/soft tissue sarcoma" in live["positive_logit"]
    assert live["flags"].get("MR/soft tissue sarcoma") != "constant"

    # the head's generator emits only the last bias: the class's logit is one number everywhere
    last = model.conditioner.controllers[0][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[-1] = -3.0
    dead = validate(model, [case], window=[32, 32, 32])
    assert dead["flags"] == {"MR/soft tissue sarcoma": "constant"}
    assert dead["positive_logit"]["MR/soft tissue sarcoma"] == -3.0 and dead["dice"]["MR/soft tissue sarcoma"] == 0.0
