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

A task is a DATASET (the paper's definition), read from `dataset_classes` (dataset -> the classes
it annotates; the trainer fills it from the manifests, see `datasets.DatasetTable`):
- FUSE outputs N = number of datasets task channels; a sample's own dataset's channel is selected;
- the head is a 1x1x1 conv over per-class channels. `channel_layout` "class" (default) gives
  every class a channel of its own; "position" (UniSeg's code) uses the class's place in its
  dataset's list, so one channel is the spleen in one dataset and the liver in another and only
  the task prompt tells them apart; "aligned" gives a class the same channel in every dataset
  that annotates it. The task (FUSE channel) is the sample's dataset in every layout.
- the static head learns at lr x `head_lr_scale` (the recipe key; `head_parameters`). Why both
  (phantom bench: 4 partially labelled datasets, small U-Net, 300 steps, AdamW 2e-3, held-out
  phantoms; session 8 of issue 17): at the backbone's lr the head is what is slow -- position
  0.27, class 0.21 mean Dice; the same class-layout model whose 8-8-1 head weights are produced
  by a per-class MLP (as the Universal Model's are) 0.63, with the same head as plain weights
  0.11; a plain head at lr x 30: position 0.51, **class 0.82 (seed 1: 0.82)**; on phantoms of
  another seed than the bench's, which chose nothing: position 0.55, class 0.83 / 0.80. A generator
  moves its output ~||h||_1 times faster than Adam moves a weight; the scale gives the plain
  head that speed without changing the model. With a fast head, a channel per class beats
  sharing channels across datasets (0.82 vs 0.51), so "class" is the default and the paper's
  "position" an option (checkpoints that predate the option load as "position").
  Each channel is a sigmoid (binary) map:
  promptseg's classes overlap (an organ includes its tumours), which a softmax over a dataset's
  classes cannot express, so the masked BCE + Dice loss is kept (the paper: softmax, Dice + CE);
- a class -> (task, channel) table answers a prompt by name: the sample's own dataset when it
  annotates the class (training), else the class's default dataset (the first annotating it;
  inference without a dataset). Distinct tasks of a sample each get one decoder pass: the
  bottleneck returns B*G (G = most tasks any sample needs, sample-major) and the backbone repeats
  its skips. Without a table every class is a dataset of its own (one channel, N = classes).
- the head reads `head_width` (32) channels, the width of nnU-Net's last decoder stage that the
  papers' head reads: a narrower backbone output (the small U-Net's 8) is first mapped to it by a
  1x1x1 conv-IN-LeakyReLU. Measured on one phantom dataset (6 classes, 300 steps, AdamW 2e-3):
  with a linear head on 8 channels the training Dice loss was still 0.84 (the Universal Model's
  per-class 8-8-1 MLP head on the same backbone: 0.29); a 16-wide backbone: 0.59.
- deep supervision (nnU-Net, as UniSeg trains): 1x1x1 heads on the decoder levels between the
  coarsest and the finest, weights 1/2^i (i = 1 next to the output), given to the trainer by
  `deep_supervision(ctx)`; off with `deep_supervision: false`.
- the selected task channel is added to every bottleneck channel (the backbone's decoder takes C
  channels, not C+1): the first, linear up-sampling then sees it as one more input channel with
  the summed weights. No extra 1x1 "merge" conv (not in the paper).
