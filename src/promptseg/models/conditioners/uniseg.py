"""UniSeg (Ye et al., MICCAI 2023) and MedUniSeg (2024): a universal task prompt at the bottleneck.

What the papers and the UniSeg code (Upstream/.../Prompt_generic_UNet.py) fix, and we keep:
- a learnable universal task prompt F_uni [K, grid] at the bottleneck grid (code: `torch.randn`,
  grid = patch / (16, 32, 32) in (z, y, x); MedUniSeg: K = 100, grid 4x6x6). promptseg tensors are
  [B, C, X, Y, Z] (depth last), so the default grid is (6, 6, 4). When the bottleneck grid of an
  input differs (another patch size, a depth-1 slice) the prompt is trilinearly resized to it
  (MedUniSeg resizes the 2D features to the prompt instead; the effect is the same alignment);
- FUSE: cat(bottleneck features F [C], F_uni [K]) -> 3 blocks of conv3x3x3-IN-LeakyReLU(0.01):
  C+K -> (C+K)/4 -> (C+K)/4 -> N task channels (one per task); the requested task's channel is
  selected and concatenated with F before the decoder;
- MedUniSeg's modal prompt: F_mod[m] of length l = 512 -> Linear(l -> 144) -> 4x6x6 (3D; here
  (6, 6, 4)) or 12x12 (2D; here (12, 12, 1)) -> trilinear resize to the input -> added to the
  image (every channel) before the encoder. `modal_prompt: false` gives plain UniSeg;
- input stems for 1-4 channels (MedUniSeg's four first convs; the UniSeg code has 1/2/4).

Choices promptseg makes:
- A task is one taxonomy class (binary, sigmoid) rather than one dataset with a softmax over its
  classes, so N = len(class_names), and one shared 1-channel 1x1x1 head turns each task's decoder
  output into its logit map. Several tasks per batch (the UniSeg code allows one per batch):
  `on_bottleneck` returns a batch of B*K (sample-major), the backbone repeats its skips, and
  `predict` folds [B*K, 1, ...] back to [B, K, ...]. The decoder therefore runs K times per
  sample -- UniSeg's "inference per task"; cost grows with the number of prompts.
- The bottleneck keeps its width: cat(F, selected channel) [C+1] -> 1x1x1 conv -> C, initialised
  as identity on F. Composed with the backbone's first (linear) up-sampling this is exactly
  UniSeg's C+1-channel decoder input.
- Stems are 1x1x1 convs mapping c in `input_channels` to the backbone's `in_channels`, initialised
  to copy/average channels (identity when c equals it); the backbone's own first conv does the
  spatial work. NOTE: `UNet.forward` checks the channel count before `on_input`, so inputs whose
  channel count differs from the backbone's `in_channels` need that check moved after `on_input`.
- DDP: every parameter takes part in every forward; per-class rows (FUSE output filters and
  their norm affines), per-modality prompt rows and per-channel-count stems are selected by
  index from one tensor each, so those not asked get an exact zero gradient (no hang with
  find_unused_parameters=False).
- `add_classes` appends FUSE output channels (new filters + norm affine); F_uni keeps its K
  channels (MedUniSeg decouples K from N), old channels are untouched, and a checkpoint rebuilt
  from (config, class_names) has the grown shapes.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, InputError
from ..backbones.blocks import ConvBlock
from .base import ClassPart, Conditioner, Context, PromptBatch, PromptError
from .hermes import Modalities


def _positive_ints(value, n: int, what: str) -> tuple[int, ...]:
    out = tuple(int(v) for v in value)
    if len(out) != n or any(v < 1 for v in out):
        raise ConfigError(f"uniseg: {what} must be {n} positive ints, got {value!r}")
    return out


class TaskChannels(nn.Module):
    """FUSE's last block (conv3x3x3 -> IN -> LeakyReLU) with one growable output row per task."""

    def __init__(self, cin: int, n_tasks: int, kernel: int = 3):
        super().__init__()
        self.cin, self.kernel = cin, kernel
        self.weight = nn.Parameter(self._init_weight(n_tasks))
        self.bias = nn.Parameter(self._init_bias(n_tasks))
        self.norm_weight = nn.Parameter(torch.ones(n_tasks))
        self.norm_bias = nn.Parameter(torch.zeros(n_tasks))

    def _init_weight(self, n: int, like: torch.Tensor | None = None) -> torch.Tensor:
        w = torch.empty(n, self.cin, self.kernel, self.kernel, self.kernel)
        if n:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Conv3d's default
        return w if like is None else w.to(like)

    def _init_bias(self, n: int, like: torch.Tensor | None = None) -> torch.Tensor:
        bound = 1.0 / math.sqrt(self.cin * self.kernel**3)
        b = torch.empty(n).uniform_(-bound, bound)
        return b if like is None else b.to(like)

    def grow(self, n_new: int) -> None:
        """Append `n_new` task channels; existing rows keep their values."""
        def cat(old: nn.Parameter, new: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(torch.cat([old.detach(), new.to(old)]), requires_grad=old.requires_grad)

        self.weight = cat(self.weight, self._init_weight(n_new))
        self.bias = cat(self.bias, self._init_bias(n_new))
        self.norm_weight = cat(self.norm_weight, torch.ones(n_new))
        self.norm_bias = cat(self.norm_bias, torch.zeros(n_new))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv3d(x, self.weight.to(x.dtype), self.bias.to(x.dtype), padding=self.kernel // 2)
        y = F.instance_norm(y, weight=self.norm_weight, bias=self.norm_bias, eps=1e-5)
        return F.leaky_relu(y, 0.01)


class UniSegConditioner(Conditioner):
    """Universal task prompt fused at the bottleneck (UniSeg), plus MedUniSeg's modal prompt."""

    needs_text = False

    def __init__(
        self,
        class_names: Sequence[str] = (),
        prompt_channels: int = 100,
        prompt_grid: Sequence[int] = (6, 6, 4),
        fuse_blocks: int = 3,
        fuse_reduction: int = 4,
        modal_prompt: bool = True,
        modalities: Sequence[str] = ("CT", "MR", "PET"),
        default_modality: str | None = None,
        modal_length: int = 512,
        modal_grid: Sequence[int] = (6, 6, 4),
        modal_grid_2d: Sequence[int] = (12, 12),
        input_channels: Sequence[int] = (1, 2, 3, 4),
    ):
        super().__init__(class_names)
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError("uniseg: class_names contains duplicates")
        if int(prompt_channels) < 1 or int(fuse_blocks) < 2 or int(fuse_reduction) < 1:
            raise ConfigError("uniseg: prompt_channels >= 1, fuse_blocks >= 2 and fuse_reduction >= 1 are needed")
        self.prompt_channels = int(prompt_channels)
        self.prompt_grid = _positive_ints(prompt_grid, 3, "prompt_grid")
        self.fuse_blocks, self.fuse_reduction = int(fuse_blocks), int(fuse_reduction)
        self.input_channels = sorted({int(c) for c in input_channels})
        if any(c < 1 for c in self.input_channels):
            raise ConfigError(f"uniseg: input_channels must be positive, got {list(input_channels)}")
        self.use_modal_prompt = bool(modal_prompt)
        self.modalities = Modalities(modalities, default_modality, "uniseg")
        self.modal_grid = _positive_ints(modal_grid, 3, "modal_grid")
        self.modal_grid_2d = _positive_ints(modal_grid_2d, 2, "modal_grid_2d")
        if math.prod(self.modal_grid) != math.prod(self.modal_grid_2d):
            raise ConfigError("uniseg: modal_grid and modal_grid_2d must hold as many values (one Linear maps to both)")
        # Code: nn.Parameter(torch.randn(1, K, D/16, H/32, W/32)).
        self.task_prompt = nn.Parameter(torch.randn(1, self.prompt_channels, *self.prompt_grid))
        if self.use_modal_prompt:
            self.modal_prompt = nn.Parameter(torch.randn(len(self.modalities), int(modal_length)))
            self.modal_map = nn.Linear(int(modal_length), math.prod(self.modal_grid))
        else:
            self.modal_prompt = None
            self.modal_map = None
        self.fuse: nn.Module | None = None
        self.task_channels: TaskChannels | None = None
        self.merge: nn.Conv3d | None = None
        self.head: nn.Conv3d | None = None
        self.stem_weight: nn.Parameter | None = None
        self.stem_bias: nn.Parameter | None = None

    # -- wiring ------------------------------------------------------------------------------------
    def bind(self, backbone: nn.Module) -> None:
        """FUSE, merge and head from the backbone's bottleneck/output widths; stems to its input."""
        c = int(backbone.encoder_channels[-1])
        cin = c + self.prompt_channels
        hid = max(1, cin // self.fuse_reduction)
        blocks = [ConvBlock(cin, hid)] + [ConvBlock(hid, hid) for _ in range(self.fuse_blocks - 2)]
        self.fuse = nn.Sequential(*blocks)
        self.task_channels = TaskChannels(hid, len(self.class_names))
        self.merge = nn.Conv3d(c + 1, c, kernel_size=1)
        with torch.no_grad():  # identity on the features, default init on the task channel
            col = self.merge.weight[:, c:].clone()
            self.merge.weight.zero_()
            self.merge.weight[:, :c, 0, 0, 0] = torch.eye(c)
            self.merge.weight[:, c:] = col
            self.merge.bias.zero_()
        self.head = nn.Conv3d(int(backbone.out_channels), 1, kernel_size=1)
        out_ch = int(backbone.in_channels)
        if self.input_channels:
            widest = max(self.input_channels)
            w = torch.zeros(len(self.input_channels), out_ch, widest)
            for s, n in enumerate(self.input_channels):
                for o in range(out_ch):
                    if n <= out_ch:
                        w[s, o, o % n] = 1.0
                    else:
                        src = [i for i in range(n) if i % out_ch == o]
                        w[s, o, src] = 1.0 / len(src)
            self.stem_weight = nn.Parameter(w)
            self.stem_bias = nn.Parameter(torch.zeros(len(self.input_channels), out_ch))
        self.to(self.task_prompt.device)

    # -- per forward ----------------------------------------------------------------------------------
    def prepare(self, prompts: PromptBatch, batch_size: int) -> Context:
        ctx = Context(prompts=prompts, batch_size=batch_size)
        self.check_known(prompts, "uniseg")
        if not prompts.indices:
            raise PromptError("uniseg: no class asked")
        dev = self.task_prompt.device
        ctx["uniseg.idx"] = torch.tensor(list(prompts.indices), dtype=torch.long, device=dev)
        if self.use_modal_prompt:
            mod, _ = self.modalities.indices(prompts.modality, batch_size)
            ctx["uniseg.mod_idx"] = torch.tensor(mod, dtype=torch.long, device=dev)
        return ctx

    def modal_prior(self, mod_idx: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
        """MMap: the samples' modal prompts as [B, 1, *spatial] maps (2D grid for depth-1 inputs)."""
        v = self.modal_map(self.modal_prompt[mod_idx])
        grid = (*self.modal_grid_2d, 1) if spatial[-1] == 1 else self.modal_grid
        return F.interpolate(v.view(-1, 1, *grid), size=tuple(spatial), mode="trilinear", align_corners=False)

    def on_input(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        if self.use_modal_prompt:
            x = x + self.modal_prior(ctx["uniseg.mod_idx"], x.shape[2:]).to(x.dtype)
        if self.stem_weight is not None:
            n = x.shape[1]
            if n not in self.input_channels:
                raise InputError(None, f"uniseg: {n}-channel input; this model takes {self.input_channels} channels")
            s = self.input_channels.index(n)
            w = self.stem_weight[s, :, :n]
            x = F.conv3d(x, w[..., None, None, None].to(x.dtype), self.stem_bias[s].to(x.dtype))
        return x

    def on_bottleneck(self, feat: torch.Tensor, ctx: Context) -> torch.Tensor:
        """FUSE -> select each requested task's channel -> one decoder input per (sample, task)."""
        if self.fuse is None:
            raise RuntimeError("uniseg: bind(backbone) was not called")
        b, c, *grid = feat.shape
        prompt = self.task_prompt
        if list(prompt.shape[2:]) != grid:
            prompt = F.interpolate(prompt, size=tuple(grid), mode="trilinear", align_corners=False)
        fused = self.task_channels(self.fuse(torch.cat([feat, prompt.expand(b, -1, *grid).to(feat.dtype)], 1)))
        idx = ctx["uniseg.idx"]
        k = idx.numel()
        chosen = fused.index_select(1, idx)                                   # [B, K, *grid]
        ctx["uniseg.task_prior"] = chosen
        merged = torch.cat([feat.repeat_interleave(k, 0), chosen.reshape(b * k, 1, *grid)], 1)
        return self.merge(merged)                                             # [B*K, C, *grid]

    def predict(self, decoder_out: torch.Tensor, encoder_feats: list[torch.Tensor], ctx: Context) -> torch.Tensor:
        b, k = ctx.batch_size, len(ctx.prompts)
        if decoder_out.shape[0] != b * k:
            raise RuntimeError(f"uniseg: decoder gave a batch of {decoder_out.shape[0]}, expected {b}x{k}")
        return self.head(decoder_out).view(b, k, *decoder_out.shape[2:])

    # -- continual learning --------------------------------------------------------------------------
    def class_parameters(self) -> dict[str, list[ClassPart]]:
        """Each class owns its row of the task channels (FUSE output filter, bias, norm affine)."""
        keys = [f"task_channels.{k}" for k in ("weight", "bias", "norm_weight", "norm_bias")]
        if self.task_channels is None:
            return {n: [] for n in self.class_names}
        return {n: [ClassPart(k, slice(i, i + 1)) for k in keys] for i, n in enumerate(self.class_names)}

    def add_classes(self, names: Sequence[str], embeddings: torch.Tensor | None = None,
                    datasets: Sequence[str | None] | None = None) -> None:
        """New task channels (FUSE output filters); existing channels and F_uni are untouched."""
        names = [str(n) for n in names]
        clash = [n for n in names if n in self.class_names]
        if clash or len(set(names)) != len(names):
            raise ConfigError(f"uniseg: add_classes got existing or duplicate classes {clash or names}")
        self.class_names.extend(names)
        if self.task_channels is not None:
            self.task_channels.grow(len(names))
