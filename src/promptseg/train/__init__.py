"""Training: masked losses, the trainer, checkpoints, distributed helpers."""
from ..checkpoint import load_checkpoint, save_checkpoint
from .losses import masked_bce_dice

__all__ = ["load_checkpoint", "save_checkpoint", "masked_bce_dice"]
