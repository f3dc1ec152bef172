"""SAT's knowledge-enhanced text tower: anatomical term + modality -> the 768-d query SAT-Nano/Pro take.

Facts (zhaoziheng/SAT @ 5676be5: model/knowledge_encoder.py, text_tower.py, tokenizer.py), written
anew: a BERT-family model (BioLORD-2023-C) reads "[CLS] tokens [SEP]" (zero padded, at most 256
tokens, mask = id > 0), its last hidden state is mean-pooled over the mask, projected
Linear(768,768) GELU Linear(768,768), and the modality's row of a 4x768 embedding is added.
The user downloads the base model folder (tokenizer + config) and the authors' text-encoder file
(fine-tuned tower weights under `text_tower.biolord.*`, `projection_layer.*`, `modality_embed.weight`);
everything loads from local paths (`local_files_only`), nothing downloads.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ..models.official_sat import OfficialSAT, sat_modality, sat_settings, unwrap_sat
from ..models.state import read_torch_file, state_mismatch
from ..taxonomy.sat_vocabulary import sat_vocabulary
from .cache import embed_classes
from .encoders import TextEncoder, _check_texts, _file_fingerprint

_TOWER = "text_tower.biolord."


class SATKnowledgeEncoder(nn.Module):
    """The text tower with SAT's projection and modality embedding (module names as the checkpoint's)."""

    def __init__(self, tower: nn.Module, dim: int = 768):
        super().__init__()
        self.tower = tower
        self.projection_layer = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.modality_embed = nn.Embedding(4, dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        hidden = self.tower(input_ids=ids, attention_mask=mask)[0]
        m = mask[..., None].to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return self.projection_layer(pooled) + self.modality_embed(modality)


def _load_tower(folder: Path):
    from transformers import AutoModel, AutoTokenizer  # heavy import, only when a tower is used

    if not folder.is_dir():
        raise InputError(folder, "no such text-model folder (download the BioLORD-2023-C folder first)")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError(folder, f"cannot load a transformers model from it ({str(exc).splitlines()[0]})") from None
    return tok, model


def _tower_state(path: Path) -> dict[str, torch.Tensor]:
    ckpt = read_torch_file(path, "text-encoder checkpoint")
    ignored = sat_settings()["text"]["ignored_keys"]
    return {k: v for k, v in unwrap_sat(ckpt).items() if not any(i in k for i in ignored)}


class SATTextEncoder(TextEncoder):
    """`encode(terms)` -> [N, 768] queries for one modality (a TextEncoder, so embeddings are cached)."""

    name = "sat"
    dim = 768

    def __init__(self, model_dir: str | Path, weights: str | Path | None = None, modality: str = "ct"):
        self.model_dir = Path(model_dir)
        self.weights = Path(weights) if weights is not None else None
        self.modality = sat_modality(modality)
        self._net: SATKnowledgeEncoder | None = None
        self._tok = None

    @property
    def identity(self) -> str:
        parts = [self.name, f"modality={self.modality}"]
        for f in [self.model_dir / "config.json", self.model_dir / "vocab.txt", self.model_dir / "tokenizer.json",
                  self.weights]:
            if f is not None and f.is_file():
                parts.append(f"{f.name}={_file_fingerprint(f)}")
        return "|".join(parts)

    def load(self) -> "SATTextEncoder":
        if self._net is not None:
            return self
        self._tok, tower = _load_tower(self.model_dir)
        net = SATKnowledgeEncoder(tower, self.dim)
        if self.weights is not None:
            sd = _tower_state(self.weights)
            mapped = {("tower." + k[len(_TOWER):]) if k.startswith(_TOWER) else k: v for k, v in sd.items()}
            expected = {k: v for k, v in net.state_dict().items()}
            # transformers may keep a non-persistent position_ids; accept checkpoints with or without it
            for k in [k for k in mapped if k.endswith("position_ids") and k not in expected]:
                mapped.pop(k)
            problem = state_mismatch(expected, mapped, limit=20)
            if problem:
                raise CheckpointError(f"{self.weights}: SAT text encoder does not fit {self.model_dir}: {problem}")
            net.load_state_dict(mapped)
        self._net = net.float().eval().requires_grad_(False)
        return self

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The authors' token layout: [CLS] + tokens + [SEP], truncated to max_length, zero padded."""
        limit = int(sat_settings()["text"]["max_length"])
        cls, sep = self._tok.convert_tokens_to_ids(["[CLS]", "[SEP]"])
        rows = []
        for text in texts:
            ids = [cls] + self._tok.convert_tokens_to_ids(self._tok.tokenize(text)) + [sep]
            if len(ids) > limit:
                ids = ids[:limit - 1] + [sep]
            rows.append(ids)
        out = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r)
        return out, (out > 0).long()

    def encode(self, texts: list[str]) -> torch.Tensor:
        texts = _check_texts(texts)
        if not texts:
            return torch.zeros(0, self.dim)
        self.load()
        ids, mask = self.tokenize(texts)
        code = int(sat_settings()["text"]["modality_codes"][self.modality])
        with torch.inference_mode():
            out = self._net(ids, mask, torch.full((len(texts),), code, dtype=torch.long))
        return out.float().cpu().clone()


def attach_vocabulary(model: OfficialSAT, model_dir: str | Path, weights: str | Path | None,
                      names: list[str] | None = None, modalities: tuple[str, ...] = ("ct", "mri", "pet"),
                      cache_dir: str | Path | None = None) -> OfficialSAT:
    """Embed `names` (default: SAT's whole vocabulary) once per modality (cached on disk) and store
    them in `model`, which then answers `model(image, names, modality)` with no text tower."""
    names = list(names or sat_vocabulary())
    rows = {sat_modality(m): embed_classes(names, SATTextEncoder(model_dir, weights, m), template="{}",
                                           cache_dir=cache_dir) for m in modalities}
    model.set_vocabulary(names, rows)
    return model
