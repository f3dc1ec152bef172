"""SegResNet backbone: MONAI's computation, every conditioner on top, the FLARE23 size."""
from __future__ import annotations

import pytest
import torch
from monai.networks.nets import SegResNet

from promptseg.errors import ConfigError, InputError
from promptseg.models.backbones.segresnet import SegResNetBackbone
from promptseg.models.build import build_model

CLASSES = ["spleen", "liver", "right kidney", "left kidney", "pancreas", "aorta"]
# FLARE23: 13 organs + tumour
FLARE23 = ["liver", "right kidney", "left kidney", "spleen", "pancreas", "aorta", "postcava",
           "right adrenal gland", "left adrenal gland", "gall bladder", "esophagus", "stomach", "duodenum",
           "liver tumor"]
SMALL = {"name": "segresnet", "preset": "small"}


def emb(names, dim=32):
    return torch.randn(len(names), dim, generator=torch.Generator().manual_seed(len(names)))


def test_identity_hooks_equal_monai_segresnet(one_thread):
    """Same weights, same numbers as MONAI's SegResNet up to its final norm-act-conv."""
    torch.manual_seed(0)
    ours = SegResNetBackbone(preset="small").eval()
    ref = SegResNet(spatial_dims=3, init_filters=8, in_channels=1, out_channels=2).eval()
    mapping = {"conv_init": "convInit", "encoder": "down_layers", "up_samples": "up_samples", "decoder": "up_layers"}
    state = {}
    for k, v in ref.state_dict().items():
        head, rest = k.split(".", 1)
        if head == "conv_final":
            continue
        inv = {b: a for a, b in mapping.items()}[head]
        state[f"{inv}.{rest}"] = v
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        feats = ours(x).decoder_out
        full = ref(x)
        final = ref.conv_final(feats)
    assert torch.allclose(final, full, atol=1e-5)


def test_hooks_see_every_stage_with_declared_shapes(one_thread):
    net = SegResNetBackbone(preset="small")
    out = net(torch.randn(2, 1, 16, 24, 32))
    assert [f.shape[1] for f in out.encoder_feats] == net.encoder_channels == [8, 16, 32, 64]
    assert [tuple(f.shape[2:]) for f in out.encoder_feats] == [(16, 24, 32), (8, 12, 16), (4, 6, 8), (2, 3, 4)]
    assert [f.shape[1] for f in out.decoder_feats] == net.decoder_channels == [32, 16, 8]
    assert net.decoder_strides == [(4, 4, 4), (2, 2, 2), (1, 1, 1)]
    assert out.decoder_out.shape == (2, 8, 16, 24, 32) and net.size_multiple == (8, 8, 8)
    with pytest.raises(InputError, match="multiple of"):
        net(torch.randn(1, 1, 12, 16, 16))
    with pytest.raises(ConfigError, match="unknown SegResNet preset"):
        SegResNetBackbone(preset="huge")


@pytest.mark.parametrize(
    "conditioner",
    [
        {"name": "universal", "head": "shared"},
        {"name": "universal", "head": "mlp"},
        {"name": "onehot"},
        {"name": "hermes", "modalities": ["CT", "MR"], "encoder_blocks": [1, 1, 1], "decoder_blocks": [1, 1]},
        {"name": "uniseg"},
        {"name": "sat", "d_model": 64, "depth": 1, "heads": 4, "ffn_dim": 64, "pixel_dim": 16, "mask_hidden": 16},
    ],
    ids=lambda c: c["name"] + ("-" + c["head"] if "head" in c else ""),
)
def test_every_conditioner_builds_and_runs_on_segresnet(conditioner, one_thread):
    torch.manual_seed(0)
    cfg = {"backbone": SMALL, "conditioner": conditioner}
    needs = conditioner["name"] in ("universal", "sat")
    model = build_model(cfg, CLASSES, embeddings=emb(CLASSES) if needs else None).eval()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        logits = model(x, ["liver", "aorta"], modality="CT")
    assert logits.shape == (2, 2, 32, 32, 32) and torch.isfinite(logits).all()
    # the two prompts give different maps: the conditioner really acted on the backbone's features
    assert not torch.allclose(logits[:, 0], logits[:, 1])


def test_flare23_preset_size_with_universal_head():
    """FLARE23 reports 4.69M parameters for SegResNet + Universal head (13 organs + tumour)."""
    cfg = {"backbone": {"name": "segresnet", "preset": "flare23"}, "conditioner": {"name": "universal", "head": "shared"}}
    model = build_model(cfg, FLARE23, embeddings=torch.zeros(len(FLARE23), 384))
    total = sum(p.numel() for p in model.parameters())
    print(f"SegResNet flare23 + Universal head, 14 classes: {total / 1e6:.3f}M parameters")
    assert abs(total - 4.69e6) <= 0.05 * 4.69e6, total
