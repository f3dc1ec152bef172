"""Shared test fixtures: where the real scans live (a skip when they are absent), and random
models whose untrained heads still give image-dependent masks."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real scans not found at {SHARED_DATA} (they live in ../shared/data beside the clone)")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Text-embedding and other caches go to a temporary folder, not the user's home."""
    if "PROMPTSEG_CACHE" not in os.environ:
        os.environ["PROMPTSEG_CACHE"] = str(tmp_path_factory.mktemp("promptseg_cache"))
    yield


def _one_line_error(read, path, *needles) -> str:
    """`read(path)` must raise an InputError of one line naming `path` and each needle."""
    from promptseg.errors import InputError

    with pytest.raises(InputError) as err:
        read(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


@pytest.fixture(scope="session")
def one_line_error():
    """The fault tests' check: a reader refuses a bad file in one line naming it and the problem."""
    return _one_line_error


@pytest.fixture(scope="session")
def varied_random_model():
    """`make(backbone, classes, seed)` -> a random Universal Model in eval mode whose per-class
    heads are scaled up: untrained heads give near-constant logits, and prediction tests need
    masks that vary with the image."""
    import torch

    from promptseg.models.build import build_model

    def make(backbone: dict, classes: list[str], seed: int):
        torch.manual_seed(seed)
        emb = torch.nn.functional.normalize(torch.randn(len(classes), 384), dim=1)
        # text_norm none: the x20 below was sized for unit-norm embeddings as given
        m = build_model({"backbone": backbone, "conditioner": {"name": "universal", "text_norm": "none"}}, classes,
                        embeddings=emb)
        with torch.no_grad():
            for mlp in m.conditioner.controllers:
                mlp[-1].weight.mul_(20.0)
        return m.eval()

    return make

