"""UniSeg's published network asked by class name, as `promptseg predict` asks every model.

Why a wrapper: the authors' network answers a *task* (one softmax over a task's labels), the
predictor asks for *classes*. The settings' task table maps each class to its task and to the
output channels its voxels carry (liver = channels 1 and 2 of task 0, liver tumour = channel 2).
A class's logit is the log-odds of those channels in the softmax over the task's channels,
log(sum p_covers / sum p_others), so sigmoid(logit) is the class's softmax probability and the
predictor's 0.5 cut is "more likely this class than not" (for two-channel tasks exactly the
authors' argmax). Each asked task runs once per window, whatever the number of its classes.
Axes: promptseg's plan arrays are (x, y, z); the authors' windows are (z, y, x), so windows are
transposed in and out. A window smaller than the patch (a small image) is padded with 0 as
nnU-Net pads, and cut back. Tasks fed by one image only (CT, or MR for the prostate) are offered;
BraTS (4 MR sequences) and AutoPET (CT + PET) need multi-channel input (`OfficialUniSeg` directly).
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import resolve_config
from ..errors import ConfigError
from ..taxonomy import Taxonomy, default_taxonomy, read_classes_file
from .conditioners.base import PromptBatch, PromptError
from .official_uniseg import (
    NUMPY_PICKLE_GLOBALS,
    OfficialUniSeg,
    build_official_uniseg,
    is_uniseg_state,
    uniseg_from_state_dict,
    uniseg_settings,
    unwrap_uniseg,
)

KIND = "uniseg"  # the `official.kind` of an imported UniSeg run config


@lru_cache(maxsize=1)
def uniseg_taxonomy() -> Taxonomy:
    """The packaged registry plus the classes only this model names (taxonomy/uniseg_classes.yaml:
    kidneys as one label, vertebrae, BraTS sub-regions, FDG-avid lesions)."""
    path = Path(str(resources.files("promptseg.taxonomy").joinpath("uniseg_classes.yaml")))
    return default_taxonomy().extended(read_classes_file(path))


def class_table(single_image: bool = True) -> dict[str, dict[str, Any]]:
    """Class name -> {task, covers, channels, modality} from the settings (tasks fed by one image
    when `single_image`)."""
    out: dict[str, dict[str, Any]] = {}
    for task in uniseg_settings()["tasks"]:
        if single_image and len(task["modality"]) != 1:
            continue
        for cls in task["classes"]:
            out[cls["name"]] = {"task": int(task["id"]), "covers": list(cls["covers"]),
                                "channels": int(task["channels"]), "modality": task["modality"][0]}
    return out


class UniSegByClass(nn.Module):
    """`forward(image, prompts)` -> [B, K, *spatial] logits, one per asked class, in the order asked."""

    def __init__(self, net: OfficialUniSeg, taxonomy: Taxonomy | None = None):
        super().__init__()
        self.backbone = net  # the network itself (checkpoint folders read `backbone.in_channels`)
        self.conditioner = None  # the task prompt lives inside the network
        self.taxonomy = taxonomy or uniseg_taxonomy()
        self.table = class_table()

    @property
    def class_names(self) -> list[str]:
        return list(self.table)

    def canonical(self, prompt: str) -> str:
        """The table's name for a prompt (any taxonomy spelling), or a one-line PromptError."""
        info = self.taxonomy.get(prompt)
        name = info.name if info is not None else prompt
        if name in self.table:
            return name
        close = self.taxonomy.closest(prompt, 3, among=self.class_names)
        raise PromptError(f"UniSeg's published model cannot segment {prompt!r}; closest it knows: "
                          f"{', '.join(repr(c) for c in close)}")

    def prompt_batch(self, prompts: Sequence[str] | str | None = None, modality: Sequence[str] | str | None = None,
                     datasets: Sequence[str] | None = None, batch_size: int = 1) -> PromptBatch:
        if isinstance(prompts, str):
            prompts = [prompts]
        names = [self.canonical(p) for p in (prompts if prompts is not None else self.class_names)]
        mods = [modality] * batch_size if isinstance(modality, str) else modality
        return PromptBatch(classes=names, indices=[self.class_names.index(n) for n in names],
                           modality=list(mods) if mods is not None else None, datasets=None)

    def forward(self, image: torch.Tensor, prompts: Sequence[str] | str | PromptBatch | None = None) -> torch.Tensor:
        """image [B, 1, X, Y, Z] in the plan's space (any window up to the patch, transposed)."""
        pb = prompts if isinstance(prompts, PromptBatch) else self.prompt_batch(prompts, batch_size=image.shape[0])
        net: OfficialUniSeg = self.backbone
        x = image.permute(0, 1, 4, 3, 2)  # (x, y, z) -> the authors' (z, y, x)
        shape = tuple(x.shape[2:])
        if any(s > p for s, p in zip(shape, net.patch)):
            raise ConfigError(f"UniSeg runs windows of at most {list(net.patch[::-1])} (x, y, z) voxels, got "
                              f"{list(shape[::-1])}: set inference.window to the patch")
        pad = [v for s, p in zip(reversed(shape), reversed(net.patch)) for v in (0, p - s)]
        x = F.pad(x, pad, value=0.0) if any(pad) else x
        task_logits = {}
        for name in pb.classes:
            task = self.table[name]["task"]
            if task not in task_logits:
                task_logits[task] = net(x, task)[:, : self.table[name]["channels"]]
        maps = []
        for name in pb.classes:
            row = self.table[name]
            logits = task_logits[row["task"]]
            inside = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
            inside[row["covers"]] = True
            maps.append(torch.logsumexp(logits[:, inside], 1) - torch.logsumexp(logits[:, ~inside], 1))
        out = torch.stack(maps, 1)[(slice(None), slice(None)) + tuple(slice(0, s) for s in shape)]
        return out.permute(0, 1, 4, 3, 2)


