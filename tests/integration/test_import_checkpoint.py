"""Official Universal Model files through `promptseg import-checkpoint` and `predict`.

Random weights shaped by the recorded official layout stand in for the published files (which
are never downloaded here): this tests the key mapping and the pipeline, not accuracy.
"""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from promptseg.cli import main
from promptseg.models.official import random_official_state_dict
from promptseg.checkpoint import load_checkpoint, open_checkpoint


def _official_file(tmp_path, backbone: str, prefix: str = "module.") -> "Path":
    path = tmp_path / f"official_{backbone}.pth"
    torch.save({"net": random_official_state_dict(backbone, prefix=prefix), "epoch": 1}, path)
    return path


def test_import_cli_writes_a_native_checkpoint_with_official_settings(tmp_path, capsys):
    src = _official_file(tmp_path, "unet")
    assert main(["import-checkpoint", str(src), "-o", str(tmp_path / "native")]) == 0
    meta = json.loads((tmp_path / "native" / "checkpoint.json").read_text())
    assert meta["class_names"][5] == "liver" and len(meta["class_names"]) == 32
    cfg = meta["config"]
    assert cfg["plan"]["spacing"] == [1.5, 1.5, 1.5] and cfg["inference"]["window"] == [96, 96, 96]
    assert cfg["inference"]["overlap"] == 0.5 and cfg["conditioner"]["head"] == "shared"
    native, direct = load_checkpoint(tmp_path / "native"), load_checkpoint(src)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        a = native(x, ["liver", "liver tumor"])
        b = direct(x, ["liver", "liver tumor"])
        full = direct(x)
    assert a.shape == (1, 2, 32, 32, 32)
    assert torch.equal(a, b)
    assert torch.allclose(a, full[:, [5, 26]], atol=1e-6)


def test_truncated_and_foreign_files_get_one_line_errors(tmp_path, capsys):
    src = _official_file(tmp_path, "unet")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"conv.weight": torch.zeros(3, 3)}}, other)
    for bad in (cut, text, other):
        assert main(["import-checkpoint", str(bad), "-o", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert bad.name in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_predict_with_imported_swin_unetr_keeps_input_geometry(tmp_path, shared_data):
    from promptseg.inference.predictor import Predictor
    from promptseg.preprocess import get_plan

    src = _official_file(tmp_path, "swinunetr")
    assert main(["import-checkpoint", str(src), "-o", str(tmp_path / "swin")]) == 0
    ckpt = open_checkpoint(tmp_path / "swin")
    assert sum(p.numel() for p in ckpt.model.parameters()) > 62e6
    image = shared_data / "ct_abdomen_pelvis" / "image.nii.gz"
    # coarse grid and no overlap keep this CPU test short; the geometry path is the same
    predictor = Predictor(ckpt, plan=get_plan(ckpt.config["plan"], spacing=[6.0, 6.0, 6.0]),
                          inference={**ckpt.config["inference"], "overlap": 0.0, "sw_batch_size": 1},
                          device="cpu", progress=False)
    written = predictor.predict_file(image, tmp_path / "out", prompts=["liver", "left kidney"])
    ref = nib.load(str(image))
    out = nib.load(str(written["label_map"]))
    assert out.shape == ref.shape
    assert np.allclose(out.affine, ref.affine, atol=1e-4)
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(ref.affine)
    assert set(written["masks"]) == {"liver", "left kidney"}
