"""Training: masked losses, the trainer, continual learning, distributed helpers.

Checkpoints and the run-config schema live below this stage (`promptseg.checkpoint`,
`promptseg.config`), so inference and models read them without importing train."""
from .losses import masked_bce_dice

__all__ = ["masked_bce_dice"]