def uniseg_run_config(source: dict[str, Any] | None = None) -> dict[str, Any]:
    """A complete run config for an imported UniSeg model (what a native checkpoint embeds)."""
    s = uniseg_settings()
    table = class_table()
    window = list(reversed(s["inference"]["window"]))  # (z, y, x) -> the plan's (x, y, z)
    raw = {
        "name": "official-uniseg",
        "modality": "CT",
        "classes": list(table),
        "plan": "uniseg_ct",
        "plans": {"CT": "uniseg_ct", "MR": "uniseg_mr"},
        "inference": {"window": window, "overlap": s["inference"]["overlap"], "mode": s["inference"]["mode"],
                      "sw_batch_size": 1, "runtime": "torch"},
    }
    cfg = resolve_config(raw)
    cfg["output"] = None
    cfg["backbone"] = {"name": "official-uniseg", **{k: v for k, v in s["network"].items() if k != "prompt_divisor"}}
    cfg["conditioner"] = {"name": "official-uniseg", "tasks": len(s["tasks"])}
    cfg["official"] = {"kind": KIND, "backbone": "uniseg", "source": source or s["source"]}
    return cfg


def is_uniseg_config(config: dict[str, Any]) -> bool:
    return (config.get("official") or {}).get("kind") == KIND


def uniseg_model(taxonomy: Taxonomy | None = None) -> UniSegByClass:
    """An untrained by-class model of the published shape (a checkpoint folder loads into it)."""
    return UniSegByClass(build_official_uniseg(), taxonomy)


def read_if_uniseg(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The state dict of `path` when it is a UniSeg checkpoint, else None (any other file, readable
    or not, is left to the other official formats' readers and their errors). Memory-mapped, so
    looking at a large file of another kind reads little of it."""
    try:
        with torch.serialization.safe_globals(NUMPY_PICKLE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not ours to judge; the caller's reader reports the problem
        return None
    inner = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    return unwrap_uniseg(obj) if isinstance(inner, Mapping) and is_uniseg_state(inner) else None


def open_uniseg_file(path: str | Path, taxonomy: Taxonomy | None = None):
    """(by-class model, run config, meta) of the authors' `.model` file, or None if it is not one."""
    sd = read_if_uniseg(path)
    if sd is None:
        return None
    model = UniSegByClass(uniseg_from_state_dict(sd, str(path)), taxonomy).eval()
    meta = {"source": str(path), "official": True, "step": None}
    return model, uniseg_run_config(), meta
