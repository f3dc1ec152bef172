"""The shipped multimodal recipe resolves, validates and points at ../shared/data beside the clone."""
from __future__ import annotations

from pathlib import Path

import pytest

import promptseg
from promptseg.config import load_config
from promptseg.preprocess import get_plan

YAML = Path(promptseg.__file__).parent / "configs" / "multimodal.yaml"
CLONE = Path(promptseg.__file__).resolve().parents[2]


def test_multimodal_yaml_resolves_beside_the_clone():
    cfg = load_config(YAML)
    assert cfg["data_root"] == str((CLONE.parent / "shared" / "data").resolve())
    assert cfg["output"] == str(CLONE / "runs" / "multimodal")
    for d in cfg["datasets"]:
        assert Path(d["path"]).is_relative_to(cfg["data_root"])
    assert sorted(cfg["plans"]) == ["CT", "MR", "PET"]
    assert {m: get_plan(p).modality for m, p in cfg["plans"].items()} == {"CT": "CT", "MR": "MR", "PET": "PET"}
    assert set(cfg["conditioner"]["templates"]) == {"CT", "MR", "PET"}
    v = cfg["validation"]
    assert v["every"] > 0 and len(v["holdout"]) >= 3 and v["split_datasets"] == ["sts_*"]
    assert cfg["train"]["augment"] and cfg["train"]["loader_workers"] >= 1


def test_data_flag_moves_every_dataset(tmp_path):
    cfg = load_config(YAML, data_root=tmp_path)
    assert cfg["data_root"] == str(tmp_path.resolve())
    assert all(Path(d["path"]).is_relative_to(tmp_path.resolve()) for d in cfg["datasets"])


def test_multimodal_datasets_exist_and_hold_out_whole_patients(shared_data):
    from promptseg.train.trainer import class_list, load_datasets

    cfg = load_config(YAML, data_root=shared_data)
    ds = load_datasets(cfg)
    mods = {d.name: d.modality for d in ds}
    assert mods == {"ct_abdomen": "CT", "mr_abdomen": "MR", "ct_lung_tumor": "CT", "mr_brain_tumor": "MR",
                    "sts_CT": "CT", "sts_MR": "MR", "sts_PET": "PET"}
    classes = class_list(cfg, ds)
    assert {"liver", "spleen", "soft tissue sarcoma", "lung tumor", "brain tumor"} <= set(classes)
    by_ds = {d.name: {c.id for c in d.cases} for d in ds}
    for p in cfg["validation"]["holdout"]:  # each held-out patient is validated in every modality
        assert all(p in by_ds[f"sts_{m}"] for m in ("CT", "MR", "PET")), p
