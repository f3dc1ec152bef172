"""UniSeg / MedUniSeg conditioner: task channel selection, B*K decoding, modal prompt, stems, training."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from promptseg.errors import ConfigError, InputError
from promptseg.models.backbones.unet import UNet
from promptseg.models.build import build_model
from promptseg.models.conditioners.base import PromptBatch
from promptseg.models.conditioners.uniseg import UniSegConditioner
from promptseg.models.segmenter import PromptError, UniversalSegmenter
from promptseg.train.losses import masked_bce_dice

CLASSES = ["spleen", "liver", "right kidney", "left kidney", "pancreas", "aorta"]
SIZE = 32


def make_model(seed=0, classes=CLASSES, backbone=None, **kw) -> UniversalSegmenter:
    torch.manual_seed(seed)
    return UniversalSegmenter(backbone or UNet(in_channels=1, preset="small"), UniSegConditioner(list(classes), **kw))


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def model():
    return make_model().eval()


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 1, SIZE, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------
# Wiring and shapes
# ---------------------------------------------------------------------------------------------
def test_sizes_and_batch_of_tasks_at_the_bottleneck(model, image):
    c = model.conditioner
    assert c.task_prompt.shape == (1, 100, 6, 6, 4)                       # K x (4x6x6 in z,y,x)
    cin = 128 + 100                                                         # bottleneck C + K
    assert c.fuse[0].conv.in_channels == cin and c.fuse[0].conv.out_channels == cin // 4
    assert len(c.fuse) + 1 == 3                                             # three FUSE blocks
    assert c.task_channels.weight.shape[:2] == (len(CLASSES), cin // 4)    # one output per task
    assert c.modal_prompt.shape == (3, 512) and c.modal_map.out_features == 144
    print(f"\nMedUniSeg on UNet small: conditioner {n_params(c):,} params, backbone {n_params(model.backbone):,}")
    with torch.no_grad():
        out = model.backbone(image, c, ctx := c.prepare(model.prompt_batch(["liver", "aorta", "spleen"]), 2))
        logits = c.predict(out.decoder_out, out.encoder_feats, ctx)
    assert out.encoder_feats[-1].shape == (6, 128, 2, 2, 2)                # B*K, sample-major
    assert out.decoder_out.shape == (6, 8, SIZE, SIZE, SIZE)
    assert ctx["uniseg.task_prior"].shape == (2, 3, 2, 2, 2)
    assert logits.shape == (2, 3, SIZE, SIZE, SIZE)


def test_head_reads_nnunet_width_on_a_narrow_backbone(model):
    """The small U-Net's 8-channel output is mapped to 32 channels (nnU-Net's last decoder width)
    before the 1x1x1 head; a backbone already that wide, or head_width 0, reads its output as is."""
    c = model.conditioner
    assert c.pre_head.conv.in_channels == 8 and c.pre_head.conv.out_channels == 32
    assert c.pre_head.conv.kernel_size == (1, 1, 1) and c.head.weight.shape[1] == 32
    off = make_model(head_width=0).conditioner
    assert off.pre_head is None and off.head.weight.shape[1] == 8
    wide = make_model(backbone=UNet(in_channels=1, preset="small", widths=(32, 32, 64, 64, 128))).conditioner
    assert wide.pre_head is None and wide.head.weight.shape[1] == 32
    with pytest.raises(ConfigError, match="head_width"):
        make_model(head_width=-1)


def test_selected_task_channel_differs_per_task(model, image):
    with torch.no_grad():
        out, ctx = model(image, ["liver", "aorta"], return_context=True)
    prior = ctx["uniseg.task_prior"]
    assert not torch.allclose(prior[:, 0], prior[:, 1], atol=1e-3)
    assert not torch.allclose(out[:, 0], out[:, 1], atol=1e-3)
    # Sample-major: decoder input b*K + k is sample b's task k.
    with torch.no_grad():
        only = model(image[1:], ["aorta"])
    torch.testing.assert_close(only[0, 0], out[1, 1], rtol=1e-4, atol=1e-5)


def test_permutation_and_subset_of_prompts(model, image):
    image = image[:1]  # one sample: the full set already runs the decoder once per class
    with torch.no_grad():
        full = model(image, None)
        perm = model(image, ["aorta", "spleen", "liver"])
    idx = [CLASSES.index(n) for n in ["aorta", "spleen", "liver"]]
    torch.testing.assert_close(perm, full[:, idx], rtol=1e-4, atol=1e-5)
    with pytest.raises(PromptError, match="no class"):
        model(image, [])
    with pytest.raises(PromptError):
        model(image, ["brain"])


# ---------------------------------------------------------------------------------------------
# MedUniSeg's modal prompt, input stems, 2D as depth-1
# ---------------------------------------------------------------------------------------------
def test_modal_prompt_starts_at_zero_then_changes_the_input_by_modality(image):
    model = make_model().eval()
    c = model.conditioner
    with torch.no_grad():
        assert torch.count_nonzero(c.modal_prior(torch.tensor([0, 1, 2]), image.shape[2:])) == 0  # plain UniSeg
        c.modal_prompt.normal_()                                           # as after training on 3 modalities
    pb = model.prompt_batch(["liver"], modality=["CT", "MR"], batch_size=2)
    ctx = c.prepare(pb, 2)
    with torch.no_grad():
        x = c.on_input(image, ctx)
        prior = c.modal_prior(torch.tensor([0, 1]), image.shape[2:])
        ct, mr = model(image, ["liver"], modality="CT"), model(image, ["liver"], modality="MRI")
    assert prior.shape == (2, 1, SIZE, SIZE, SIZE)
    torch.testing.assert_close(x, image + prior)                           # stems start as identity
    assert (prior[0] - prior[1]).abs().max() > 1e-2
    assert not torch.allclose(ct, mr, atol=1e-4)
    plain = make_model(modal_prompt=False).conditioner                      # UniSeg: no modal prior
    assert plain.modal_prompt is None
    with torch.no_grad():
        assert torch.equal(plain.on_input(image, plain.prepare(pb, 2)), image)
    with pytest.raises(InputError, match="unknown modality"):
        model(image, ["liver"], modality="XR")


def test_depth_one_input_uses_the_2d_modal_grid():
    bb = UNet(in_channels=1, preset="small", strides=[(2, 2, 1)] * 4)
    m = make_model(backbone=bb).eval()
    c = m.conditioner
    x = torch.randn(2, 1, SIZE, SIZE, 1)
    with torch.no_grad():
        out, ctx = m(x, ["spleen", "liver"], modality="CT", return_context=True)
        prior = c.modal_prior(torch.tensor([0]), (SIZE, SIZE, 1))
        flat = c.modal_map(c.modal_prompt[0]).view(1, 1, 12, 12)
    assert out.shape == (2, 2, SIZE, SIZE, 1) and torch.isfinite(out).all()
    assert ctx["uniseg.task_prior"].shape == (2, 2, 2, 2, 1)                # prompt resized to the grid
    expected = F.interpolate(flat, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    torch.testing.assert_close(prior[0, 0, :, :, 0], expected[0, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_input_stems_for_one_to_four_channels(channels):
    c = make_model(backbone=UNet(in_channels=1, preset="small")).conditioner
    x = torch.randn(1, channels, 16, 16, 16)
    ctx = c.prepare(PromptBatch(classes=["liver"], indices=[CLASSES.index("liver")]), 1)
    with torch.no_grad():
        y = c.on_input(x, ctx)
        prior = c.modal_prior(ctx["uniseg.mod_idx"], x.shape[2:])
    assert y.shape == (1, 1, 16, 16, 16)
    torch.testing.assert_close(y, (x + prior).mean(1, keepdim=True))       # starts as a channel average
    with pytest.raises(InputError, match="5-channel"):
        c.on_input(torch.randn(1, 5, 16, 16, 16), ctx)


def test_four_channel_backbone_and_other_channel_counts():
    m = make_model(backbone=UNet(in_channels=4, preset="small")).eval()
    stems = m.conditioner.stem_weight
    assert stems.shape == (4, 4, 4) and torch.equal(stems[3], torch.eye(4))  # 4 -> 4 starts as identity
    with torch.no_grad():
        assert m(torch.randn(1, 4, SIZE, SIZE, SIZE), ["liver"], modality="MR").shape == (1, 1, SIZE, SIZE, SIZE)
    try:
        with torch.no_grad():
            out = m(torch.randn(1, 1, SIZE, SIZE, SIZE), ["liver"])
    except InputError as exc:
        pytest.skip(f"the U-Net checks input channels before on_input, so stems cannot run: {exc}")
    assert out.shape == (1, 1, SIZE, SIZE, SIZE)


# ---------------------------------------------------------------------------------------------
# Training signal, DDP-safe gradients, continual learning
# ---------------------------------------------------------------------------------------------
def blob_batch(shape=(SIZE, SIZE, 16)):
    """Two boxes, one brighter and one darker than noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, *shape, generator=g) * 0.1
    y = torch.zeros(1, 2, *shape)
    y[:, 0, 4:16, 4:16, 2:10] = 1
    y[:, 1, 18:28, 10:30, 8:14] = 1
    x[:, 0] += y[:, 0] - y[:, 1]
    return x, y


