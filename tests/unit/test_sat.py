"""SAT conditioner: query independence, open vocabulary, modality prior, training signal, sampling."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from promptseg.errors import ConfigError, InputError
from promptseg.models.backbones.unet import UNet
from promptseg.models.conditioners.base import PromptBatch
from promptseg.models.conditioners.sat import SATConditioner, sample_queries, sinusoidal_3d
from promptseg.models.segmenter import PromptError, UniversalSegmenter

E = 48  # width of the fake text embeddings (the real MiniLM one is 384)
CLASSES = ["spleen", "liver", "right kidney", "left kidney", "pancreas", "aorta"]
# CPU preset: what a laptop-sized SAT looks like (SAT-Nano: 768 / 6 / 8 / 2048 / 64 / 256).
CPU_PRESET = dict(d_model=64, depth=2, heads=4, ffn_dim=128, pixel_dim=16, mask_hidden=32, dropout=0.0)
SIZE = 32


def fake_embeddings(names, dim=E):
    """Deterministic per-name vectors, standing in for a text encoder."""
    out = []
    for n in names:
        g = torch.Generator().manual_seed(sum(ord(c) * (i + 1) for i, c in enumerate(n)) % (2**31))
        out.append(torch.randn(dim, generator=g))
    return torch.stack(out)


def make_model(seed=0, classes=CLASSES, **kw) -> UniversalSegmenter:
    torch.manual_seed(seed)
    cfg = {**CPU_PRESET, **kw}
    cond = SATConditioner(classes, embeddings=fake_embeddings(classes), **cfg)
    cond.set_text_encoder(fake_embeddings)
    return UniversalSegmenter(UNet(in_channels=1, preset="small"), cond)


@pytest.fixture(scope="module")
def model():
    return make_model().eval()


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 1, SIZE, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------
# Structure: logits for class k depend only on query k
# ---------------------------------------------------------------------------------------------
def test_permuting_prompts_permutes_outputs(model, image):
    prompts = ["liver", "aorta", "spleen", "pancreas"]
    perm = [2, 0, 3, 1]
    with torch.no_grad():
        out = model(image, prompts, modality="CT")
        out_p = model(image, [prompts[i] for i in perm], modality="CT")
    assert out.shape == (2, 4, SIZE, SIZE, SIZE)
    assert torch.equal(out_p, out[:, perm])


def test_class_output_unchanged_when_other_queries_added_or_removed(model, image):
    with torch.no_grad():
        alone = model(image, ["liver"], modality="CT")
        many = model(image, ["spleen", "liver", "aorta", "left kidney", "pancreas"], modality="CT")
        two = model(image, ["aorta", "liver"], modality="CT")
    torch.testing.assert_close(many[:, 1:2], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(two[:, 1:2], alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(many[:, 0], many[:, 1])  # different prompts, different maps


def test_query_self_attention_option_breaks_independence(image):
    """The check above can fail: with self-attention among queries, other prompts leak in."""
    m = make_model(query_self_attention=True).eval()
    with torch.no_grad():
        alone = m(image, ["liver"], modality="CT")
        many = m(image, ["spleen", "liver", "aorta"], modality="CT")
    assert (many[:, 1:2] - alone).abs().max() > 1e-4


def test_predict_reads_encoder_features_captured_by_on_encoder(model, image):
    pb = model.prompt_batch(["liver", "spleen"], modality="CT", batch_size=2)
    with torch.no_grad():
        ctx = model.conditioner.prepare(pb, 2)
        out = model.backbone(image, model.conditioner, ctx)
        direct = model.conditioner.predict(out.decoder_out, out.encoder_feats, ctx)
        captured = model.conditioner.predict(out.decoder_out, [], ctx)
    assert len(ctx["sat.encoder"]) == len(model.backbone.encoder_channels)
    assert torch.equal(direct, captured)


# ---------------------------------------------------------------------------------------------
# Modality, open vocabulary, continual learning
# ---------------------------------------------------------------------------------------------
def test_modality_embedding_changes_outputs(model, image):
    with torch.no_grad():
        ct = model(image, ["liver"], modality="CT")
        mr = model(image, ["liver"], modality="MRI")  # alias of MR
        mixed = model(image, ["liver"], modality=["CT", "MR"])
    assert (ct - mr).abs().max() > 1e-3
    torch.testing.assert_close(mixed[0], ct[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1], mr[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="unknown modality 'XR'"):
        model(image, ["liver"], modality="XR")


def test_free_text_prompt_with_custom_encoder(model, image):
    prompt = "the thing next to the liver"
    with torch.no_grad():
        out = model(image, ["liver", prompt], modality="CT")
        alone = model(image, [prompt], modality="CT")
    assert out.shape[1] == 2 and torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 1:2], alone, rtol=1e-5, atol=1e-5)
    assert prompt not in model.class_names  # run-time embeddings do not grow the class list
    assert prompt not in dict(model.conditioner.state_dict())  # nor the checkpoint


def test_free_text_prompt_without_encoder_is_one_line_error(image, monkeypatch):
    import builtins

    m = make_model().eval()
    m.conditioner.set_text_encoder(None)
    real_import = builtins.__import__

    def no_text(name, globals=None, locals=None, fromlist=(), level=0):
        if name.endswith("text") and level > 0 or name == "promptseg.text":
            raise ImportError("promptseg.text unavailable")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_text)
    with pytest.raises(PromptError, match="no text encoder") as err:
        m(image, ["an unheard-of structure"], modality="CT")
    assert "\n" not in str(err.value)


def test_free_text_prompt_with_real_text_encoder(image):
    text = pytest.importorskip("promptseg.text", reason="promptseg.text not importable")
    try:
        emb = text.embed_classes(["liver", "spleen"])
    except Exception as exc:  # encoder weights not installed here
        pytest.skip(f"text encoder unavailable: {exc}")
    torch.manual_seed(0)
    cond = SATConditioner(["liver", "spleen"], embeddings=emb, **CPU_PRESET)
    m = UniversalSegmenter(UNet(in_channels=1, preset="small"), cond).eval()
    with torch.no_grad():
        out = m(image[:1], ["liver", "hepatic vein branches in segment IV"], modality="CT")
    assert out.shape == (1, 2, SIZE, SIZE, SIZE) and torch.isfinite(out).all()
    assert cond._runtime_cache["hepatic vein branches in segment IV"].shape == (emb.shape[1],)


def test_add_classes_extends_table_only(model):
    m = make_model()
    n_params = sum(p.numel() for p in m.parameters())
    m.conditioner.add_classes(["gall bladder", "liver"], fake_embeddings(["gall bladder", "liver"]))
    m.conditioner.add_classes(["stomach"])  # embedded by the text encoder
    assert m.class_names == CLASSES + ["gall bladder", "stomach"]
    assert m.conditioner.embeddings.shape == (len(CLASSES) + 2, E)
    assert torch.equal(m.conditioner.embeddings[-1], fake_embeddings(["stomach"])[0])
    assert sum(p.numel() for p in m.parameters()) == n_params  # nothing structural
    # the grown table travels with the state dict and restores into a model built from it
    sd = m.state_dict()
    clone = make_model(seed=3, classes=m.class_names)
    clone.load_state_dict(sd)
    assert torch.equal(clone.conditioner.embeddings, m.conditioner.embeddings)


def test_registry_builds_sat_with_given_embeddings():
    from promptseg.models.build import build_model

    cfg = {"backbone": {"name": "unet", "preset": "small"}, "conditioner": {"name": "sat", **CPU_PRESET}}
    m = build_model(cfg, CLASSES, embeddings=fake_embeddings(CLASSES))
    assert isinstance(m.conditioner, SATConditioner) and m.conditioner.open_vocabulary
    assert torch.equal(m.conditioner.embeddings, fake_embeddings(CLASSES))


def test_checkpoint_round_trip_needs_no_text_encoder(tmp_path, image, monkeypatch):
    ckpt = pytest.importorskip("promptseg.checkpoint", reason="checkpoint module not there")
    from promptseg.models import build

    cfg = {"backbone": {"name": "unet", "preset": "small"}, "conditioner": {"name": "sat", **CPU_PRESET}}
    m = build.build_model(cfg, CLASSES, embeddings=fake_embeddings(CLASSES)).eval()
    m.conditioner.add_classes(["stomach"], fake_embeddings(["stomach"]))
    ckpt.save_checkpoint(m, tmp_path / "run", cfg)

    def no_encoder(*a, **k):
        raise AssertionError("loading a SAT checkpoint must not run the text encoder")

    monkeypatch.setattr(build, "class_embeddings", no_encoder)
    loaded = ckpt.load_checkpoint(tmp_path / "run")
    assert loaded.class_names == CLASSES + ["stomach"]
    with torch.no_grad():
        a = m(image, ["stomach", "liver"], modality="CT")
        b = loaded(image, ["stomach", "liver"], modality="CT")
    assert torch.equal(a, b)


def test_bad_configuration_is_reported():
    with pytest.raises(ConfigError, match="divisible"):
        SATConditioner(CLASSES, fake_embeddings(CLASSES), d_model=30, heads=4)
    with pytest.raises(ConfigError, match=r"embeddings must be \[6, E\]"):
        SATConditioner(CLASSES, fake_embeddings(CLASSES[:3]))


# ---------------------------------------------------------------------------------------------
# Training signal
# ---------------------------------------------------------------------------------------------
def bce_dice(logits, target):
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits).flatten(2)
    t = target.flatten(2)
    dice = 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)
    return bce + dice.mean()


def test_few_optimisation_steps_reduce_bce_dice():
    m = make_model(seed=4).train()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, SIZE, SIZE, SIZE, generator=g)
    zz, yy, xx = torch.meshgrid(*[torch.arange(SIZE, dtype=torch.float32)] * 3, indexing="ij")
    ball = lambda c, r: (((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) <= r * r).float()
    target = torch.stack([ball((10, 12, 14), 6), ball((22, 20, 18), 5), torch.zeros(SIZE, SIZE, SIZE)])
    target = target.expand(2, -1, -1, -1, -1)
    x = x + 2 * target[:, :2].sum(1, keepdim=True)  # an image where the classes are visible
    prompts = ["liver", "spleen", "aorta"]  # aorta: an annotated negative (all zeros)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = bce_dice(m(x, prompts, modality="CT"), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    print("losses", [round(v, 3) for v in losses])
    assert losses[-1] < 0.8 * losses[0], losses


def test_parameter_count_cpu_preset(capsys):
    m = make_model()
    cond = sum(p.numel() for p in m.conditioner.parameters())
    back = sum(p.numel() for p in m.backbone.parameters())
    with capsys.disabled():
        print(f"\n[SAT CPU preset] conditioner {cond / 1e6:.3f}M params, UNet small {back / 1e6:.3f}M params")
    # text proj + modality + 2 layers (cross-attn + FFN) + mask MLP + memory proj + pixel proj
    d = CPU_PRESET["d_model"]
    layer = 4 * d * d + 4 * d + 2 * d * CPU_PRESET["ffn_dim"] + CPU_PRESET["ffn_dim"] + d + 4 * d
    assert cond > CPU_PRESET["depth"] * layer
    assert cond < 1_000_000


# ---------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------
def test_sinusoidal_3d_encoding():
    pe = sinusoidal_3d((2, 3, 4), 64)
    assert pe.shape == (24, 64)
    c = 2 * -(-64 // 6)  # 22 channels per axis
    torch.testing.assert_close(pe[0, 0:c:2], torch.zeros(c // 2))  # sin(0)
    torch.testing.assert_close(pe[0, 1:c:2], torch.ones(c // 2))  # cos(0)
    assert torch.unique(pe, dim=0).shape[0] == 24  # every token has its own code
    # moving along the last axis changes only the third block
    assert torch.equal(pe[0, : 2 * c], pe[1, : 2 * c]) and not torch.equal(pe[0, 2 * c :], pe[1, 2 * c :])


def test_sample_queries_positive_first():
    annotated = [f"c{i}" for i in range(10)]
    present = ["c7", "c1", "c4", "c9"]
    rng = random.Random(0)
    q = sample_queries(annotated, present, max_queries=32, rng=rng)
    assert set(present) <= set(q) and len(q) == 4 + 2  # int(0.5 * 4) negatives
    assert q == [c for c in annotated if c in q]  # annotated order
    assert set(q) <= set(annotated)
    # cap: more positives than max_queries -> only positives
    q = sample_queries(annotated, annotated, max_queries=3, rng=rng)
    assert len(q) == 3
    # negatives limited by the room left
    q = sample_queries(annotated, annotated[:3], max_queries=4, rng=rng)
    assert annotated[:3] == q[:3] and len(q) == 4
    # no positive: random annotated classes (all negatives), capped
    q = sample_queries(annotated, [], max_queries=5, rng=rng)
    assert len(q) == 5 and set(q) <= set(annotated)
    # a present class the dataset does not annotate is never queried
    assert "other" not in sample_queries(["a", "b"], ["other", "a"], rng=rng)
    # reproducible with a seed
    assert sample_queries(annotated, ["c1"], 32, 7, neg_ratio=3) == sample_queries(annotated, ["c1"], 32, 7, neg_ratio=3)
    with pytest.raises(ConfigError):
        sample_queries(annotated, present, max_queries=0)


def test_loss_pairs_keep_each_samples_positives_and_cap_its_negatives():
    """SAT's rule per sample of a step: every positive pair, at most int(r * P) annotated negatives,
    never an unannotated class; a sample without positives keeps negatives only; "all" = annotated."""
    import numpy as np

    from promptseg.config import check_recipe
    from promptseg.models.conditioners.queries import loss_pairs

    annotated = np.array([[1] * 10, [1, 1, 1, 0, 0, 0, 0, 0, 0, 0], [1] * 4 + [0] * 6], dtype=bool)
    present = np.zeros_like(annotated)
    present[0, [1, 4, 7, 9]] = True
    present[1, [0, 5]] = True    # class 5 is present but sample 1's dataset does not annotate it
    keep = loss_pairs(annotated, present, 0.5, 32, np.random.default_rng(0))
    assert not (keep & ~annotated).any()
    assert (keep[0] & present[0]).sum() == 4 and (keep[0] & ~present[0]).sum() == 2
    assert keep[1, 0] and not keep[1, 5] and (keep[1] & ~present[1]).sum() == 0   # int(0.5 * 1) = 0 negatives
    assert keep[2].sum() == 4 and not (keep[2] & present[2]).any()                  # no positive: negatives
    assert np.array_equal(loss_pairs(annotated, present, 0.5, 2, np.random.default_rng(0))[2].sum(), 2)
    assert np.array_equal(loss_pairs(annotated, present, "all", 32, np.random.default_rng(0)), annotated)
    again = loss_pairs(annotated, present, 0.5, 32, np.random.default_rng(0))
    assert np.array_equal(again, keep)                                               # reproducible from the rng
    check_recipe({"negative_ratio": "all"})
    with pytest.raises(ConfigError, match="negative_ratio"):
        check_recipe({"negative_ratio": -1})


def test_prompt_batch_indices_and_free_text_share_embeddings(model):
    """A known class gets its stored row whether the index is given or not."""
    cond = model.conditioner
    a = cond.embed(["liver", "aorta"], [1, 5])
    b = cond.embed(["liver", "aorta"], [-1, -1])
    assert torch.equal(a, b) and torch.equal(a, cond.embeddings[[1, 5]])
    ctx = cond.prepare(PromptBatch(classes=["liver"], indices=[1], modality=None), 3)
    assert ctx["sat.modality"].tolist() == [0, 0, 0]  # default modality CT


def test_text_norm_centres_on_the_built_vocabulary_and_checkpoints_record_it(tmp_path, image):
    """"centred" (the default): the projection sees (embedding - fixed centre) at unit RMS per
    dimension; the centre is the built classes' mean and stays put when classes are added (old
    classes' queries never move); "none" (the authors') has no centre; a checkpoint loads as
    saved, and one saved before the option existed (no text_norm, no centre) loads as "none"."""
    from promptseg.checkpoint import load_checkpoint, save_checkpoint

    m = make_model(text_norm="centred")
    cond = m.conditioner
    emb = fake_embeddings(CLASSES)
    assert cond.config_updates() == {"text_norm": "centred", "pixel_levels": 1}
    torch.testing.assert_close(cond.text_centre, emb.mean(0))
    t = emb - emb.mean(0)
    torch.testing.assert_close(cond.text_input(emb), t * (E ** 0.5 / t.norm(dim=-1, keepdim=True)))
    before = cond.text_input(emb).clone()
    cond.add_classes(["stomach"], fake_embeddings(["stomach"]))
    torch.testing.assert_close(cond.text_centre, emb.mean(0))          # not moved by the new class
    torch.testing.assert_close(cond.text_input(emb), before)
    assert make_model().conditioner.text_norm == "centred"
    plain = make_model(text_norm="none").conditioner
    assert not hasattr(plain, "text_centre") and torch.equal(plain.text_input(emb), emb)
    with pytest.raises(ConfigError, match="text_norm"):
        make_model(text_norm="l2")

    cfg = {"backbone": {"name": "unet", "preset": "small"}, "conditioner": {"name": "sat", **CPU_PRESET}}
    model = make_model(seed=2, text_norm="centred").eval()
    save_checkpoint(model, tmp_path / "m", cfg)                        # the YAML did not say
    back = load_checkpoint(tmp_path / "m").eval()
    assert back.conditioner.text_norm == "centred"
    with torch.no_grad():
        torch.testing.assert_close(back(image, ["liver", "aorta"]), model(image, ["liver", "aorta"]))

    import json

    for norm in ("none", "centred"):  # a checkpoint.json without the key, as before the option
        saved = save_checkpoint(make_model(seed=3, text_norm=norm).eval(), tmp_path / norm, cfg)
        meta_path = next(p for p in saved.rglob("checkpoint.json"))
        meta = json.loads(meta_path.read_text())
        meta["config"]["conditioner"].pop("text_norm")
        meta_path.write_text(json.dumps(meta))
        assert load_checkpoint(saved, verify=False).conditioner.text_norm == norm


def test_pixel_levels_read_the_last_decoder_stages(tmp_path, image):
    """pixel_levels=L: the per-voxel embedding reads the backbone's output and the L-1 decoder
    stages before it, upsampled to the finest grid (the small U-Net at L=3: 8 + 16 + 32 channels);
    each stage it reads moves the embedding, class k still depends on query k alone, checkpoints
    record L, a backbone with fewer stages gives all it has, and L must be a positive integer."""
    from promptseg.checkpoint import load_checkpoint, save_checkpoint

    assert make_model().conditioner.pixel_proj.in_channels == 8          # default: the authors' form
    m = make_model(seed=6, pixel_levels=3).eval()
    cond = m.conditioner
    assert cond.pixel_proj.in_channels == 8 + 16 + 32
    with torch.no_grad():
        out = m(image, ["liver", "aorta", "spleen"], modality="CT")
        solo = m(image, ["aorta"], modality="CT")
    assert out.shape == (2, 3, SIZE, SIZE, SIZE)
    torch.testing.assert_close(out[:, 1:2], solo)

    ctx = cond.prepare(PromptBatch(classes=["liver"], indices=[1], modality=["CT", "CT"]), 2)
    with torch.no_grad():
        feats = m.backbone(image, cond, ctx)
        stages = ctx["sat.decoder"]
        assert sorted(stages) == [1, 2] and [stages[d].shape[1] for d in (1, 2)] == [32, 16]
        base = cond.pixel_features(feats.decoder_out, ctx)
        for d in (1, 2):
            kept = stages[d]
            stages[d] = torch.zeros_like(kept)
            assert not torch.allclose(cond.pixel_features(feats.decoder_out, ctx), base)
            stages[d] = kept

    cfg = {"backbone": {"name": "unet", "preset": "small"}, "conditioner": {"name": "sat", **CPU_PRESET}}
    save_checkpoint(m, tmp_path / "m", cfg)                            # the YAML did not say
    back = load_checkpoint(tmp_path / "m").eval()
    assert back.conditioner.pixel_levels == 3
    with torch.no_grad():
        torch.testing.assert_close(back(image, ["liver", "aorta"]), m(image, ["liver", "aorta"]))

    for bad in (0, True, 2.0):
        with pytest.raises(ConfigError, match="pixel_levels must be a positive integer"):
            make_model(pixel_levels=bad)
    assert make_model(pixel_levels=9).conditioner.pixel_proj.in_channels == 8 + 16 + 32 + 64  # all 4 stages