- the modal prompts (and the map's bias) start at zero, so a run starts as plain UniSeg.
- Stems are 1x1x1 convs mapping c in `input_channels` to the backbone's `in_channels`, initialised
  to copy/average channels (identity when c equals it); the backbone's own first conv does the
  spatial work.
- DDP: every parameter takes part in every training forward; per-dataset rows (FUSE output
  filters and their norm affines), per-modality prompt rows and per-channel-count stems are
  selected by index from one tensor each, so those not asked get an exact zero gradient.
- `add_classes` appends classes to their dataset (a new dataset: one new FUSE channel; a wider
  label set: new head rows); F_uni keeps its K channels, old rows are untouched; save
  `config_updates()` (the grown table) in the run config.
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
from .datasets import DatasetTable
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


class ChannelHead(nn.Module):
    """1x1x1 conv with growable output rows (the per-dataset-label channels)."""

    def __init__(self, cin: int, n_out: int):
        super().__init__()
        conv = nn.Conv3d(cin, n_out, kernel_size=1)
        self.weight = nn.Parameter(conv.weight.detach().flatten(1).clone())
        self.bias = nn.Parameter(conv.bias.detach().clone())

    def grow(self, n_new: int) -> None:
        new = ChannelHead(self.weight.shape[1], n_new).to(self.weight)
        self.weight = nn.Parameter(torch.cat([self.weight.detach(), new.weight.detach()]), requires_grad=self.weight.requires_grad)
        self.bias = nn.Parameter(torch.cat([self.bias.detach(), new.bias.detach()]), requires_grad=self.bias.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv3d(x, self.weight[..., None, None, None].to(x.dtype), self.bias.to(x.dtype))


def gather_channels(out: torch.Tensor, rows: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """[B*G, M, *S] head outputs -> [B, K, *S]: entry (b, k) is channel channels[b, k] of row rows[b, k]."""
    m = out.shape[1]
    flat = out.reshape(out.shape[0] * m, *out.shape[2:])
    pick = (rows * m + channels).reshape(-1)
    return flat.index_select(0, pick).view(*rows.shape, *out.shape[2:])


class UniSegConditioner(Conditioner):
    """Universal task prompt fused at the bottleneck (UniSeg), plus MedUniSeg's modal prompt.
    A task is a dataset; its classes are channels of one head (see the module docstring)."""

    needs_text = False
    uses_datasets = True

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
        dataset_classes: dict[str, Sequence[str]] | None = None,
        deep_supervision: bool = True,
        head_width: int = 32,
        channel_layout: str = "class",
    ):
        super().__init__(class_names)
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError("uniseg: class_names contains duplicates")
        if int(prompt_channels) < 1 or int(fuse_blocks) < 2 or int(fuse_reduction) < 1:
            raise ConfigError("uniseg: prompt_channels >= 1, fuse_blocks >= 2 and fuse_reduction >= 1 are needed")
        self.table = DatasetTable(dataset_classes, self.class_names, "uniseg", layout=channel_layout)
        self.prompt_channels = int(prompt_channels)
        self.prompt_grid = _positive_ints(prompt_grid, 3, "prompt_grid")
        self.fuse_blocks, self.fuse_reduction = int(fuse_blocks), int(fuse_reduction)
        self.use_deep_supervision = bool(deep_supervision)
        if int(head_width) < 0:
            raise ConfigError(f"uniseg: head_width must be >= 0 (0: the head reads the backbone output as is), got {head_width}")
        self.head_width = int(head_width)
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
            # Zero prompts and bias: the model starts as plain UniSeg and a one-modality run stays
            # close to it (the prompts still get gradients through the map's random weights).
            self.modal_prompt = nn.Parameter(torch.zeros(len(self.modalities), int(modal_length)))
            self.modal_map = nn.Linear(int(modal_length), math.prod(self.modal_grid))
            nn.init.zeros_(self.modal_map.bias)
        else:
            self.modal_prompt = None
            self.modal_map = None
        self.fuse: nn.Module | None = None
        self.task_channels: TaskChannels | None = None
        self.head: ChannelHead | None = None
        self.pre_head: nn.Module | None = None
        self.ds_heads = nn.ModuleDict()
        self.ds_weights: dict[str, float] = {}
        self.stem_weight: nn.Parameter | None = None
        self.stem_bias: nn.Parameter | None = None

    # -- wiring ------------------------------------------------------------------------------------
    def bind(self, backbone: nn.Module) -> None:
        """FUSE, heads from the backbone's bottleneck/decoder/output widths; stems to its input."""
        c = int(backbone.encoder_channels[-1])
        cin = c + self.prompt_channels
        hid = max(1, cin // self.fuse_reduction)
        blocks = [ConvBlock(cin, hid)] + [ConvBlock(hid, hid) for _ in range(self.fuse_blocks - 2)]
        self.fuse = nn.Sequential(*blocks)
        self.task_channels = TaskChannels(hid, len(self.table))
        m = self.table.width
        out = int(backbone.out_channels)
        if self.head_width and out < self.head_width:
            self.pre_head = ConvBlock(out, self.head_width, kernel=(1, 1, 1))
            out = self.head_width
        self.head = ChannelHead(out, m)
        dec = list(backbone.decoder_channels)
        # nnU-Net: every decoder output but the coarsest is supervised, weight 1/2^i from the output.
        levels = list(range(1, len(dec) - 1)) if self.use_deep_supervision else []
        self.ds_heads = nn.ModuleDict({str(d): ChannelHead(int(dec[d]), m) for d in levels})
        self.ds_weights = {str(d): 0.5 ** (len(dec) - 1 - d) for d in levels}
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

    def _heads(self) -> list[ChannelHead]:
        return [self.head, *self.ds_heads.values()] if self.head is not None else []

    def head_parameters(self) -> list[nn.Parameter]:
        """The static read-out: pre-head, head and deep-supervision heads (`head_lr_scale`)."""
        mods = [m for m in (self.pre_head, *self._heads()) if m is not None]
        return [p for m in mods for p in m.parameters()]

    # -- per forward ----------------------------------------------------------------------------------
    def prepare(self, prompts: PromptBatch, batch_size: int) -> Context:
        """Each (sample, class) -> (task row, channel): the sample's distinct tasks are its rows."""
        ctx = Context(prompts=prompts, batch_size=batch_size)
        self.check_known(prompts, "uniseg")
        if not prompts.indices:
            raise PromptError("uniseg: no class asked")
        datasets = prompts.datasets
        if datasets is not None and len(datasets) != batch_size:
            raise InputError(None, f"uniseg: {len(datasets)} dataset names given for a batch of {batch_size}")
        per_sample = []
        for b in range(batch_size):
            d = datasets[b] if datasets is not None else None
            per_sample.append([self.table.task_of(c, d) for c in prompts.classes])
        groups = [list(dict.fromkeys(t)) for t in per_sample]
        g = max(len(x) for x in groups)
        groups = [x + [x[0]] * (g - len(x)) for x in groups]  # same count per sample (repeats unread)
        rows = [[b * g + groups[b].index(t) for t in ts] for b, ts in enumerate(per_sample)]
        chans = [[self.table.channel(t, c) for t, c in zip(ts, prompts.classes)] for ts in per_sample]
        dev = self.task_prompt.device
        ctx["uniseg.tasks"] = torch.tensor(groups, dtype=torch.long, device=dev)        # [B, G]
        ctx["uniseg.rows"] = torch.tensor(rows, dtype=torch.long, device=dev)           # [B, K]
        ctx["uniseg.channels"] = torch.tensor(chans, dtype=torch.long, device=dev)      # [B, K]
        ctx["uniseg.decoder"] = {}
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
        """FUSE -> select each sample's task channels -> one decoder input per (sample, task)."""
        if self.fuse is None:
            raise RuntimeError("uniseg: bind(backbone) was not called")
        b, c, *grid = feat.shape
        prompt = self.task_prompt
        if list(prompt.shape[2:]) != grid:
            prompt = F.interpolate(prompt, size=tuple(grid), mode="trilinear", align_corners=False)
        fused = self.task_channels(self.fuse(torch.cat([feat, prompt.expand(b, -1, *grid).to(feat.dtype)], 1)))
        tasks = ctx["uniseg.tasks"]                                            # [B, G]
        g = tasks.shape[1]
        chosen = torch.gather(fused, 1, tasks.view(b, g, *([1] * len(grid))).expand(b, g, *grid))
        ctx["uniseg.task_prior"] = chosen                                      # [B, G, *grid]
        return feat.repeat_interleave(g, 0) + chosen.reshape(b * g, 1, *grid)  # [B*G, C, *grid]

    def on_decoder(self, level: int, feat: torch.Tensor, ctx: Context) -> torch.Tensor:
        if self.training and str(level) in self.ds_heads:
            ctx["uniseg.decoder"][str(level)] = feat
        return feat

    def predict(self, decoder_out: torch.Tensor, encoder_feats: list[torch.Tensor], ctx: Context) -> torch.Tensor:
        rows = ctx["uniseg.rows"]
        if decoder_out.shape[0] != ctx["uniseg.tasks"].numel():
            raise RuntimeError(f"uniseg: decoder gave a batch of {decoder_out.shape[0]}, expected "
                               f"{tuple(ctx['uniseg.tasks'].shape)}")
        if self.pre_head is not None:
            decoder_out = self.pre_head(decoder_out)
        return gather_channels(self.head(decoder_out), rows, ctx["uniseg.channels"])

    def deep_supervision(self, ctx: Context) -> list[tuple[float, torch.Tensor]]:
        """(weight, logits [B, K, *coarser]) per supervised decoder level of a training forward
        (the main output has weight 1); empty in eval mode or with deep supervision off."""
        feats = ctx.data.get("uniseg.decoder") or {}
        return [(self.ds_weights[k], gather_channels(self.ds_heads[k](f), ctx["uniseg.rows"], ctx["uniseg.channels"]))
                for k, f in feats.items()]

    # -- continual learning --------------------------------------------------------------------------
    def class_parameters(self) -> dict[str, list[ClassPart]]:
        """Each class owns the row of its (default) dataset in the task channels (FUSE output
        filter, bias, norm affine; classes of one dataset share it) and, in the "class" layout,
        its own rows of the heads."""
        keys = [f"task_channels.{k}" for k in ("weight", "bias", "norm_weight", "norm_bias")]
        if self.task_channels is None:
            return {n: [] for n in self.class_names}
        heads = ["head"] + [f"ds_heads.{k}" for k in self.ds_heads]
        out = {}
        for n in self.class_names:
            t = self.table.default(n)
            out[n] = [ClassPart(k, slice(t, t + 1)) for k in keys]
            if self.table.layout == "class":  # its own head channel (other layouts share channels)
                c = self.table.channel(t, n)
                out[n] += [ClassPart(f"{h}.{w}", slice(c, c + 1)) for h in heads for w in ("weight", "bias")]
        return out

    def config_updates(self) -> dict:
        """What a checkpoint must record to rebuild the same tasks and channels."""
        return {"dataset_classes": self.table.as_config(), "channel_layout": self.table.layout}

    def add_classes(self, names: Sequence[str], embeddings: torch.Tensor | None = None,
                    datasets: Sequence[str | None] | None = None) -> None:
        """New classes join their dataset (new channels) or a new dataset (a new FUSE channel);
        every existing row is untouched."""
        names = [str(n) for n in names]
        clash = [n for n in names if n in self.class_names]
        if clash or len(set(names)) != len(names):
            raise ConfigError(f"uniseg: add_classes got existing or duplicate classes {clash or names}")
        if datasets is not None and len(datasets) != len(names):
            raise ConfigError(f"uniseg: add_classes got {len(datasets)} datasets for {len(names)} names")
        n_tasks, width = len(self.table), self.table.width
        fresh = f"added-{n_tasks}"
        for n, d in zip(names, datasets if datasets is not None else [None] * len(names)):
            self.table.add(fresh if d is None else str(d), [n])
        self.class_names.extend(names)
        if self.task_channels is not None:
            self.task_channels.grow(len(self.table) - n_tasks)
            if self.table.width > width:
                for h in self._heads():
                    h.grow(self.table.width - width)
