"""UniSeg's published 11-task network: the authors' key layout, strict loading, task routing.

The layout file was generated from the authors' own network code; the forward was compared with
theirs outside the repository (max |d| 0 per task on a real CT window, see the module docstring of
models/official_uniseg.py), so here we check what can break without their code: every key maps,
bad files are refused with every problem listed, and the task id picks the FUSE map it should.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from promptseg.checkpoint import open_checkpoint, save_checkpoint
from promptseg.errors import CheckpointError, ConfigError, InputError
from promptseg.models.conditioners.base import PromptError
from promptseg.models.official_uniseg import (
    build_official_uniseg,
    is_uniseg_state,
    load_official_uniseg,
    name_map,
    random_uniseg_state_dict,
    uniseg_key_facts,
    uniseg_layout,
    uniseg_settings,
    unwrap_uniseg,
)
from promptseg.models.official_uniseg_model import UniSegByClass, class_table, uniseg_run_config, uniseg_taxonomy
from promptseg.taxonomy import default_taxonomy

SMALL = {"patch": (16, 64, 64), "base_features": 4, "max_features": 8}


def nnunet_file(path, state_dict):
    """A file laid out as nnU-Net v1's save_checkpoint writes it (loss curves as numpy scalars)."""
    torch.save({"epoch": 1000, "state_dict": state_dict, "optimizer_state_dict": None,
                "lr_scheduler_state_dict": None,
                "plot_stuff": ([np.float64(0.5)], [np.float32(0.4)], [], [np.float64(0.8)]),
                "best_stuff": (np.int64(900), np.float64(0.1), 0.8), "amp_grad_scaler": {"scale": 65536.0}}, path)
    return path


def test_our_network_has_exactly_the_authors_keys_and_shapes():
    with torch.device("meta"):
        model = build_official_uniseg()
    names = name_map(model)
    layout = uniseg_layout()
    assert set(names) == set(layout) and len(layout) == 115
    sd = model.state_dict()
    assert {k: tuple(sd[names[k]].shape) for k in layout} == layout
    assert sum(p.numel() for p in model.parameters()) == uniseg_key_facts()["parameters"]
    assert layout["intermedia_prompt"] == (1, 11, 4, 6, 6)
    assert layout["tu.0.weight"] == (321, 320, 2, 2, 2)  # bottleneck + the chosen task map
    assert layout["conv_blocks_context.0.blocks.0.conv_4.weight"] == (32, 4, 1, 3, 3)


def test_published_file_loads_strictly(tmp_path):
    sd = random_uniseg_state_dict(seed=3)
    assert is_uniseg_state(sd)
    model = load_official_uniseg(nnunet_file(tmp_path / "model_final_checkpoint.model", sd))
    ours = model.state_dict()
    for official, native in name_map(model).items():
        assert torch.equal(ours[native], sd[official]), official
    # a DataParallel-saved file spells every key with 'module.'
    assert unwrap_uniseg({"state_dict": {"module.intermedia_prompt": 1}}) == {"intermedia_prompt": 1}


