"""`promptseg pseudo-label` on phantoms with a tiny trained model: confidences, thresholds, the
dataset folders it writes and that they load as training datasets with the right annotated classes.

The model trains a few steps: this checks the mechanics (what is recorded, kept, dropped and
written), not the pseudo-labels' quality.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from promptseg.cli import main
from promptseg.data.manifest import load_dataset
from promptseg.inference.confidence import mask_confidence
from promptseg.io import read_label
from promptseg.checkpoint import load_checkpoint, open_checkpoint
from promptseg.workflows.pseudo_label import REPORT, judge, pseudo_label

ORGANS = ["liver", "spleen", "left kidney", "right kidney", "pancreas", "aorta"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from promptseg.data.phantoms import make_phantom_datasets
    from promptseg.config import load_config
    from promptseg.train.trainer import train

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pseudo")
    data = make_phantom_datasets(root / "data", seed=0, n_train=(0, 0, 2, 0), n_test=2)
    run = root / "run.yaml"
    run.write_text(yaml.safe_dump({
        "output": "run", "datasets": [str(data["PhantomC_organs"])], "plan": {"name": "universal_ct", "spacing": None},
        "backbone": {"name": "unet", "preset": "small", "widths": [8, 16, 32]},
        "conditioner": {"name": "universal", "head": "mlp"},
        "train": {"steps": 4, "batch_size": 1, "patch_size": [32, 32, 32], "lr": 0.003, "warmup_steps": 1,
                  "checkpoint_every": 100, "num_threads": 1, "rot90_prob": 0.0},
        "inference": {"window": [32, 32, 32], "overlap": 0.0, "sw_batch_size": 4, "threads": 1},
    }))
    ckpt = train(load_config(run), progress=False)
    scans = data["PhantomTest_full"] / "imagesTs"
    yield {"root": root, "ckpt": ckpt, "scans": scans, "run": run}
    torch.set_num_threads(n)


def test_mask_confidence_is_mean_inside_or_one_minus_peak():
    probs = np.zeros((2, 4, 4, 4), np.uint16)
    probs[0, :2] = 65535 * 0.9
    probs[0, 2:] = 65535 * 0.1
    probs[1] = 65535 * 0.3
    masks = [probs[0] > 65535 * 0.5, np.zeros((4, 4, 4), bool)]
    conf = mask_confidence(probs, masks)
    assert conf[0] == pytest.approx(0.9, abs=1e-4) and conf[1] == pytest.approx(0.7, abs=1e-4)


def test_judge_drops_uncertain_classes_and_cases():
    r = judge("c", "c.nii.gz", {"liver": 0.95, "spleen": 0.6}, class_threshold=0.8, case_threshold=0.0)
    assert r.kept and r.passed == ["liver"]
    r = judge("c", "c.nii.gz", {"liver": 0.95, "spleen": 0.6}, class_threshold=0.8, case_threshold=0.9)
    assert not r.kept and "case confidence 0.775" in r.reason
    assert not judge("c", "c", {"liver": 0.5}, 0.8, 0.0).kept


def test_pseudo_label_writes_datasets_with_only_passing_classes(world):
    model = open_checkpoint(world["ckpt"])
    out = world["root"] / "all"
    rep = pseudo_label(model, world["scans"], out, class_threshold=0.0, device="cpu")
    assert [c["case"] for c in rep["cases"]] == ["PhantomTest_001", "PhantomTest_002"]
    confs = {(c["case"], k): v for c in rep["cases"] for k, v in c["confidence"].items()}
    assert set(k for _, k in confs) == set(ORGANS) and all(0.0 <= v <= 1.0 for v in confs.values())
    # threshold 0: every class passes, one dataset with all classes
    assert len(rep["datasets"]) == 1 and set(rep["datasets"][0]["annotated_classes"]) == set(ORGANS)

    # a threshold between the observed confidences: the weaker classes of a case are not annotated
    values = sorted(set(confs.values()))
    t = values[len(values) // 2]
    out2 = world["root"] / "split"
    rc = main(["pseudo-label", "-m", str(world["ckpt"]), "-i", str(world["scans"]), "-o", str(out2),
               "--class-threshold", str(t), "--name", "PhantomPseudo", "--device", "cpu", "--quiet"])
    assert rc == 0
    rep2 = json.loads((out2 / REPORT).read_text())
    for case in rep2["cases"]:
        assert case["passed"] == [c for c, v in case["confidence"].items() if v >= t]
    assert any(len(c["passed"]) < len(ORGANS) for c in rep2["cases"])  # the threshold really dropped classes
    kept = [c for c in rep2["cases"] if c["kept"]]
    assert sum(len(d["cases"]) for d in rep2["datasets"]) == len(kept)
    for d in rep2["datasets"]:
        folder = out2 / d["folder"]
        manifest = load_dataset(folder)
        assert set(manifest.annotated_classes) == set(d["annotated_classes"])  # only what passed
        spec = json.loads((folder / "dataset.json").read_text())
        for case in d["cases"]:
            label = read_label(folder / "labelsTr" / f"{case}.nii.gz").array
            assert set(np.unique(label)) <= {0, *spec["labels"].values()}
            assert (folder / "imagesTr" / f"{case}_0000.nii.gz").exists()

    # training mixes the pseudo-labelled dataset(s) with the labelled one
    from promptseg.config import load_config
    from promptseg.train.trainer import train

    mixed = yaml.safe_load(world["run"].read_text())
    mixed.update(output="mixed", datasets=mixed["datasets"] + [str(out2 / d["folder"]) for d in rep2["datasets"]])
    mixed["train"]["steps"] = 2
    (world["root"] / "mixed.yaml").write_text(yaml.safe_dump(mixed))
    assert load_checkpoint(train(load_config(world["root"] / "mixed.yaml"), progress=False)).class_names


def test_bad_threshold_is_one_line_error(world, capsys):
    rc = main(["pseudo-label", "-m", str(world["ckpt"]), "-i", str(world["scans"]), "-o", str(world["root"] / "x"),
               "--class-threshold", "1.5"])
    assert rc == 2 and "class_threshold must be in [0, 1]" in capsys.readouterr().err


def test_pseudo_label_preprocesses_by_the_scans_modality(world, tmp_path):
    """A modality the model has no plan for stops before anything is written (no silent CT plan)."""
    from promptseg.errors import ConfigError

    model = open_checkpoint(world["ckpt"])
    with pytest.raises(ConfigError, match="modality 'MR'.*no plan"):
        pseudo_label(model, world["scans"], tmp_path / "mr", modality="MR", device="cpu")
    assert not (tmp_path / "mr" / REPORT).exists()
