"""DoDNet-style conditioner: the Universal Model's head with one-hot class codes instead of text.

The ablation baseline of the Universal Model papers: same image branch, controller and dynamic
head, but class k is encoded as the k-th unit vector. The code length equals the controller's
text half (`hidden`, 256), so the parameter count is exactly the Universal Model's minus its text
projection, and up to `hidden` classes can be added later without touching existing weights.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from .universal import DynamicHeadConditioner


class OneHotConditioner(DynamicHeadConditioner):
    needs_text = False

    def __init__(self, class_names: Sequence[str], head: str = "mlp", hidden: int = 256, **kwargs):
        super().__init__(class_names, head=head, hidden=hidden, **kwargs)
        if len(self.class_names) > hidden:
            raise ConfigError(f"one-hot codes of length {hidden} hold at most {hidden} classes, got {len(self.class_names)}")

    def task_codes(self, indices: torch.Tensor) -> torch.Tensor:
        return F.one_hot(indices, self.hidden).float()

    def add_classes(self, names: Sequence[str], embeddings: torch.Tensor | None = None,
                    datasets: Sequence[str | None] | None = None) -> None:
        """New classes take the next unused one-hot slots (and one MLP each for head='mlp')."""
        names = self._check_new(names)
        if len(self.class_names) + len(names) > self.hidden:
            raise ConfigError(f"one-hot codes of length {self.hidden} hold at most {self.hidden} classes")
        self._grow_heads(names)
