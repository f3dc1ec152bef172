"""SAT's published layout through the normal verbs: `import-checkpoint` (text tower -> cached vocabulary
embeddings), `predict -m` (the folder or the .pth) and `open_checkpoint`, on files built here (the
authors' key layout with seeded random values, narrow widths; a tiny random BERT), on a real CT."""
from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from promptseg.checkpoint import load_checkpoint, open_checkpoint
from promptseg.cli import main
from promptseg.errors import PromptsegError
from promptseg.inference.lean_masks import PROB_SCALE, sliding_window_masks
from promptseg.io.readers import read_image
from promptseg.models.official_sat import OfficialSAT, random_sat_state_dict, sat_to_native
from promptseg.taxonomy.sat_vocabulary import sat_vocabulary

# SAT-Nano's key layout (2 convolutions per stage, 6 stages), narrow widths so a 288x288x96 window is quick
WIDTHS = dict(features=(4, 4, 8, 8, 8, 16), hidden=16, mask_mid=8)


@pytest.fixture
def sat_file(tmp_path):
    f = tmp_path / "SAT_Nano.pth"
    torch.save({"model_state_dict": random_sat_state_dict("nano", seed=3, **WIDTHS), "epoch": 1}, f)
    return f


@pytest.fixture
def small_ct(shared_data, tmp_path):
    """A 60 x 60 x 30-voxel piece of a real abdominal CT (3 mm; kidneys and liver), its own affine."""
    img = nib.load(str(shared_data / "ct_abdomen_small" / "image.nii.gz"))
    path = tmp_path / "ct_piece.nii.gz"
    nib.save(img.slicer[30:90, 25:85, :], str(path))
    return path


def _imported(sat_file, tiny_tower, tmp_path, *extra):
    folder, weights, _ = tiny_tower
    out = tmp_path / "sat_nano"
    rc = main(["import-checkpoint", str(sat_file), "--text-model", str(folder), "--text-weights", str(weights),
               "-o", str(out), *extra])
    assert rc == 0
    return out


def test_import_then_predict_writes_masks_on_the_input_grid(sat_file, tiny_tower, small_ct, tmp_path, capsys):
    out = _imported(sat_file, tiny_tower, tmp_path, "--modalities", "ct")
    assert "imported SAT-nano" in capsys.readouterr().out
    ckpt = open_checkpoint(out)
    assert ckpt.classes == list(sat_vocabulary()) and len(ckpt.classes) > 400
    assert list(ckpt.plans) == ["CT"] and ckpt.config["inference"]["window"] == [288, 288, 96]
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "official SAT-nano" in info and f"classes     {len(ckpt.classes)}" in info and ": left kidney" in info

    pred = tmp_path / "pred"
    rc = main(["predict", "-m", str(out), "-i", str(small_ct), "-o", str(pred), "--prompt", "left kidney",
               "liver tumour", "--modality", "CT", "--device", "cpu", "--quiet"])
    assert rc == 0
    ref = read_image(small_ct)
    label_map = read_image(pred / "ct_piece.nii.gz")
    assert label_map.array.shape == ref.array.shape and np.allclose(label_map.affine, ref.affine)
    labels = json.loads((pred / "labels.json").read_text())
    assert set(labels.values()) == {"left kidney", "liver tumor"}
    for name in ("left_kidney", "liver_tumor"):
        mask = read_image(pred / "ct_piece" / f"{name}.nii.gz")
        assert mask.array.shape == ref.array.shape and np.allclose(mask.affine, ref.affine)
    # random weights: the masks are not trivially empty or full, so the comparison below means something
    both = [read_image(pred / "ct_piece" / f"{n}.nii.gz").array for n in ("left_kidney", "liver_tumor")]
    assert any(0 < m.mean() < 1 for m in both)

    # the .pth itself with its text tower gives the same masks
    folder, weights, _ = tiny_tower
    again = tmp_path / "pred_pth"
    rc = main(["predict", "-m", str(sat_file), "--text-model", str(folder), "--text-weights", str(weights),
               "-i", str(small_ct), "-o", str(again), "--prompt", "kidney_left", "liver tumor", "--modality", "CT",
               "--device", "cpu", "--quiet"])
    assert rc == 0
    for name in ("left_kidney", "liver_tumor"):
        assert np.array_equal(read_image(again / "ct_piece" / f"{name}.nii.gz").array,
                              read_image(pred / "ct_piece" / f"{name}.nii.gz").array)


def test_sat_pth_needs_its_text_tower_and_bad_prompts_fail_in_one_line(sat_file, tiny_tower, small_ct, tmp_path,
                                                                        capsys):
    rc = main(["predict", "-m", str(sat_file), "-i", str(small_ct), "-o", str(tmp_path / "p"), "--prompt", "liver"])
    assert rc == 2 and "needs its text tower" in capsys.readouterr().err
    folder, weights, _ = tiny_tower
    model = load_checkpoint(sat_file, text_model=folder, text_weights=weights, modalities=("ct",))
    assert isinstance(model, OfficialSAT) and model.modalities == ["ct"]
    for prompt, why in (("prostate/uterus", "'prostate' or 'uterus'"), ("zzqx organ", "closest SAT terms")):
        rc = main(["predict", "-m", str(sat_file), "--text-model", str(folder), "--text-weights", str(weights),
                   "-i", str(small_ct), "-o", str(tmp_path / "p"), "--prompt", prompt, "--modality", "CT"])
        err = capsys.readouterr().err
        assert rc == 2 and why in err and len(err.strip().splitlines()) == 1, err
    rc = main(["predict", "-m", str(sat_file), "--text-model", str(folder), "--text-weights", str(weights),
               "-i", str(small_ct), "-o", str(tmp_path / "p"), "--prompt", "liver", "--modality", "CT", "--fast"])
    assert rc == 2 and "--fast cannot run with this model" in capsys.readouterr().err


