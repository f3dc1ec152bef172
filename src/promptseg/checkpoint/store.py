"""Native checkpoint folders: `model.safetensors` + `checkpoint.json` (+ `training_state.pt`).

The JSON embeds the resolved run config, the class list, the taxonomy (with the user's own
classes) and the SHA-256 of every file beside it, and it is written last: a folder with a JSON is
complete, and every load checks the hashes, so a truncated or swapped file is an error, never a
silent resume. Saving fills a hidden temporary sibling, moves the old folder to `NAME.old`, the new
one to `NAME`, then discards the old: a kill at any instant leaves at least one complete folder of
the family (`NAME`, `NAME.old`, `.NAME.tmp-*`), and `latest` finds the newest of them.
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
from ..io.atomic import atomic_write
from ..models.state import state_mismatch
from .classes import taxonomy_record

FORMAT = "promptseg-checkpoint"
WEIGHTS = "model.safetensors"
META = "checkpoint.json"
STATE = "training_state.pt"
TRASH = ".checkpoint-trash-"


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _embedding_shape(model) -> list[int] | None:
    emb = getattr(model.conditioner, "embeddings", None)
    return list(emb.shape) if isinstance(emb, torch.Tensor) else None


def _discard(folder: Path) -> None:
    """Remove a folder by first renaming it out of the family (a kill mid-delete leaves no half
    checkpoint that `latest` could pick)."""
    if not folder.exists():
        return
    trash = Path(tempfile.mkdtemp(prefix=TRASH, dir=folder.parent))
    os.replace(folder, trash / "x")
    shutil.rmtree(trash, ignore_errors=True)


def _family(directory: Path) -> list[Path]:
    """Folders that may hold a checkpoint saved as `directory`: itself, `.old` and temporaries."""
    parent, name = directory.parent, directory.name
    tmps = sorted(parent.glob(f".{name}.tmp-*")) if parent.is_dir() else []
    return [directory, directory.with_name(name + ".old"), *tmps]


def with_conditioner_state(run_config: dict[str, Any], model) -> dict[str, Any]:
    """The run config with what the model's conditioner must record to be rebuilt as it is
    (`config_updates()`: e.g. UniSeg's dataset table and channel layout), so a checkpoint describes
    its own model whatever config the caller passed."""
    cond = run_config.get("conditioner") if isinstance(run_config, dict) else None
    updates = getattr(getattr(model, "conditioner", None), "config_updates", None)
    if not isinstance(cond, dict) or not callable(updates):
        return run_config
    return {**run_config, "conditioner": {**cond, **updates()}}


def save_checkpoint(
    model,
    directory: str | Path,
    run_config: dict[str, Any],
    step: int = 0,
    training_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint folder `directory` so that a kill at any instant loses nothing complete."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        meta = {
            "format": FORMAT,
            "format_version": 2,
            "promptseg_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "step": int(step),
            "class_names": list(model.class_names),
            "embedding_shape": _embedding_shape(model),
            "in_channels": int(getattr(model.backbone, "in_channels", 1)),
            "taxonomy": taxonomy_record(model.taxonomy),
            "sha256": sha256(tmp / WEIGHTS),
            "config": with_conditioner_state(run_config, model),
            **(extra or {}),
        }
        if training_state is not None:
            torch.save(training_state, tmp / STATE)
            meta["state_sha256"] = sha256(tmp / STATE)
        atomic_write(tmp / META, json.dumps(meta, indent=1, default=str))  # last: marks it complete
        old = directory.with_name(directory.name + ".old")
        _discard(old)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        for stale in _family(directory)[1:]:
            _discard(stale)
        for trash in directory.parent.glob(TRASH + "*"):  # left by a kill inside _discard
            shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_meta(ckpt_dir: Path) -> dict[str, Any]:
    try:
        meta = json.loads((Path(ckpt_dir) / META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{Path(ckpt_dir) / META}: unreadable ({str(exc).splitlines()[0]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{Path(ckpt_dir) / META}: not a promptseg checkpoint")
    return meta


def latest(directory: str | Path) -> Path | None:
    """The newest complete checkpoint saved as `directory` (whatever folder of its family holds
    it after a kill), or None when there is none."""
    best: tuple[int, int, Path] | None = None
    for rank, folder in enumerate(_family(Path(directory))):
        if not (folder / META).is_file():
            continue
        step = int(read_meta(folder).get("step", 0))
        key = (step, -rank, folder)
        if best is None or key[:2] > best[:2]:
            best = key
    return None if best is None else best[2]


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (prefers model/, then last/)."""
    p = Path(path)
    if not p.exists() and latest(p) is None:
        raise CheckpointError(f"{p}: checkpoint not found")
    if p.exists() and not p.is_dir():
        raise CheckpointError(f"{p}: not a checkpoint folder")
    for cand in (p, p / "model", p / "last"):
        found = latest(cand)
        if found is not None:
            return found
    raise CheckpointError(f"{p}: no {META} here (nor in model/ or last/): not a promptseg checkpoint")


def _check_hash(path: Path, expected: str | None, what: str) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} missing")
    if expected and sha256(path) != expected:
        raise CheckpointError(f"{path}: content hash differs from {META} (truncated, corrupted or replaced file)")


def read_weights(ckpt_dir: Path, meta: dict[str, Any], verify: bool = True) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint folder, its SHA-256 checked first."""
    weights = Path(ckpt_dir) / WEIGHTS
    _check_hash(weights, meta.get("sha256") if verify else None, "weights file")
    try:
        return load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{weights}: unreadable weights ({str(exc).splitlines()[0]})") from None


def read_training_state(ckpt_dir: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The optimiser/scheduler/random state saved beside the weights (None: a final model), checked."""
    f = Path(ckpt_dir) / STATE
    if not f.is_file() and "state_sha256" not in meta:
        return None
    _check_hash(f, meta.get("state_sha256"), "training state")
    try:
        return torch.load(f, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"{f}: unreadable training state ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def load_training_state(ckpt_dir: str | Path) -> dict[str, Any] | None:
    """`read_training_state` of a folder, reading its JSON."""
    return read_training_state(Path(ckpt_dir), read_meta(Path(ckpt_dir)))


def load_state_strict(model, state: dict[str, torch.Tensor], source: str) -> None:
    """Load all keys or none: missing, unexpected and mis-shaped keys are listed in one error."""
    problem = state_mismatch(model.state_dict(), state, limit=8)
    if problem:
        raise CheckpointError(f"{source}: weights do not fit the model: {problem}")
    model.load_state_dict(state, strict=True)
