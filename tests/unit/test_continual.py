"""Continual learning / fine-tuning pieces on synthetic models (no datasets, no training loop)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from promptseg.data.sampling import Batch
from promptseg.errors import ConfigError
from promptseg.models.build import build_model
from promptseg.train.continual import (
    EXTEND_DEFAULTS,
    ExtensionTrainer,
    check_rebuild,
    diff_parameters,
    extension_config,
    finetune_config,
    freeze_norm_statistics,
    mask_old_rows,
    transfer_weights,
)

BACKBONE = {"name": "unet", "preset": "small", "widths": [4, 8, 16]}
UNIVERSAL = {"name": "universal", "hidden": 8, "mlp_hidden": 8}
OLD = ["spleen", "liver", "pancreas"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(classes, cond=UNIVERSAL, seed=0):
    torch.manual_seed(seed)
    emb = torch.randn(len(classes), 6) if cond["name"] == "universal" else None
    m = build_model({"backbone": BACKBONE, "conditioner": cond}, classes, embeddings=emb)
    return m.eval()


def _grow(model, names):
    if model.conditioner.needs_text:
        model.conditioner.add_classes(names, torch.randn(len(names), 6))
    else:
        model.conditioner.add_classes(names)


@pytest.mark.parametrize("cond,kind", [
    (UNIVERSAL, "new"), ({"name": "hermes"}, "grown"), ({"name": "uniseg"}, "grown"),
])
def test_diff_parameters_finds_new_heads_and_grown_rows(cond, kind):
    m = _model(OLD, cond)
    before = dict(m.named_parameters())
    _grow(m, ["liver tumor"])
    d = diff_parameters(before, m, cond["name"])
    if kind == "new":
        assert d.new and all(".controllers.3." in n for n in d.new) and not d.grown
    else:
        assert d.grown and not d.new and set(d.grown.values()) == {3}
    assert set(d.kept) | set(d.new) | set(d.grown) == set(dict(m.named_parameters()))


def test_diff_parameters_refuses_a_changed_old_weight():
    m = _model(OLD)
    before = dict(m.named_parameters())
    m.conditioner.text_proj.weight = nn.Parameter(m.conditioner.text_proj.weight.detach() + 1)
    with pytest.raises(ConfigError, match="text_proj.weight"):
        diff_parameters(before, m, "UniversalConditioner")


def test_masked_rows_stay_bit_identical_under_adamw():
    p = nn.Parameter(torch.randn(5, 3))
    old = p.detach()[:3].clone()
    mask_old_rows(p, 3)
    opt = torch.optim.AdamW([{"params": [p], "weight_decay": 0.0}], lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        (p * torch.randn(5, 3)).sum().backward()
        opt.step()
    assert torch.equal(p.detach()[:3], old)
    assert not torch.allclose(p.detach()[3:], torch.zeros(2, 3))


def test_frozen_batch_norm_keeps_running_statistics():
    net = nn.Sequential(nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2), nn.BatchNorm3d(2))
    for p in net[1].parameters():
        p.requires_grad_(False)
    state = {k: v.clone() for k, v in net[1].state_dict().items()}
    net.train()
    freeze_norm_statistics(net)
    assert not net[1].training and net[2].training
    net(torch.randn(2, 1, 3, 3, 3))
    assert all(torch.equal(state[k], v) for k, v in net[1].state_dict().items())


def _stub_trainer(strategy: str, pseudo: str = "soft"):
    """An ExtensionTrainer with only what `prepare_batch` reads (no datasets, no loop)."""
    t = ExtensionTrainer.__new__(ExtensionTrainer)
    t.old_classes = list(OLD)
    t.new_classes = ["liver tumor"]
    t.classes = OLD + ["liver tumor"]
    t.strategy = strategy
    t.ext = {**EXTEND_DEFAULTS, "strategy": strategy, "pseudo_labels": pseudo, "pseudo_threshold": 0.5}
    t.device = torch.device("cpu")
    old = _model(OLD, seed=3)
    with torch.no_grad():  # make the old model's maps far from 0/1 labels and from each other
        for p in old.conditioner.controllers.parameters():
            p.mul_(3.0)
    t.old_model = old if strategy in ("pseudo-label", "lora") else None
    return t, old


def _batch():
    torch.manual_seed(7)
    image = torch.randn(2, 1, 16, 16, 16)
    targets = torch.zeros(2, 4, 16, 16, 16)
    targets[:, 1, 4:12, 4:12, 4:12] = 1.0   # liver: annotated by the new dataset
    targets[:, 3, 6:9, 6:9, 6:9] = 1.0      # liver tumor: the new class
    annotated = torch.tensor([[False, True, False, True]] * 2)
    return Batch(image, targets, annotated, ["CT", "CT"], ["PhantomA_liver"] * 2, ["a", "b"])


def test_pseudo_labels_are_the_old_models_predictions():
    t, old = _stub_trainer("pseudo-label", "soft")
    batch = _batch()
    real = batch.targets.clone()
    out = t.prepare_batch(batch)
    with torch.no_grad():
        expected = torch.sigmoid(old(out.image, ["spleen", "pancreas"]))
    # unannotated old classes: exactly the old model's sigmoid, and supervised now
    assert torch.equal(out.targets[:, 0], expected[:, 0])
    assert torch.equal(out.targets[:, 2], expected[:, 1])
    assert out.annotated.all()
    # ... which is no label at all: soft values strictly between 0 and 1 somewhere
    assert bool(((expected > 0.05) & (expected < 0.95)).any())
    # a class the new dataset annotates keeps its real label; the new class its label
    assert torch.equal(out.targets[:, 1], real[:, 1]) and torch.equal(out.targets[:, 3], real[:, 3])


def test_hard_pseudo_labels_threshold_the_old_prediction():
    t, old = _stub_trainer("lora", "hard")
    out = t.prepare_batch(_batch())
    with torch.no_grad():
        probs = torch.sigmoid(old(out.image, ["spleen", "pancreas"]))
    assert torch.equal(out.targets[:, 0], (probs[:, 0] >= 0.5).float())
    assert set(out.targets[:, [0, 2]].unique().tolist()) <= {0.0, 1.0}


def test_naive_and_freeze_backbone_supervise_no_old_class_by_prediction():
    t, _ = _stub_trainer("naive")
    out = t.prepare_batch(_batch())
    assert out.annotated[0].tolist() == [False, True, False, True]  # unannotated old classes: no loss
    t, _ = _stub_trainer("freeze-backbone")
    out = t.prepare_batch(_batch())
    assert out.annotated[0].tolist() == [False, False, False, True]  # only the new class trains


def test_extension_config_takes_the_architecture_from_the_checkpoint(tmp_path):
    old = {"backbone": BACKBONE, "conditioner": UNIVERSAL, "plan": {"name": "universal_ct", "spacing": None},
           "modality": "CT", "inference": {"window": [32, 32, 32], "overlap": 0.25}}
    raw = {"output": "ext", "datasets": ["data/A"], "train": {"steps": 5},
           "extend": {"strategy": "lora", "lora": {"rank": 4}}, "inference": {"overlap": 0.5}}
    cfg = extension_config(raw, old, tmp_path)
    assert cfg["backbone"] == BACKBONE and cfg["conditioner"] == UNIVERSAL and cfg["plan"] == old["plan"]
    assert cfg["inference"] == {"window": [32, 32, 32], "overlap": 0.5}
    assert cfg["extend"]["lora"] == {"rank": 4, "alpha": 64, "targets": "conv"}
    assert cfg["datasets"][0]["path"] == str(tmp_path / "data" / "A")
    assert cfg["extension"] == {"history": []} and cfg["train"]["steps"] == 5
    with pytest.raises(ConfigError, match="backbone"):
        extension_config({**raw, "backbone": {"name": "unet", "preset": "nnunet"}}, old, tmp_path)
    with pytest.raises(ConfigError, match="strategy"):
        extension_config({**raw, "extend": {"strategy": "distill"}}, old, tmp_path)
    with pytest.raises(ConfigError, match=r"unknown key extend\.rank; known: "):
        extension_config({**raw, "extend": {"rank": 3}}, old, tmp_path)
    with pytest.raises(ConfigError, match="plan"):
        extension_config({**raw, "plan": {"name": "hermes_ct"}}, old, tmp_path)
    ft = finetune_config({"datasets": ["d"], "finetune": {"freeze": "encoder"}, "plan": "hermes_ct"}, old, tmp_path)
    assert ft["finetune"] == {"init": "all", "freeze": "encoder"} and ft["plan"] == {"name": "hermes_ct"}
    assert ft["backbone"] == BACKBONE
    with pytest.raises(ConfigError, match="finetune.freeze"):
        finetune_config({"finetune": {"freeze": "decoder"}}, old, tmp_path)


@pytest.mark.parametrize("cond", [UNIVERSAL, {"name": "uniseg"}])
def test_finetune_transfer_matches_per_class_parts_by_name(cond):
    src = _model(OLD, cond, seed=1)
    dst = _model(["liver tumor", "liver"], cond, seed=2)
    info = transfer_weights(src, dst, "all")
    assert info["classes_matched"] == 1
    s, d = src.state_dict(), dst.state_dict()
    assert all(torch.equal(s[k], d[k]) for k in d if k.startswith("backbone."))
    if cond["name"] == "universal":
        for k in ("0.weight", "2.bias"):  # liver's MLP: src index 1 -> dst index 1; tumour's stays fresh
            assert torch.equal(d[f"conditioner.controllers.1.{k}"], s[f"conditioner.controllers.1.{k}"])
        assert not torch.equal(d["conditioner.controllers.0.0.weight"], s["conditioner.controllers.0.0.weight"])
        assert torch.equal(d["conditioner.text_proj.weight"], s["conditioner.text_proj.weight"])
    else:
        w_src, w_dst = s["conditioner.task_channels.weight"], d["conditioner.task_channels.weight"]
        assert torch.equal(w_dst[1], w_src[1]) and not torch.equal(w_dst[0], w_src[0])
    # encoder-only initialisation leaves the decoder and the conditioner as built
    fresh = _model(["liver tumor", "liver"], cond, seed=2)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    transfer_weights(src, fresh, "encoder")
    after = fresh.state_dict()
    for k in after:
        name = k[len("backbone."):] if k.startswith("backbone.") else None
        if name is not None and fresh.backbone.in_encoder(name):
            assert torch.equal(after[k], s[k])
        else:
            assert torch.equal(after[k], before[k])


def test_check_rebuild_notices_structure_a_config_cannot_rebuild():
    from promptseg.errors import CheckpointError
    from promptseg.models.lora import apply_lora

    m = _model(OLD)
    cfg = {"backbone": BACKBONE, "conditioner": UNIVERSAL}
    check_rebuild(m, cfg, 1)
    apply_lora(m.backbone, rank=2, alpha=2)  # adapters the config does not record
    with pytest.raises(CheckpointError, match="would not reload"):
        check_rebuild(m, cfg, 1)
