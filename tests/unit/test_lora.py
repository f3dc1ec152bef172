"""LoRA adapters: zero-init identity, frozen base, geometry of the down branch, merging, replay."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from promptseg.errors import ConfigError
from promptseg.models.lora import (
    LoRAAdapter,
    apply_extension,
    apply_lora,
    count_adapters,
    lora_parameters,
    merge_lora,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise_adapters(model: nn.Module, std: float = 0.1) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * std)


LAYERS = [
    (lambda: nn.Conv3d(3, 5, 3, stride=2, padding=1), (2, 3, 9, 8, 7)),
    (lambda: nn.Conv3d(4, 6, (3, 1, 3), stride=(1, 2, 1), padding=(1, 0, 1), dilation=1), (1, 4, 6, 6, 6)),
    (lambda: nn.Conv2d(3, 4, 5, padding=4, dilation=2), (2, 3, 10, 11)),
    (lambda: nn.ConvTranspose3d(6, 3, 2, stride=2), (1, 6, 4, 3, 5)),
    (lambda: nn.Linear(7, 9), (4, 7)),
]


@pytest.mark.parametrize("make,shape", LAYERS)
def test_zero_init_keeps_output_and_merge_matches(make, shape):
    torch.manual_seed(0)
    holder = nn.Sequential(make())
    x = torch.randn(shape)
    y0 = holder(x)
    names = apply_lora(holder, rank=3, alpha=6, targets="all")
    assert names == ["0"]
    layer = holder[0]
    assert torch.equal(holder(x), y0), "a fresh adapter (up = 0) must not change the output"
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    adapter = layer.lora[0]
    assert adapter.scale == 2.0
    if isinstance(layer, nn.Conv3d) or isinstance(layer, nn.Conv2d):
        # the down branch copies the base geometry, the up branch is 1x1
        assert adapter.down.kernel_size == layer.kernel_size
        assert adapter.down.stride == layer.stride
        assert adapter.down.padding == layer.padding
        assert adapter.down.dilation == layer.dilation
        assert set(adapter.up.kernel_size) == {1}
    _randomise_adapters(holder)
    y1 = holder(x)
    assert y1.shape == y0.shape
    assert not torch.allclose(y1, y0)
    merged = merge_lora(holder)
    assert type(merged[0]) in (nn.Conv3d, nn.Conv2d, nn.ConvTranspose3d, nn.Linear)
    assert torch.allclose(merged(x), y1, atol=1e-5)


def test_linear_adapter_is_scaled_low_rank_update():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    w, b = lin.weight.detach().clone(), lin.bias.detach().clone()
    holder = nn.Sequential(lin)
    apply_lora(holder, rank=2, alpha=8, targets="linear")
    _randomise_adapters(holder)
    a = holder[0].lora[0]
    x = torch.randn(3, 6)
    expected = x @ (w + 4.0 * a.up.weight @ a.down.weight).T + b
    assert torch.allclose(holder(x), expected, atol=1e-6)


def test_base_weights_bit_identical_after_training():
    from promptseg.models.backbones.unet import UNet

    torch.manual_seed(0)
    net = UNet(preset="small", widths=(4, 8, 16))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    names = apply_lora(net, rank=4, alpha=8)
    assert names and all("lora" not in n for n in names)
    assert any(n.startswith("decoder") and n.endswith(".up") for n in names), "transposed convs are adapted too"
    # every conv is frozen; what trains is the adapters (norm affines are the caller's business)
    for n in names:
        assert not net.get_submodule(n).weight.requires_grad
    params = lora_parameters(net)
    assert len(params) == 2 * len(names)
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    x = torch.randn(1, 1, 16, 16, 16)
    for _ in range(3):
        loss = net(x).decoder_out.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = net.state_dict()
    assert set(before) < set(after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    ups = [net.get_submodule(n).lora[0].up.weight for n in names]
    assert all(bool(u.abs().sum() > 0) for u in ups), "the adapters (zero-initialised up) did train"


def test_targets_by_name_and_errors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv3d(2, 2, 1), nn.Linear(2, 2))
    assert apply_lora(model, rank=1, alpha=1, targets=["2"]) == ["2"]
    assert count_adapters(model) == 1
    # "conv" finds both convs; the adapters' own down/up convs are never adapted
    assert apply_lora(model, rank=1, alpha=1, targets="conv") == ["0", "2"]
    assert count_adapters(model) == 3 and len(model[2].lora) == 2
    assert apply_lora(model, rank=1, alpha=1, targets="conv") == ["0", "2"]
    with pytest.raises(ConfigError, match="names no Conv/Linear"):
        apply_lora(model, targets=["nope"])
    with pytest.raises(ConfigError, match="unknown LoRA targets"):
        apply_lora(model, targets="attention")
    with pytest.raises(ConfigError, match="rank"):
        LoRAAdapter(nn.Conv3d(1, 1, 1), rank=0, alpha=1)


def test_grouped_conv_cannot_merge():
    holder = nn.Sequential(nn.Conv3d(4, 4, 3, padding=1, groups=2))
    apply_lora(holder, rank=2, alpha=2)
    x = torch.randn(1, 4, 5, 5, 5)
    _randomise_adapters(holder)
    assert holder(x).shape == (1, 4, 5, 5, 5)
    with pytest.raises(ConfigError, match="grouped"):
        merge_lora(holder)


def test_apply_extension_rebuilds_adapted_model_from_config(tmp_path):
    """A checkpoint of a LoRA-extended model reloads from its config alone."""
    from promptseg.models.build import build_model
    from promptseg.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    cfg = {"backbone": {"name": "unet", "preset": "small", "widths": [4, 8, 16]}, "conditioner": {"name": "onehot", "hidden": 16},
           "plan": {"name": "universal_ct"}}
    model = build_model(cfg, ["liver", "spleen"])
    names = apply_lora(model.backbone, rank=2, alpha=4)
    _randomise_adapters(model)
    cfg["extension"] = {"history": [{"strategy": "lora", "base_classes": ["liver", "spleen"], "added": [],
                                     "lora": {"rank": 2, "alpha": 4, "targets": names}}]}
    rebuilt = build_model(cfg, ["liver", "spleen"])  # build_model replays the history
    assert set(rebuilt.state_dict()) == set(model.state_dict())
    save_checkpoint(model, tmp_path / "ckpt", cfg, step=1)
    loaded = load_checkpoint(tmp_path / "ckpt")
    x = torch.randn(1, 1, 16, 16, 16)
    model.eval()
    assert torch.allclose(loaded(x, ["liver", "spleen"]), model(x, ["liver", "spleen"]), atol=1e-6), (
        "load_checkpoint must re-apply the adapters recorded in the config (build_model -> apply_extension)"
    )
