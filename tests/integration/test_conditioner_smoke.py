"""Every conditioner through the user's two commands: `promptseg train` (2 steps) from a run YAML
that differs from the others only in `conditioner:`, then `promptseg predict` with a subset of
prompts on a phantom. Checks the mechanics and the output geometry, not accuracy
(`promptseg bench compare` measures that). The conditioner sections are the bench's own
(configs/bench.yaml), so what the bench runs is what CI smoke-tests.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from promptseg.workflows.bench import conditioner_config, method_names
from promptseg.cli import main
from promptseg.io import read_image
from promptseg.models.build import CONDITIONERS

PROMPTS = ["liver", "left kidney", "kidney tumor"]  # a subset of the 7 classes the run learns


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from promptseg.data.phantoms import make_phantom_datasets

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("smoke")
    data = make_phantom_datasets(root / "data", seed=0, n_train=(2, 2, 2, 0), n_test=1,
                                 shape=(48, 40, 32), spacing=(7.0, 7.0, 7.0))
    test = data.pop("PhantomTest_full")
    base = {
        "seed": 0,
        "datasets": [str(p) for p in data.values()],
        "plan": {"name": "universal_ct", "spacing": None},
        "backbone": {"name": "unet", "preset": "small"},
        "cache_dir": str(root / "cache"),  # shared: each dataset is preprocessed once
        "train": {"steps": 2, "batch_size": 1, "patch_size": [32, 32, 32], "lr": 0.002, "warmup_steps": 1,
                  "checkpoint_every": 100, "num_threads": 1, "max_queries": 4},
        "inference": {"window": [32, 32, 32], "overlap": 0.0, "sw_batch_size": 2},
    }
    image = sorted((test / "imagesTs").glob("*_0000.nii.gz"))[0]
    yield {"root": root, "base": base, "image": image}
    torch.set_num_threads(n)


def _write_yaml(world, method: str) -> Path:
    run = world["root"] / method
    run.mkdir(exist_ok=True)
    raw = {**world["base"], "output": "run", "conditioner": conditioner_config(method)}
    path = run / "run.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_bench_covers_every_registered_conditioner():
    assert sorted(method_names()) == sorted(CONDITIONERS)


def test_run_yamls_differ_only_in_conditioner(world):
    docs = {m: yaml.safe_load(_write_yaml(world, m).read_text()) for m in method_names()}
    conds = {m: d.pop("conditioner") for m, d in docs.items()}
    first = next(iter(docs.values()))
    assert all(d == first for d in docs.values())
    assert [c["name"] for c in conds.values()] == method_names()


@pytest.mark.parametrize("method", method_names())
def test_train_two_steps_then_predict_a_subset(world, method):
    cfg = _write_yaml(world, method)
    assert main(["train", str(cfg), "--device", "cpu", "--quiet"]) == 0
    run = cfg.parent / "run"
    assert (run / "model").is_dir()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
    meta = json.loads((run / "model" / "checkpoint.json").read_text())
    assert meta["config"]["conditioner"]["name"] == method

    out = cfg.parent / "pred"
    argv = ["predict", "-i", str(world["image"]), "-o", str(out), "-m", str(run), "--device", "cpu", "--quiet"]
    for p in PROMPTS:
        argv += ["--prompt", p]
    assert main(argv) == 0

    src = read_image(world["image"])
    case = world["image"].name[: -len("_0000.nii.gz")]
    written = [read_image(out / f"{case}.nii.gz")]
    masks = sorted(p.name for p in (out / case).iterdir())
    assert masks == sorted(["liver.nii.gz", "left_kidney.nii.gz", "kidney_tumor.nii.gz"])  # only what was asked
    written += [read_image(out / case / m) for m in masks]
    for vol in written:  # every output on the input's grid
        assert vol.shape == src.shape
        np.testing.assert_allclose(vol.spacing, src.spacing)
        np.testing.assert_allclose(vol.origin, src.origin)
        np.testing.assert_allclose(vol.direction, src.direction)
        assert set(np.unique(vol.array)) <= set(range(64))
    names = set(json.loads((out / "labels.json").read_text()).values())
    assert names == set(PROMPTS)
