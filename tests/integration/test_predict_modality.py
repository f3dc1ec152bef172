"""`promptseg predict --modality`: which plan preprocesses an input of a multi-modal checkpoint.

Rules: `--modality` wins; else a DICOM series' Modality tag (PT -> PET); else the checkpoint's only
trained modality; a checkpoint trained on several modalities given a NIfTI without `--modality`
stops with one line asking for it. Inputs are real sarcoma scans (PET: 41x43x59 voxels, quick);
the tiny model has random weights: this checks the plan chosen, not accuracy.
"""
from __future__ import annotations

import pytest
import torch

from promptseg.checkpoint import open_checkpoint, save_checkpoint
from promptseg.cli import main
from promptseg.config import resolve_config
from promptseg.inference import predictor as predictor_module
from promptseg.models.build import build_model

CLASSES = ["soft tissue sarcoma", "liver"]
TEMPLATES = {"CT": "A computerized tomography of a {}.", "MR": "A magnetic resonance image of a {}.",
             "PET": "A positron emission tomography of a {}."}
NATIVE = {"spacing": None}  # native grid: each case runs in about a second


def _checkpoint(folder, modalities):
    raw = {"modality": modalities[0], "backbone": {"name": "unet", "preset": "small"},
           "conditioner": {"name": "universal", "templates": TEMPLATES},
           "plan": {"name": "universal_ct", **NATIVE},
           "plans": {"MR": {"name": "universal_mr", **NATIVE}, "PET": {"name": "universal_pet", **NATIVE}},
           "inference": {"window": [32, 32, 32], "sw_batch_size": 2}}
    config = resolve_config(raw, folder)
    torch.manual_seed(0)
    model = build_model(config, CLASSES, embeddings=torch.randn(len(CLASSES), 3, 16))
    return save_checkpoint(model, folder / "model", config, extra={"modalities": modalities})


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("multi"), ["CT", "MR", "PET"])


@pytest.fixture(scope="module")
def mr_only(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("mr"), ["MR"])


@pytest.fixture
def plans_used(monkeypatch):
    """Modality of every plan the predictor preprocesses with."""
    used = []
    real = predictor_module.preprocess_image

    def spy(volume, plan, *a, **kw):
        used.append(plan.modality)
        return real(volume, plan, *a, **kw)

    monkeypatch.setattr(predictor_module, "preprocess_image", spy)
    return used


def predict(model, image, out, *extra):
    return main(["predict", "-i", str(image), "-o", str(out), "-m", str(model), "--quiet", "--no-masks", *extra])


def test_checkpoint_keeps_every_plan_and_its_modalities(multi, mr_only):
    ck = open_checkpoint(multi)
    assert sorted(ck.plans) == ["CT", "MR", "PET"] and ck.modalities == ["CT", "MR", "PET"]
    assert ck.plans["PET"]["name"] == "universal_pet" and ck.plans["MR"]["intensity"] != ck.plans["CT"]["intensity"]
    assert open_checkpoint(mr_only).modalities == ["MR"]


def test_multimodal_checkpoint_needs_modality_for_nifti(multi, shared_data, tmp_path, capsys, plans_used):
    pet = shared_data / "sts_sarcoma" / "STS_003" / "PET_image.nii.gz"
    assert predict(multi, pet, tmp_path / "a") != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "PET_image.nii.gz" in err and "--modality" in err and "CT, MR, PET" in err
    assert plans_used == []
    assert predict(multi, pet, tmp_path / "b", "--modality", "pet") == 0
    assert plans_used == ["PET"] and (tmp_path / "b" / "PET_image.nii.gz").is_file()


def test_dicom_modality_tag_chooses_the_plan(multi, shared_data, tmp_path, plans_used):
    series = shared_data / "sts_sarcoma_dicom" / "STS_001" / "PET" / "image"
    if not series.is_dir():
        pytest.skip(f"{series} not present")
    assert predict(multi, series, tmp_path / "o") == 0
    assert plans_used == ["PET"]
    assert predict(multi, series, tmp_path / "o2", "--modality", "MR") == 0  # the flag wins over the tag
    assert plans_used == ["PET", "MR"]


def test_single_modality_checkpoint_uses_its_modality(mr_only, shared_data, tmp_path, plans_used):
    pet = shared_data / "sts_sarcoma" / "STS_003" / "PET_image.nii.gz"
    assert predict(mr_only, pet, tmp_path / "o") == 0
    assert plans_used == ["MR"]
