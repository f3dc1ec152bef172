"""End to end on generated phantoms: train organs, throw the old run away, extend with a liver
tumour dataset from the checkpoint alone, and predict old + new classes with `promptseg predict`.

Models are tiny and train a few steps: these tests check the mechanics (what is frozen, what the
loss sees, what reloads), not accuracy -- `benchmarks/continual.py` measures accuracy.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from promptseg.train import continual
from promptseg.checkpoint import WEIGHTS, find_checkpoint, load_checkpoint, open_checkpoint

ORGANS = ["spleen", "right kidney", "left kidney", "liver", "aorta", "pancreas"]
TRAIN = {"steps": 2, "batch_size": 1, "patch_size": [32, 32, 32], "lr": 0.003, "warmup_steps": 1,
         "checkpoint_every": 100, "num_threads": 1, "rot90_prob": 0.0, "head_lr_scale": 1}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Phantoms + an organs-only checkpoint whose YAML, datasets and cache are then deleted."""
    from promptseg.data.phantoms import make_phantom_datasets
    from promptseg.config import load_config
    from promptseg.train.trainer import train

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("extend")
    data = make_phantom_datasets(root / "data", seed=0, n_train=(2, 0, 2, 0), n_test=1)
    old_yaml = root / "old.yaml"
    old_yaml.write_text(yaml.safe_dump({
        "output": "old_run", "datasets": [str(data["PhantomC_organs"])],
        "plan": {"name": "universal_ct", "spacing": None},
        "backbone": {"name": "unet", "preset": "small", "widths": [8, 16, 32]},
        "conditioner": {"name": "universal", "head": "mlp"},
        "train": {**TRAIN, "steps": 3},
        "inference": {"window": [32, 32, 32], "overlap": 0.0, "sw_batch_size": 4, "threads": 1},
    }))
    ckpt = train(load_config(old_yaml), progress=False)
    # a Hermes model too: its add_classes grows the task-prior tensors instead of adding modules
    hermes_yaml = root / "hermes.yaml"
    hermes_run = {**yaml.safe_load(old_yaml.read_text()), "output": "old_hermes", "conditioner": {"name": "hermes"}}
    hermes_yaml.write_text(yaml.safe_dump(hermes_run))
    hermes_ckpt = train(load_config(hermes_yaml), progress=False)
    hermes_yaml.unlink()
    # the old run's YAML, training data and cache are gone: only the checkpoint remains
    old_yaml.unlink()
    shutil.rmtree(data["PhantomC_organs"])
    shutil.rmtree(root / "old_run" / "cache")
    shutil.rmtree(root / "old_hermes" / "cache")
    new_yaml = root / "new.yaml"
    new_yaml.write_text(yaml.safe_dump({
        "output": "ext", "datasets": [str(data["PhantomA_liver"])], "train": TRAIN,
        "extend": {"strategy": "pseudo-label", "lora": {"rank": 4, "alpha": 8}},
    }))
    yield {"root": root, "ckpt": ckpt, "hermes": hermes_ckpt, "new_yaml": new_yaml, "test": data["PhantomTest_full"]}
    torch.set_num_threads(n)


def _extend(world, strategy: str, name: str, **extra) -> Path:
    return continual.extend(world["ckpt"], world["new_yaml"], progress=False,
                            overrides={"strategy": strategy, "output": str(world["root"] / name), **extra})


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(find_checkpoint(path) / WEIGHTS))


@pytest.mark.parametrize("strategy", ["freeze-backbone", "lora"])
def test_every_pre_existing_weight_is_bit_identical(world, strategy):
    new_ckpt = _extend(world, strategy, f"ext-{strategy}")
    old, new = _state(world["ckpt"]), _state(new_ckpt)
    assert set(old) < set(new)
    for key, value in old.items():
        if key == "conditioner.embeddings":  # a buffer that grows: old rows kept, one row appended
            assert new[key].shape[0] == value.shape[0] + 1
            assert torch.equal(new[key][: value.shape[0]], value)
        else:
            assert torch.equal(new[key], value), key
    added = set(new) - set(old)
    assert any(".controllers.6." in k for k in added), "the new class has its own MLP"
    if strategy == "lora":
        ups = [k for k in added if k.endswith(".up.weight")]
        assert ups and any(new[k].abs().sum() > 0 for k in ups), "the zero-initialised adapters trained"
    else:
        assert all(".controllers.6." in k for k in added)
    ckpt = open_checkpoint(new_ckpt)
    model = ckpt.model
    assert model.class_names == ORGANS + ["liver tumor"]
    hist = ckpt.config["extension"]["history"]
    assert hist[-1]["strategy"] == strategy and hist[-1]["added"] == ["liver tumor"]
    if strategy == "freeze-backbone":  # nothing old moved, so the old classes predict exactly as before
        old_model = load_checkpoint(world["ckpt"])
        x = torch.randn(1, 1, 32, 32, 32)
        with torch.no_grad():
            assert torch.equal(model(x, ORGANS), old_model(x, ORGANS))


