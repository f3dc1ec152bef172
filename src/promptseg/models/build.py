"""Build a model from its config (the `backbone:` and `conditioner:` sections of a run YAML).

Registries map names to "module:Class" so a new backbone or conditioner is one file plus one line
here; nothing is imported until asked for. An entry may also be the class itself (a conditioner
defined outside the package, e.g. in a test or a user's plug-in).
"""
from __future__ import annotations

import importlib
from typing import Any, Sequence

import torch

from ..errors import ConfigError
from ..text import DEFAULT_TEMPLATE
from ..taxonomy import Taxonomy
from .segmenter import UniversalSegmenter

BACKBONES = {
    "unet": "promptseg.models.backbones.unet:UNet",
    "swinunetr": "promptseg.models.backbones.swinunetr:SwinUNETRBackbone",
    "segresnet": "promptseg.models.backbones.segresnet:SegResNetBackbone",
}
CONDITIONERS = {
    "universal": "promptseg.models.conditioners.universal:UniversalConditioner",
    "onehot": "promptseg.models.conditioners.onehot:OneHotConditioner",
    "hermes": "promptseg.models.conditioners.hermes:HermesConditioner",
    "uniseg": "promptseg.models.conditioners.uniseg:UniSegConditioner",
    "sat": "promptseg.models.conditioners.sat:SATConditioner",
}


def _load(registry: dict[str, str], kind: str, name: str):
    if name not in registry:
        raise ConfigError(f"unknown {kind} {name!r}; choose one of {sorted(registry)}")
    entry = registry[name]
    if not isinstance(entry, str):
        return entry
    module, attr = entry.split(":")
    return getattr(importlib.import_module(module), attr)


def build_backbone(cfg: dict[str, Any], in_channels: int = 1):
    cfg = dict(cfg or {})
    name = cfg.pop("name", "unet")
    cls = _load(BACKBONES, "backbone", name)
    cfg.setdefault("in_channels", in_channels)
    try:
        return cls(**cfg)
    except TypeError as exc:
        raise ConfigError(f"backbone {name!r}: {exc}") from None


def text_settings(cfg: dict[str, Any]) -> tuple[str, str]:
    """(encoder name, prompt template) of a conditioner config."""
    return cfg.get("text_encoder", "minilm"), cfg.get("template", DEFAULT_TEMPLATE)


def class_embeddings(cfg: dict[str, Any], class_names: Sequence[str]) -> torch.Tensor:
    """[K, E] from the one `template`, or [K, M, E] with `templates` (modality -> template)."""
    from ..text import embed_classes

    encoder, template = text_settings(cfg)
    templates = cfg.get("templates")
    if isinstance(templates, dict) and templates:
        rows = [embed_classes(list(class_names), encoder=encoder, template=t) for t in templates.values()]
        return torch.stack(rows, dim=1)
    return embed_classes(list(class_names), encoder=encoder, template=template)


def with_dataset_classes(cfg: dict[str, Any], table: dict[str, Sequence[str]]) -> dict[str, Any]:
    """The `conditioner:` section plus `dataset_classes` (dataset -> classes it annotates) when the
    conditioner's tasks are datasets (`uses_datasets`) and the section does not set it already.
    The trainer calls this before building the model, so the table lands in the checkpoint's config."""
    cfg = dict(cfg or {})
    cls = _load(CONDITIONERS, "conditioner", cfg.get("name", "universal"))
    if getattr(cls, "uses_datasets", False) and not cfg.get("dataset_classes"):
        cfg["dataset_classes"] = {str(d): list(c) for d, c in table.items()}
    return cfg


def build_conditioner(cfg: dict[str, Any], class_names: Sequence[str], embeddings: torch.Tensor | None = None):
    cfg = dict(cfg or {})
    name = cfg.pop("name", "universal")
    cls = _load(CONDITIONERS, "conditioner", name)
    if getattr(cls, "needs_text", False) and embeddings is None:
        embeddings = class_embeddings(cfg, class_names)
    for key in ("text_encoder", "template", "templates"):
        if not getattr(cls, "needs_text", False):
            cfg.pop(key, None)
    try:
        if getattr(cls, "needs_text", False):
            return cls(list(class_names), embeddings=embeddings, **cfg)
        return cls(list(class_names), **cfg)
    except TypeError as exc:
        raise ConfigError(f"conditioner {name!r}: {exc}") from None


def build_model(
    config: dict[str, Any], class_names: Sequence[str], embeddings: torch.Tensor | None = None, in_channels: int = 1,
    taxonomy: Taxonomy | None = None,
) -> UniversalSegmenter:
    """Backbone + conditioner from a run config; `embeddings` skips the text encoder (checkpoints);
    `taxonomy`: the registry the prompts resolve in (default: the packaged one)."""
    backbone = build_backbone(config.get("backbone", {}), in_channels=in_channels)
    conditioner = build_conditioner(config.get("conditioner", {}), class_names, embeddings)
    from .lora import apply_extension

    return apply_extension(UniversalSegmenter(backbone, conditioner, taxonomy), config)
