"""Native checkpoints: a folder with `model.safetensors` + `checkpoint.json` (+ training state).

The JSON embeds the resolved run config, the class list, the taxonomy version and the SHA-256 of
the weights file, so a checkpoint loads without the original YAML and a truncated or swapped
weights file is detected. Saving writes a temporary folder and swaps it in, so a kill mid-save
leaves the previous checkpoint intact.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .._version import __version__
from ..errors import CheckpointError
from ..taxonomy import default_taxonomy

FORMAT = "promptseg-checkpoint"
WEIGHTS = "model.safetensors"
META = "checkpoint.json"
STATE = "training_state.pt"


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _embedding_shape(model) -> list[int] | None:
    emb = getattr(model.conditioner, "embeddings", None)
    return list(emb.shape) if isinstance(emb, torch.Tensor) else None


def save_checkpoint(
    model,
    directory: str | Path,
    run_config: dict[str, Any],
    step: int = 0,
    training_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `directory` atomically (temporary sibling folder, then rename over the old one)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        meta = {
            "format": FORMAT,
            "format_version": 1,
            "promptseg_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "step": int(step),
            "class_names": list(model.class_names),
            "embedding_shape": _embedding_shape(model),
            "in_channels": int(getattr(model.backbone, "in_channels", 1)),
            "taxonomy_version": default_taxonomy().version,
            "sha256": sha256(tmp / WEIGHTS),
            "config": run_config,
            **(extra or {}),
        }
        (tmp / META).write_text(json.dumps(meta, indent=1, default=str))
        if training_state is not None:
            torch.save(training_state, tmp / STATE)
        old = directory.with_name(directory.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (prefers model/, then last/)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found")
    if p.is_dir():
        for cand in (p, p / "model", p / "last", p / "last.old"):
            if (cand / META).is_file():
                return cand
        raise CheckpointError(f"{p}: no {META} here (nor in model/ or last/): not a promptseg checkpoint")
    raise CheckpointError(f"{p}: not a checkpoint folder")


def read_meta(ckpt_dir: Path) -> dict[str, Any]:
    try:
        meta = json.loads((ckpt_dir / META).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{ckpt_dir / META}: unreadable ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{ckpt_dir / META}: not a promptseg checkpoint (format {meta.get('format')!r})")
    return meta


def load_state_strict(model, state: dict[str, torch.Tensor], source: str) -> None:
    """Load all keys or none: missing, unexpected and mis-shaped keys are listed in one error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if misshaped:
            parts.append(
                "mis-shaped " + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in misshaped[:8])
            )
        raise CheckpointError(f"{source}: weights do not fit the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", verify: bool = True):
    """Model from a native checkpoint / run folder, or from an official Universal Model `.pth`."""
    p = Path(path)
    if p.is_file():
        from ..models.official import load_official

        return load_official(p, device=device)
    ckpt = find_checkpoint(p)
    meta = read_meta(ckpt)
    weights = ckpt / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights}: weights file missing")
    if verify and meta.get("sha256") and sha256(weights) != meta["sha256"]:
        raise CheckpointError(f"{weights}: content hash differs from {META} (truncated or replaced file)")
    from ..models.build import build_model

    shape = meta.get("embedding_shape")
    embeddings = torch.zeros(*shape) if shape else None
    model = build_model(meta["config"], meta["class_names"], embeddings=embeddings, in_channels=meta.get("in_channels", 1))
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{weights}: unreadable weights ({str(exc).splitlines()[0]})") from None
    load_state_strict(model, state, str(weights))
    model.run_config = meta["config"]
    model.checkpoint_meta = meta
    model.modality = meta["config"].get("modality", "CT")
    model.eval()
    return model.to(device)


def load_training_state(ckpt_dir: Path) -> dict[str, Any] | None:
    f = Path(ckpt_dir) / STATE
    if not f.is_file():
        return None
    return torch.load(f, map_location="cpu", weights_only=False)
