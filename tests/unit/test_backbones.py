"""Backbone contract: hooks called at every stage with the right shapes, sizes, batching, presets."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from promptseg.errors import InputError
from promptseg.models.backbones.blocks import ContBatchNorm3d
from promptseg.models.backbones.unet import UNet
from promptseg.models.conditioners.base import Conditioner, Context, PromptBatch


class Recorder(Conditioner):
    """Records every hook call (name, level, shape); optionally expands the bottleneck to B*K."""

    def __init__(self, expand: int = 1):
        super().__init__()
        self.calls: list[tuple] = []
        self.expand = expand

    def on_input(self, x, ctx):
        self.calls.append(("input", None, tuple(x.shape)))
        return x

    def on_encoder(self, level, feat, ctx):
        self.calls.append(("encoder", level, tuple(feat.shape)))
        return feat

    def on_bottleneck(self, feat, ctx):
        self.calls.append(("bottleneck", None, tuple(feat.shape)))
        return feat.repeat_interleave(self.expand, dim=0) if self.expand > 1 else feat

    def on_decoder(self, level, feat, ctx):
        self.calls.append(("decoder", level, tuple(feat.shape)))
        return feat


def ctx_for(batch: int) -> Context:
    return Context(prompts=PromptBatch(classes=[], indices=[]), batch_size=batch)


def expected_calls(net, batch: int, size, expand: int = 1) -> list[tuple]:
    def at(stride):
        return tuple(n // s for n, s in zip(size, stride))

    calls = [("input", None, (batch, net.in_channels, *size))]
    for i, (c, s) in enumerate(zip(net.encoder_channels, net.encoder_strides)):
        calls.append(("encoder", i, (batch, c, *at(s))))
    calls.append(("bottleneck", None, (batch, net.encoder_channels[-1], *at(net.encoder_strides[-1]))))
    for d, (c, s) in enumerate(zip(net.decoder_channels, net.decoder_strides)):
        calls.append(("decoder", d, (batch * expand, c, *at(s))))
    return calls


def test_small_unet_calls_every_hook_in_order_with_shapes():
    torch.manual_seed(0)
    net = UNet(preset="small")
    rec = Recorder()
    size = (32, 48, 16)
    out = net(torch.randn(2, 1, *size), rec, ctx_for(2))
    assert rec.calls == expected_calls(net, 2, size)
    assert out.decoder_out.shape == (2, net.out_channels, *size)
    assert len(out.encoder_feats) == len(net.encoder_channels)
    assert len(out.decoder_feats) == len(net.decoder_channels)
    assert net.size_multiple == (16, 16, 16)


def test_anisotropic_strides_take_a_depth_one_volume():
    net = UNet(preset="small", strides=[(2, 2, 1)] * 4, kernel_sizes=[(3, 3, 1)] * 5)
    rec = Recorder()
    out = net(torch.randn(1, 1, 32, 48, 1), rec, ctx_for(1))
    assert out.decoder_out.shape == (1, net.out_channels, 32, 48, 1)
    assert rec.calls == expected_calls(net, 1, (32, 48, 1))
    assert net.encoder_strides[-1] == (16, 16, 1)


@pytest.mark.parametrize(
    "kw",
    [
        dict(block="residual", norm="group"),
        dict(norm="batch", downsample="maxpool", upsample="trilinear"),
        dict(norm="contbatch", act="relu", up_width="same"),
        dict(widths=(8, 16, 24), strides=[(2, 2, 2), (1, 2, 2)], out_channels=12),
    ],
)
def test_variants_keep_the_input_size(kw):
    net = UNet(preset="small", **kw)
    out = net(torch.randn(2, 1, 32, 32, 16))
    assert out.decoder_out.shape == (2, net.out_channels, 32, 32, 16)
    if "out_channels" in kw:
        assert net.out_channels == 12


def test_bottleneck_batch_expansion_repeats_the_skips():
    torch.manual_seed(0)
    net = UNet(preset="small").eval()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        plain = net(x).decoder_out
        rec = Recorder(expand=3)
        out = net(x, rec, ctx_for(2))
    assert rec.calls == expected_calls(net, 2, (32, 32, 32), expand=3)
    assert out.decoder_out.shape[0] == 6
    # sample-major copies: rows 0-2 are sample 0, rows 3-5 sample 1; all equal the unexpanded run
    assert torch.allclose(out.decoder_out[0:3], plain[0:1].expand(3, -1, -1, -1, -1), atol=1e-5)
    assert torch.allclose(out.decoder_out[3:6], plain[1:2].expand(3, -1, -1, -1, -1), atol=1e-5)


def test_contbatch_equals_official_batch_statistics_for_one_sample():
    """Official ContBatchNorm3d = F.batch_norm(training=True); for a batch of 1 that is ours."""
    torch.manual_seed(0)
    norm = ContBatchNorm3d(4).eval()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(1, 4, 6, 5, 7) * 3 + 1
    official = F.batch_norm(x, torch.zeros(4), torch.ones(4), norm.weight, norm.bias, True, 0.1, norm.eps)
    assert torch.allclose(norm(x), official, atol=1e-5)
    assert set(norm.state_dict()) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def test_contbatch_single_voxel_trains_and_gives_the_bias():
    norm = ContBatchNorm3d(3).train()
    with torch.no_grad():
        norm.bias.copy_(torch.tensor([1.0, -2.0, 0.5]))
    out = norm(torch.randn(2, 3, 1, 1, 1))
    assert torch.equal(out, norm.bias.view(1, 3, 1, 1, 1).expand(2, 3, 1, 1, 1))


def test_contbatch_output_does_not_depend_on_batching():
    torch.manual_seed(0)
    net = UNet(preset="official_unet").eval()
    x = torch.randn(2, 1, 16, 16, 16)
    x[1] = x[1] * 5 + 2  # very different statistics in the second sample
    with torch.no_grad():
        both = net(x).decoder_out
        one = torch.cat([net(x[i : i + 1]).decoder_out for i in range(2)])
    assert torch.allclose(both, one, atol=1e-4)


def test_preset_parameter_counts():
    counts = {p: sum(q.numel() for q in UNet(preset=p).parameters()) for p in ("small", "nnunet", "official_unet")}
    print("U-Net preset parameters:", counts)
    assert 0.5e6 < counts["small"] < 3e6
    assert 30e6 < counts["nnunet"] < 32.5e6
    # the official UNet3D backbone (Universal Model README: 19.08M)
    assert counts["official_unet"] == 19_073_600
    official = UNet(preset="official_unet")
    assert official.encoder_channels == [64, 128, 256, 512] and official.out_channels == 64
    nn_unet = UNet(preset="nnunet")
    assert nn_unet.encoder_channels == [32, 64, 128, 256, 320, 320] and nn_unet.encoder_strides[-1] == (32, 32, 32)


def test_bad_inputs_raise_one_line_errors():
    net = UNet(preset="small")
    with pytest.raises(InputError, match="multiple of"):
        net(torch.randn(1, 1, 20, 32, 32))
    with pytest.raises(InputError, match="input channel"):
        net(torch.randn(1, 2, 32, 32, 32))


def test_a_hook_that_changes_channels_is_reported():
    class Bad(Conditioner):
        def on_encoder(self, level, feat, ctx):
            return feat[:, :1] if level == 1 else feat

    with pytest.raises(RuntimeError, match=r"on_encoder\(1\)"):
        UNet(preset="small")(torch.randn(1, 1, 16, 16, 16), Bad(), ctx_for(1))


# ---------------------------------------------------------------------------------------------
# Swin UNETR
from promptseg.models.backbones.swinunetr import OFFICIAL_MERGE_ORDER, OfficialPatchMerging, SwinUNETRBackbone  # noqa: E402

TINY_SWIN = dict(feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))


def test_swin_calls_every_hook_in_order_with_shapes():
    torch.manual_seed(0)
    net = SwinUNETRBackbone(**TINY_SWIN)
    rec = Recorder()
    size = (64, 32, 32)
    out = net(torch.randn(1, 1, *size), rec, ctx_for(1))
    assert rec.calls == expected_calls(net, 1, size)
    assert out.decoder_out.shape == (1, 12, *size)
    assert net.encoder_channels == [12, 12, 24, 48, 96, 192] and net.bottleneck_channels == 192
    assert net.size_multiple == (32, 32, 32)


def test_swin_matches_monai_swinunetr_with_identity_hooks():
    """Driving the transformer stage by stage computes exactly MONAI's SwinUNETR."""
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    ours = SwinUNETRBackbone(**TINY_SWIN).eval()
    ref = SwinUNETR(in_channels=1, out_channels=2, **TINY_SWIN).eval()
    result = ref.load_state_dict(ours.state_dict(), strict=False)
    assert result.unexpected_keys == [] and set(result.missing_keys) == {"out.conv.conv.weight", "out.conv.conv.bias"}
    x = torch.randn(1, 1, 64, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ref.out(ours(x).decoder_out), ref(x), atol=1e-5)


