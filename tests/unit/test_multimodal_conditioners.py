"""One batch mixing CT, MR and PET: every conditioner reads each sample's modality.

Identical images with different modalities must give different logits (Hermes' modality priors,
MedUniSeg's modal prompt, SAT's modality embedding, the Universal Model's per-modality text
template); the same modality must give the same logits.
"""
from __future__ import annotations

import pytest
import torch

from promptseg.models.build import build_model
from promptseg.models.conditioners.base import PromptError

CLASSES = ["liver", "spleen", "soft tissue sarcoma"]
MODS = ["CT", "MR", "PET"]
TEMPLATES = {"CT": "A computerized tomography of a {}.", "MR": "A magnetic resonance image of a {}.",
             "PET": "A positron emission tomography of a {}."}
SMALL = {"name": "unet", "preset": "small"}
CONDITIONERS = {
    "universal": ({"name": "universal", "templates": TEMPLATES}, (len(CLASSES), 3, 16)),
    "hermes": ({"name": "hermes", "modalities": MODS, "encoder_blocks": [1, 1, 1], "decoder_blocks": [1, 1]}, None),
    "uniseg": ({"name": "uniseg", "modalities": MODS, "prompt_channels": 4}, None),
    "sat": ({"name": "sat", "modalities": MODS, "d_model": 64, "depth": 1, "heads": 4, "ffn_dim": 64,
             "pixel_dim": 16, "mask_hidden": 32, "dropout": 0.0}, (len(CLASSES), 16)),
}


def _model(name):
    cfg, shape = CONDITIONERS[name]
    torch.manual_seed(0)
    emb = torch.randn(*shape) if shape else None
    model = build_model({"backbone": SMALL, "conditioner": cfg}, CLASSES, embeddings=emb).eval()
    with torch.no_grad():  # modal prompts may start at zero (MedUniSeg): give them trained-like values
        for n, p in model.named_parameters():
            if n.endswith("modal_prompt") and not p.any():
                p.normal_(0.0, 1.0)
    return model


@pytest.mark.parametrize("name", sorted(CONDITIONERS))
def test_mixed_batch_reaches_the_conditioner(name, one_thread):
    model = _model(name)
    torch.manual_seed(1)
    x = torch.randn(1, 1, 32, 32, 32).expand(3, -1, -1, -1, -1).contiguous()
    with torch.no_grad():
        mixed = model(x, model.prompt_batch(CLASSES, modality=MODS, batch_size=3))
        same = model(x, model.prompt_batch(CLASSES, modality=["MR"] * 3, batch_size=3))
    assert mixed.shape == (3, len(CLASSES), 32, 32, 32)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not torch.allclose(mixed[a], mixed[b]), f"{name}: {MODS[a]} and {MODS[b]} gave the same logits"
    assert torch.allclose(same[0], same[1]) and torch.allclose(same[1], mixed[1], atol=1e-5)
    with torch.no_grad():
        prepared = model.prepare(CLASSES, modality="PET")
        fast = model.forward_prepared(x[:1], prepared)
    assert torch.allclose(fast, mixed[2:3], atol=1e-4)  # the inference path carries it too


def test_universal_template_per_modality_and_unknown_modality():
    model = _model("universal")
    assert model.conditioner.modalities == MODS and model.conditioner.embeddings.shape[:2] == (3, 3)
    with pytest.raises(PromptError, match="no text template for modality 'US'.*CT, MR, PET"):
        model(torch.zeros(1, 1, 32, 32, 32), model.prompt_batch(CLASSES, modality=["US"]))
    # one template: the same codes for every modality (the paper's CT-only prompt)
    plain = build_model({"backbone": SMALL, "conditioner": {"name": "universal"}}, CLASSES,
                        embeddings=torch.randn(len(CLASSES), 16)).eval()
    x = torch.randn(1, 1, 32, 32, 32).expand(2, -1, -1, -1, -1)
    with torch.no_grad():
        out = plain(x, plain.prompt_batch(CLASSES, modality=["CT", "MR"], batch_size=2))
    assert torch.allclose(out[0], out[1])


def test_template_embeddings_come_from_each_template(monkeypatch):
    from promptseg.models import build

    seen = []

    def fake_embed(names, encoder, template):
        seen.append(template)
        return torch.full((len(names), 4), float(len(seen)))

    monkeypatch.setattr("promptseg.text.embed_classes", fake_embed)
    emb = build.class_embeddings({"templates": TEMPLATES}, CLASSES)
    assert seen == list(TEMPLATES.values()) and emb.shape == (3, 3, 4)
    assert emb[:, 1].eq(2).all() and emb[:, 2].eq(3).all()
