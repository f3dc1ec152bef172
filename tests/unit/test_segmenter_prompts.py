"""`model(x, "liver")`: a single prompt string is one prompt (not one prompt per letter), in
forward, prepare/forward_prepared and the sliding window; same logits as the one-item list."""
from __future__ import annotations

import torch

from promptseg.inference.sliding import sliding_window_logits
from promptseg.models.backbones.unet import UNet
from promptseg.models.conditioners.onehot import OneHotConditioner
from promptseg.models.segmenter import UniversalSegmenter

NAMES = ["spleen", "liver", "pancreas"]


def _model():
    torch.manual_seed(0)
    return UniversalSegmenter(UNet(preset="small"), OneHotConditioner(NAMES)).eval()


def test_one_string_is_one_prompt():
    model = _model()
    x = torch.randn(2, 1, 32, 32, 16)
    with torch.no_grad():
        one = model(x, "liver")
        listed = model(x, ["liver"])
        prepared = model.forward_prepared(x, model.prepare("liver"))
        every = model(x)
    assert one.shape == (2, 1, 32, 32, 16)
    assert torch.equal(one, listed)
    assert torch.allclose(prepared, one, atol=1e-5)
    assert torch.allclose(every[:, 1:2], one, atol=1e-5)  # 'liver' is class 1, not 'l', 'i', ...
    assert model.prompt_batch("liver").classes == ["liver"]


def test_sliding_window_takes_one_string():
    model = _model()
    x = torch.randn(1, 1, 32, 32, 16)
    out = sliding_window_logits(model, x, "liver", window=(32, 32, 16))
    ref = sliding_window_logits(model, x, ["liver"], window=(32, 32, 16))
    assert out.shape == (1, 1, 32, 32, 16) and torch.equal(out, ref)
