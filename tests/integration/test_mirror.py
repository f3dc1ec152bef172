"""Test-time mirroring (`inference.mirror`, `promptseg predict --mirror`): nnU-Net's averaging of
the network's logits over flipped inputs, along the axes that do not swap left and right only.

Random weights whose heads vary with the image (as in test_predict_runtime.py): the checks are
numerical, not anatomical.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from promptseg.errors import ConfigError
from promptseg.inference import Predictor
from promptseg.inference.windows import WindowRunner
from promptseg.io import read_image

CLASSES = ["spleen", "right kidney", "left kidney", "liver"]
PLAN = {"name": "universal_ct", "spacing": [4.5, 4.5, 6.0]}
INFERENCE = {"window": [32, 32, 16], "overlap": 0.5, "mode": "gaussian", "sw_batch_size": 2, "threads": 1}


@pytest.fixture(scope="module")
def model(varied_random_model):
    return varied_random_model({"name": "unet", "preset": "small"}, CLASSES, seed=3)


def test_the_runner_averages_the_logits_of_every_flip(model):
    pb = model.prompt_batch(CLASSES, batch_size=1)
    x = torch.randn(2, 1, 32, 32, 16)
    plain = WindowRunner(model, pb)
    want = sum(torch.flip(plain(torch.flip(x, d)), d) if d else plain(x) for d in ([], [3], [4], [3, 4])) / 4
    torch.testing.assert_close(WindowRunner(model, pb, mirror_axes=(1, 2))(x), want)
    assert not torch.allclose(want, plain(x))  # the flips did change something
    with pytest.raises(ValueError, match="mirror_axes"):
        WindowRunner(model, pb, mirror_axes=(3,))


def test_predict_mirrors_every_axis_but_left_right(model, shared_data):
    volume = read_image(shared_data / "ct_abdomen_small" / "image.nii.gz")
    runs = {m: Predictor(model, plan=PLAN, inference={**INFERENCE, "mirror": m}, device="cpu",
                         progress=False).predict_volume(volume) for m in (False, True)}
    # the plan's grid is RAS: axis 0 runs left-right, so only axes 1 (A-P) and 2 (S-I) are flipped
    assert runs[True].stats["mirror_axes"] == [1, 2] and runs[False].stats["mirror_axes"] == []
    changed = [c for c in CLASSES if not np.array_equal(np.asarray(runs[True].masks[c].array),
                                                         np.asarray(runs[False].masks[c].array))]
    assert changed  # mirroring took effect
    with pytest.raises(ConfigError, match="inference.mirror"):
        Predictor(model, plan=PLAN, inference={**INFERENCE, "mirror": "yes"}, device="cpu")
