"""Universal Model (CLIP-driven): text embedding + pooled image feature -> dynamic per-class head.

Wiring (universal-model papers and the official `Universal_model`):
  text embedding w_k -> Linear(E->256) -> ReLU                                   (text branch)
  bottleneck -> GroupNorm(16) -> ReLU -> global average pool -> 1x1 conv to 256  (image branch)
  [image, text] (512) -> controller -> theta_k (153 numbers per class)
     head="shared": one 1x1 conv 512->153 for all classes (ICCV; the official `controller`)
     head="mlp":    an independent MLP per class (journal LPG); adding a class appends one MLP
  decoder output -> GroupNorm -> ReLU -> 1x1x1 conv to 8 (`precls`), then per class three
  dynamic 1x1x1 convs 8->8->1 (ReLU between) whose weights/biases are split from theta_k in the
  official order (w1, w2, w3, b1, b2, b3); all requested classes run at once as one grouped
  1x1x1 conv (written as a batched matmul).
The parts shared with the DoDNet-style one-hot variant live in `DynamicHeadConditioner`; a
subclass only says how a class is encoded (`task_codes`).

`text_norm="rms"` (not the official code's; opt-in, the bench's Universal Model uses it): each
text embedding is rescaled to unit RMS per dimension before the Linear. Sentence encoders
(MiniLM) return unit-norm vectors, so each entry is ~1/sqrt(E) (0.05) against the image half's
O(1) and the one-hot code's 1; the class codes then hardly move the controller. Phantom bench,
validation phantoms, 600 steps, the universal recipe (AdamW 4e-4), mean Dice: as given 0.71
(one seed), rms 0.77 / 0.84, rms with the text projection at lr x30 (`head_parameters`, recipe
`head_lr_scale`) 0.87 / 0.86 -- the one-hot baseline's 0.86. But at lr 2e-3 (`cpu-short`, 300
steps, one seed) rms gave 0.60 against 0.76 as given (the spleen died): a faster text path
needs a slower lr, so it is not the default. Official weights: "none" (their CLIP features).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ..backbones.blocks import group_count
from .base import ClassPart, Conditioner, Context, PromptBatch, PromptError, unit_rms
from .dynamic_head import batched_head, chunk_voxels, chunked_head, compiled_head, per_sample

BOTTLENECK_KEY = "universal.bottleneck"
# "none" (default): as the encoder gave it (the official code); "rms": each text embedding
# rescaled to unit RMS per dimension (module docstring: when it helps and when it does not)
TEXT_NORMS = ("rms", "none")


def dynamic_param_sizes(channels: int = 8, layers: int = 3) -> tuple[list[int], list[int]]:
    """Weight and bias counts of the dynamic head: 8->8 (x layers-1), then 8->1."""
    weights = [channels * channels] * (layers - 1) + [channels]
    biases = [channels] * (layers - 1) + [1]
    return weights, biases


class DynamicHeadConditioner(Conditioner):
    """Controller + class-specific dynamic head; subclasses provide `task_codes(indices)`."""

    needs_text = False

    def __init__(
        self,
        class_names: Sequence[str],
        head: str = "mlp",
        hidden: int = 256,
        mlp_hidden: int = 256,
        head_channels: int = 8,
        head_layers: int = 3,
        norm_groups: int = 16,
    ):
        super().__init__(class_names)
        if head not in ("mlp", "shared"):
            raise ConfigError(f"unknown Universal Model head {head!r}; choose 'mlp' (journal) or 'shared' (ICCV)")
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError("class_names contains duplicates")
        if head_layers < 2:
            raise ConfigError("head_layers must be at least 2")
        self.head = head
        self.hidden = hidden
        self.mlp_hidden = mlp_hidden
        self.head_channels = head_channels
        self.head_layers = head_layers
        self.norm_groups = norm_groups
        self.weight_nums, self.bias_nums = dynamic_param_sizes(head_channels, head_layers)
        self.num_params = sum(self.weight_nums) + sum(self.bias_nums)
        if head == "shared":
            # A 1x1 conv as in the official code, so official weights load without reshaping.
            self.controller = nn.Conv3d(2 * hidden, self.num_params, kernel_size=1)
        else:
            self.controllers = nn.ModuleList(self._new_mlp() for _ in self.class_names)
        self.gap: nn.Module | None = None
        self.precls: nn.Module | None = None

    # -- construction -------------------------------------------------------------------------
    def _new_mlp(self) -> nn.Module:
        return nn.Sequential(
            nn.Linear(2 * self.hidden, self.mlp_hidden), nn.ReLU(inplace=True), nn.Linear(self.mlp_hidden, self.num_params)
        )

    def bind(self, backbone: nn.Module) -> None:
        """Size the image branch and the pre-classifier from the backbone's channel counts."""
        cb, co = int(backbone.bottleneck_channels), int(backbone.out_channels)
        if self.gap is not None and self.gap[0].num_channels == cb and self.precls[0].num_channels == co:
            return
        self.gap = nn.Sequential(
            nn.GroupNorm(group_count(cb, self.norm_groups), cb),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool3d(1),
            nn.Conv3d(cb, self.hidden, kernel_size=1),
        )
        self.precls = nn.Sequential(
            nn.GroupNorm(group_count(co, self.norm_groups), co),
            nn.ReLU(inplace=True),
            nn.Conv3d(co, self.head_channels, kernel_size=1),
        )

    # -- per-class codes ------------------------------------------------------------------------
    def task_codes(self, indices: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """[K, hidden] code per requested class."""
        raise NotImplementedError

    def resolve_indices(self, prompts: PromptBatch) -> list[int]:
        """Positions in `class_names` of the requested classes; unknown ones raise one line."""
        lookup = {n: i for i, n in enumerate(self.class_names)}
        out = []
        for name, idx in zip(prompts.classes, prompts.indices):
            if not (0 <= idx < len(self.class_names)) or self.class_names[idx] != name:
                idx = lookup.get(name, -1)
            if idx < 0:
                raise PromptError(f"{type(self).__name__} has no class {name!r}")
            out.append(idx)
        return out

    # -- hooks --------------------------------------------------------------------------------
    def on_bottleneck(self, feat: torch.Tensor, ctx: Context) -> torch.Tensor:
        ctx[BOTTLENECK_KEY] = feat
        return feat

    def sample_codes(self, indices: torch.Tensor, prompts: PromptBatch | None, batch_size: int) -> torch.Tensor:
        """[K, hidden] codes shared by the batch, or [B, K, hidden] when they depend on the sample
        (the Universal Model's per-modality text template)."""
        return self.task_codes(indices)

    def controller_params(self, image: torch.Tensor, indices: list[int], prompts: PromptBatch | None = None) -> torch.Tensor:
        """theta [B, K, 153] from the pooled image feature [B, hidden] and the class codes."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=image.device)
        b, k = image.shape[0], len(indices)
        codes = self.sample_codes(idx, prompts, b).to(image.dtype)            # [K or B, K, hidden]
        codes = codes.expand(b, k, -1) if codes.dim() == 3 else codes[None].expand(b, k, -1)
        cond = torch.cat([image[:, None, :].expand(b, k, -1), codes], dim=-1)
        if self.head == "shared":
            w = self.controller.weight.flatten(1)
            return F.linear(cond, w, self.controller.bias)
        return torch.stack([self.controllers[c](cond[:, j]) for j, c in enumerate(indices)], dim=1)

    def dynamic_head(self, feats: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Every (sample, class) head at once: feats [B, C, *S], params [B, K, P] -> [B, K, *S]
        (`dynamic_head.batched_head`)."""
        return batched_head(feats, params, self.weight_nums, self.bias_nums, self.head_channels)

    def predict(self, decoder_out: torch.Tensor, encoder_feats: list[torch.Tensor], ctx: Context) -> torch.Tensor:
        if self.gap is None or self.precls is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to a backbone (use UniversalSegmenter)")
        indices = self.resolve_indices(ctx.prompts)
        bottleneck = ctx.data.get(BOTTLENECK_KEY, encoder_feats[-1])
        image = self.gap(bottleneck).flatten(1)                               # [B, hidden]
        params = self.controller_params(image, indices, ctx.prompts)          # [B, K, P]
        return self.dynamic_head(self.precls(decoder_out), params)

    # -- inference fast path ----------------------------------------------------------------------
    def prepare_head(self, prompts: PromptBatch, chunk: int = 0, pieces: int = 0, fused: bool = False) -> Any:
        """Once per volume: the requested classes' indices, the voxels per head chunk (`chunk`
        class-voxels / K classes), the slabs (`pieces`, used instead of chunks when given) and,
        with `fused`, the compiled one-sample head (`dynamic_head.compiled_head`, used instead of
        both). None (plain `predict`) for none of them or a subclass that changes `predict`."""
        if (chunk <= 0 and pieces <= 0 and not fused) or type(self).predict is not DynamicHeadConditioner.predict:
            return None
        indices = self.resolve_indices(prompts)
        kernel = compiled_head(self.weight_nums, self.bias_nums, self.head_channels) if fused else None
        return indices, chunk_voxels(chunk, len(indices)), int(pieces), kernel

    def predict_prepared(self, decoder_out: torch.Tensor, encoder_feats: list[torch.Tensor], ctx: Context,
                         head: Any) -> torch.Tensor:
        """`predict` with the per-class 1x1x1 convolutions run in spatial chunks, so the K x 8-channel
        intermediate (0.9 GB per 96^3 window for 32 classes) never exists and each chunk's (~4 MB)
        stays in cache: the same numbers, ~5x faster head on a CPU (96^3 window, 32 classes, 1
        thread: 2.5 s instead of 7.5 s; the backbone alone is 1.3 s). Or, prepared `fused`, one
        compiled loop per sample (~2.5x faster again on a CPU). Float32 logits."""
        if head is None:
            return self.predict(decoder_out, encoder_feats, ctx)
        indices, chunk, pieces, kernel = head
        bottleneck = ctx.data.get(BOTTLENECK_KEY, encoder_feats[-1])
        params = self.controller_params(self.gap(bottleneck).flatten(1), indices, ctx.prompts)
        feats = self.precls(decoder_out)
        b, c = feats.shape[:2]
        if pieces > 0:  # slabs of axis 0: traceable at any window size (compiled CPU runtimes)
            return torch.cat([self.dynamic_head(p.reshape(b, c, -1), params).reshape(b, -1, *p.shape[2:])
                              for p in feats.chunk(pieces, dim=2)], dim=2)
        flat = feats.reshape(b, c, -1)
        if kernel is not None:
            out = per_sample(kernel, flat, params)
        else:
            out = chunked_head(flat, params, self.weight_nums, self.bias_nums, self.head_channels, chunk)
        return out.reshape(b, -1, *feats.shape[2:])

    # -- continual learning -------------------------------------------------------------------
    def _check_new(self, names: Sequence[str]) -> list[str]:
        names = list(names)
        clash = [n for n in names if n in self.class_names]
        if clash or len(set(names)) != len(names):
            raise ConfigError(f"cannot add classes already present or repeated: {clash or names}")
        return names

    def class_parameters(self) -> dict[str, list[ClassPart]]:
        """head='mlp': each class owns its controller MLP; head='shared': nothing per class."""
        out: dict[str, list[ClassPart]] = {n: [] for n in self.class_names}
        if self.head == "mlp":
            for i, name in enumerate(self.class_names):
                out[name] = [ClassPart(f"controllers.{i}.{k}") for k in self.controllers[i].state_dict()]
        return out

    def _grow_heads(self, names: list[str]) -> None:
        if self.head == "mlp":
            ref = next(self.controllers.parameters(), None) if len(self.controllers) else None
            for _ in names:
                mlp = self._new_mlp()
                if ref is not None:
                    mlp = mlp.to(device=ref.device, dtype=ref.dtype)
                self.controllers.append(mlp)
        self.class_names.extend(names)


class UniversalConditioner(DynamicHeadConditioner):
    """The Universal Model: class codes from (cached) text embeddings through Linear + ReLU.

    With `templates` (modality -> prompt template, e.g. MR: "A magnetic resonance image of a {}.")
    the embeddings are [K, M, E], one row per class and template, and each sample's codes come
    from its own modality's row; one `template` gives [K, E] for every sample."""

    needs_text = True

    def __init__(
        self,
        class_names: Sequence[str],
        embeddings: torch.Tensor | None = None,
        head: str = "mlp",
        text_dim: int | None = None,
        hidden: int = 256,
        text_encoder: str | None = None,
        template: str | None = None,
        templates: dict[str, str] | None = None,
        text_norm: str = "none",
        **kwargs,
    ):
        super().__init__(class_names, head=head, hidden=hidden, **kwargs)
        if text_norm not in TEXT_NORMS:
            raise ConfigError(f"universal: text_norm must be one of {', '.join(TEXT_NORMS)}, got {text_norm!r}")
        self.text_norm = text_norm
        # Which encoder/template made the embeddings (recorded so new classes are embedded alike).
        self.text_encoder = text_encoder
        self.template = template
        if templates is not None and (not isinstance(templates, dict) or not templates):
            raise ConfigError(f"universal: templates must map a modality to a prompt template, got {templates!r}")
        self.templates = {str(m).upper(): t for m, t in (templates or {}).items()}
        self.modalities = list(self.templates)
        k, rows = len(self.class_names), ([len(self.templates)] if self.templates else [])
        if embeddings is None:
            if text_dim is None:
                raise ConfigError("UniversalConditioner needs embeddings [K, E] or text_dim (to load a checkpoint)")
            embeddings = torch.zeros(k, *rows, text_dim)
        embeddings = torch.as_tensor(embeddings).detach().float()
        if embeddings.dim() != 2 + len(rows) or tuple(embeddings.shape[:-1]) != (k, *rows):
            want = ", ".join(str(n) for n in (k, *rows, "E"))
            raise ConfigError(f"embeddings must be [{want}] for {k} classes{' x templates' if rows else ''}, "
                              f"got {tuple(embeddings.shape)}")
        if text_dim is not None and embeddings.shape[-1] != text_dim:
            raise ConfigError(f"embeddings have dimension {embeddings.shape[-1]}, text_dim says {text_dim}")
        self.text_dim = int(embeddings.shape[-1])
        # A buffer: stored in the state dict so checkpoints carry their class embeddings.
        self.register_buffer("embeddings", embeddings.clone())
        self.text_proj = nn.Linear(self.text_dim, hidden)

    def task_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """[K, hidden], or [K, M, hidden] with one code per template."""
        emb = self.embeddings[indices]
        if self.text_norm == "rms":
            emb = unit_rms(emb)
        return F.relu(self.text_proj(emb))

    def head_parameters(self) -> list[nn.Parameter]:
        """The text projection: the one plain layer whose job is to tell the classes' codes apart
        (the controllers' weights are generated per class and already move fast)."""
        return list(self.text_proj.parameters())

    def config_updates(self) -> dict:
        """Checkpoints record how the text embeddings were scaled (older ones: "none", `checkpoint.as_trained`)."""
        return {"text_norm": self.text_norm}

    def modality_rows(self, modality, batch_size: int) -> list[int]:
        """Template row of each sample's modality (the first template's when none is given)."""
        mods = list(modality) if modality is not None else [self.modalities[0]] * batch_size
        rows = []
        for m in mods:
            key = str(m).upper()
            if key not in self.templates:
                raise PromptError(f"universal: no text template for modality {m!r}; this model has "
                                  f"{', '.join(self.modalities)}")
            rows.append(self.modalities.index(key))
        return rows

    def sample_codes(self, indices: torch.Tensor, prompts: PromptBatch | None, batch_size: int) -> torch.Tensor:
        codes = self.task_codes(indices)
        if not self.templates:
            return codes
        rows = torch.as_tensor(self.modality_rows(prompts.modality if prompts else None, batch_size),
                               dtype=torch.long, device=codes.device)
        return codes[:, rows].transpose(0, 1)                                  # [B, K, hidden]

    def class_parameters(self) -> dict[str, list[ClassPart]]:
        """The controller MLP (head='mlp') and the text embedding row of each class."""
        out = super().class_parameters()
        for i, name in enumerate(self.class_names):
            out[name] = out[name] + [ClassPart("embeddings", slice(i, i + 1))]
        return out

    def add_classes(self, names: Sequence[str], embeddings: torch.Tensor | None = None,
                    datasets: Sequence[str | None] | None = None) -> None:
        """New classes: their embeddings (and, for head='mlp', one MLP each); nothing else changes."""
        names = self._check_new(names)
        if embeddings is None:
            raise ConfigError("UniversalConditioner.add_classes needs the new classes' text embeddings")
        emb = torch.as_tensor(embeddings).detach().to(self.embeddings)
        want = (len(names), *self.embeddings.shape[1:])
        if tuple(emb.shape) != want:
            raise ConfigError(f"new embeddings must be {list(want)}, got {tuple(emb.shape)}")
        self.embeddings = torch.cat([self.embeddings, emb], dim=0)
        self._grow_heads(names)
