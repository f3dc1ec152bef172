"""Class registry as data: names, synonyms, laterality, parent, region, kind."""
from .registry import (
    ClassInfo,
    Taxonomy,
    UNIVERSAL_CLASSES,
    default_taxonomy,
    load_taxonomy,
    normalize,
    read_classes_file,
    resolve,
)

__all__ = [
    "ClassInfo",
    "Taxonomy",
    "UNIVERSAL_CLASSES",
    "default_taxonomy",
    "load_taxonomy",
    "normalize",
    "read_classes_file",
    "resolve",
]