def test_a_few_steps_reduce_bce_dice():
    m = make_model(seed=1, backbone=UNet(in_channels=1, preset="small", strides=[(2, 2, 2)] * 3 + [(2, 2, 1)]))
    m.train()
    x, y = blob_batch()
    ann = torch.ones(1, 2, dtype=torch.bool)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    losses = []
    for _ in range(4):
        loss, _ = masked_bce_dice(m(x, ["liver", "spleen"], modality="CT"), y, ann)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert m.conditioner.auxiliary_loss(m.conditioner.prepare(m.prompt_batch(["liver"]), 1)) is None
    assert losses[-1] < losses[0] - 0.05, losses


def test_unasked_rows_get_exact_zero_gradient_and_nothing_is_unused(model, image):
    m = make_model(seed=2).train()
    out, ctx = m(image, ["aorta", "spleen"], modality="PET", return_context=True)
    ds = m.conditioner.deep_supervision(ctx)
    assert [tuple(lg.shape[2:]) for _, lg in ds] == [(8, 8, 8), (16, 16, 16)] and [w for w, _ in ds] == [0.25, 0.5]
    (out.sigmoid().mean() + sum(lg.sigmoid().mean() for _, lg in ds)).backward()
    unused = [n for n, p in m.named_parameters() if p.grad is None]
    assert not unused, unused                                             # DDP would hang on these
    tc = m.conditioner.task_channels
    asked = [CLASSES.index("aorta"), CLASSES.index("spleen")]
    others = [i for i in range(len(CLASSES)) if i not in asked]
    for p in (tc.weight, tc.bias, tc.norm_weight, tc.norm_bias):
        assert p.grad[asked].abs().sum() > 0 and torch.count_nonzero(p.grad[others]) == 0
    gm = m.conditioner.modal_prompt.grad
    assert gm[2].abs().sum() > 0 and torch.count_nonzero(gm[:2]) == 0      # only PET's prompt moves
    gs = m.conditioner.stem_weight.grad
    assert gs[0].abs().sum() > 0 and torch.count_nonzero(gs[1:]) == 0      # only the 1-channel stem