def test_swin_bottleneck_batch_expansion():
    torch.manual_seed(0)
    net = SwinUNETRBackbone(**TINY_SWIN).eval()
    x = torch.randn(2, 1, 64, 32, 32)
    with torch.no_grad():
        plain = net(x).decoder_out
        out = net(x, Recorder(expand=2), ctx_for(2)).decoder_out
    assert out.shape[0] == 4
    assert torch.allclose(out[2:4], plain[1:2].expand(2, -1, -1, -1, -1), atol=1e-5)


def test_official_patch_merging_order():
    merge = OfficialPatchMerging(dim=1)
    merge.norm, merge.reduction = torch.nn.Identity(), torch.nn.Identity()
    grid = torch.zeros(1, 2, 2, 2, 1)  # channel-last [B, D, H, W, C]; value = 4d + 2h + w
    for d in range(2):
        for h in range(2):
            for w in range(2):
                grid[0, d, h, w, 0] = 4 * d + 2 * h + w
    picked = merge(grid).flatten().tolist()
    assert picked == [4 * d + 2 * h + w for d, h, w in OFFICIAL_MERGE_ORDER] == [0, 4, 2, 1, 5, 2, 1, 7]


def test_swin_parameter_count():
    net = SwinUNETRBackbone(feature_size=48)
    count = sum(p.numel() for p in net.parameters())
    print("Swin UNETR (f=48) parameters:", count)
    assert count == 62_186_610  # official backbone (Universal Model README: 62.19M)
    assert net.out_channels == 48 and net.bottleneck_channels == 768


def test_on_input_may_map_other_channel_counts_to_in_channels():
    class Average(Conditioner):
        def on_input(self, x, ctx):
            return x.mean(1, keepdim=True)

    net = UNet(preset="small")
    out = net(torch.randn(1, 3, 32, 32, 32), Average(), ctx_for(1))
    assert out.decoder_out.shape == (1, net.out_channels, 32, 32, 32)
    with pytest.raises(InputError, match="input channel"):
        SwinUNETRBackbone(**TINY_SWIN)(torch.randn(1, 3, 32, 32, 32))
