"""Text encoders behind one interface, and the on-disk cache of class-name embeddings."""
from .cache import DEFAULT_TEMPLATE, cache_root, embed_classes, text_cache_dir
from .encoders import (
    ENCODERS,
    MINILM_DIM,
    MiniLMEncoder,
    OneHotEncoder,
    TextEncoder,
    get_text_encoder,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "ENCODERS",
    "MINILM_DIM",
    "MiniLMEncoder",
    "OneHotEncoder",
    "TextEncoder",
    "cache_root",
    "embed_classes",
    "get_text_encoder",
    "text_cache_dir",
]
