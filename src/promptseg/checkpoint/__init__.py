"""Checkpoints below train/ and inference/: save (kill-safe), find, verify and open them.

`open_checkpoint(path) -> Checkpoint(model, config, classes, taxonomy, plans, meta)` for native
folders and official `.pth` files; `load_checkpoint(path)` when only the model is wanted.
"""
from .loader import Checkpoint, as_trained, load_checkpoint, open_checkpoint, plans_of
from .store import (
    META,
    STATE,
    WEIGHTS,
    find_checkpoint,
    latest,
    load_state_strict,
    load_training_state,
    read_meta,
    read_training_state,
    read_weights,
    save_checkpoint,
    sha256,
)

__all__ = [
    "Checkpoint", "as_trained", "open_checkpoint", "load_checkpoint", "plans_of", "save_checkpoint", "find_checkpoint", "latest",
    "read_meta", "read_weights", "read_training_state", "load_training_state", "load_state_strict", "sha256",
    "META", "STATE", "WEIGHTS",
]
