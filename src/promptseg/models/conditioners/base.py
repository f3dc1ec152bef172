"""The one interface that carries the four papers: where a prompt enters the network.

A backbone calls these hooks at fixed places (input, each encoder level, bottleneck, each decoder
level) and the segmenter calls `predict` on the final decoder features. Defaults are identity, so
a method implements only the hooks it needs (Universal Model and SAT: `predict`; Hermes: encoder/
decoder fusion; UniSeg: bottleneck; MedUniSeg: input).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ...errors import PromptsegError
from .queries import training_queries


class PromptError(PromptsegError):
    """A prompt the model cannot segment."""


def unit_rms(x: torch.Tensor) -> torch.Tensor:
    """Each row (last axis) rescaled to unit RMS per entry, i.e. norm sqrt(E): a sentence encoder's
    unit vectors (entries ~1/sqrt(E)) brought to the O(1) scale of the inputs they join
    (the `text_norm` options of the Universal Model and SAT)."""
    return x * (x.shape[-1] ** 0.5 / x.norm(dim=-1, keepdim=True).clamp_min(1e-12))


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

    def repeat(self, n: int) -> "PromptBatch":
        """The same prompts for a batch of `n` samples of the first sample's modality/dataset."""
        mod, ds = self.modality, self.datasets
        return replace(self, modality=None if mod is None else [mod[0]] * n,
                       datasets=None if ds is None else [ds[0]] * n)


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

    def copy(self) -> "Context":
        """A fresh context for one more forward from a prepared one: hooks that fill dicts
        (per-level features) fill their own copies, the prepared tensors are shared."""
        data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.data.items()}
        return Context(prompts=self.prompts, batch_size=self.batch_size, data=data)


@dataclass(frozen=True)
class ClassPart:
    """Where one class's values live in a conditioner: a state-dict key (relative to the
    conditioner) and the rows of that tensor that are the class's (None: the whole tensor)."""

    key: str
    rows: slice | None = None


class Conditioner(nn.Module):
    """Base conditioner: identity hooks; subclasses implement `predict` at least.

    `class_names` is the ordered class list the conditioner has parameters for (may be empty for
    open-vocabulary methods). `bind(backbone)` is called once by the segmenter so the conditioner
    can size its layers from the backbone's channel counts.
    """

    #: True if the conditioner can segment any text prompt; False if only `class_names`.
    open_vocabulary: bool = False
    #: True if classes are encoded from text: `add_classes` then wants the new names' embeddings.
    needs_text: bool = False

    def __init__(self, class_names: Sequence[str] = ()):
        super().__init__()
        self.class_names: list[str] = list(class_names)

    def bind(self, backbone: nn.Module) -> None:  # pragma: no cover - overridden
        pass

    def prepare(self, prompts: PromptBatch, batch_size: int) -> Context:
        return Context(prompts=prompts, batch_size=batch_size)

    def check_known(self, prompts: PromptBatch, who: str) -> None:
        """One-line error for a prompt outside `class_names` (methods with a fixed class list)."""
        n_cls = len(self.class_names)
        bad = [c for c, i in zip(prompts.classes, prompts.indices) if not 0 <= i < n_cls]
        if bad:
            raise PromptError(f"{who}: this model cannot segment {bad[0]!r} (not one of its {n_cls} classes)")

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

    def deep_supervision(self, ctx: Context) -> list[tuple[float, torch.Tensor]]:
        """Coarser outputs of a training forward as (loss weight relative to the main output's 1,
        logits [B, K, *coarser]), supervised with the main loss on resized targets (UniSeg's
        nnU-Net deep supervision); empty if the method has none."""
        return []

    def add_classes(
        self,
        names: Sequence[str],
        embeddings: torch.Tensor | None = None,
        datasets: Sequence[str | None] | None = None,
    ) -> None:
        """Grow the class list (continual learning): new per-class parameters only, appended so
        every existing weight stays as it is. `embeddings` [N, E]: the new names' text embeddings
        (text-driven methods); `datasets`: the dataset annotating each name (methods with
        per-dataset tasks). A method ignores what it does not use."""
        raise NotImplementedError(f"{type(self).__name__} cannot add classes")

    def head_parameters(self) -> list[nn.Parameter]:
        """The plain weights that tell classes apart (a static 1x1x1 read-out head, a projection of
        class-name embeddings into queries), whose learning rate the recipe's `head_lr_scale`
        multiplies: at the backbone's lr they are what a short run learns last. A head whose weights
        are *generated* per class (the Universal Model's controller MLPs) needs none: the generator
        already moves them many times faster than Adam moves a weight. Default: none."""
        return []

    def config_updates(self) -> dict[str, Any]:
        """Conditioner config entries every checkpoint saves (`checkpoint.store.with_conditioner_state`):
        what rebuilds this conditioner as it is, e.g. after `add_classes` (default none)."""
        return {}

    # -- per-class parts (continual learning, fine-tuning) -------------------------------------
    def class_parameters(self) -> dict[str, list[ClassPart]]:
        """Per class name, the tensors (parameters and buffers) that belong to that class alone.
        Everything not listed is shared by all classes. Default: no per-class tensors."""
        return {name: [] for name in self.class_names}

    @torch.no_grad()
    def copy_classes_from(self, other: "Conditioner", names: Sequence[str] | None = None) -> list[str]:
        """Copy the per-class tensors of the classes both conditioners have (matched by name, or
        only `names`) from `other` into this one, part by part in `class_parameters` order (a
        class whose parts differ in number or shape is left as it is); returns the names copied."""
        mine, theirs = self.class_parameters(), other.class_parameters()
        my_state, their_state = self.state_dict(keep_vars=True), other.state_dict(keep_vars=True)
        done = []
        for name in (self.class_names if names is None else names):
            a, b = mine.get(name), theirs.get(name)
            if a is None or b is None or len(a) != len(b):
                continue
            pairs = []
            for pa, pb in zip(a, b):
                if pa.key not in my_state or pb.key not in their_state:
                    break
                dst = my_state[pa.key].data[pa.rows if pa.rows is not None else slice(None)]
                src = their_state[pb.key].data[pb.rows if pb.rows is not None else slice(None)]
                if dst.shape != src.shape:
                    break
                pairs.append((dst, src))
            else:
                for dst, src in pairs:
                    dst.copy_(src)
                done.append(name)
        return done

    # -- training ------------------------------------------------------------------------------
    def training_queries(
        self, classes: Sequence[str], annotated: np.ndarray, present: np.ndarray, max_queries: int,
        rng: np.random.Generator,
    ) -> list[str]:
        """The classes one training step asks for, from the batch's annotated / present [B, K]
        masks over `classes`. Default: every class some sample annotates, capped by
        positive-first sampling (`queries.training_queries`)."""
        return training_queries(classes, annotated, present, max_queries, rng)

    # -- inference: per-volume preparation -----------------------------------------------------
    def prepare_head(self, prompts: PromptBatch, chunk: int = 0, pieces: int = 0) -> Any:
        """Prompt work for `predict_prepared` done once per volume (None: nothing beyond
        `prepare`). `chunk`: a budget of class-voxels per step for a head that can run in chunks;
        `pieces`: instead, that many slabs of the first spatial axis (a split a graph compiler
        can trace at one window size and run at another)."""
        return None

    def predict_prepared(
        self, decoder_out: torch.Tensor, encoder_feats: list[torch.Tensor], ctx: Context, head: Any
    ) -> torch.Tensor:
        """`predict` with the output of `prepare_head`; a method with a faster inference head
        overrides this (same numbers as `predict`)."""
        return self.predict(decoder_out, encoder_feats, ctx)
