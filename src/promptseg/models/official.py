"""Official CLIP-Driven Universal Model checkpoints -> promptseg models, by key mapping only.

Facts (ljwztc/CLIP-Driven-Universal-Model @ 43c1239; layout data in `official_keys.json`):
- Checkpoints are `torch.save({"net": state_dict, "optimizer": ..., "scheduler": ..., "epoch": ...})`
  of a DistributedDataParallel model, so keys start with "module."; the official loader drops the
  first name component and (re)adds "backbone." to keys containing swinViT/encoder/decoder, i.e. a
  Swin checkpoint may come without the "backbone." infix. We accept all of these spellings.
- Both released models use the ICCV head: one shared `controller` (1x1 conv 512->153), the
  `organ_embedding` buffer [32, 512] (CLIP ViT-B/32 of "A computerized tomography of a {name}"),
  `text_to_vision` Linear(512->256), `GAP` and `precls_conv` -- our
  `UniversalConditioner(head="shared")` with the same shapes.
- U-Net backbone = our `UNet(preset="official_unet")` (module names differ, mapped below); Swin
  UNETR backbone = our `SwinUNETRBackbone(feature_size=48, downsample="official")` (same names;
  "official" patch merging is required for the weights to mean the same thing).
- Class order = taxonomy ids 1..32 (`UNIVERSAL_CLASSES`).
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from ..config import resolve_config
from ..errors import CheckpointError
from ..taxonomy import UNIVERSAL_CLASSES
from .build import build_model
from .state import read_torch_file, state_mismatch

BACKBONES = ("unet", "swinunetr")

OFFICIAL_CONFIG: dict[str, dict[str, Any]] = {
    "unet": {
        "backbone": {"name": "unet", "preset": "official_unet"},
        "conditioner": {"name": "universal", "head": "shared", "text_norm": "none"},
    },
    "swinunetr": {
        "backbone": {"name": "swinunetr", "feature_size": 48, "downsample": "official"},
        "conditioner": {"name": "universal", "head": "shared", "text_norm": "none"},
    },
}

# official U-Net module -> our UNet module (stage index)
_UNET_ENCODER = {"down_tr64": 0, "down_tr128": 1, "down_tr256": 2, "down_tr512": 3}
_UNET_DECODER = {"up_tr256": 0, "up_tr128": 1, "up_tr64": 2}
_HEAD = {  # official head prefix -> ours (inside the segmenter)
    "organ_embedding": "conditioner.embeddings",
    "text_to_vision.": "conditioner.text_proj.",
    "GAP.": "conditioner.gap.",
    "precls_conv.": "conditioner.precls.",
    "controller.": "conditioner.controller.",
}
_BACKBONE_ROOTS = re.compile(r"^(swinViT|encoder\d+|decoder\d+|down_tr\d+|up_tr\d+)\.")


@lru_cache(maxsize=1)
def official_facts() -> dict[str, Any]:
    """The content of official_keys.json (layout, parameter counts, checkpoint conventions)."""
    text = resources.files("promptseg.models").joinpath("official_keys.json").read_text(encoding="utf-8")
    return json.loads(text)


def official_layout(backbone: str) -> dict[str, tuple[int, ...]]:
    """Official state-dict names (canonical spelling, with 'backbone.') -> shapes."""
    _check_backbone(backbone)
    return {k: tuple(s) for k, s in official_facts()["models"][backbone]["keys"]}


def random_official_state_dict(backbone: str, seed: int = 0, prefix: str = "module.") -> dict[str, torch.Tensor]:
    """A state dict with the official names and shapes and seeded random values: what a published
    file looks like to the loader, for testing the import and timing the pipeline without the
    real weights (which are never downloaded here). Batch-norm variances are kept positive."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for k, shape in official_layout(backbone).items():
        if k.endswith("num_batches_tracked"):
            sd[prefix + k] = torch.tensor(1)
        elif "running_var" in k:
            sd[prefix + k] = torch.rand(shape, generator=gen) + 0.5
        else:
            sd[prefix + k] = torch.randn(shape, generator=gen) * 0.02
    return sd


def official_class_names() -> list[str]:
    return list(UNIVERSAL_CLASSES)


def _check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise CheckpointError(f"unknown official backbone {backbone!r}; choose one of {BACKBONES}")


