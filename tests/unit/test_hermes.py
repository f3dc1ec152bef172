"""Hermes conditioner: bi-directional prior fusion, prompt subsets/order, tasks, modality, training."""
from __future__ import annotations

import pytest
import torch

from promptseg.errors import ConfigError, InputError
from promptseg.models.backbones.unet import UNet
from promptseg.models.build import build_model
from promptseg.models.conditioners.hermes import HermesConditioner, pick_levels
from promptseg.models.segmenter import UniversalSegmenter
from promptseg.train.losses import masked_bce_dice

CLASSES = ["spleen", "liver", "right kidney", "left kidney", "pancreas", "aorta"]
LIGHT = dict(encoder_blocks=(1, 1, 1), decoder_blocks=(1, 1))  # one block per scale keeps tests fast
SIZE = 32


def make_model(seed=0, classes=CLASSES, backbone=None, **kw) -> UniversalSegmenter:
    torch.manual_seed(seed)
    cond = HermesConditioner(list(classes), **{**LIGHT, **kw})
    return UniversalSegmenter(backbone or UNet(in_channels=1, preset="small"), cond)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def model():
    return make_model().eval()


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 1, SIZE, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------
# Wiring: scales found by stride, sizes from the backbone
# ---------------------------------------------------------------------------------------------
def test_default_levels_and_sizes_on_small_unet():
    m = make_model(encoder_blocks=(2, 2, 4), decoder_blocks=(2, 2))
    c = m.conditioner
    # small U-Net: encoder strides 1,2,4,8,16 (widths 8..128); decoder strides 8,4,2,1.
    assert c.levels_used == {"encoder": [(4, 2), (8, 3), (16, 4)], "decoder": [(8, 0), (4, 1)]}
    assert [len(c.encoder_fusion[k].blocks) for k in ("2", "3", "4")] == [2, 2, 4]
    assert c.encoder_fusion["4"].task_prior.shape == (len(CLASSES), 128)
    assert c.encoder_fusion["4"].modality_prior.shape == (3, 10, 128)            # |M| x l x C
    assert c.encoder_fusion["4"].blocks[0].prior_attn.heads == 128 // 32          # heads = C / 32
    assert c.prototype[0].normalized_shape == (32 + 64 + 128 + 64 + 32,)         # all scales concatenated
    print(f"\nHermes (default blocks) on UNet small: conditioner {n_params(c):,} params, "
          f"backbone {n_params(m.backbone):,}")
    x = torch.randn(1, 1, SIZE, SIZE, SIZE)
    with torch.no_grad():
        assert m(x, ["liver", "aorta"]).shape == (1, 2, SIZE, SIZE, SIZE)


def test_pick_levels_by_largest_stride_and_shallow_backbones():
    strides = [(1, 1, 1), (2, 2, 1), (4, 4, 1), (8, 8, 2)]
    assert pick_levels(strides, [4, 8, 16]) == [(0, 2), (1, 3)]
    # A 3-stage U-Net has only the 1/4 scale (its bottleneck): the others are skipped.
    m = make_model(backbone=UNet(in_channels=1, preset="small", widths=(8, 16, 32)))
    assert m.conditioner.levels_used == {"encoder": [(4, 2)], "decoder": []}
    with torch.no_grad():
        assert m(torch.randn(1, 1, 16, 16, 16), ["liver"]).shape == (1, 1, 16, 16, 16)
    with pytest.raises(ConfigError, match="none of the scales"):
        make_model(backbone=UNet(in_channels=1, preset="small", widths=(8, 16)))


def test_depth_one_input_with_anisotropic_strides():
    """2D slices as depth-1 volumes: strides (2, 2, 1) keep the last axis at 1."""
    bb = UNet(in_channels=1, preset="small", strides=[(2, 2, 1)] * 4)
    m = make_model(backbone=bb).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 1, SIZE, SIZE, 1), ["spleen", "liver"], modality="MR")
    assert out.shape == (2, 2, SIZE, SIZE, 1) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# Prompts: order, subsets, context groups
# ---------------------------------------------------------------------------------------------
def test_permuting_prompts_permutes_outputs(model, image):
    prompts = ["liver", "aorta", "spleen"]
    with torch.no_grad():
        out = model(image, prompts, modality="CT")
        out_p = model(image, ["spleen", "liver", "aorta"], modality="CT")
    assert out.shape == (2, 3, SIZE, SIZE, SIZE)
    # Same tokens, same fused features; only BLAS blocking of the read-out may differ.
    torch.testing.assert_close(out_p, out[:, [2, 0, 1]], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[:, 0], out[:, 1], atol=1e-3)  # different tasks, different maps