def test_add_classes_keeps_old_maps_and_reloads(image, tmp_path):
    from promptseg.checkpoint import load_checkpoint, save_checkpoint

    m = make_model(seed=4).eval()
    image = image[:1]
    with torch.no_grad():
        before = m(image, ["liver", "aorta"])
    m.conditioner.add_classes(["liver tumor"])
    assert m.class_names[-1] == "liver tumor" and m.conditioner.task_channels.weight.shape[0] == len(CLASSES) + 1
    with torch.no_grad():
        after = m(image, ["liver", "aorta"])
        new = m(image, ["liver tumor", "liver"])
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(new[:, 1], before[:, 0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError):
        m.conditioner.add_classes(["liver"])
    config = {"backbone": {"name": "unet", "preset": "small"}, "conditioner": {"name": "uniseg"}}
    save_checkpoint(m, tmp_path / "ckpt", config)
    m2 = load_checkpoint(tmp_path / "ckpt").eval()
    assert m2.class_names == m.class_names
    with torch.no_grad():
        torch.testing.assert_close(m2(image, ["liver tumor", "liver"]), new)


def test_a_checkpoint_saved_without_the_pre_head_loads_as_it_was_trained(image, tmp_path):
    """Models saved before `head_width` existed read the 8 backbone channels directly; their
    config does not name head_width, and the loader rebuilds them with it off."""
    from promptseg.checkpoint import load_checkpoint, save_checkpoint

    old = make_model(seed=5, head_width=0).eval()
    config = {"backbone": {"name": "unet", "preset": "small"}, "conditioner": {"name": "uniseg"}}
    save_checkpoint(old, tmp_path / "old", config)
    back = load_checkpoint(tmp_path / "old").eval()
    assert back.conditioner.pre_head is None
    with torch.no_grad():
        torch.testing.assert_close(back(image[:1], ["liver"]), old(image[:1], ["liver"]))
    new = make_model(seed=5).eval()
    save_checkpoint(new, tmp_path / "new", config)
    assert load_checkpoint(tmp_path / "new").conditioner.pre_head is not None


def test_build_model_and_config_errors():
    m = build_model({"conditioner": {"name": "uniseg", "prompt_channels": 11, "modal_prompt": False}}, CLASSES)
    assert m.conditioner.task_prompt.shape[1] == 11 and m.conditioner.modal_prompt is None
    with pytest.raises(ConfigError, match="modal_grid"):
        UniSegConditioner(CLASSES, modal_grid=(4, 4, 4))
    with pytest.raises(ConfigError, match="prompt_grid"):
        UniSegConditioner(CLASSES, prompt_grid=(4, 6))


# ---------------------------------------------------------------------------------------------
# Channels across datasets
# ---------------------------------------------------------------------------------------------
TABLE = {"A": ["spleen", "liver", "right kidney"], "B": ["liver", "aorta"], "C": ["aorta", "spleen", "pancreas"]}


def test_aligned_channels_give_a_class_one_channel_in_every_dataset():
    """A class annotated by several datasets keeps its channel in each; the classes of one dataset
    never share a channel; the first dataset keeps its positions."""
    from promptseg.models.conditioners.datasets import DatasetTable

    t = DatasetTable(TABLE, CLASSES, "uniseg", layout="aligned")
    ch = {(d, c): t.channel(t.index(d), c) for d, cs in TABLE.items() for c in cs}
    assert [ch[("A", c)] for c in TABLE["A"]] == [0, 1, 2]
    for c in ("spleen", "liver", "aorta"):
        assert len({v for (d, k), v in ch.items() if k == c}) == 1, c
    for d, cs in TABLE.items():
        assert len({ch[(d, c)] for c in cs}) == len(cs), d
    assert t.width == 1 + max(ch.values())
    pos = DatasetTable(TABLE, CLASSES, "uniseg", layout="position")
    assert pos.channel(pos.index("B"), "liver") == 0 and pos.channel(pos.index("C"), "aorta") == 0  # the clash
    with pytest.raises(ConfigError, match="channel_layout"):
        DatasetTable(TABLE, CLASSES, "uniseg", layout="sorted")


def test_aligned_channels_stay_put_when_classes_are_added():
    from promptseg.models.conditioners.datasets import DatasetTable

    t = DatasetTable(TABLE, CLASSES, "uniseg", layout="aligned")
    before = {(d, c): t.channel(t.index(d), c) for d, cs in TABLE.items() for c in cs}
    t.add("B", ["left kidney"])  # new: the lowest channel no class of B holds (spleen's 0; spleen is not in B)
    t.add("C", ["liver"])        # liver's channel (1) is pancreas' in C: liver moves there only
    assert {(d, c): t.channel(t.index(d), c) for d, cs in TABLE.items() for c in cs} == before
    for d in TABLE:
        cs = t.classes[t.index(d)]
        assert len({t.channel(t.index(d), c) for c in cs}) == len(cs), d
    assert t.channel(t.index("B"), "left kidney") == 0 and t.channel(t.index("A"), "liver") == 1
    assert t.channel(t.index("C"), "liver") not in (1, t.channel(t.index("C"), "aorta"))


def test_checkpoints_record_the_layout_and_old_ones_load_by_position(image, tmp_path):
    """A model saves its `channel_layout` and dataset table whatever config the caller gave; a
    checkpoint from before the option (no key) loads with the positions it was trained with."""
    import json

    from promptseg.checkpoint import load_checkpoint, save_checkpoint

    config = {"backbone": {"name": "unet", "preset": "small"}, "conditioner": {"name": "uniseg"}}
    new = make_model(seed=6, dataset_classes=TABLE, channel_layout="aligned").eval()
    save_checkpoint(new, tmp_path / "new", config)
    saved = json.loads((tmp_path / "new" / "checkpoint.json").read_text())["config"]["conditioner"]
    assert saved["channel_layout"] == "aligned" and TABLE.items() <= saved["dataset_classes"].items()
    back = load_checkpoint(tmp_path / "new").eval()
    assert back.conditioner.table.layout == "aligned"
    with torch.no_grad():
        torch.testing.assert_close(back(image[:1], ["aorta", "pancreas"]), new(image[:1], ["aorta", "pancreas"]))

    old = make_model(seed=6, dataset_classes=TABLE, channel_layout="position").eval()
    save_checkpoint(old, tmp_path / "old", config)
    meta = json.loads((tmp_path / "old" / "checkpoint.json").read_text())
    del meta["config"]["conditioner"]["channel_layout"]  # as written before the option existed
    (tmp_path / "old" / "checkpoint.json").write_text(json.dumps(meta))
    back = load_checkpoint(tmp_path / "old").eval()
    assert back.conditioner.table.layout == "position"
    with torch.no_grad():
        torch.testing.assert_close(back(image[:1], ["aorta", "pancreas"]), old(image[:1], ["aorta", "pancreas"]))
