"""SAT on a whole real scan: the authors' window placement, Gaussian blending, masks on the input grid."""
from __future__ import annotations

import math

import numpy as np
import torch

from promptseg.workflows.sat_predict import gaussian_weights, predict_sat, sat_probabilities, window_starts
from promptseg.io.readers import read_image
from promptseg.models.official_sat import OfficialSAT

TINY = dict(crop=(64, 64, 32), features=(4, 4, 8, 8, 8, 16), hidden=16, mask_mid=8)


def _authors_starts(size, crop):  # the rule as the authors' split_3d loop states it
    out, step = [], crop // 2
    for i in range(max(math.ceil(size / step) - 1, 1)):
        s = i * step
        if s + crop > size:
            s = max(size - crop, 0)
        out.append(s)
    return sorted(set(out))


def test_window_placement_and_weights():
    for size in (20, 64, 65, 100, 288, 300, 511):
        assert window_starts(size, 64) == _authors_starts(size, 64)
    g = gaussian_weights((16, 16, 8))
    assert g.max() == np.float32(np.float16(10)) and g.min() > 0 and g[8, 8, 4] == g.max()


def _tiny_model(**kw):
    torch.manual_seed(0)
    model = OfficialSAT("nano", **{**TINY, **kw}).eval()
    model.set_vocabulary(["liver", "left kidney"], {"ct": torch.randn(2, 768)})
    return model


def test_one_window_image_equals_the_forward():
    model = _tiny_model()
    image = np.random.default_rng(0).normal(size=(64, 64, 32)).astype(np.float32)
    q = model.queries_for(["liver"], "ct")
    prob = sat_probabilities(model, image, q)
    with torch.no_grad():
        ref = torch.sigmoid(model.forward_embeddings(torch.from_numpy(image)[None, None], q))[0].numpy()
    assert np.abs(prob - ref).max() < 1e-6


def test_masks_on_the_input_grid(shared_data):
    vol = read_image(shared_data / "ct_abdomen_small" / "image.nii.gz")
    masks = predict_sat(_tiny_model(crop=(128, 128, 32)), vol, ["liver", "kidney_left"], modality="CT")
    assert list(masks) == ["liver", "kidney_left"]
    for m in masks.values():
        assert m.array.shape == vol.array.shape
        assert np.allclose(m.affine, vol.affine)
        assert set(np.unique(m.array)) <= {0, 1}


def test_saved_model_predicts_from_the_cli(shared_data, tmp_path):
    from promptseg.cli import main
    from promptseg.models.official_sat import load_sat_model, save_sat_model

    model = _tiny_model(crop=(128, 128, 32))
    folder = save_sat_model(model, tmp_path / "sat_model")
    again = load_sat_model(folder)
    assert again.vocabulary == model.vocabulary and torch.equal(again.term_embeddings, model.term_embeddings)
    out = tmp_path / "masks"
    rc = main(["sat-predict", "-m", str(folder), "-i", str(shared_data / "ct_abdomen_small" / "image.nii.gz"),
               "-o", str(out), "--prompt", "kidney_left", "--modality", "CT"])
    assert rc == 0
    mask = read_image(out / "kidney_left.nii.gz")
    assert mask.array.shape == read_image(shared_data / "ct_abdomen_small" / "image.nii.gz").array.shape


def test_sat_import_refuses_other_files(tmp_path, capsys):
    from promptseg.cli import main

    f = tmp_path / "x.pth"
    torch.save({"net": {"a": torch.zeros(1)}}, f)
    rc = main(["sat-import", str(f), "-o", str(tmp_path / "o"), "--text-model", str(tmp_path)])
    assert rc != 0
    assert "not a SAT-Nano / SAT-Pro checkpoint" in capsys.readouterr().err
