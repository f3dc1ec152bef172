"""Many modalities in one run, on the real sarcoma patients (CT, MR-T1, PET of the same tumours).

A pattern dataset over ../shared/data/sts_sarcoma (`STS_xxx/{CT,MR_T1,PET}_{image,mask}.nii.gz`)
gives one dataset per modality; each is cached with its own modality's plan, and a batch mixing
them carries each sample's modality.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from promptseg.data.augment import build_augmenter
from promptseg.data.cache import prepare_datasets
from promptseg.data.loader import batch_stream
from promptseg.data.patterns import datasets_from_entry
from promptseg.data.sampling import PatchSampler
from promptseg.errors import ConfigError, InputError, PromptsegError
from promptseg.preprocess import modality_plans
from promptseg.config import resolve_config
from promptseg.train.losses import masked_bce_dice

CASES = ("STS_001", "STS_002", "STS_003")  # patients with all three modalities
COARSE = {"spacing": [3.0, 3.0, 3.0]}      # fast on 2 CPU cores; intensity rules as shipped


def _entry(shared_data, **kw):
    return {"path": str(shared_data / "sts_sarcoma"), "name": "sts", "image": "{case}/{modality}_image.nii.gz",
            "label": "{case}/{modality}_mask.nii.gz", "labels": {1: "soft tissue sarcoma"},
            "modalities": {"CT": "CT", "MR": "MR_T1", "PET": "PET"}, **kw}


@pytest.fixture(scope="module")
def prepared(shared_data, tmp_path_factory):
    ds = datasets_from_entry(_entry(shared_data))
    for d in ds:
        d.cases = [c for c in d.cases if c.id in CASES]
    plans = {m: {"base": p.name, **COARSE} for m, p in modality_plans().items()}
    cache = tmp_path_factory.mktemp("mm_cache")
    return ds, prepare_datasets(ds, plans, cache, progress=False), cache


def test_pattern_dataset_per_modality(shared_data):
    ds = datasets_from_entry(_entry(shared_data))
    assert [(d.name, d.modality, len(d.cases)) for d in ds] == [("sts_CT", "CT", 25), ("sts_MR", "MR", 33),
                                                                 ("sts_PET", "PET", 35)]
    for d in ds:
        assert d.annotated_classes == ["soft tissue sarcoma"] and d.source_format == "pattern"
        assert all(c.label.name.startswith(c.images[0].name.split("_image")[0]) for c in d.cases)


def test_each_modality_cached_with_its_plan(prepared):
    ds, cases, cache = prepared
    assert sorted({(c.dataset, c.modality) for c in cases}) == [("sts_CT", "CT"), ("sts_MR", "MR"), ("sts_PET", "PET")]
    want = {"CT": "universal_ct", "MR": "universal_mr", "PET": "universal_pet"}
    for d in ds:
        (index,) = list((cache / d.name).glob("*/index.json"))
        doc = json.loads(index.read_text())
        assert doc["plan"]["name"] == want[d.modality] and doc["plan"]["modality"] == d.modality
        assert doc["modality"] == d.modality and sorted(doc["cases"]) == list(CASES)
    for c in cases:
        img = np.asarray(c.image)
        assert np.allclose(c.spacing, 3.0, atol=0.1) and c.targets[0].any(), c.id  # the tumour survives the plan
        if c.modality == "CT":   # HU [-175, 250] -> [0, 1]
            assert 0.0 <= img.min() and img.max() <= 1.0
        elif c.modality == "PET":  # SUV clip [0, 20] / 4: the tumour is hotter than its surroundings
            assert 0.0 <= img.min() and img.max() <= 5.0
            assert img[0][c.targets[0] > 0].mean() > img[0][c.targets[0] == 0].mean()
        else:  # MR: percentile clip + z-score
            assert abs(float(img.mean())) < 0.05 and abs(float(img.std()) - 1) < 0.05


def test_mixed_batch_carries_modality_and_masks_the_loss(prepared):
    _, cases, _ = prepared
    classes = ["liver", "soft tissue sarcoma"]  # liver: annotated by no sarcoma dataset
    sampler = PatchSampler(cases, classes, (32, 32, 16), batch_size=6, seed=3,
                           augment=build_augmenter(True))
    stream = batch_stream(sampler, workers=0)
    batch = next(b for b, _ in zip(stream, range(20)) if set(b.modality) == {"CT", "MR", "PET"})
    assert batch.modality == [c.split("_")[1] for c in batch.datasets]
    # the masked-loss zero-gradient property holds for a CT/MR/PET batch
    logits = torch.randn(batch.targets.shape, requires_grad=True)
    loss, parts = masked_bce_dice(logits, batch.targets, batch.annotated)
    loss.backward()
    assert not batch.annotated[:, 0].any() and batch.annotated[:, 1].all()
    assert torch.count_nonzero(logits.grad[:, 0]) == 0 and torch.count_nonzero(logits.grad[:, 1]) > 0
    assert parts["pairs"] == 6


def test_modality_without_plan_is_one_line(prepared):
    ds, _, cache = prepared
    with pytest.raises(PromptsegError) as err:
        prepare_datasets([ds[2]], {"CT": "universal_ct"}, cache, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "sts_PET" in msg and "PET has no plan" in msg and "sts_sarcoma" in msg


def test_pattern_errors_name_dataset_and_file(shared_data, tmp_path):
    with pytest.raises(InputError) as err:
        datasets_from_entry({**_entry(shared_data), "image": "{case}/{modality}_img.nii.gz"})
    assert "dataset sts_CT" in str(err.value) and "matches no file" in str(err.value)
    # an image without its label
    folder = tmp_path / "sts"
    (folder / "P1").mkdir(parents=True)
    src = shared_data / "sts_sarcoma" / "STS_001"
    (folder / "P1" / "PET_image.nii.gz").write_bytes((src / "PET_image.nii.gz").read_bytes())
    with pytest.raises(InputError) as err:
        datasets_from_entry({**_entry(shared_data, path=str(folder)), "modalities": {"PET": "PET"}})
    msg = str(err.value)
    assert "\n" not in msg and "P1/PET_image.nii.gz" in msg and "dataset sts_PET" in msg and "no label" in msg


def test_run_yaml_keys_are_checked(shared_data, tmp_path):
    cfg = resolve_config({"datasets": [_entry(shared_data)], "plans": {"PET": "universal_pet"},
                          "train": {"augment": {"gamma_prob": 0.5}, "loader_workers": 2}}, tmp_path)
    # the modalities the run names (its plan's and plans:); the trainer sets those of its datasets
    assert {m: p["name"] for m, p in cfg["plans"].items()} == {"CT": "universal_ct", "PET": "universal_pet"}
    assert cfg["plans"]["PET"]["intensity"]["upper"] == 20.0 and cfg["train"]["loader_workers"] == 2
    assert resolve_config(cfg, tmp_path)["plans"] == cfg["plans"]  # a checkpoint's config resolves again
    for bad in ({"plans": {"MR": "universal_ct"}}, {"train": {"augment": {"gama_prob": 0.5}}},
                {"train": {"loader_workers": -1}}, {"datasets": [{**_entry(shared_data), "imgs": "x"}]}):
        with pytest.raises(ConfigError):
            resolve_config(bad, tmp_path)


def test_data_add_with_patterns_writes_a_manifest(shared_data, tmp_path, capsys):
    from promptseg.cli import main
    from promptseg.data.manifest import load_dataset

    out = tmp_path / "sts_mr.yaml"
    code = main(["data", "add", str(shared_data / "sts_sarcoma"), "--name", "sts_mr", "--modality", "MR",
                 "--image", "{case}/MR_T1_image.nii.gz", "--label", "{case}/MR_T1_mask.nii.gz",
                 "--value", "1=sarcoma", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    m = load_dataset(out)
    assert m.modality == "MR" and len(m.cases) == 33 and m.annotated_classes == ["soft tissue sarcoma"]
    assert m.cases[0].label == shared_data.resolve() / "sts_sarcoma" / "STS_001" / "MR_T1_mask.nii.gz"


def test_train_one_run_over_ct_mr_pet(shared_data, tmp_path):
    """`promptseg train` with one pattern entry for three modalities, augmentation in a worker,
    run as users run it: its own process (in this long test process, after tests that loaded
    OpenVINO, the in-process run crashed with SIGSEGV; not reproduced in a fresh process).
    That each batch carries its samples' modalities is held by the mixed-batch test above."""
    import subprocess
    import sys

    import yaml

    data = tmp_path / "sts"
    data.mkdir()
    for cid in CASES[:2]:
        (data / cid).symlink_to(shared_data / "sts_sarcoma" / cid)
    run = {"output": "run", "datasets": [{**_entry(shared_data), "path": str(data)}],
           "plan": {"name": "universal_ct", **COARSE},
           "plans": {"MR": {"name": "universal_mr", **COARSE}, "PET": {"name": "universal_pet", **COARSE}},
           "backbone": {"name": "unet", "preset": "small"},
           "conditioner": {"name": "universal", "head": "mlp", "text_encoder": "minilm"},
           "train": {"steps": 4, "batch_size": 3, "patch_size": [32, 32, 16], "warmup_steps": 1,
                     "checkpoint_every": 100, "num_threads": 1, "augment": True, "loader_workers": 1},
           "inference": {"window": [32, 32, 16], "overlap": 0.0}}
    yml = tmp_path / "run.yaml"
    yml.write_text(yaml.safe_dump(run, sort_keys=False))
    done = subprocess.run([sys.executable, "-m", "promptseg", "train", str(yml), "--device", "cpu", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    meta = json.loads((tmp_path / "run" / "model" / "checkpoint.json").read_text())
    assert meta["class_names"] == ["soft tissue sarcoma"]
    assert {m: p["name"] for m, p in meta["config"]["plans"].items()} == {  # each trained modality's plan
        "CT": "universal_ct", "MR": "universal_mr", "PET": "universal_pet"}
    assert sorted(p.name for p in (tmp_path / "run" / "cache").iterdir()) == ["sts_CT", "sts_MR", "sts_PET"]
