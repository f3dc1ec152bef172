"""Class-name embeddings, computed once and kept on disk.

Why: the embeddings depend only on (encoder, template, class list), and loading a language model
costs seconds; training, inference and the demo all ask for the same few dozen rows. The cache
key hashes the encoder's identity (name + model files), the template and the ordered names, so a
changed model or list can never return stale rows.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch

from ..errors import ConfigError
from ..io.atomic import atomic_path
from .encoders import OneHotEncoder, TextEncoder, canonical_encoder_name, get_text_encoder

#: the Universal Model's prompt (CLIP "A computerized tomography of a [CLS]"); the one place in code
DEFAULT_TEMPLATE = "A computerized tomography of a {}."
_FORMAT = "1"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """promptseg's cache root: `cache_dir`, else $PROMPTSEG_CACHE, else ~/.cache/promptseg."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("PROMPTSEG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "promptseg"


def text_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Where embedding files live: the `text/` folder of the cache root."""
    return cache_root(cache_dir) / "text"


def fill_template(template: str, name: str) -> str:
    if "{}" not in template:
        raise ConfigError(f"text template {template!r} has no '{{}}' for the class name")
    return template.replace("{}", name, 1)


def cache_key(identity: str, template: str, names: list[str]) -> str:
    doc = {"format": _FORMAT, "encoder": identity, "template": template, "names": list(names)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _metadata(identity: str, template: str, names: list[str]) -> dict[str, str]:
    return {"format": _FORMAT, "encoder": identity, "template": template, "names": json.dumps(list(names))}


def _read(path: Path, meta: dict[str, str], n: int) -> torch.Tensor | None:
    """The cached rows, or None when the file is missing, unreadable or for other inputs."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}) != meta:
                return None
            emb = f.get_tensor("embeddings")
    except Exception:  # any corruption (truncated, not safetensors, bad header) means: recompute
        return None
    if emb.ndim != 2 or emb.shape[0] != n or emb.dtype != torch.float32 or not torch.isfinite(emb).all():
        return None
    return emb


def _write(path: Path, emb: torch.Tensor, meta: dict[str, str]) -> None:
    """Atomic (`io.atomic`): readers never see half a file."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({"embeddings": emb.contiguous()}, str(tmp), metadata=meta)


def embed_classes(names: list[str], encoder: str | TextEncoder = "minilm",
                  template: str = DEFAULT_TEMPLATE,
                  cache_dir: str | Path | None = None) -> torch.Tensor:
    """Embeddings `[N, D]` (float32, CPU) of `template` filled with each class name.

    For "onehot" the vocabulary is `names` itself and the template is not used (a one-hot code
    has no language). `encoder` may also be a `TextEncoder` instance.
    """
    if isinstance(names, str):
        raise ConfigError("embed_classes() takes a list of class names, not a single string")
    names = list(names)
    if not names:
        raise ConfigError("embed_classes() needs at least one class name")
    if any(not isinstance(n, str) or not n.strip() for n in names):
        raise ConfigError(f"class names must be non-empty strings; got {names!r}")

    if isinstance(encoder, TextEncoder):
        enc = encoder
    elif canonical_encoder_name(encoder) == "onehot":
        enc = OneHotEncoder(names)
    else:
        enc = get_text_encoder(encoder)
    if isinstance(enc, OneHotEncoder):
        texts, template = names, "{}"
    else:
        texts = [fill_template(template, n) for n in names]

    identity = enc.identity
    meta = _metadata(identity, template, names)
    path = text_cache_dir(cache_dir) / f"{enc.name}-{cache_key(identity, template, names)[:32]}.safetensors"
    cached = _read(path, meta, len(names))
    if cached is not None:
        return cached

    emb = enc.encode(texts).detach().to("cpu", torch.float32).contiguous()
    try:
        _write(path, emb, meta)
    except OSError as exc:  # a read-only cache must not stop inference
        warnings.warn(f"{path}: could not write text-embedding cache ({exc})", stacklevel=2)
    return emb
