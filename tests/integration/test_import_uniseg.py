"""UniSeg's published file through `promptseg import-checkpoint` and `predict -m`.

Random weights in the authors' key layout stand in for UniSeg_11_Tasks (never downloaded here):
this tests the file format, the task table and the geometry path, not accuracy.
"""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import torch

from promptseg.checkpoint import open_checkpoint
from promptseg.cli import main
from promptseg.inference.predictor import Predictor
from promptseg.preprocess import get_plan
from promptseg.models.official_uniseg import random_uniseg_state_dict


def _uniseg_file(path, state_dict):
    """Laid out as nnU-Net v1 saves it: loss curves hold numpy scalars."""
    torch.save({"epoch": 1000, "state_dict": state_dict, "optimizer_state_dict": None,
                "plot_stuff": ([np.float64(0.5)], [np.float64(0.4)], [], [np.float64(0.8)])}, path)
    return path


def test_import_then_predict_by_name_on_the_input_grid(tmp_path, shared_data, capsys):
    src = _uniseg_file(tmp_path / "UniSeg_11_Tasks.model", random_uniseg_state_dict(seed=0))
    assert main(["import-checkpoint", str(src), "-o", str(tmp_path / "uniseg")]) == 0
    assert "uniseg" in capsys.readouterr().out
    meta = json.loads((tmp_path / "uniseg" / "checkpoint.json").read_text())
    assert meta["config"]["official"]["kind"] == "uniseg" and "liver tumor" in meta["class_names"]
    ckpt = open_checkpoint(tmp_path / "uniseg")
    image = shared_data / "ct_abdomen_small" / "image.nii.gz"
    # a coarse grid keeps this CPU test to one window (padded to the patch); the geometry path is the same
    predictor = Predictor(ckpt, plan=get_plan(ckpt.config["plan"], spacing=[4.0, 4.0, 6.0]), device="cpu",
                          progress=False)
    written = predictor.predict_file(image, tmp_path / "out", prompts=["lien"])
    ref, seg = nib.load(str(image)), nib.load(str(written["label_map"]))
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine, atol=1e-4)
    assert set(written["masks"]) == {"spleen"}
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1}  # spleen's label value is 1


def test_broken_uniseg_file_is_one_line_naming_it(tmp_path, capsys):
    sd = random_uniseg_state_dict(seed=0)
    del sd["seg_outputs.4.weight"]
    bad = _uniseg_file(tmp_path / "broken.model", sd)
    assert main(["import-checkpoint", str(bad), "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "broken.model" in err and "missing 1: seg_outputs.4.weight" in err and "\n" not in err
    assert not (tmp_path / "x").exists()
