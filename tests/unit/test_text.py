"""Text encoders (MiniLM offline, one-hot) and the on-disk embedding cache."""
from __future__ import annotations

import os
import socket

import pytest
import torch

from promptseg.errors import ConfigError, TaxonomyError
from promptseg.taxonomy import UNIVERSAL_CLASSES
from promptseg.text import (
    DEFAULT_TEMPLATE,
    MiniLMEncoder,
    OneHotEncoder,
    TextEncoder,
    cache_root,
    embed_classes,
    get_text_encoder,
    text_cache_dir,
)
from promptseg.text import encoders as enc_mod

NAMES = list(UNIVERSAL_CLASSES)


class _NoNetwork(Exception):
    pass


def _refuse(*args, **kwargs):
    raise _NoNetwork("network access attempted")


@pytest.fixture(scope="module")
def minilm():
    """MiniLM loaded from scratch with every socket refused: proves the load is offline."""
    enc_mod.clear_model_cache()
    saved = socket.socket, socket.create_connection, socket.getaddrinfo
    socket.socket = socket.create_connection = socket.getaddrinfo = _refuse
    try:
        with pytest.raises(_NoNetwork):  # the block is effective
            socket.create_connection(("huggingface.co", 443))
        encoder = MiniLMEncoder().load()
        vec = encoder.encode(["liver"])
    finally:
        socket.socket, socket.create_connection, socket.getaddrinfo = saved
    assert vec.shape == (1, 384)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    return encoder


def _cos(e, names, a, b):
    return float(e[names.index(a)] @ e[names.index(b)])


def test_loads_offline_once_per_process(minilm):
    assert len(enc_mod._MODEL_CACHE) == 1
    again = get_text_encoder("minilm")
    again.encode(["spleen"])
    assert len(enc_mod._MODEL_CACHE) == 1  # shared, not reloaded
    assert isinstance(minilm, TextEncoder) and minilm.name == "minilm" and minilm.dim == 384


def test_outputs_are_normalised_float32_cpu(minilm, tmp_path):
    e = embed_classes(NAMES, cache_dir=tmp_path)
    assert e.shape == (32, 384) and e.dtype == torch.float32 and e.device.type == "cpu"
    assert torch.allclose(e.norm(dim=1), torch.ones(32), atol=1e-5)
    fresh = minilm.encode(["liver"])
    assert not fresh.is_inference()  # usable as an input to a trained layer
    assert minilm.encode([]).shape == (0, 384)


def test_mean_pooling_ignores_padding(minilm):
    texts = ["liver", "A computerized tomography of a portal vein and splenic vein."]
    together = minilm.encode(texts)
    alone = torch.cat([minilm.encode([t]) for t in texts])
    assert torch.allclose(together, alone, atol=1e-5)


def test_reference_similarity_of_the_sentence_transformers_recipe(minilm):
    # all-MiniLM-L6-v2 (mean pooling + L2) scores this pair at 0.943 in sentence-transformers.
    e = minilm.encode(["That is a happy person", "That is a very happy person"])
    assert abs(float(e[0] @ e[1]) - 0.943) < 0.01


@pytest.mark.parametrize("template", [DEFAULT_TEMPLATE, "{}"], ids=["templated", "bare"])
def test_semantics_on_the_universal_classes(minilm, tmp_path, template):
    """Holds for the templated prompt and for the bare names alike."""
    e = embed_classes(NAMES, template=template, cache_dir=tmp_path)
    assert _cos(e, NAMES, "liver", "liver tumor") > _cos(e, NAMES, "liver", "spleen")
    query = minilm.encode([template.replace("{}", "inferior vena cava")])[0]
    assert NAMES[int((e @ query).argmax())] == "postcava"


def test_cache_hit_returns_identical_tensor_without_running_the_model(minilm, tmp_path, monkeypatch):
    calls = []
    original = MiniLMEncoder.encode

    def counting(self, texts):
        calls.append(list(texts))
        return original(self, texts)

    monkeypatch.setattr(MiniLMEncoder, "encode", counting)
    names = ["liver", "spleen", "liver tumor"]
    first = embed_classes(names, cache_dir=tmp_path)
    assert len(calls) == 1 and calls[0][0] == "A computerized tomography of a liver."
    files = list((tmp_path / "text").glob("minilm-*.safetensors"))
    assert len(files) == 1
    second = embed_classes(names, cache_dir=tmp_path)
    assert len(calls) == 1
    assert torch.equal(first, second)
    # the key covers order and template: both recompute, into new files
    embed_classes(list(reversed(names)), cache_dir=tmp_path)
    embed_classes(names, template="CT scan of the {}", cache_dir=tmp_path)
    assert len(calls) == 3 and len(list((tmp_path / "text").glob("*.safetensors"))) == 3
    assert not [p for p in (tmp_path / "text").iterdir() if p.suffix == ".tmp"]


def test_corrupt_cache_file_is_ignored_and_rewritten(minilm, tmp_path, monkeypatch):
    names = ["pancreas", "aorta"]
    good = embed_classes(names, cache_dir=tmp_path)
    (path,) = (tmp_path / "text").glob("*.safetensors")
    path.write_bytes(b"\x00garbage, not safetensors")
    calls = []
    original = MiniLMEncoder.encode
    monkeypatch.setattr(MiniLMEncoder, "encode", lambda self, t: calls.append(t) or original(self, t))
    again = embed_classes(names, cache_dir=tmp_path)
    assert len(calls) == 1 and torch.allclose(again, good, atol=1e-6)
    embed_classes(names, cache_dir=tmp_path)  # rewritten file is valid again
    assert len(calls) == 1


def test_identity_needs_no_model_load():
    enc_mod.clear_model_cache()
    try:
        ident = MiniLMEncoder().identity
        assert "all-MiniLM-L6-v2" in ident and "model.safetensors=" in ident
        assert enc_mod._MODEL_CACHE == {}
    finally:
        MiniLMEncoder().load()  # leave it loaded for the other tests


def test_default_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTSEG_CACHE", str(tmp_path / "c"))
    assert text_cache_dir() == tmp_path / "c" / "text"
    embed_classes(["liver", "spleen"], encoder="onehot")
    assert len(list((tmp_path / "c" / "text").glob("onehot-*.safetensors"))) == 1
    monkeypatch.delenv("PROMPTSEG_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "promptseg"
    assert text_cache_dir(tmp_path / "x") == tmp_path / "x" / "text"


def test_onehot_encoder(tmp_path):
    enc = get_text_encoder("onehot", vocabulary=["liver", "spleen", "left kidney"])
    assert isinstance(enc, OneHotEncoder) and enc.dim == 3
    out = enc.encode(["spleen", "Left_Kidney", "liver"])
    assert torch.equal(out, torch.tensor([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]]))
    with pytest.raises(TaxonomyError, match="pancreas"):
        enc.encode(["pancreas"])
    with pytest.raises(ConfigError):
        OneHotEncoder(["liver", "liver"])
    e = embed_classes(NAMES, encoder="onehot", cache_dir=tmp_path)
    assert torch.equal(e, torch.eye(32))


def test_bad_requests_raise_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown text encoder 'clip'"):
        get_text_encoder("clip")
    with pytest.raises(ConfigError):
        get_text_encoder("onehot")  # no vocabulary
    with pytest.raises(ConfigError):
        embed_classes([], encoder="onehot", cache_dir=tmp_path)
    with pytest.raises(ConfigError):
        embed_classes("liver", encoder="onehot", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="template"):
        embed_classes(["liver"], template="no slot", cache_dir=tmp_path)
