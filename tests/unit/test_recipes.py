"""Training recipes: each method's from recipes.yaml, the run YAML overriding any key."""
import pytest
import torch

from promptseg.config import resolve_config
from promptseg.errors import ConfigError
from promptseg.train.recipes import apply_recipe, build_ema, build_optimizer, lr_multiplier, method_recipe, recipes


def _cfg(conditioner="universal", **train):
    return resolve_config({"conditioner": {"name": conditioner}, "train": {"steps": 200, **train}})


def test_every_method_has_its_papers_recipe():
    table = recipes()
    assert {"default", "universal", "uniseg", "hermes", "sat"} <= set(table)
    u = apply_recipe(_cfg("universal"))["train"]
    assert (u["optimizer"], u["lr"], u["schedule"]) == ("adamw", 4e-4, "cosine")
    s = apply_recipe(_cfg("uniseg"))["train"]  # AdamW: the paper's SGD learns no tumour in short runs
    assert (s["optimizer"], s["lr"], s["schedule"]) == ("adamw", 1e-3, "cosine")
    paper = apply_recipe(_cfg("uniseg", recipe="uniseg-sgd"))["train"]  # nnU-Net's, as the paper trains
    assert (paper["optimizer"], paper["lr"], paper["momentum"], paper["schedule"]) == ("sgd", 1e-2, 0.99, "poly")
    h = apply_recipe(_cfg("hermes"))["train"]
    assert h["optimizer"] == "lamb" and h["ema"] > 0 and h["clip_grad"] > 0 and h["warmup_steps"] == 20
    assert (h["schedule"], h["schedule_power"]) == ("poly", 0.9)  # the authors' code: exp. warm-up, then poly
    sat = apply_recipe(_cfg("sat"))["train"]
    assert (sat["optimizer"], sat["lr"], sat["dataset_sampling"]) == ("adamw", 1e-3, "sqrt")
    assert sat["negative_ratio"] == 0.5 and u["negative_ratio"] == "all"  # SAT caps a sample's negatives
    assert s["head_lr_scale"] == 30 and u["head_lr_scale"] == 30  # UniSeg's head, the Universal text projection
    assert apply_recipe(_cfg("onehot"))["train"]["head_lr_scale"] == 1.0  # no head parameters to scale
    assert sat["head_lr_scale"] == 30  # and SAT's text projection


def test_run_yaml_overrides_any_recipe_key_and_can_borrow_a_recipe():
    t = apply_recipe(_cfg("uniseg", lr=0.003, optimizer="sgd", warmup_steps=7))["train"]
    assert (t["lr"], t["optimizer"], t["warmup_steps"]) == (0.003, "sgd", 7)
    assert t["schedule"] == "cosine"  # not overridden: still the method's
    t = apply_recipe(_cfg("universal", recipe="sat"))["train"]
    assert (t["lr"], t["dataset_sampling"], t["recipe"]) == (1e-3, "sqrt", "sat")


def test_unknown_method_trains_with_the_default_recipe():
    assert method_recipe("a-new-method")["optimizer"] == recipes()["default"]["optimizer"]
    with pytest.raises(ConfigError, match="no recipe 'nnunet'"):
        apply_recipe(_cfg("universal", recipe="nnunet"))


@pytest.mark.parametrize("bad", [{"optimizer": "adam"}, {"schedule": "step"}, {"ema": 1.5}, {"warmup_steps": 1.5},
                                 {"lr": -1}, {"dataset_sampling": "random"}, {"max_queries": 0}])
def test_bad_recipe_values_are_one_line_errors(bad):
    with pytest.raises(ConfigError, match="train\\."):
        _cfg("universal", **bad)


def test_schedules():
    base = {"warmup_steps": 10, "steps": 110, "schedule_power": 0.9, "final_lr_ratio": 0.01}
    cos = {**base, "schedule": "cosine"}
    assert lr_multiplier(0, cos) == 0.1 and lr_multiplier(9, cos) == 1.0
    assert abs(lr_multiplier(110, cos)) < 1e-12 and 0.4 < lr_multiplier(60, cos) < 0.6
    poly = {**base, "schedule": "poly"}
    assert lr_multiplier(60, poly) == pytest.approx(0.5 ** 0.9)
    exp = {**base, "schedule": "exponential"}
    assert lr_multiplier(110, exp) == pytest.approx(0.01) and lr_multiplier(60, exp) == pytest.approx(0.1)


