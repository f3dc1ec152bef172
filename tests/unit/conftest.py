"""Fixtures shared by the unit tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Two OpenMP threads on a shared, loaded machine are ~50x slower than one for these tiny
    models; the thread count is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# SAT's text tower: a tiny random BERT with its own vocabulary, and the authors' text-encoder file
# layout around it (built here, nothing downloads); used by test_sat_text.py and test_sat_checkpoint.py
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "left", "right", "kidney", "liver", "tumor", "lung", "heart"]


@pytest.fixture
def tiny_tower(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=768, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=32, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(str(folder))
    # the authors' text-encoder file: fine-tuned tower + projection + modality embedding (+ ignored keys)
    tower = BertModel(cfg)
    gen = torch.Generator().manual_seed(5)
    sd = {f"module.text_tower.biolord.{k}": torch.randn(v.shape, generator=gen) * 0.05 if v.is_floating_point() else v
          for k, v in tower.state_dict().items()}
    for k, shape in {"projection_layer.0.weight": (768, 768), "projection_layer.0.bias": (768,),
                     "projection_layer.2.weight": (768, 768), "projection_layer.2.bias": (768,),
                     "modality_embed.weight": (4, 768)}.items():
        sd["module." + k] = torch.randn(shape, generator=gen) * 0.05
    sd["module.atlas_tower.encoder.x"] = torch.zeros(1)
    sd["module.temperature"] = torch.zeros(())
    weights = tmp_path / "text_encoder.pth"
    torch.save({"model_state_dict": sd}, weights)
    return folder, weights, sd
