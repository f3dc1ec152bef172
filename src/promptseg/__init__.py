"""promptseg: universal, prompt-driven 3D medical image segmentation."""
from __future__ import annotations

from ._version import __version__
from .errors import CheckpointError, ConfigError, InputError, PromptsegError, TaxonomyError

__all__ = [
    "__version__",
    "PromptsegError",
    "InputError",
    "TaxonomyError",
    "ConfigError",
    "CheckpointError",
    "load_checkpoint",
]


def load_checkpoint(path, device="cpu"):
    """Load a native promptseg checkpoint or an official Universal Model `.pth` file."""
    from .train.checkpoint import load_checkpoint as _load

    return _load(path, device=device)