@pytest.mark.parametrize("strategy", ["freeze-backbone", "lora"])
def test_grown_task_priors_keep_their_old_rows(world, strategy):
    """Hermes appends task-prior rows; only the new rows train, the old ones stay bit-identical."""
    new_ckpt = continual.extend(world["hermes"], world["new_yaml"], progress=False,
                                overrides={"strategy": strategy, "output": str(world["root"] / f"hermes-{strategy}")})
    old, new = _state(world["hermes"]), _state(new_ckpt)
    grown = [k for k, v in old.items() if new[k].shape != v.shape]
    assert grown and all(k.endswith("task_prior") or k.endswith("task_group") for k in grown)
    for key, value in old.items():
        assert torch.equal(new[key][: value.shape[0]], value), key
    priors = [k for k in grown if k.endswith("task_prior")]
    assert priors and all(new[k].shape[0] == old[k].shape[0] + 1 for k in priors)
    ckpt = open_checkpoint(new_ckpt)
    assert ckpt.classes == ORGANS + ["liver tumor"]
    assert set(ckpt.config["extension"]["history"][-1]["grown_parameters"]) == set(priors)


def test_pseudo_label_loss_uses_the_old_models_predictions(world, monkeypatch):
    """The targets the loss receives for old classes are the old model's outputs on that patch."""
    import promptseg.train.trainer as trainer_mod

    seen, pseudo = [], []
    real_loss = trainer_mod.masked_bce_dice
    real_pseudo = continual.ExtensionTrainer.pseudo_targets

    def spy_loss(logits, targets, annotated, *a, **k):
        seen.append((targets.detach().cpu().clone(), annotated.cpu().clone()))
        return real_loss(logits, targets, annotated, *a, **k)

    def spy_pseudo(self, image, classes, modality, datasets):
        out = real_pseudo(self, image, classes, modality, datasets)
        pseudo.append((list(classes), out.detach().cpu().clone()))
        return out

    monkeypatch.setattr(trainer_mod, "masked_bce_dice", spy_loss)
    monkeypatch.setattr(continual.ExtensionTrainer, "pseudo_targets", spy_pseudo)
    _extend(world, "pseudo-label", "ext-pseudo", pseudo_labels="soft")
    assert len(seen) == len(pseudo) == TRAIN["steps"]
    classes = ORGANS + ["liver tumor"]
    for (targets, annotated), (names, soft) in zip(seen, pseudo):
        assert targets.shape[1] == len(classes), "every class is annotated (real or pseudo), so every class is asked"
        assert "liver" not in names, "PhantomA annotates liver: its real label wins"
        assert set(names) == set(ORGANS) - {"liver"}
        for j, name in enumerate(names):
            k = classes.index(name)
            assert torch.equal(targets[:, k], soft[:, j])
            assert annotated[:, k].all()
        # soft pseudo-labels are no label: values strictly between 0 and 1
        assert bool(((soft > 0.01) & (soft < 0.99)).any())
        assert set(targets[:, classes.index("liver")].unique().tolist()) <= {0.0, 1.0}


def test_extended_checkpoint_predicts_old_and_new_classes_through_the_cli(world, capsys):
    from promptseg.cli import main
    from promptseg.train import extend_cli

    parser = argparse.ArgumentParser(prog="promptseg")
    extend_cli.register(parser.add_subparsers(dest="verb"))
    out = world["root"] / "ext-cli"
    args = parser.parse_args(["extend", str(world["ckpt"]), str(world["new_yaml"]), "--strategy", "lora",
                              "--output", str(out), "--quiet", "--eval-old", str(world["test"]),
                              "--eval-new", str(world["test"])])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "forgetting report (lora)" in printed and "liver tumor" in printed
    assert (out / "forgetting.json").is_file()

    image = sorted((world["test"] / "imagesTs").glob("*.nii.gz"))[0]
    pred = world["root"] / "pred"
    rc = main(["predict", "-i", str(image), "-o", str(pred), "-m", str(out), "--prompt", "spleen",
               "--prompt", "liver tumor", "--quiet"])
    assert rc == 0
    case_dirs = [p for p in pred.iterdir() if p.is_dir()]  # OUT/<case>/<class>.nii.gz
    assert len(case_dirs) == 1
    masks = {p.name for p in case_dirs[0].iterdir()}
    assert {"spleen.nii.gz", "liver_tumor.nii.gz"} <= masks
    import json

    names = set(json.loads((pred / "labels.json").read_text()).values())
    assert {"spleen", "liver tumor"} <= names


def test_finetune_with_frozen_encoder(world):
    raw = {"output": str(world["root"] / "ft"), "datasets": [str(Path(world["test"]).parent / "PhantomA_liver")],
           "train": TRAIN, "finetune": {"init": "all", "freeze": "encoder"}}
    ckpt = continual.finetune(world["ckpt"], raw, progress=False)
    old, new = _state(world["ckpt"]), _state(ckpt)
    model = load_checkpoint(ckpt)
    assert model.class_names == ["liver", "liver tumor"]
    enc = [k for k in new if k.startswith("backbone.encoder.")]
    dec = [k for k in new if k.startswith("backbone.decoder.") and k.endswith("conv.weight")]
    assert enc and all(torch.equal(new[k], old[k]) for k in enc), "frozen encoder"
    assert any(not torch.equal(new[k], old[k]) for k in dec), "the decoder trained"
    # the shared class (liver, index 3 in the old model, 0 now) started from its old head
    assert new["conditioner.controllers.0.0.weight"].shape == old["conditioner.controllers.3.0.weight"].shape
    delta_liver = (new["conditioner.controllers.0.0.weight"] - old["conditioner.controllers.3.0.weight"]).abs().max()
    delta_other = (new["conditioner.controllers.0.0.weight"] - old["conditioner.controllers.0.0.weight"]).abs().max()
    assert float(delta_liver) < float(delta_other)
    assert np.isfinite(float(delta_liver))
