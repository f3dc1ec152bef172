"""`UniversalSegmenter`: backbone + conditioner; `forward(image, prompts)` -> one logit map per prompt.

`prepare(prompts)` + `forward_prepared(window, prepared)` is the inference path: the prompt work
(class lookup, text codes, task ids, priors, a method's fast-head setup) is done once per volume,
then each window batch costs the backbone and the conditioner's head only.
"""
from __future__ import annotations

import inspect

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from ..taxonomy import Taxonomy, default_taxonomy
from .conditioners.base import Conditioner, Context, PromptBatch, PromptError

__all__ = ["Prepared", "PromptError", "UniversalSegmenter"]


@dataclass
class Prepared:
    """Prompts prepared for many forwards: the one-sample prompt batch, the conditioner's
    per-volume head state, and one prepared context per window batch size (made on first use)."""

    prompts: PromptBatch
    head: Any = None
    fused: bool = False  # the head is the conditioner's compiled one
    contexts: dict[int, Context] = field(default_factory=dict)


class UniversalSegmenter(nn.Module):
    def __init__(self, backbone: nn.Module, conditioner: Conditioner, taxonomy: Taxonomy | None = None):
        super().__init__()
        self.backbone = backbone
        self.conditioner = conditioner
        self.taxonomy = taxonomy or default_taxonomy()
        conditioner.bind(backbone)

    @property
    def class_names(self) -> list[str]:
        return list(self.conditioner.class_names)

    def canonical(self, prompt: str) -> str:
        """Canonical class name for a prompt, or a one-line error naming the closest known classes."""
        info = self.taxonomy.get(prompt)
        known = self.class_names
        if info is not None and info.name in known:
            return info.name
        if prompt in known:
            return prompt
        if self.conditioner.open_vocabulary:
            return info.name if info is not None else prompt
        close = self.taxonomy.closest(prompt, 3, among=known) if known else []
        hint = f"; closest known: {', '.join(repr(c) for c in close)}" if close else ""
        raise PromptError(f"this model cannot segment {prompt!r}{hint}")

    def prompt_batch(
        self,
        prompts: Sequence[str] | str | None = None,
        modality: Sequence[str] | str | None = None,
        datasets: Sequence[str] | None = None,
        batch_size: int = 1,
    ) -> PromptBatch:
        """Resolve prompts (one string or a list; None = every class) into a `PromptBatch`."""
        if isinstance(prompts, str):  # model(x, "liver"): one prompt, not five one-letter prompts
            prompts = [prompts]
        names = [self.canonical(p) for p in (prompts if prompts is not None else self.class_names)]
        index = {n: i for i, n in enumerate(self.class_names)}
        if isinstance(modality, str):
            modality = [modality] * batch_size
        return PromptBatch(
            classes=names,
            indices=[index.get(n, -1) for n in names],
            modality=list(modality) if modality is not None else None,
            datasets=list(datasets) if datasets is not None else None,
        )

    def forward(
        self,
        image: torch.Tensor,
        prompts: Sequence[str] | str | PromptBatch | None = None,
        modality: Sequence[str] | str | None = None,
        datasets: Sequence[str] | None = None,
        return_context: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, Context]:
        """Logits [B, K, *spatial], one map per prompt in the order asked. `prompts`: one class
        name ("liver"), a list of names (synonyms resolve through the taxonomy) or None for every
        class the model knows; `image` is [B, C, *spatial] in the plan's space."""
        pb = prompts if isinstance(prompts, PromptBatch) else self.prompt_batch(
            prompts, modality, datasets, batch_size=image.shape[0]
        )
        ctx = self.conditioner.prepare(pb, image.shape[0])
        out = self.backbone(image, self.conditioner, ctx)
        logits = self.conditioner.predict(out.decoder_out, out.encoder_feats, ctx)
        return (logits, ctx) if return_context else logits

    def prepare(
        self,
        prompts: Sequence[str] | str | PromptBatch | None = None,
        modality: str | None = None,
        datasets: Sequence[str] | None = None,
        head_chunk: int = 0,
        head_pieces: int = 0,
        fused_head: bool = False,
    ) -> Prepared:
        """Per-volume prompt work for `forward_prepared`; `head_chunk` (class-voxels per step, 0 =
        one go) or `head_pieces` (slabs of the window) lets a conditioner with a chunked head
        bound its memory; `fused_head` asks for its compiled head where it has one
        (`Prepared.fused` says whether it did)."""
        pb = prompts if isinstance(prompts, PromptBatch) else self.prompt_batch(prompts, modality, datasets)
        takes = inspect.signature(self.conditioner.prepare_head).parameters
        fused = bool(fused_head) and not head_pieces and "fused" in takes
        if head_pieces and "pieces" in takes:
            head = self.conditioner.prepare_head(pb, 0, pieces=int(head_pieces))
        elif fused:
            head = self.conditioner.prepare_head(pb, int(head_chunk or 0), fused=True)
        else:  # pieces asked of a conditioner without them (its own prepare_head): its whole head
            head = self.conditioner.prepare_head(pb, 0 if head_pieces else int(head_chunk or 0))
        return Prepared(prompts=pb, head=head, fused=fused and head is not None)

    def forward_prepared(self, image: torch.Tensor, prepared: Prepared) -> torch.Tensor:
        """Logits [B, K, *spatial] for a batch of windows of one volume (same numbers as `forward`)."""
        return self.head_prepared(self.features_prepared(image, prepared), prepared)

    def features_prepared(self, image: torch.Tensor, prepared: Prepared) -> tuple[Any, Context]:
        """The backbone's part of `forward_prepared`: (its output, the context it filled). Split
        out so two heads can read one backbone pass (inference checks its compiled head so)."""
        n = image.shape[0]
        if n not in prepared.contexts:
            prepared.contexts[n] = self.conditioner.prepare(prepared.prompts.repeat(n), n)
        ctx = prepared.contexts[n].copy()
        return self.backbone(image, self.conditioner, ctx), ctx

    def head_prepared(self, features: tuple[Any, Context], prepared: Prepared) -> torch.Tensor:
        """The conditioner's part of `forward_prepared` on `features_prepared`'s output, with
        `prepared`'s head (heads only read the context the backbone filled, so one `features`
        serves several heads)."""
        out, ctx = features
        return self.conditioner.predict_prepared(out.decoder_out, out.encoder_feats, ctx, prepared.head)