def test_optimizers_and_ema():
    p = torch.nn.Parameter(torch.ones(3))
    t = apply_recipe(_cfg("uniseg", recipe="uniseg-sgd"))["train"]
    opt = build_optimizer([p], t)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.99
    lamb = build_optimizer([p], apply_recipe(_cfg("hermes"))["train"])
    assert type(lamb).__name__ == "Lamb"
    net = torch.nn.Linear(2, 1)
    ema = build_ema(net, {"ema": 0.9})
    assert build_ema(net, {"ema": 0}) is None
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update_parameters(net)  # the first average is a copy
    with torch.no_grad():
        net.weight.fill_(3.0)
    ema.update_parameters(net)  # n=1: decay min(0.9, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.module.weight, torch.full_like(net.weight, d * 1.0 + (1 - d) * 3.0))


def test_trainer_uses_the_recipe_saves_the_average_and_resumes_it(tmp_path):
    """A run with the SGD recipe, EMA and poly schedule: the config records the recipe, the saved
    model is the weight average (not the last weights), and a resumed run restores the average."""
    import json

    from promptseg.checkpoint import load_training_state, read_meta, read_weights
    from promptseg.data.phantoms import make_phantom_datasets
    from promptseg.train.trainer import Trainer

    data = make_phantom_datasets(tmp_path / "data", seed=0, n_train=(0, 0, 1, 0), n_test=0, shape=(36, 36, 36))
    raw = {"output": "run", "datasets": [str(data["PhantomC_organs"])], "plan": {"name": "universal_ct", "spacing": None},
           "backbone": {"name": "unet", "preset": "small", "widths": [4, 8]},
           "conditioner": {"name": "onehot", "head": "shared", "hidden": 16},
           "train": {"steps": 3, "batch_size": 1, "patch_size": [32, 32, 32], "checkpoint_every": 2, "num_threads": 1,
                     "recipe": "uniseg-sgd", "ema": 0.5}}
    n = torch.get_num_threads()
    try:
        first = Trainer(resolve_config(raw, tmp_path), device="cpu", progress=False)
        assert isinstance(first.optimizer, torch.optim.SGD) and first.ema is not None
        first.run(max_steps=2)
        resumed = Trainer(resolve_config(raw, tmp_path), device="cpu", progress=False)
        assert resumed.step == 2
        for a, b in zip(first.ema.parameters(), resumed.ema.parameters()):
            assert torch.equal(a, b)
        out = resumed.run()
    finally:
        torch.set_num_threads(n)
    t = json.loads((out / "checkpoint.json").read_text())["config"]["train"]
    assert (t["optimizer"], t["schedule"], t["recipe"], t["ema"]) == ("sgd", "poly", "uniseg-sgd", 0.5)
    saved = read_weights(out, read_meta(out))
    ema = {k: v for k, v in zip(dict(resumed.model.named_parameters()), resumed.ema.parameters())}
    raw_weights = dict(resumed.model.named_parameters())
    name = next(iter(ema))
    assert torch.equal(saved[name], ema[name].detach().cpu())
    assert not torch.equal(saved[name], raw_weights[name].detach().cpu())
    assert load_training_state(out.parent / "last")["ema"] is not None


def test_head_lr_scale_speeds_up_only_the_static_read_out():
    """UniSeg's 1x1x1 heads (pre-head, head, deep-supervision heads) get lr x head_lr_scale, the
    rest the recipe's lr, and the schedule scales both; at scale 1, or for a conditioner whose head
    is generated from one-hot codes, the optimiser has the one group it always had."""
    from promptseg.models.build import build_model
    from promptseg.train.recipes import build_scheduler, scale_head_lr

    classes = ["liver", "spleen", "pancreas"]
    cfg = resolve_config({"conditioner": {"name": "uniseg", "dataset_classes": {"A": ["liver"], "B": ["spleen", "pancreas"]}},
                          "backbone": {"name": "unet", "preset": "small"},
                          "train": {"steps": 100, "recipe": "cpu-short", "head_lr_scale": 30}})
    t = apply_recipe(cfg)["train"]
    model = build_model(cfg, classes)
    head = model.conditioner.head_parameters()
    c = model.conditioner
    expected = {id(p) for m in (c.pre_head, c.head, *c.ds_heads.values()) for p in m.parameters()}
    assert {id(p) for p in head} == expected and len(c.ds_heads) >= 1
    opt = build_optimizer(scale_head_lr(list(model.parameters()), head, t), t)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([t["lr"], 30 * t["lr"]])
    assert {id(p) for p in opt.param_groups[1]["params"]} == expected
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    sched = build_scheduler(opt, t)
    for _ in range(50):
        opt.step()
        sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(30 * opt.param_groups[0]["lr"])

    one = build_optimizer(scale_head_lr(list(model.parameters()), head, {**t, "head_lr_scale": 1.0}), t)
    assert len(one.param_groups) == 1
    universal = build_model(resolve_config({"conditioner": {"name": "onehot"}, "backbone": {"name": "unet", "preset": "small"}}),
                            classes)
    assert universal.conditioner.head_parameters() == []
    sat = build_model(resolve_config({"conditioner": {"name": "sat", "d_model": 32, "depth": 1, "heads": 2, "ffn_dim": 32},
                                      "backbone": {"name": "unet", "preset": "small"}}), classes,
                      embeddings=torch.randn(len(classes), 384))
    assert {id(p) for p in sat.conditioner.head_parameters()} == {id(p) for p in sat.conditioner.text_proj.parameters()}
    with pytest.raises(ConfigError, match="train.head_lr_scale"):
        _cfg("uniseg", head_lr_scale=0)


