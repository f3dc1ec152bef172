"""`promptseg info MODEL` on a tiny trained checkpoint (with a user's own class that must travel
in the checkpoint) and on an official Universal Model `.pth` file."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from promptseg.checkpoint import open_checkpoint
from promptseg.cli import main
from promptseg.config import load_config
from promptseg.models.official import official_facts, random_official_state_dict
from promptseg.preprocess import get_plan
from promptseg.train.trainer import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from promptseg.data.phantoms import make_phantom_datasets

    root = tmp_path_factory.mktemp("info")
    (root / "mine.yaml").write_text(yaml.safe_dump({"classes": [
        {"id": 900, "name": "phantom widget", "synonyms": ["widget"], "kind": "lesion", "parent": "liver"}]}))
    liver = make_phantom_datasets(root / "data", n_train=(1, 0, 0, 0), n_test=0, shape=(32, 32, 24))["PhantomA_liver"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    (root / "run.yaml").write_text(yaml.safe_dump({
        "output": "run", "datasets": [str(liver)], "taxonomy": "mine.yaml",
        "classes": ["liver", "liver tumor", "widget"],
        "plan": {"name": "universal_ct", "spacing": None},
        "backbone": {"name": "unet", "preset": "small", "widths": [4, 8, 16]}, "conditioner": {"name": "onehot"},
        "train": {"steps": 3, "batch_size": 1, "patch_size": [16, 16, 16], "warmup_steps": 1, "num_threads": 1},
    }))
    ckpt = train(load_config(root / "run.yaml"), device="cpu", progress=False)
    (root / "mine.yaml").unlink()  # the user's class must come from the checkpoint alone
    yield ckpt
    torch.set_num_threads(n)


def test_user_classes_travel_in_the_checkpoint(trained):
    ckpt = open_checkpoint(trained)
    assert ckpt.classes == ["liver", "liver tumor", "phantom widget"]
    assert ckpt.taxonomy.get("widget").id == 900 and ckpt.model.canonical("Widget") == "phantom widget"
    assert list(ckpt.plans) == ["CT"] and ckpt.modality == "CT" and ckpt.step == 3
    assert get_plan(ckpt.plans["CT"]).to_dict() == get_plan(ckpt.config["plan"]).to_dict()
    assert not any(hasattr(ckpt.model, a) for a in ("run_config", "checkpoint_meta", "modality"))


def test_info_on_a_trained_checkpoint(trained, capsys):
    assert main(["info", str(trained.parent)]) == 0
    text = capsys.readouterr().out
    for line in ("     6: liver", "    27: liver tumor", "   900: phantom widget", "modalities  CT",
                 "datasets    PhantomA_liver", "steps       3 of 3", "conditioner onehot"):
        assert line in text, text
    assert main(["info", str(trained), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    n = sum(p.numel() for p in open_checkpoint(trained).model.parameters())
    assert info["parameters"] == n and info["backbone"]["widths"] == [4, 8, 16]
    assert info["plans"]["CT"]["name"] == "universal_ct"


def test_info_on_an_official_pth(tmp_path, capsys):
    path = tmp_path / "clip_driven_universal_unet.pth"
    torch.save({"net": random_official_state_dict("unet"), "epoch": 1}, path)
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    facts = official_facts()
    assert info["kind"] == "official Universal Model" and info["steps"] is None
    assert len(info["classes"]) == facts["num_classes"]
    assert [c["label"] for c in info["classes"]] == list(range(1, 33))
    assert info["parameters"] == facts["models"]["unet"]["parameters"]
    assert info["backbone"]["name"] == "unet" and info["conditioner"]["head"] == "shared"
    assert info["modalities"] == ["CT"]


def test_info_on_a_missing_model_is_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint not found" in err