def test_every_layout_problem_in_one_error_naming_the_file(tmp_path):
    sd = random_uniseg_state_dict(seed=1)
    del sd["fusion_layer.blocks.1.conv.bias"]
    sd["seg_outputs.5.weight"] = torch.zeros(4, 32, 1, 1, 1)
    sd["intermedia_prompt"] = torch.zeros(1, 12, 4, 6, 6)
    path = nnunet_file(tmp_path / "wrong.model", sd)
    with pytest.raises(CheckpointError) as err:
        load_official_uniseg(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    for part in ("missing 1: fusion_layer.blocks.1.conv.bias", "unexpected 1: seg_outputs.5.weight",
                 "mis-shaped 1: intermedia_prompt (1, 12, 4, 6, 6) (expected (1, 11, 4, 6, 6))"):
        assert part in msg


def test_unreadable_or_foreign_files_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.model"):
        load_official_uniseg(junk)
    other = tmp_path / "other.model"
    torch.save({"net": {"w": torch.zeros(1)}}, other)
    with pytest.raises(CheckpointError, match="other.model.*missing 115"):
        load_official_uniseg(other)


@pytest.fixture(scope="module")
def small():
    net = build_official_uniseg(**SMALL).eval()
    names, state = name_map(net), net.state_dict()
    sd = random_uniseg_state_dict(seed=2, layout={k: state[v].shape for k, v in names.items()})
    net.load_state_dict({names[k]: v for k, v in sd.items()}, strict=True)
    return net


def test_task_id_selects_its_fuse_map(small):
    x = torch.randn(2, 1, *SMALL["patch"])
    seen = {}
    h1 = small.fuse.register_forward_hook(lambda m, i, o: seen.__setitem__("maps", o.clone()))
    h2 = small.up[0].register_forward_pre_hook(lambda m, i: seen.__setitem__("decoder_in", i[0].clone()))
    try:
        with torch.no_grad():
            out = small(x, [4, 9])
    finally:
        h1.remove()
        h2.remove()
    assert out.shape == (2, 4, *SMALL["patch"])
    assert seen["maps"].shape[1] == 11
    assert torch.equal(seen["decoder_in"][0, -1], seen["maps"][0, 4])
    assert torch.equal(seen["decoder_in"][1, -1], seen["maps"][1, 9])
    with torch.no_grad():  # per-sample tasks = one call per task; different tasks, different logits
        assert torch.allclose(out[:1], small(x[:1], 4), atol=1e-4)
        assert torch.allclose(out[1:], small(x[1:], 9), atol=1e-4)
        assert not torch.allclose(small(x[:1], 0), small(x[:1], 1), atol=1e-3)


def test_channel_count_picks_the_first_convolution(small):
    two = torch.randn(1, 2, *SMALL["patch"])
    with torch.no_grad():
        before = small(two, 10)
        saved = small.encoder[0][0].convs["1"].weight.clone()
        small.encoder[0][0].convs["1"].weight.zero_()
        after = small(two, 10)
        small.encoder[0][0].convs["1"].weight.copy_(saved)
    assert torch.equal(before, after)
    with pytest.raises(InputError, match="1, 2, 4.*got 3"):
        small(torch.zeros(1, 3, *SMALL["patch"]), 0)


def test_wrong_window_or_task_is_a_one_line_error(small):
    with pytest.raises(InputError, match="16, 64, 64"):
        small(torch.zeros(1, 1, 16, 64, 32), 0)
    with pytest.raises(InputError, match="0..10"):
        small(torch.zeros(1, 1, *SMALL["patch"]), 11)
    with pytest.raises(InputError, match="batch of 1"):
        small(torch.zeros(1, 1, *SMALL["patch"]), [0, 1])


def test_task_table_names_resolve_in_the_taxonomy():
    tax = uniseg_taxonomy()
    tasks = uniseg_settings()["tasks"]
    assert [t["id"] for t in tasks] == list(range(11))
    for task in tasks:
        assert 2 <= task["channels"] <= uniseg_settings()["network"]["out_channels"]
        for cls in task["classes"]:
            assert tax.resolve(cls["name"]).name == cls["name"]
            assert all(1 <= c < task["channels"] for c in cls["covers"])
    assert tax.resolve("spine").name == "vertebrae" and tax.resolve("prostate").name == "prostate/uterus"
    # the packaged registry stays as it was: "kidneys" is the left/right pair there, no "vertebrae"
    assert default_taxonomy().get("vertebrae") is None and default_taxonomy().get("kidneys") is None


# ---- asked by class name (the predictor's interface) -------------------------------------------


@pytest.fixture(scope="module")
def by_class(small):
    return UniSegByClass(small).eval()


def test_class_logits_are_the_log_odds_of_their_channels(by_class, small):
    x = torch.randn(1, 1, 64, 64, 16)  # (x, y, z) as the plan gives it
    with torch.no_grad():
        out = by_class(x, ["liver", "liver tumor", "spleen", "kidneys"])
        net_in = x.permute(0, 1, 4, 3, 2)
        p0 = torch.softmax(small(net_in, 0)[:, :3], 1).permute(0, 1, 4, 3, 2)
        p6 = torch.softmax(small(net_in, 6)[:, :2], 1).permute(0, 1, 4, 3, 2)
    assert out.shape == (1, 4, 64, 64, 16)
    assert torch.allclose(torch.sigmoid(out[:, 0]), p0[:, 1] + p0[:, 2], atol=1e-5)
    assert torch.allclose(torch.sigmoid(out[:, 1]), p0[:, 2], atol=1e-5)
    assert torch.allclose(torch.sigmoid(out[:, 2]), p6[:, 1], atol=1e-5)
    assert ((out[:, 2] > 0) == (p6[:, 1] > p6[:, 0])).all()  # two channels: the authors' argmax


def test_each_asked_task_runs_once(by_class, small):
    calls = []
    hook = small.fuse.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            by_class(torch.randn(1, 1, 64, 64, 16), ["liver", "liver tumor"])
            assert len(calls) == 1
            by_class(torch.randn(1, 1, 64, 64, 16), ["liver", "spleen", "liver tumor"])
            assert len(calls) == 3
    finally:
        hook.remove()


def test_small_windows_are_zero_padded_to_the_patch(by_class):
    x = torch.randn(1, 1, 40, 50, 10)
    padded = torch.zeros(1, 1, 64, 64, 16)
    padded[..., :40, :50, :10] = x
    with torch.no_grad():
        out = by_class(x, "spleen")
        ref = by_class(padded, "spleen")[..., :40, :50, :10]
    assert out.shape == (1, 1, 40, 50, 10) and torch.allclose(out, ref, atol=1e-6)
    with pytest.raises(ConfigError, match="at most"):
        by_class(torch.zeros(1, 1, 64, 64, 32), "spleen")


def test_prompts_resolve_through_the_taxonomy(by_class):
    pb = by_class.prompt_batch(["liver cancer", "spine", "prostate"])
    assert pb.classes == ["liver tumor", "vertebrae", "prostate/uterus"]
    assert "brain tumor edema" not in class_table() and "brain tumor edema" in class_table(single_image=False)
    with pytest.raises(PromptError, match="'brain tumor edema'.*closest"):
        by_class.prompt_batch(["brain tumor edema"])


def test_published_file_opens_and_imports_as_a_checkpoint(tmp_path):
    sd = random_uniseg_state_dict(seed=5)
    ckpt = open_checkpoint(nnunet_file(tmp_path / "UniSeg_11_Tasks.model", sd))
    assert ckpt.classes == list(class_table()) and set(ckpt.plans) == {"CT", "MR"}
    assert ckpt.config["inference"]["window"] == [192, 192, 64]
    folder = save_checkpoint(ckpt.model, tmp_path / "imported", ckpt.config)
    again = open_checkpoint(folder)
    assert isinstance(again.model, UniSegByClass) and again.classes == ckpt.classes
    assert torch.equal(again.model.backbone.prompt, sd["intermedia_prompt"])
    assert uniseg_run_config()["official"]["kind"] == "uniseg"