def test_import_lists_missing_unused_and_misshaped_keys(tiny_tower, tmp_path, capsys):
    sd = random_sat_state_dict("nano", **WIDTHS)
    sd.pop("module.mask_embed_proj.0.bias")
    sd["module.extra.weight"] = torch.zeros(2)
    sd["module.projection_layer.2.weight"] = torch.zeros(3, 3)
    f = tmp_path / "broken.pth"
    torch.save({"model_state_dict": sd}, f)
    folder, weights, _ = tiny_tower
    rc = main(["import-checkpoint", str(f), "--text-model", str(folder), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    for part in ("missing 1: mask_embed_proj.0.bias", "unexpected 1: extra.weight",
                 "mis-shaped 1: projection_layer.2.weight (3, 3) (expected (768, 16))", str(f)):
        assert part in err, err
    assert not (tmp_path / "o").exists()


def test_forward_embeddings_and_names():
    torch.manual_seed(0)
    model = OfficialSAT("nano", crop=(64, 64, 32), **WIDTHS).eval()
    queries = torch.randn(3, 768)
    model.set_vocabulary(["liver", "left kidney", "liver tumor"], {"ct": queries})
    image = torch.randn(2, 1, 64, 64, 32)
    with torch.no_grad():
        out = model.forward_embeddings(image, queries)
        named = model(image, ["liver tumour", "kidney_left"])
        small = model(image[:, :, :40, :64, :20], ["liver"])  # a short window: zero-padded, cut back
        padded = torch.zeros(2, 1, 64, 64, 32)
        padded[:, :, :40, :, :20] = image[:, :, :40, :, :20]
        ref = model.forward_embeddings(padded, queries[:1])[:, :, :40, :, :20]
    assert out.shape == (2, 3, 64, 64, 32)
    assert torch.allclose(named, out[:, [2, 1]], atol=1e-5)  # other query counts: other matmul blocking
    assert small.shape == (2, 1, 40, 64, 20) and torch.allclose(small, ref, atol=1e-6)


def _authors_blend(model, image, queries):
    """The authors' whole-scan rule, spelled out: half-crop stride with the last window flush with the
    end, each window's sigmoid weighted by a Gaussian (sigma crop/8) and averaged."""
    from scipy.ndimage import gaussian_filter

    crop = model.crop

    def starts(size, c):
        return sorted({max(min(i * (c // 2), size - c), 0) for i in range(max(math.ceil(size / (c // 2)) - 1, 1))})

    delta = np.zeros(crop)
    delta[tuple(c // 2 for c in crop)] = 1
    g = gaussian_filter(delta, [c / 8 for c in crop], 0, mode="constant", cval=0)
    g = (g / g.max() * 10).astype(np.float16)  # peak 10 in float16, zeros -> least non-zero
    g[g == 0] = g[g != 0].min()
    g = torch.from_numpy(g.astype(np.float32))
    prob = torch.zeros((len(queries), *image.shape))
    acc = torch.zeros(image.shape)
    x = torch.from_numpy(image)
    for a in starts(image.shape[0], crop[0]):
        for b in starts(image.shape[1], crop[1]):
            for c in starts(image.shape[2], crop[2]):
                win = x[a:a + crop[0], b:b + crop[1], c:c + crop[2]][None, None]
                with torch.no_grad():
                    p = torch.sigmoid(model.forward_embeddings(win, queries))[0]
                prob[:, a:a + crop[0], b:b + crop[1], c:c + crop[2]] += p * g
                acc[a:a + crop[0], b:b + crop[1], c:c + crop[2]] += g
    return (prob / acc).numpy()


def test_predictor_windows_blend_as_the_authors_do(shared_data):
    """The predictor's windows for a SAT checkpoint: same origins and same probability blending."""
    torch.manual_seed(0)
    model = OfficialSAT("nano", crop=(64, 64, 32), **WIDTHS).eval()
    model.set_vocabulary(["liver", "left kidney"], {"ct": torch.randn(2, 768)})
    img = nib.load(str(shared_data / "ct_abdomen_pelvis" / "image.nii.gz")).get_fdata()[10:110, 10:90, 20:70]
    img = np.clip(img, -500, 1000)
    image = ((img - img.mean()) / img.std()).astype(np.float32)
    ref = _authors_blend(model, image, model.queries_for(["liver", "left kidney"], "ct"))
    pb = model.prompt_batch(["liver", "left kidney"], modality="CT")
    masks, probs = sliding_window_masks(model, torch.from_numpy(image)[None, None], pb, [0.5, 0.5],
                                        window=model.crop, overlap=0.5, blend="probabilities", runtime="torch",
                                        precision="float32")
    assert np.abs(probs / PROB_SCALE - ref).max() < 2e-5  # uint16 steps are 1.5e-5
    assert np.mean(masks != (ref > 0.5)) < 1e-4  # differ only where a probability is within rounding of 0.5