def unwrap(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict inside an official checkpoint file ({'net': ...} or a bare state dict)."""
    for key in ("net", "state_dict", "model"):
        inner = checkpoint.get(key) if isinstance(checkpoint, Mapping) else None
        if isinstance(inner, Mapping):
            return dict(inner)
    return dict(checkpoint)


def canonical_official_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Strip 'module.' and add the 'backbone.' infix where missing: the JSON's spelling."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        name = key[len("module."):] if key.startswith("module.") else key
        if _BACKBONE_ROOTS.match(name):
            name = "backbone." + name
        if name in out:
            raise CheckpointError(f"checkpoint has key {name!r} twice (with and without 'module.'/'backbone.')")
        out[name] = value
    return out


def detect_backbone(state_dict: Mapping[str, Any]) -> str:
    keys = list(canonical_official_keys(unwrap(state_dict)))
    if any(k.startswith("backbone.swinViT.") for k in keys):
        return "swinunetr"
    if any(k.startswith("backbone.down_tr") for k in keys):
        return "unet"
    raise CheckpointError("not an official Universal Model checkpoint: no 'swinViT' or 'down_tr' keys")


def _native_name(name: str, backbone: str) -> str:
    for old, new in _HEAD.items():
        if name.startswith(old):
            return new + name[len(old):]
    if backbone == "swinunetr":
        return name  # same module names under 'backbone.'
    m = re.match(r"^backbone\.(down_tr\d+|up_tr\d+)\.(.*)$", name)
    if m is None:
        raise CheckpointError(f"no promptseg name for official key {name!r}")
    module, rest = m.groups()
    if module in _UNET_ENCODER:
        prefix = f"backbone.encoder.{_UNET_ENCODER[module]}"
    elif module in _UNET_DECODER:
        prefix = f"backbone.decoder.{_UNET_DECODER[module]}"
        if rest.startswith("up_conv."):
            return f"{prefix}.up.{rest[len('up_conv.'):]}"
    else:
        raise CheckpointError(f"no promptseg name for official key {name!r}")
    b = re.match(r"^ops\.(\d+)\.(conv1|bn1)\.(.*)$", rest)
    if b is None:
        raise CheckpointError(f"no promptseg name for official key {name!r}")
    j, part, param = b.groups()
    return f"{prefix}.blocks.{j}.{'conv' if part == 'conv1' else 'norm'}.{param}"


def official_to_native(state_dict: Mapping[str, Any], backbone: str | None = None) -> dict[str, torch.Tensor]:
    """Official state dict (any of its spellings) -> keys of
    `UniversalSegmenter(backbone, UniversalConditioner(head="shared"))` built from OFFICIAL_CONFIG.

    Strict: every missing, unexpected or mis-shaped key is listed in one CheckpointError.
    """
    sd = canonical_official_keys(unwrap(state_dict))
    found = detect_backbone(sd)
    if backbone is None:
        backbone = found
    _check_backbone(backbone)
    if found != backbone:
        raise CheckpointError(f"checkpoint is an official {found} model, not {backbone}")
    layout = official_layout(backbone)
    problem = state_mismatch(layout, sd)
    if problem:
        raise CheckpointError(f"official {backbone} checkpoint does not match the official layout: {problem}")
    return {_native_name(k, backbone): v for k, v in sd.items()}


def build_official_model(backbone: str, state_dict: Mapping[str, Any] | None = None):
    """A promptseg model shaped like the official one; with `state_dict`, its weights loaded strictly."""
    _check_backbone(backbone)
    facts = official_facts()
    model = build_model(
        OFFICIAL_CONFIG[backbone], official_class_names(), embeddings=torch.zeros(facts["num_classes"], facts["text_dim"])
    )
    if state_dict is not None:
        native = official_to_native(state_dict, backbone)
        result = model.load_state_dict(native, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"official {backbone} weights left keys unused/unset: missing {result.missing_keys}, "
                f"unexpected {result.unexpected_keys}"
            )
    return model


def _read_official(path: str | Path, backbone: str | None = None):
    """(model, backbone name) from an official .pth file (weights only; no code is unpickled)."""
    path = Path(path)
    sd = unwrap(read_torch_file(path))
    try:
        backbone = backbone or detect_backbone(sd)
        return build_official_model(backbone, sd), backbone
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_official_checkpoint(path: str | Path, backbone: str | None = None):
    """Read an official .pth file into a promptseg model."""
    return _read_official(path, backbone)[0]


def load_official(path: str | Path, backbone: str | None = None):
    """(model in eval mode, backbone name) of an official .pth file; `official_run_config(backbone)`
    is the run config it predicts with (the checkpoint layer pairs them)."""
    model, found = _read_official(path, backbone)
    return model.eval(), found


@lru_cache(maxsize=1)
def official_settings() -> dict[str, Any]:
    """Plan, inference settings and post-processing facts of the official code (data file)."""
    return yaml.safe_load(resources.files("promptseg.models").joinpath("official_settings.yaml").read_text(encoding="utf-8"))


def official_run_config(backbone: str) -> dict[str, Any]:
    """A complete run config for an imported official model (what a native checkpoint embeds)."""
    _check_backbone(backbone)
    settings = official_settings()
    raw = {
        "name": f"official-{backbone}",
        "modality": settings["modality"],
        "classes": official_class_names(),
        "plan": dict(settings["plan"]),
        **{k: dict(v) for k, v in OFFICIAL_CONFIG[backbone].items()},
        "inference": dict(settings["inference"]),
    }
    cfg = resolve_config(raw)
    cfg["output"] = None
    cfg["official"] = {"backbone": backbone, "source": official_facts().get("source", {})}
    return cfg
