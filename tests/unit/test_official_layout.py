"""Official Universal Model checkpoints map onto promptseg models by key renaming only."""
from __future__ import annotations

import pytest
import torch

from promptseg.errors import CheckpointError, InputError
from promptseg.models.official import (
    build_official_model,
    detect_backbone,
    load_official_checkpoint,
    official_facts,
    official_layout,
    official_to_native,
    random_official_state_dict,
)


def fake_official(backbone: str, prefix: str = "module.", infix: bool = True) -> dict[str, torch.Tensor]:
    """Random tensors with the official names/shapes, spelled as a saved checkpoint would be."""
    sd = random_official_state_dict(backbone, seed=0, prefix="")
    return {prefix + (name if infix else name.removeprefix("backbone.")): v for name, v in sd.items()}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {bb: build_official_model(bb) for bb in ("unet", "swinunetr")}


def test_layout_facts():
    facts = official_facts()
    assert facts["num_classes"] == 32 and facts["dynamic_params_per_class"] == 153
    for bb in ("unet", "swinunetr"):
        layout = official_layout(bb)
        assert layout["organ_embedding"] == (32, 512)
        assert layout["controller.weight"] == (153, 512, 1, 1, 1)
        assert layout["text_to_vision.weight"] == (256, 512)
    assert official_layout("unet")["GAP.3.weight"] == (256, 512, 1, 1, 1)
    assert official_layout("swinunetr")["GAP.3.weight"] == (256, 768, 1, 1, 1)


@pytest.mark.parametrize("backbone", ["unet", "swinunetr"])
def test_every_official_key_maps_and_loads_strictly(backbone, models):
    model = models[backbone]
    facts = official_facts()["models"][backbone]
    assert sum(p.numel() for p in model.parameters()) == facts["parameters"]
    assert sum(p.numel() for p in model.backbone.parameters()) == facts["backbone_parameters"]
    official = fake_official(backbone)
    native = official_to_native({"net": official, "epoch": 3})
    assert len(native) == len(official)
    assert set(native) == set(model.state_dict())
    model.load_state_dict(native, strict=True)
    sd = model.state_dict()
    assert torch.equal(sd["conditioner.embeddings"], official["module.organ_embedding"])
    assert torch.equal(sd["conditioner.controller.weight"], official["module.controller.weight"])
    if backbone == "unet":
        assert torch.equal(sd["backbone.encoder.0.blocks.0.conv.weight"], official["module.backbone.down_tr64.ops.0.conv1.weight"])
        assert torch.equal(sd["backbone.decoder.2.up.weight"], official["module.backbone.up_tr64.up_conv.weight"])
        assert torch.equal(sd["backbone.decoder.0.blocks.1.norm.running_var"],
                           official["module.backbone.up_tr256.ops.1.bn1.running_var"])
    else:
        key = "backbone.swinViT.layers3.0.blocks.1.attn.qkv.weight"
        assert torch.equal(sd[key], official["module." + key])


def test_spellings_without_module_or_backbone_infix():
    sd = fake_official("swinunetr", prefix="module.", infix=False)
    assert detect_backbone(sd) == "swinunetr"
    a = official_to_native(sd)
    b = official_to_native(fake_official("swinunetr", prefix="", infix=True))
    assert set(a) == set(b)
    assert detect_backbone(fake_official("unet", prefix="")) == "unet"


def test_missing_extra_and_misshaped_keys_are_all_named():
    sd = fake_official("unet")
    del sd["module.backbone.up_tr128.ops.0.conv1.bias"]
    sd["module.backbone.out_tr.final_conv.weight"] = torch.zeros(1, 64, 1, 1, 1)
    sd["module.GAP.3.weight"] = torch.zeros(256, 768, 1, 1, 1)
    with pytest.raises(CheckpointError) as err:
        official_to_native(sd, "unet")
    msg = str(err.value)
    assert "backbone.up_tr128.ops.0.conv1.bias" in msg
    assert "backbone.out_tr.final_conv.weight" in msg
    assert "GAP.3.weight (256, 768, 1, 1, 1)" in msg
    assert "\n" not in msg


def test_wrong_backbone_and_foreign_checkpoints_are_refused():
    with pytest.raises(CheckpointError, match="not swinunetr"):
        official_to_native(fake_official("unet"), "swinunetr")
    with pytest.raises(CheckpointError, match="not an official"):
        official_to_native({"layer.weight": torch.zeros(2)})


def test_load_official_checkpoint_file(tmp_path, models):
    path = tmp_path / "clip_driven_universal_unet.pth"
    official = fake_official("unet")
    torch.save({"net": official, "epoch": 1}, path)
    model = load_official_checkpoint(path)
    assert torch.equal(model.state_dict()["conditioner.text_proj.weight"], official["module.text_to_vision.weight"])
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="broken.pth"):
        load_official_checkpoint(bad)
