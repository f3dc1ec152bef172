"""SAT's text tower on a tiny random BERT with its own vocabulary (built here, nothing downloads)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import BertModel, BertTokenizer

from promptseg.errors import CheckpointError, InputError
from promptseg.models.official_sat import OfficialSAT
from promptseg.text import embed_classes
from promptseg.text.sat_text import SATTextEncoder, attach_vocabulary


def _manual(folder, sd, text, code):
    """Reference: the authors' recipe spelled out on a fresh BertModel loaded with the file's weights."""
    tok = BertTokenizer.from_pretrained(str(folder))
    ids = torch.tensor([[2] + tok.convert_tokens_to_ids(tok.tokenize(text)) + [3]])
    bert = BertModel.from_pretrained(str(folder)).eval()
    bert.load_state_dict({k[len("module.text_tower.biolord."):]: v for k, v in sd.items() if ".biolord." in k})
    with torch.no_grad():
        pooled = bert(input_ids=ids, attention_mask=torch.ones_like(ids))[0].mean(1)[0]
    h = F.gelu(F.linear(pooled, sd["module.projection_layer.0.weight"], sd["module.projection_layer.0.bias"]))
    return F.linear(h, sd["module.projection_layer.2.weight"], sd["module.projection_layer.2.bias"]) + \
        sd["module.modality_embed.weight"][code]


def test_encode_matches_recipe_and_padding_is_neutral(tiny_tower):
    folder, weights, sd = tiny_tower
    enc = SATTextEncoder(folder, weights, modality="CT")
    out = enc.encode(["left kidney", "liver tumor", "heart"])
    assert out.shape == (3, 768)
    for i, text in enumerate(["left kidney", "liver tumor", "heart"]):  # "heart" is padded in the batch
        assert torch.allclose(out[i], _manual(folder, sd, text, 0), atol=1e-5)
    mr = SATTextEncoder(folder, weights, modality="MR").encode(["left kidney"])
    assert torch.allclose(mr[0], _manual(folder, sd, "left kidney", 1), atol=1e-5)
    assert not torch.allclose(mr[0], out[0])


def test_cached_embeddings_and_model_without_tower(tiny_tower, tmp_path):
    folder, weights, _ = tiny_tower
    enc = SATTextEncoder(folder, weights)
    names = ["liver", "left kidney"]
    first = embed_classes(names, enc, template="{}", cache_dir=tmp_path / "cache")
    enc._net = None  # a second call must come from the cache, not the tower
    enc.load = lambda: pytest.fail("embeddings were recomputed instead of read from the cache")
    again = embed_classes(names, enc, template="{}", cache_dir=tmp_path / "cache")
    assert torch.equal(first, again)
    model = OfficialSAT("nano", crop=(64, 32, 32), features=(4, 4, 8, 8, 8, 16), hidden=16, mask_mid=8).eval()
    model.set_vocabulary(names, {"ct": first})
    saved = tmp_path / "model.pt"
    torch.save(model.state_dict(), saved)
    fresh = OfficialSAT("nano", crop=(64, 32, 32), features=(4, 4, 8, 8, 8, 16), hidden=16, mask_mid=8).eval()
    fresh.load_state_dict(torch.load(saved, weights_only=False))
    assert fresh.vocabulary == names and fresh.modalities == ["ct"]
    image = torch.randn(1, 1, 64, 32, 32)
    with torch.no_grad():
        by_name = fresh(image, ["left kidney"], modality="CT")
        by_emb = model.forward_embeddings(image, first[[1]])
    assert torch.allclose(by_name, by_emb, atol=1e-6)
    with pytest.raises(Exception, match="no embedding"):
        fresh(image, ["spleen"])


def test_bad_text_files(tiny_tower, tmp_path):
    folder, weights, sd = tiny_tower
    with pytest.raises(InputError, match="no such text-model folder"):
        SATTextEncoder(tmp_path / "missing").encode(["liver"])
    sd = dict(sd)
    sd.pop("module.modality_embed.weight")
    torch.save({"model_state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="missing 1: modality_embed.weight"):
        SATTextEncoder(folder, tmp_path / "bad.pth").encode(["liver"])


def test_attach_vocabulary_resolves_user_spellings(tiny_tower, tmp_path):
    folder, weights, _ = tiny_tower
    model = OfficialSAT("nano", crop=(64, 32, 32), features=(4, 4, 8, 8, 8, 16), hidden=16, mask_mid=8).eval()
    attach_vocabulary(model, folder, weights, names=["left kidney", "liver tumor"], modalities=("CT", "MR"),
                      cache_dir=tmp_path / "cache")
    assert model.modalities == ["ct", "mri"]
    image = torch.randn(1, 1, 64, 32, 32)
    with torch.no_grad():
        a = model(image, ["kidney_left", "liver tumour"], modality="CT")
        b = model(image, ["left kidney", "liver tumor"], modality="ct")
        c = model(image, ["left kidney"], modality="MR")
    assert torch.equal(a, b)
    assert not torch.allclose(c[:, 0], b[:, 0])