def test_subset_gives_the_same_maps_as_the_full_set(model, image):
    with torch.no_grad():
        full = model(image, None, modality="CT")          # every class
        sub = model(image, ["pancreas", "spleen"], modality="CT")
    assert full.shape[1] == len(CLASSES)
    torch.testing.assert_close(sub, full[:, [CLASSES.index("pancreas"), CLASSES.index("spleen")]],
                               rtol=1e-5, atol=1e-5)


def test_prompted_context_follows_the_paper_literally(image):
    """context: prompted -- only the asked tasks' tokens are fused, so a subset changes the maps."""
    m = make_model(context="prompted").eval()
    with torch.no_grad():
        ab = m(image, ["liver", "aorta"])
        ba = m(image, ["aorta", "liver"])
        a = m(image, ["liver"])
    torch.testing.assert_close(ba, ab[:, [1, 0]], rtol=1e-4, atol=1e-5)  # attention is order-free
    assert not torch.allclose(a[:, 0], ab[:, 0], atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Fusion really goes both ways
# ---------------------------------------------------------------------------------------------
def test_fusion_updates_features_and_priors(model, image):
    c = model.conditioner
    ctx = c.prepare(model.prompt_batch(["liver", "spleen"], modality="CT", batch_size=2), 2)
    feat = torch.randn(2, 64, 4, 4, 4)
    with torch.no_grad():
        out = c.on_encoder(3, feat, ctx)       # the 1/8 encoder scale
        same = c.on_encoder(1, feat, ctx)      # an un-fused scale is left alone
    assert out.shape == feat.shape and not torch.allclose(out, feat, atol=1e-3)
    assert same is feat
    post = ctx["hermes.task_post"]["enc3"]      # posterior task tokens [B, P, C]
    prior = c.encoder_fusion["3"].task_prior[ctx["hermes.task_idx"]]
    assert not torch.allclose(post, prior, atol=1e-3)
    # Posterior tokens depend on the image (priors <- features): other features, other tokens.
    # (Attention has no positions, so a *permuted* feature map would give the same tokens.)
    with torch.no_grad():
        c.on_encoder(3, torch.randn(2, 64, 4, 4, 4), ctx)
    assert not torch.allclose(ctx["hermes.task_post"]["enc3"], post, atol=1e-4)


@pytest.mark.parametrize("switch", ["update_priors", "update_features"])
def test_ablating_either_direction_changes_the_output(model, image, switch):
    c = model.conditioner
    with torch.no_grad():
        ref = model(image, ["liver", "aorta"], modality="CT")
        setattr(c, switch, False)
        try:
            ablated = model(image, ["liver", "aorta"], modality="CT")
        finally:
            setattr(c, switch, True)
        again = model(image, ["liver", "aorta"], modality="CT")
    assert torch.equal(again, ref)
    assert (ablated - ref).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Modality priors and the auxiliary classifier
# ---------------------------------------------------------------------------------------------
def test_modality_prior_and_auxiliary_loss(model, image):
    with torch.no_grad():
        ct, ctx_ct = model(image, ["liver"], modality="CT", return_context=True)
        mr = model(image, ["liver"], modality="MRI")                   # alias of MR
        default = model(image, ["liver"])                               # default modality = CT
    assert torch.equal(default, ct) and not torch.allclose(ct, mr, atol=1e-4)
    assert ctx_ct["hermes.modality_logits"].shape == (2, 3)
    c = model.conditioner
    aux = c.auxiliary_loss(ctx_ct)
    expected = 0.01 * torch.nn.functional.cross_entropy(ctx_ct["hermes.modality_logits"], torch.tensor([0, 0]))
    torch.testing.assert_close(aux, expected)
    _, ctx_none = model(image, ["liver"], return_context=True)
    assert float(c.auxiliary_loss(ctx_none).detach()) == 0.0                     # modality not given: no target
    _, ctx_mixed = model(image, ["liver"], modality=["PET", None], return_context=True)
    assert ctx_mixed["hermes.mod_target"].tolist() == [2, -1]
    with pytest.raises(InputError, match="unknown modality 'XR'"):
        model(image, ["liver"], modality="XR")
    with pytest.raises(ConfigError):
        HermesConditioner(CLASSES, modalities=["CT", "CT"])


# ---------------------------------------------------------------------------------------------
# Per-dataset tasks (the paper's choice)
# ---------------------------------------------------------------------------------------------
TASKS = [["lits", "liver"], ["lits", "spleen"], ["lits", "pancreas"], ["btcv", "liver"], ["btcv", "aorta"]]


def test_dataset_tasks_and_class_level_fallback(image):
    m = make_model(task_mode="dataset", tasks=TASKS).eval()
    c = m.conditioner
    # Classes no pair names get dataset-free tasks; groups: lits, btcv, (none).
    assert c.tasks[:5] == [(d, k) for d, k in TASKS] and (None, "right kidney") in c.tasks
    assert c.task_group.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert c.encoder_fusion["2"].task_prior.shape[0] == len(TASKS) + 2
    with torch.no_grad():
        lits = m(image, ["liver"], datasets=["lits", "lits"])
        btcv = m(image, ["liver"], datasets=["btcv", "btcv"])
        none = m(image, ["liver"])                                    # default task of liver = (lits, liver)
        mixed, ctx_mixed = m(image, ["liver"], datasets=["btcv", "lits"], return_context=True)
        unknown = m(image, ["liver"], datasets=["amos", "amos"])       # unknown dataset: class-level fallback
    assert torch.equal(none, lits) and torch.equal(unknown, lits)
    assert not torch.allclose(lits, btcv, atol=1e-4)
    # Mixed batch: contexts of 2 (btcv) and 3 (lits) tokens; the padded slot must be masked out.
    assert ctx_mixed["hermes.task_mask"].tolist() == [[True, True, False], [True, True, True]]
    torch.testing.assert_close(mixed[0], btcv[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed[1], lits[1], rtol=1e-4, atol=1e-5)
    assert c.config_updates()["tasks"][:5] == TASKS
    as_dict = HermesConditioner(CLASSES, task_mode="dataset", tasks={"lits": ["liver"], None: ["aorta"]})
    assert as_dict.tasks[:2] == [("lits", "liver"), (None, "aorta")]
    with pytest.raises(ConfigError, match="needs `tasks"):
        HermesConditioner(CLASSES, task_mode="dataset")
    with pytest.raises(ConfigError, match="class the model does not have"):
        HermesConditioner(CLASSES, task_mode="dataset", tasks=[["x", "brain"]])
    with pytest.raises(ConfigError, match="task_mode"):
        HermesConditioner(CLASSES, task_mode="per-dataset")


def test_build_model_from_run_config():
    cfg = {"backbone": {"name": "unet", "preset": "small"},
           "conditioner": {"name": "hermes", "modalities": ["CT", "MR"], "encoder_blocks": [1, 1, 1],
                           "decoder_blocks": [1, 1]}}
    m = build_model(cfg, CLASSES)
    assert isinstance(m.conditioner, HermesConditioner) and m.conditioner.modalities.names == ["CT", "MR"]
    with pytest.raises(ConfigError, match="hermes"):
        build_model({"conditioner": {"name": "hermes", "no_such_option": 1}}, CLASSES)


# ---------------------------------------------------------------------------------------------
# Training signal and DDP-safe gradients
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
    # The small preset with a last (2, 2, 1) stride takes 32x32x16 patches: half the cost of 32^3.
    m = make_model(seed=1, backbone=UNet(in_channels=1, preset="small", strides=[(2, 2, 2)] * 3 + [(2, 2, 1)]))
    m.train()
    x, y = blob_batch()
    ann = torch.ones(1, 2, dtype=torch.bool)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    losses = []
    for _ in range(3):
        logits, ctx = m(x, ["liver", "spleen"], modality="CT", return_context=True)
        loss, _ = masked_bce_dice(logits, y, ann)
        loss = loss + m.conditioner.auxiliary_loss(ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.05, losses


def test_unasked_rows_get_exact_zero_gradient_and_nothing_is_unused(image):
    m = make_model(context="prompted").train()
    logits, ctx = m(image[:1], ["liver"], modality="MR", return_context=True)
    loss = logits.sigmoid().mean() + m.conditioner.auxiliary_loss(ctx)
    loss.backward()
    unused = [n for n, p in m.named_parameters() if p.grad is None]
    assert not unused, unused                                   # DDP would hang on these
    liver = CLASSES.index("liver")
    for level in m.conditioner._levels():
        g = level.task_prior.grad
        assert g[liver].abs().sum() > 0
        assert torch.count_nonzero(torch.cat([g[:liver], g[liver + 1:]])) == 0
        gm = level.modality_prior.grad
        assert gm[1].abs().sum() > 0 and torch.count_nonzero(gm[[0, 2]]) == 0   # CT, PET rows untouched


# ---------------------------------------------------------------------------------------------
# Continual learning and checkpoints
# ---------------------------------------------------------------------------------------------
def test_add_classes_keeps_old_maps_and_reloads(image, tmp_path):
    from promptseg.checkpoint import load_checkpoint, save_checkpoint

    m = make_model(seed=4).eval()
    image = image[:1]
    with torch.no_grad():
        before = m(image, ["liver", "aorta"])
    m.conditioner.add_classes(["liver tumor", "kidney tumor"])
    assert m.class_names == CLASSES + ["liver tumor", "kidney tumor"]
    assert m.conditioner.task_group.tolist() == [0] * len(CLASSES) + [1, 1]
    assert all(p.shape[0] == len(CLASSES) + 2 for p in m.conditioner.task_pool_parameters())
    with torch.no_grad():
        after = m(image, ["liver", "aorta"])
        new = m(image, ["liver tumor", "liver"])
    assert torch.equal(after, before)                       # old group: new tokens are not its context
    assert new.shape == (1, 2, SIZE, SIZE, SIZE) and torch.isfinite(new).all()
    with pytest.raises(ConfigError, match="already exist"):
        m.conditioner.add_classes(["liver"])

    config = {"backbone": {"name": "unet", "preset": "small"}, "conditioner": {"name": "hermes", **LIGHT}}
    save_checkpoint(m, tmp_path / "ckpt", config)
    m2 = load_checkpoint(tmp_path / "ckpt").eval()
    assert m2.class_names == m.class_names
    # the checkpoint records the table and the context: a "group" model does not come back as "dataset"
    assert m2.conditioner.context == m.conditioner.context == "group"
    assert m2.conditioner.task_group.tolist() == m.conditioner.task_group.tolist()
    with torch.no_grad():
        assert torch.equal(m2(image, ["liver tumor", "liver"]), new)


def test_add_classes_dataset_mode_joins_the_dataset_group():
    c = HermesConditioner(CLASSES, task_mode="dataset", tasks=TASKS, **LIGHT)
    UniversalSegmenter(UNet(in_channels=1, preset="small"), c)
    c.add_classes(["liver tumor"], datasets=["lits"])
    c.add_classes(["liver"], datasets=["msd"])                      # an existing class in a new dataset
    assert c.tasks[-2:] == [("lits", "liver tumor"), ("msd", "liver")]
    g = c.task_group.tolist()
    assert g[-2] == g[0] and g[-1] == max(g)
    assert c.class_names.count("liver") == 1 and c.class_names[-1] == "liver tumor"
    assert [t for t in c.config_updates()["tasks"] if t[0] == "msd"] == [["msd", "liver"]]


# ---------------------------------------------------------------------------------------------
# The paper's context: the sample's own dataset's tasks; 32-d prototypes
# ---------------------------------------------------------------------------------------------
TABLE = {"A": ["liver", "spleen"], "B": ["aorta", "pancreas"], "C": ["liver", "left kidney", "right kidney"]}


def test_own_dataset_context_and_32d_prototypes(image):
    m = make_model(seed=6, dataset_classes=TABLE).eval()
    c = m.conditioner
    assert c.context == "dataset" and c.prototype[-1][-1].out_features == 32
    ctx = c.prepare(m.prompt_batch(["liver", "aorta"], datasets=["A", "B"], batch_size=2), 2)
    names = lambda row: [c.tasks[t][1] for t, on in zip(ctx["hermes.task_idx"][row].tolist(),
                                                          ctx["hermes.task_mask"][row].tolist()) if on]
    assert ctx["hermes.rows"] == 1 and names(0) == ["liver", "spleen"] and names(1) == ["aorta", "pancreas"]
    with torch.no_grad():
        both = m(image, ["liver", "aorta"], datasets=["A", "B"])
        alone = m(image[:1], ["liver"], datasets=["A"])
        # aorta's token is read out for sample 0 but masked from its features: liver's map is unchanged
        torch.testing.assert_close(both[0, 0], alone[0, 0], rtol=1e-4, atol=1e-4)
        # without a dataset (inference) each class is answered in its default dataset's context
        free = m(image[:1], ["liver", "aorta"])
        torch.testing.assert_close(free[0, 0], alone[0, 0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(free[0, 1], m(image[:1], ["aorta"], datasets=["B"])[0, 0], rtol=1e-4, atol=1e-4)
        # another dataset's context changes the features, hence liver's map (A vs C)
        assert not torch.allclose(m(image[:1], ["liver"], datasets=["C"]), alone, atol=1e-3)
