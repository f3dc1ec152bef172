"""The lean prediction path gives the seed-style reference's masks on a real scan.

Reference (the seed's way, no shortcuts): MONAI `sliding_window_inference` over the whole plan
grid with the plain model in float32, sigmoid probabilities of every class resampled linearly
back to the input grid, thresholded. Lean: `Predictor` (body crop, slab stitching, prompts
prepared once, chunked head, per-class box resampling of uint16 probabilities). The plan coarsens the 3 mm scan
to 4.5 x 4.5 x 6 mm so that the inversion really upsamples (as 1.5 mm -> 0.78 mm does) and the
test stays small. A random-weight model: the check is numerical, not anatomical.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CLASSES = ["spleen", "right kidney", "left kidney", "liver", "stomach", "aorta", "pancreas",
           "right adrenal gland", "liver tumor", "kidney tumor"]
PLAN = {"name": "universal_ct", "spacing": [4.5, 4.5, 6.0]}
INFERENCE = {"window": [32, 32, 16], "overlap": 0.5, "mode": "gaussian", "sw_batch_size": 2}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


@pytest.fixture(scope="module")
def volume():
    from promptseg.io import read_image

    p = DATA / "ct_abdomen_small" / "image.nii.gz"
    if not p.is_file():
        pytest.skip(f"real scan {p} not found (../shared/data lives beside the clone)")
    return read_image(p)


@pytest.fixture(scope="module")
def model(varied_random_model):
    return varied_random_model({"name": "unet", "preset": "small"}, CLASSES, seed=3)


@pytest.fixture(scope="module")
def reference(model, volume):
    from monai.inferers import sliding_window_inference

    from promptseg.inference.windows import fit_window, size_multiple
    from promptseg.preprocess import get_plan, invert, preprocess_image

    pre = preprocess_image(volume, get_plan(PLAN))
    x = torch.from_numpy(pre.array)[None, None]
    roi = fit_window(INFERENCE["window"], x.shape[2:], size_multiple(model))
    pb = model.prompt_batch(CLASSES, batch_size=1)
    with torch.inference_mode():
        logits = sliding_window_inference(x, roi, 2, lambda w: model(w, pb if w.shape[0] == 1 else
                                                                      model.prompt_batch(CLASSES, batch_size=w.shape[0])),
                                          overlap=0.5, mode="gaussian", padding_mode="constant", cval=float(x.min()))
    probs = invert(torch.sigmoid(logits[0]), pre.record, interpolation="linear").array
    return {c: probs[k] > 0.5 for k, c in enumerate(CLASSES)}


def predict(model, volume, prompts=None, **kw):
    from promptseg.inference import Predictor

    fast = kw.pop("fast", False)
    roi = kw.pop("roi", False)
    p = Predictor(model, plan=PLAN, inference={**INFERENCE, **kw}, device="cpu", progress=False, fast=fast, roi=roi)
    return p.predict_volume(volume, prompts)


@pytest.fixture(scope="module")
def lean(model, volume):
    return predict(model, volume, postprocess=False)  # default settings: float32 windows


def test_lean_masks_equal_reference(lean, volume, reference):
    pred = lean
    scores = {c: dice(pred.masks[c].array > 0, reference[c]) for c in CLASSES}
    sizes = {c: int(reference[c].sum()) for c in CLASSES}
    assert sum(100 < s < volume.array.size for s in sizes.values()) >= 5, f"test needs partial masks: {sizes}"
    assert min(scores.values()) >= 0.99, scores
    assert pred.stats["precision"] == "float32" and pred.stats["windows"] == pred.stats["windows_full"]
    # the merged map only labels voxels inside the class's own mask
    for v, c in pred.names.items():
        assert not ((pred.label_map.array == v) & (pred.masks[c].array == 0)).any(), c


def test_nearest_inversion_is_the_blockier_one(model, volume, reference, lean):
    """Why the lean path resamples probabilities: nearest label maps lose Dice on small classes."""
    asked = ["liver", "aorta", "right adrenal gland", "kidney tumor"]
    near = predict(model, volume, asked, postprocess=False, interpolation="nearest")
    d_lin = np.mean([dice(lean.masks[c].array > 0, reference[c]) for c in asked])
    d_near = np.mean([dice(near.masks[c].array > 0, reference[c]) for c in asked])
    assert d_lin > d_near


def test_roi_equals_full_for_asked_classes(model, volume, lean):
    """Without post-processing a class's mask does not depend on the other prompts, so the
    all-classes run is the full-resolution answer for the asked ones."""
    asked = ["liver", "spleen"]
    full = lean
    roi = predict(model, volume, asked, roi=True, postprocess=False)
    for c in asked:
        assert dice(roi.masks[c].array > 0, full.masks[c].array > 0) >= 0.99, c
    assert "locate" in roi.timings


def test_region_windows_give_the_full_run_inside_the_region(model):
    """--roi's guarantee: running only the windows that overlap a region reproduces the full
    run's masks and probabilities inside it (same windows, same weights; float rounding aside)."""
    from promptseg.inference.lean_masks import sliding_window_masks
    from promptseg.inference.sliding import sliding_window_logits

    torch.manual_seed(0)
    image = torch.rand(1, 1, 56, 40, 24)
    pb = model.prompt_batch(CLASSES[:4], batch_size=1)
    kw = dict(window=(32, 32, 16), overlap=0.5, precision="float32")
    full_m, full_p = sliding_window_masks(model, image, pb, [0.5] * 4, **kw)
    ref = sliding_window_logits(model, image, pb, head_chunk=0, **{k: v for k, v in kw.items() if k != "precision"})
    np.testing.assert_array_equal(full_m, (ref[0] > 0).numpy())  # slab stitching == MONAI's
    region = (slice(8, 24), slice(5, 20), slice(0, 24))
    stats = {}
    m, p = sliding_window_masks(model, image, pb, [0.5] * 4, region=region, stats=stats, **kw)
    assert stats["windows"] < stats["windows_full"]
    inside = (slice(None),) + region
    np.testing.assert_array_equal(m[inside], full_m[inside])
    # probabilities: equal up to float rounding (windows are batched differently): one uint16 step
    assert np.abs(p[inside].astype(int) - full_p[inside].astype(int)).max() <= 1
    assert m.sum() == m[inside].sum()  # nothing outside the region


def test_fast_mode_runs_on_a_coarser_grid(model, volume, lean):
    full = lean
    fast = predict(model, volume, ["liver"], postprocess=False, fast=True, fast_spacing=[9.0, 9.0, 12.0])
    assert all(w >= 32 for w in fast.stats["window"][:2])  # scaled windows, never below 2 bottleneck voxels
    assert np.prod(fast.stats["network_grid"]) * 4 < np.prod(full.stats["network_grid"])
    assert fast.label_map.same_grid(volume)


def test_auto_head_chunk_gives_the_one_go_logits(model):
    """The head in chunks ('auto' on a CPU: 131072 class-voxels, 3 chunks per window batch here)
    computes the same logits as the head run over the whole window batch in one go."""
    from promptseg.inference.sliding import sliding_window_logits

    torch.manual_seed(1)
    image = torch.rand(1, 1, 56, 40, 24)
    pb = model.prompt_batch(CLASSES, batch_size=1)
    with torch.inference_mode():
        one_go = sliding_window_logits(model, image, pb, window=(32, 32, 16), sw_batch_size=2, head_chunk=0)
        auto = sliding_window_logits(model, image, pb, window=(32, 32, 16), sw_batch_size=2, head_chunk="auto")
    assert float((auto - one_go).abs().max()) <= 1e-5 * float(one_go.abs().max())
