"""promptseg: universal, prompt-driven 3D medical image segmentation."""
from __future__ import annotations

__version__ = "0.1.0"

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
    """The model of a native promptseg checkpoint or an official Universal Model `.pth` file
    (`promptseg.checkpoint.open_checkpoint` gives it with its config, classes, taxonomy and plans)."""
    from .checkpoint import load_checkpoint as _load

    return _load(path, device=device)