def test_resuming_with_another_head_lr_scale_or_conditioner_setting_is_a_one_line_error(tmp_path):
    """A run saved with one optimiser layout (e.g. started before `head_lr_scale` existed) and
    resumed with a scale that splits off the head: a CheckpointError naming the key, not torch's."""
    from promptseg.data.phantoms import make_phantom_datasets
    from promptseg.errors import CheckpointError
    from promptseg.train.trainer import Trainer

    data = make_phantom_datasets(tmp_path / "data", seed=0, n_train=(0, 0, 1, 0), n_test=0, shape=(36, 36, 36))
    raw = {"output": "run", "datasets": [str(data["PhantomC_organs"])], "plan": {"name": "universal_ct", "spacing": None},
           "backbone": {"name": "unet", "preset": "small", "widths": [4, 8]}, "conditioner": {"name": "uniseg"},
           "train": {"steps": 3, "batch_size": 1, "patch_size": [32, 32, 32], "checkpoint_every": 1, "num_threads": 1,
                     "recipe": "cpu-short", "head_lr_scale": 1}}
    n = torch.get_num_threads()
    try:
        Trainer(resolve_config(raw, tmp_path), device="cpu", progress=False).run(max_steps=1)
        raw["train"]["head_lr_scale"] = 30
        with pytest.raises(CheckpointError, match="head_lr_scale"):
            Trainer(resolve_config(raw, tmp_path), device="cpu", progress=False)
        # the same weights under another conditioner setting (a default that changed since the run
        # started) would resume as another model: refused, naming the key and the saved value
        raw["train"]["head_lr_scale"] = 1
        raw["conditioner"]["channel_layout"] = "position"
        with pytest.raises(CheckpointError, match="conditioner.channel_layout: class"):
            Trainer(resolve_config(raw, tmp_path), device="cpu", progress=False)
    finally:
        torch.set_num_threads(n)


def test_a_borrowed_recipe_can_give_each_method_its_own_head_lr_scale():
    """cpu-short is borrowed by every method at 5x the Universal Model's lr: UniSeg's static head
    and SAT's text projection need x30 there, the Universal Model's text projection x1."""
    short = {m: apply_recipe(_cfg(m, recipe="cpu-short"))["train"]["head_lr_scale"]
             for m in ("universal", "uniseg", "sat", "hermes")}
    assert short == {"universal": 1, "uniseg": 30, "sat": 30, "hermes": 30}
    t = apply_recipe(_cfg("uniseg", head_lr_scale={"uniseg": 7, "default": 2}))["train"]
    assert t["head_lr_scale"] == 7
    assert apply_recipe(_cfg("sat", head_lr_scale={"uniseg": 7}))["train"]["head_lr_scale"] == 1.0
    with pytest.raises(ConfigError, match="head_lr_scale.uniseg"):
        _cfg("uniseg", head_lr_scale={"uniseg": 0})
    with pytest.raises(ConfigError, match="head_lr_scale"):
        _cfg("uniseg", head_lr_scale={})


def test_overriding_the_lr_but_not_the_head_multiplier_warns():
    """A multiplier chosen at the recipe's lr, kept under a run's much higher lr, killed classes
    (cpu-short's comment): the run is told, once, which key to set."""
    with pytest.warns(UserWarning, match="head_lr_scale 30 .*stays"):
        apply_recipe(_cfg("universal", lr=0.003))
    import warnings as w
    with w.catch_warnings():
        w.simplefilter("error")
        apply_recipe(_cfg("universal", lr=0.003, head_lr_scale=1))   # said: no warning
        apply_recipe(_cfg("universal", recipe="cpu-short"))           # a recipe made for that lr
        apply_recipe(_cfg("onehot", lr=0.003))                        # nothing to multiply
