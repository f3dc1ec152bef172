"""The one interface that carries the four papers: where a prompt enters the network.

A backbone calls these hooks at fixed places (input, each encoder level, bottleneck, each decoder
level) and the segmenter calls `predict` on the final decoder features. Defaults are identity, so
a method implements only the hooks it needs (Universal Model and SAT: `predict`; Hermes: encoder/
decoder fusion; UniSeg: bottleneck; MedUniSeg: input).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn


@dataclass
class PromptBatch:
    """What is asked of one forward pass.

    classes:  canonical class names, K of them, the same for every sample of the batch; the
              output has one logit map per entry, in this order.
    indices:  position of each class in the conditioner's `class_names` (-1 if the conditioner
              has no fixed class list, e.g. SAT with free text).
    modality: per sample ("CT", "MR", ...), for methods with modality priors.
    datasets: per sample dataset name (Hermes' per-dataset tasks), or None.
    """

    classes: list[str]
    indices: list[int]
    modality: list[str] | None = None
    datasets: list[str] | None = None

    def __len__(self) -> int:
        return len(self.classes)


@dataclass
class Context:
    """Per-forward state a conditioner builds in `prepare` and reads in its hooks."""

    prompts: PromptBatch
    batch_size: int
    data: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value


class Conditioner(nn.Module):
    """Base conditioner: identity hooks; subclasses implement `predict` at least.

    `class_names` is the ordered class list the conditioner has parameters for (may be empty for
    open-vocabulary methods). `bind(backbone)` is called once by the segmenter so the conditioner
    can size its layers from the backbone's channel counts.
    """

    #: True if the conditioner can segment any text prompt (SAT); False if only `class_names`.
    open_vocabulary: bool = False

    def __init__(self, class_names: Sequence[str] = ()):
        super().__init__()
        self.class_names: list[str] = list(class_names)

    def bind(self, backbone: nn.Module) -> None:  # pragma: no cover - overridden
        pass

    def prepare(self, prompts: PromptBatch, batch_size: int) -> Context:
        return Context(prompts=prompts, batch_size=batch_size)

    def on_input(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        return x

    def on_encoder(self, level: int, feat: torch.Tensor, ctx: Context) -> torch.Tensor:
        return feat

    def on_bottleneck(self, feat: torch.Tensor, ctx: Context) -> torch.Tensor:
        """May return a batch of B*K (one copy per requested task, sample-major); the backbone
        then repeats its skip connections to match. Channel count must stay the same."""
        return feat

    def on_decoder(self, level: int, feat: torch.Tensor, ctx: Context) -> torch.Tensor:
        return feat

    def predict(
        self, decoder_out: torch.Tensor, encoder_feats: list[torch.Tensor], ctx: Context
    ) -> torch.Tensor:
        """Return logits [B, K, *spatial], one map per entry of `ctx.prompts.classes`."""
        raise NotImplementedError

    def auxiliary_loss(self, ctx: Context) -> torch.Tensor | None:
        """Extra training loss (e.g. Hermes' modality classifier); None if the method has none."""
        return None

    def add_classes(self, names: Sequence[str], embeddings: torch.Tensor | None = None) -> None:
        """Grow the class list (continual learning): new per-class parameters only, appended so
        every existing weight stays as it is. Text-driven methods take the new names' embeddings."""
        raise NotImplementedError(f"{type(self).__name__} cannot add classes")
