"""`promptseg predict` on real scans: outputs on the input's exact grid; rules right on real anatomy.

A random-weight model tests the pipeline (geometry, files, errors), not accuracy. The plans keep
the native 3 mm spacing (or coarsen it) so each case runs in a few seconds on a CPU.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CLASSES = ["liver", "spleen", "right kidney", "left kidney", "pancreas", "right lung", "left lung",
           "portal vein and splenic vein", "liver tumor", "kidney tumor"]
FAST = {"window": [64, 64, 32], "sw_batch_size": 2}
CASES = {  # case: (plan, input orientation)
    "mr_abdomen_small": ({"name": "universal_mr", "spacing": None}, "LPS"),
    "ct_abdomen_small": ({"name": "universal_ct", "spacing": [4.5, 4.5, 6.0]}, "RAS"),  # resampled
}


def scan(case: str, name: str = "image.nii.gz") -> Path:
    p = DATA / case / name
    if not p.is_file():
        pytest.skip(f"real scan {p} not found (../shared/data lives beside the clone)")
    return p


@pytest.fixture(scope="module")
def model():
    from promptseg.models.build import build_model

    torch.manual_seed(0)
    m = build_model({"backbone": {"name": "unet", "preset": "small"}, "conditioner": {"name": "universal"}},
                    CLASSES, embeddings=torch.randn(len(CLASSES), 384))
    return m.eval()


def assert_same_grid(out: Path, ref: nib.Nifti1Image) -> None:
    img = nib.load(str(out))
    assert img.shape == ref.shape, out
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4, err_msg=str(out))
    assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(ref.affine)


@pytest.mark.parametrize("case", sorted(CASES))
def test_predict_file_writes_outputs_on_input_grid(model, case, tmp_path):
    from promptseg.inference import Predictor

    image = scan(case)
    plan, orientation = CASES[case]
    ref = nib.load(str(image))
    assert "".join(nib.aff2axcodes(ref.affine)) == orientation
    pred = Predictor(model, plan=plan, inference=FAST, device="cpu", progress=False)
    out = pred.predict_file(image, tmp_path, prompts=["liver", "liver tumor", "Kidney_Left", "spleen"])

    assert out["label_map"] == tmp_path / "image.nii.gz"
    assert_same_grid(out["label_map"], ref)
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert labels == {"1": "spleen", "3": "left kidney", "6": "liver", "27": "liver tumor"}
    assert set(out["masks"]) == {"liver", "liver tumor", "left kidney", "spleen"}
    merged = np.asarray(nib.load(str(out["label_map"])).dataobj)
    assert set(np.unique(merged).tolist()) <= {0, 1, 3, 6, 27}
    for name, path in out["masks"].items():
        assert path == tmp_path / "image" / f"{name.replace(' ', '_')}.nii.gz"
        assert_same_grid(path, ref)
        m = np.asarray(nib.load(str(path)).dataobj)
        assert set(np.unique(m).tolist()) <= {0, 1}
        value = {v: k for k, v in labels.items()}[name]
        assert not ((merged == int(value)) & (m == 0)).any(), f"label {name} outside its mask"
    p = out["prediction"]
    assert p.label_map.same_grid(p.masks["liver"])
    for name in p.masks:  # reported volumes are the written masks' volumes
        vox = np.asarray(nib.load(str(out["masks"][name])).dataobj).sum()
        assert p.volumes_ml[name] == pytest.approx(vox * np.prod(p.label_map.spacing) / 1000)
    assert {"preprocess", "network", "postprocess", "merge", "invert", "write"} <= set(p.timings)


def test_cli_predict_and_unknown_prompt(model, tmp_path, capsys):
    from promptseg.cli import main
    from promptseg.checkpoint import save_checkpoint

    image = scan("mr_abdomen_small")
    run_config = {
        "modality": "MR",
        "backbone": {"name": "unet", "preset": "small"},
        "conditioner": {"name": "universal"},
        "plan": {"name": "universal_mr", "spacing": None},
        "inference": {**FAST, "overlap": 0.25},
    }
    ckpt = save_checkpoint(model, tmp_path / "ckpt", run_config)
    out = tmp_path / "out"

    rc = main(["predict", "-i", str(image), "-o", str(out), "-m", str(ckpt), "--prompt", "livr tumour", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert "livr tumour" in err and "'liver tumor'" in err
    assert not out.exists(), "nothing is written for a bad prompt"

    rc = main(["predict", "-i", str(image), "-o", str(out), "-m", str(ckpt), "--prompt", "liver",
               "--prompt", "liver tumor", "--quiet", "--no-masks"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.startswith("image: ") and "classes found" in captured.out
    assert_same_grid(out / "image.nii.gz", nib.load(str(image)))
    assert json.loads((out / "labels.json").read_text()) == {"6": "liver", "27": "liver tumor"}
    assert not (out / "image").exists()


def _true_masks(case: str):
    """Reference label map of `case` in the network grid of its native-spacing plan, per taxonomy class."""
    from promptseg.io import read_image, read_label
    from promptseg.preprocess import apply_to_label, get_plan, preprocess_image
    from promptseg.taxonomy import default_taxonomy

    tax = default_taxonomy()
    plan = "universal_mr" if case.startswith("mr") else "universal_ct"
    pre = preprocess_image(read_image(scan(case)), get_plan(plan, spacing=None))
    lab = apply_to_label(read_label(scan(case, "labels.nii.gz")), pre.record)
    masks: dict[str, np.ndarray] = {}
    for value, raw in json.loads((DATA / case / "labels.json").read_text()).items():
        info = tax.get(raw)
        if info is None and raw.startswith("lung_"):  # lobes -> whole lung of that side
            info = tax.get("left lung" if raw.endswith("left") else "right lung")
        if info is not None:
            masks[info.name] = masks.get(info.name, np.zeros(lab.shape, bool)) | (lab == int(value))
    return pre, masks


@pytest.mark.parametrize("case", ["ct_abdomen_small", "mr_abdomen_small"])
def test_rules_keep_true_anatomy_and_sides(case):
    """On real anatomy the side rules keep every paired organ and reject swapped sides."""
    from promptseg.inference.postprocess import body_mask_from_image, postprocess

    pre, masks = _true_masks(case)
    body = body_mask_from_image(pre.array)
    direction = np.asarray(pre.record.network.direction, dtype=float).reshape(3, 3)
    out = postprocess(masks, None, spacing=pre.record.network.spacing, body_mask=body, direction=direction)
    for name in ["right kidney", "left kidney", "right adrenal gland", "left adrenal gland", "spleen", "liver"]:
        kept = (out[name] & masks[name]).sum() / masks[name].sum()
        assert kept > 0.95, f"{case}: {name} kept {kept:.3f}"
    if "left lung" in masks and "right lung" in masks:
        both = masks["left lung"] | masks["right lung"]  # the network gave both lungs to both classes
        split = postprocess({"right lung": both, "left lung": both}, body_mask=body, direction=direction)
        for side in ("left lung", "right lung"):
            assert (split[side] & masks[side]).sum() / masks[side].sum() > 0.95
    swapped = postprocess({"right kidney": masks["left kidney"], "left kidney": masks["right kidney"]},
                          body_mask=body, direction=direction)
    assert swapped["right kidney"].sum() == 0 and swapped["left kidney"].sum() == 0


def test_folder_of_nrrd_mha_and_dicom_inputs(model, tmp_path):
    """A folder holding NRRD, MHA and a DICOM series: each case named and written in its own family."""
    from promptseg.inference import case_name, collect_inputs, predict
    from promptseg.io import Volume, read_image, write_dicom_series, write_image

    x, y, z = np.meshgrid(np.arange(40), np.arange(36), np.arange(10), indexing="ij")
    body = ((x - 20) / 16.0) ** 2 + ((y - 18) / 13.0) ** 2 < 1
    arr = np.where(body, 40, -1000).astype(np.int16)
    tilted = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # axes swapped in the patient
    src = tmp_path / "in"
    write_image(Volume(arr, (1.5, 1.2, 4.0), (10.0, -5.0, 30.0)), src / "a.nrrd")
    write_image(Volume(arr, (2.0, 2.0, 3.0), (0.0, 0.0, 0.0), tilted), src / "b.mha")
    write_dicom_series(Volume(arr, (0.8, 0.8, 2.5), (-16.0, -14.4, 0.0)), src / "series_c")
    (src / "notes.txt").write_text("not an image")

    found = collect_inputs(src)
    assert [case_name(p) for p in found] == ["a", "b", "series_c"]
    out = tmp_path / "out"
    results = predict(model, src, out, prompts=["liver", "spleen"], device="cpu", progress=False,
                      plan={"name": "universal_ct", "spacing": None}, inference=FAST)
    assert [r["case"] for r in results] == ["a", "b", "series_c"]
    for r, written in zip(results, ["a.nrrd", "b.mha", "series_c.nii.gz"]):
        assert r["label_map"] == out / written
        ref = read_image(found[results.index(r)])
        got = read_image(out / written)
        assert got.same_grid(ref), got.grid_differences(ref)
        for name in ("liver", "spleen"):
            assert read_image(r["masks"][name]).same_grid(ref)
    assert json.loads((out / "labels.json").read_text()) == {"1": "spleen", "6": "liver"}


def test_bad_inputs_give_one_line_errors(model, tmp_path):
    from promptseg.errors import InputError, PromptsegError
    from promptseg.inference import Predictor, collect_inputs

    with pytest.raises(InputError, match="input not found"):
        collect_inputs(tmp_path / "missing.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        collect_inputs(tmp_path / "empty")
    pred = Predictor(model, plan="universal_ct", inference=FAST, device="cpu", progress=False)
    with pytest.raises(PromptsegError) as err:
        pred.classes(["liver", "brain stem"])
    assert "\n" not in str(err.value) and "brain stem" in str(err.value)


def test_prompt_groups_synonyms_and_duplicates(model):
    from promptseg.inference import Predictor

    pred = Predictor(model, plan="universal_ct", inference=FAST, device="cpu", progress=False)
    assert pred.classes(["kidney", "hepatic tumour", "Liver", "liver"]) == [
        "right kidney", "left kidney", "liver tumor", "liver"]
    assert pred.classes(None) == CLASSES
    assert pred.thresholds(["liver", "spleen"]) == [0.5, 0.5]
    tuned = Predictor(model, plan="universal_ct", inference={"thresholds": {"Hepar": 0.7}}, device="cpu", progress=False)
    assert tuned.thresholds(["liver", "spleen"]) == [0.7, 0.5]


class Pointwise(torch.nn.Module):
    """A 'network' whose logit k is 10 * (intensity - cut_k): its prediction is known exactly.

    Borrowing UniversalSegmenter's prompt handling, it checks that windows, body crop, merge and
    the inverse of reorientation put every voxel back where it came from.
    """

    from promptseg.models.segmenter import UniversalSegmenter as _U

    prompt_batch = _U.prompt_batch
    canonical = _U.canonical

    def __init__(self, cuts: dict[str, float]):
        from types import SimpleNamespace

        from promptseg.taxonomy import default_taxonomy

        super().__init__()
        self.cuts = cuts
        self.class_names = list(cuts)
        self.taxonomy = default_taxonomy()
        self.conditioner = SimpleNamespace(open_vocabulary=False)
        self.backbone = SimpleNamespace(size_multiple=(16, 16, 16))
        self.scale = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, x, prompts):
        return torch.cat([(x[:, :1] - self.cuts[c]) * self.scale for c in prompts.classes], dim=1)


@pytest.mark.parametrize("case", ["mr_abdomen_small", "ct_abdomen_small"])
def test_pointwise_model_roundtrip_is_exact(case):
    from promptseg.inference import Predictor
    from promptseg.io import read_image

    vol = read_image(scan(case))
    a = np.asarray(vol.array, dtype=np.float32)
    lo, hi = (float(np.percentile(a, q)) + 0.5 for q in (80, 95))  # never equal to an integer voxel
    model = Pointwise({"liver": lo, "liver tumor": hi})
    plan = {"name": "universal_ct", "spacing": None, "intensity": {"method": "none"}, "crop": None}
    pred = Predictor(model, plan=plan, inference={"window": [48, 48, 16], "postprocess": False},
                     device="cpu", progress=False).predict_volume(vol)
    assert pred.label_map.same_grid(vol)
    np.testing.assert_array_equal(pred.masks["liver"].array, (a > lo).astype(np.uint8))
    np.testing.assert_array_equal(pred.masks["liver tumor"].array, (a > hi).astype(np.uint8))
    expected = np.where(a > hi, 27, np.where(a > lo, 6, 0))
    np.testing.assert_array_equal(pred.label_map.array, expected)
