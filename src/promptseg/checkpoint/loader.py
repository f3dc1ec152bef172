"""`open_checkpoint(path) -> Checkpoint`: a model with everything it was trained with.

Native checkpoint folders, official Universal Model `.pth` files, SAT-Nano / SAT-Pro `.pth` files (with
their text tower, to embed the vocabulary), imported SAT folders and UniSeg's published `.model` file
(imported UniSeg folders are native ones) load through here; callers read
the run config, classes, taxonomy and plans from the `Checkpoint`, never from model attributes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..models.build import build_model
from ..errors import CheckpointError
from ..models.official import load_official, official_run_config
from ..models.official_sat import (OfficialSAT, is_sat_file, is_sat_folder, load_official_sat, load_sat_model,
                                   sat_run_config)
from ..models.official_uniseg_model import is_uniseg_config, open_uniseg_file, uniseg_model
from ..text.sat_text import attach_vocabulary
from ..taxonomy import Taxonomy
from .classes import taxonomy_from_record
from .store import find_checkpoint, load_state_strict, read_meta, read_weights


@dataclass
class Checkpoint:
    """A loaded model and what it was trained with.

    `plans` maps each modality to its preprocessing plan spec (one per modality the model knows);
    `meta` is the checkpoint's JSON (step, hashes, datasets, ...) and `path` where it was read.
    """

    model: torch.nn.Module
    config: dict[str, Any]
    classes: list[str]
    taxonomy: Taxonomy
    plans: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def modality(self) -> str | None:
        """The modality to assume when none is given: the only one, else the config's."""
        if len(self.plans) == 1:
            return next(iter(self.plans))
        return self.config.get("modality")

    @property
    def modalities(self) -> list[str]:
        """Modalities the model was trained on (recorded by the trainer; older checkpoints: the
        run's `modality`, or the only plan's)."""
        recorded = self.meta.get("modalities")
        if recorded:
            return [str(m).upper() for m in recorded]
        return [str(self.modality or "CT").upper()]

    @property
    def step(self) -> int | None:
        return self.meta.get("step")


def plans_of(config: dict[str, Any]) -> dict[str, Any]:
    """Modality -> plan spec of a run config (`plans:` when per-modality, else the one `plan:`)."""
    plans = config.get("plans")
    if isinstance(plans, dict) and plans:
        return {str(k).upper(): v for k, v in plans.items()}
    return {str(config.get("modality") or "CT").upper(): config.get("plan")}


def sat_checkpoint(model: OfficialSAT, path: Path, device: str | torch.device = "cpu") -> Checkpoint:
    """A SAT model carrying its vocabulary's embeddings as a Checkpoint (classes = its vocabulary)."""
    config = sat_run_config(model)
    plans = plans_of(config)
    meta = {"source": str(path), "official": True, "sat": model.variant, "step": None, "modalities": list(plans)}
    return Checkpoint(model.eval().to(device), config, model.class_names, model.taxonomy, plans, meta, path)


def as_trained(config: dict, state: dict) -> dict:
    """Rebuild old checkpoints as they were trained. Universal Model and SAT checkpoints saved
    before `text_norm` existed used their embeddings as given ("none"; SAT's default is now
    "centred", whose `text_centre` buffer they lack). UniSeg checkpoints saved before `head_width`
    existed (or on a backbone already that wide) have no `pre_head` weights: `head_width: 0`;
    those saved before `channel_layout` existed were "position" models (the default is now
    "class"). Every newer checkpoint records these (`store.with_conditioner_state`)."""
    cond = config.get("conditioner")
    if not isinstance(cond, dict):
        return config
    cond = dict(cond)
    name = cond.get("name", "universal")
    if name in ("universal", "sat") and "text_norm" not in cond:
        cond["text_norm"] = "centred" if any(k.endswith("text_centre") for k in state) else "none"
    elif name == "uniseg":
        if "head_width" not in cond and not any(".pre_head." in k for k in state):
            cond["head_width"] = 0
        cond.setdefault("channel_layout", "position")  # the only layout before the option existed
    return {**config, "conditioner": cond}


def open_checkpoint(path: str | Path, device: str | torch.device = "cpu", verify: bool = True,
                    backbone: str | None = None, text_model: str | Path | None = None,
                    text_weights: str | Path | None = None,
                    modalities: tuple[str, ...] = ("ct", "mri", "pet")) -> Checkpoint:
    """A native checkpoint / run folder, an imported SAT folder or an official `.pth` file
    (`backbone`: its backbone when not detected from the keys), hash-checked, in eval mode.
    A SAT `.pth` needs its text tower (`text_model` folder, `text_weights` file) to embed SAT's
    vocabulary for `modalities` (cached on disk, so only the first opening pays)."""
    p = Path(path)
    if p.is_file() and is_sat_file(p):
        if text_model is None:
            raise CheckpointError(f"{p}: a SAT .pth needs its text tower to embed the vocabulary: give --text-model "
                                  "(and --text-weights), or import it once with `promptseg import-checkpoint`")
        model = attach_vocabulary(load_official_sat(p), text_model, text_weights, modalities=tuple(modalities))
        return sat_checkpoint(model, p, device)
    if p.is_dir() and is_sat_folder(p):
        return sat_checkpoint(load_sat_model(p), p, device)
    uniseg = open_uniseg_file(p) if p.is_file() else None  # UniSeg's published .model file
    if uniseg is not None:
        return Checkpoint(uniseg[0].to(device), uniseg[1], uniseg[0].class_names, uniseg[0].taxonomy,
                          plans_of(uniseg[1]), uniseg[2], p)
    if p.is_file():
        model, backbone = load_official(p, backbone)
        config = official_run_config(backbone)
        meta = {"source": str(p), "official": True, "step": None}
        return Checkpoint(model.eval().to(device), config, list(model.class_names), model.taxonomy,
                          plans_of(config), meta, p)
    ckpt = find_checkpoint(p)
    meta = read_meta(ckpt)
    state = read_weights(ckpt, meta, verify=verify)
    taxonomy = taxonomy_from_record(meta.get("taxonomy"), str(ckpt))
    shape = meta.get("embedding_shape")
    embeddings = torch.zeros(*shape) if shape else None
    config = as_trained(meta["config"], state)
    model = uniseg_model(taxonomy) if is_uniseg_config(config) else build_model(
        config, meta["class_names"], embeddings=embeddings, in_channels=meta.get("in_channels", 1), taxonomy=taxonomy)
    load_state_strict(model, state, str(ckpt))
    return Checkpoint(model.eval().to(device), config, list(meta["class_names"]), taxonomy, plans_of(config), meta, ckpt)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", verify: bool = True, **options):
    """The model alone of `open_checkpoint` (for callers that need nothing else; `options`: its
    text_model / text_weights / modalities for a SAT .pth)."""
    return open_checkpoint(path, device=device, verify=verify, **options).model



