"""Hermes (Gao et al., CVPR 2024): learned task and modality context priors fused into the backbone.

What the paper and the authors' code (model/dim3/hermes_unet*.py, hermes_utils.py) fix, and we keep:
- a task prior pool p_T [|T|, C] (one token per task) and a modality prior pool p_M [|M|, l, C],
  l = 10, **one pair of pools per fused scale** (the code's `PriorInitFusionLayer`: C differs per
  scale), xavier-uniform initialised;
- at each fused scale (default: encoder 1/4, 1/8, 1/16 and decoder 1/8, 1/4; blocks 2, 2, 4 and
  2, 2 as in the code) the sample's tokens [task tokens, l modality tokens] and the flattened
  feature map go through pre-norm blocks of: priors <- features cross-attention, MLP (x4), then
  features <- priors cross-attention, MLP (x4); heads = C/32 with 32-d heads;
- prediction: the posterior task tokens of all scales concatenated -> LayerNorm -> two MLPs ->
  a 32-d prototype (the code's final decoder width, `prototype_dim`); logit = <prototype,
  decoder feature> per voxel. A backbone whose output is not 32 channels gets a 1x1x1
  conv-IN-LeakyReLU projection of its output to 32 (the code's last decoder block plays it);
- auxiliary modality classifier: posterior modality tokens of all scales concatenated ->
  LayerNorm -> mean over the l tokens -> MLP -> |M| logits, cross-entropy. Weight 0.01 (the
  released config's `loss_mod_weight`; the paper says 0.001) -- `modality_loss_weight`.
  `auxiliary_loss` returns the *weighted* loss (the trainer's `aux_loss_weight`, when set,
  replaces that weight by multiplying this value).

Choices promptseg makes (documented because the paper/code do not face them):
- Levels are found by cumulative stride: the first encoder (decoder) level whose largest per-axis
  stride equals 4, 8, 16 (8, 4). A scale the backbone does not have (a shallow U-Net) is skipped
  together with its block count; if none exists `bind` raises ConfigError. On a 4-down-sampling
  U-Net the 1/16 level is the bottleneck (as in the authors' U-Net); on_encoder runs there before
  on_bottleneck.
- Tasks: `task_mode: class` -- one task per taxonomy class, shared across datasets; `dataset` --
  the paper's choice, one task per (dataset, class) pair listed in `tasks: [[dataset, class], ...]`
  (a class no pair names gets a dataset-free task, written [null, class]). A sample's task for
  class c is (its dataset, c) when listed, else the **default task of c**: its first listed pair.
  So inference without a dataset (or with an unknown one) falls back to class-level tokens.
- Which task tokens take part in the fusion (the code pads per-sample task lists with a "null"
  token; we use an attention mask instead):
    `context: dataset` (the default when the run gives `dataset_classes`, which the trainer fills
    from the manifests): the paper's rule -- a sample's context is its OWN dataset's tasks. Tokens
    of asked classes outside that dataset (another sample's classes in a mixed batch) are read out
    but masked from the features, so they never change this sample's features. Without a dataset
    (inference) each asked class is answered in the context of its default dataset (the first
    that annotates it, see `datasets.DatasetTable`): the input is run once per distinct context
    (`on_input` returns B*G samples, sample-major), as the paper evaluates per dataset.
    `context: group` (default): every task token of the *groups* of the requested tasks, whatever
    the prompts ask. A group is a dataset (dataset mode) or a block of classes added together
    (class mode: the constructor's classes are group 0, each `add_classes` call a new group).
    Prompts then only choose which posterior tokens are read out, so within a group any subset
    or order of prompts gives the same maps (up to float rounding of the batched read-out;
    TotalSegmentator's roi_subset property), and
    the groups are the paper's "tasks of the sample's dataset" oracle; classes added later never
    change the maps of earlier groups.
    `context: prompted`: only the requested tasks' tokens (the oracle taken literally at inference):
    asking a subset changes the fused features, hence the maps.
- DDP: each per-class parameter is a row of one task-pool tensor per scale (likewise modality
  rows), gathered by index. Rows not gathered get an exact zero gradient and no parameter is
  ever unused, so DDP with find_unused_parameters=False neither hangs nor sees a None gradient.
  (In `group` mode the rows of the requested groups are all used, as context.) The ablation
  switches `update_priors` / `update_features` = False leave half-blocks unused: train those with
  find_unused_parameters=True.
- `add_classes` grows the task pools in place (new rows, xavier-initialised); the group of each
  task is a persistent buffer, so a checkpoint rebuilt from (config, class_names) reloads exactly.
  In dataset mode the (dataset, class) list lives in the config: save `config_updates()` into the
  run config's `conditioner:` section. For incremental learning as in the paper, freeze the
  backbone and everything but the task pools (`task_pool_parameters()`).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, InputError
from ..backbones.blocks import ConvBlock
from .base import ClassPart, Conditioner, Context, PromptBatch
from .datasets import DatasetTable

#: Spellings folded onto a model's modality names when the exact name is not one of them.
MODALITY_ALIASES = {
    "MRI": "MR", "T1": "MR", "T1W": "MR", "T1C": "MR", "T1CE": "MR", "T2": "MR", "T2W": "MR",
    "FLAIR": "MR", "DWI": "MR", "ADC": "MR", "CINE": "MR", "PT": "PET",
}


class Modalities:
    """A model's ordered modality list: name -> index, with aliases and a default."""

    def __init__(self, names: Sequence[str], default: str | None, who: str):
        self.who = who
        self.names = [str(n).strip().upper() for n in names]
        if not self.names:
            raise ConfigError(f"{who}: modalities must list at least one modality")
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"{who}: duplicate modalities in {list(names)}")
        try:
            self.default = self.index(default if default is not None else self.names[0])
        except InputError:
            raise ConfigError(f"{who}: default_modality {default!r} is not one of {self.names}") from None

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        key = str(name).strip().upper()
        if key not in self.names:
            key = MODALITY_ALIASES.get(key, key)
        if key not in self.names:
            raise InputError(None, f"{self.who}: unknown modality {name!r}; this model knows {', '.join(self.names)}")
        return self.names.index(key)

    def indices(self, modality: Sequence[str] | None, batch_size: int) -> tuple[list[int], list[bool]]:
        """Per-sample index (the default where not given) and whether it was given."""
        if modality is None:
            return [self.default] * batch_size, [False] * batch_size
        mods = list(modality)
        if len(mods) != batch_size:
            raise InputError(None, f"{self.who}: {len(mods)} modalities given for a batch of {batch_size}")
        given = [m is not None for m in mods]
        return [self.index(m) if m is not None else self.default for m in mods], given


def pick_levels(strides: Sequence[Sequence[int]], wanted: Sequence[int]) -> list[tuple[int, int]]:
    """(position in `wanted`, level) for each wanted down-sampling factor the backbone has.

    A level matches when its largest per-axis cumulative stride equals the factor (anisotropic
    strides such as (2, 2, 1) count by their largest axis); the first (finest) match wins.
    """
    out = []
    for j, s in enumerate(wanted):
        for level, st in enumerate(strides):
            if max(int(v) for v in st) == int(s):
                out.append((j, level))
                break
    return out


def _mlp(din: int, dhid: int, dout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(din, dhid), nn.GELU(), nn.Linear(dhid, dout))


class CrossAttention(nn.Module):
    """Queries from one token set, keys/values from another; optional key mask (True = attend)."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, lq, _ = x.shape
        lk = mem.shape[1]
        q = self.to_q(x).view(b, lq, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.to_kv(mem).view(b, lk, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).reshape(b, lq, self.heads * self.head_dim))


class PriorFusionBlock(nn.Module):
    """Bi-directional pre-norm block: priors <- features, MLP; features <- priors, MLP."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: int = 4):
        super().__init__()
        self.prior_norm, self.prior_mem_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.prior_attn = CrossAttention(dim, heads, head_dim)
        self.prior_mlp_norm, self.prior_mlp = nn.LayerNorm(dim), _mlp(dim, dim * mlp_ratio, dim)
        self.feat_norm, self.feat_mem_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.feat_attn = CrossAttention(dim, heads, head_dim)
        self.feat_mlp_norm, self.feat_mlp = nn.LayerNorm(dim), _mlp(dim, dim * mlp_ratio, dim)

    def forward(self, feat, priors, prior_mask, update_priors: bool = True, update_features: bool = True):
        if update_priors:
            priors = priors + self.prior_attn(self.prior_norm(priors), self.prior_mem_norm(feat))
            priors = priors + self.prior_mlp(self.prior_mlp_norm(priors))
        if update_features:
            feat = feat + self.feat_attn(self.feat_norm(feat), self.feat_mem_norm(priors), prior_mask)
            feat = feat + self.feat_mlp(self.feat_mlp_norm(feat))
        return feat, priors


class PriorFusionLevel(nn.Module):
    """One fused scale: its own task/modality pools and a stack of fusion blocks."""

    def __init__(self, dim: int, n_tasks: int, n_modalities: int, tokens: int, blocks: int, head_dim: int,
                 mlp_ratio: int):
        super().__init__()
        self.task_prior = nn.Parameter(nn.init.xavier_uniform_(torch.zeros(max(n_tasks, 1), dim))[:n_tasks].clone())
        self.modality_prior = nn.Parameter(nn.init.xavier_uniform_(torch.zeros(n_modalities, tokens, dim)))
        heads = max(1, dim // head_dim)
        self.blocks = nn.ModuleList(PriorFusionBlock(dim, heads, head_dim, mlp_ratio) for _ in range(blocks))

    def grow(self, n_new: int) -> None:
        """Append `n_new` task tokens (old rows untouched)."""
        old = self.task_prior
        bound = math.sqrt(6.0 / (old.shape[0] + n_new + old.shape[1]))
        new = torch.empty(n_new, old.shape[1], device=old.device, dtype=old.dtype).uniform_(-bound, bound)
        self.task_prior = nn.Parameter(torch.cat([old.detach(), new]), requires_grad=old.requires_grad)

    def forward(self, feat, task_idx, task_mask, mod_idx, update_priors=True, update_features=True):
        b, c = feat.shape[:2]
        priors = torch.cat([self.task_prior[task_idx], self.modality_prior[mod_idx]], dim=1)
        mask = torch.cat([task_mask, task_mask.new_ones(b, self.modality_prior.shape[1])], dim=1)
        x = feat.flatten(2).transpose(1, 2)
        for blk in self.blocks:
            x, priors = blk(x, priors, mask, update_priors, update_features)
        n_task = task_idx.shape[1]
        return x.transpose(1, 2).reshape(feat.shape), priors[:, :n_task], priors[:, n_task:]


class HermesConditioner(Conditioner):
    """Task/modality context priors fused at several scales; prototypes from posterior task tokens."""

    needs_text = False
    uses_datasets = True

    def __init__(
        self,
        class_names: Sequence[str] = (),
        modalities: Sequence[str] = ("CT", "MR", "PET"),
        default_modality: str | None = None,
        tokens_per_modality: int = 10,
        encoder_levels: Sequence[int] = (4, 8, 16),
        decoder_levels: Sequence[int] = (8, 4),
        encoder_blocks: Sequence[int] = (2, 2, 4),
        decoder_blocks: Sequence[int] = (2, 2),
        head_dim: int = 32,
        mlp_ratio: int = 4,
        task_mode: str = "class",
        tasks: Sequence[Sequence[Any]] | dict[str, Sequence[str]] | None = None,
        context: str | None = None,
        modality_loss_weight: float = 0.01,
        update_priors: bool = True,
        update_features: bool = True,
        dataset_classes: dict[str, Sequence[str]] | None = None,
        prototype_dim: int = 32,
    ):
        super().__init__(class_names)
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError("hermes: class_names contains duplicates")
        if task_mode not in ("class", "dataset"):
            raise ConfigError(f"hermes: task_mode must be 'class' or 'dataset', got {task_mode!r}")
        if context is None:  # a checkpoint from before `dataset_classes` keeps the context it trained with
            context = "dataset" if dataset_classes else "group"
        if context not in ("dataset", "group", "prompted"):
            raise ConfigError(f"hermes: context must be 'dataset', 'group' or 'prompted', got {context!r}")
        if int(prototype_dim) < 1:
            raise ConfigError(f"hermes: prototype_dim must be >= 1, got {prototype_dim!r}")
        self.prototype_dim = int(prototype_dim)
        self.table = DatasetTable(dataset_classes, self.class_names, "hermes")
        if len(encoder_levels) != len(encoder_blocks) or len(decoder_levels) != len(decoder_blocks):
            raise ConfigError("hermes: encoder_levels/encoder_blocks (decoder_levels/decoder_blocks) differ in length")
        if tokens_per_modality < 1 or head_dim < 1 or any(int(b) < 1 for b in [*encoder_blocks, *decoder_blocks]):
            raise ConfigError("hermes: tokens_per_modality, head_dim and block counts must be >= 1")
        self.modalities = Modalities(modalities, default_modality, "hermes")
        self.tokens_per_modality = int(tokens_per_modality)
        self.encoder_levels = [int(s) for s in encoder_levels]
        self.decoder_levels = [int(s) for s in decoder_levels]
        self.encoder_blocks = [int(b) for b in encoder_blocks]
        self.decoder_blocks = [int(b) for b in decoder_blocks]
        self.head_dim, self.mlp_ratio = int(head_dim), int(mlp_ratio)
        self.task_mode, self.context = task_mode, context
        self.modality_loss_weight = float(modality_loss_weight)
        self.update_priors, self.update_features = bool(update_priors), bool(update_features)

        self.tasks: list[tuple[str | None, str]] = self._initial_tasks(tasks)
        groups: dict[str | None, int] = {}
        for d, _ in self.tasks:
            groups.setdefault(d, len(groups))
        # Persistent: survives a checkpoint rebuilt from (config, class_names) after add_classes.
        self.register_buffer("task_group", torch.tensor([groups[d] for d, _ in self.tasks], dtype=torch.long))
        self.encoder_fusion = nn.ModuleDict()
        self.decoder_fusion = nn.ModuleDict()
        self.prototype: nn.Module | None = None
        self.projection: nn.Module = nn.Identity()
        self.modality_norm: nn.Module | None = None
        self.modality_head: nn.Module | None = None
        self._order: list[str] = []

    # -- tasks -------------------------------------------------------------------------------------
    def _initial_tasks(self, tasks) -> list[tuple[str | None, str]]:
        if self.task_mode == "class":
            if tasks:
                raise ConfigError("hermes: `tasks` is only used with task_mode: dataset")
            return [(None, c) for c in self.class_names]
        if not tasks:
            raise ConfigError("hermes: task_mode 'dataset' needs `tasks: [[dataset, class], ...]`")
        pairs = [(d, c) for d, cs in tasks.items() for c in cs] if isinstance(tasks, dict) else list(tasks)
        out: list[tuple[str | None, str]] = []
        for p in pairs:
            if not isinstance(p, (list, tuple)) or len(p) != 2:
                raise ConfigError(f"hermes: each task must be [dataset, class], got {p!r}")
            d, c = (None if p[0] is None else str(p[0])), str(p[1])
            if c not in self.class_names:
                raise ConfigError(f"hermes: task {[d, c]} names a class the model does not have")
            if (d, c) in out:
                raise ConfigError(f"hermes: task {[d, c]} listed twice")
            out.append((d, c))
        covered = {c for _, c in out}
        out += [(None, c) for c in self.class_names if c not in covered]
        return out

    def config_updates(self) -> dict[str, Any]:
        """Conditioner config entries a checkpoint saves (dataset table, the context, dataset mode's
        tasks): with the table recorded, `context` must be too, or a "group" model would reload as
        "dataset"."""
        out: dict[str, Any] = {"dataset_classes": self.table.as_config(), "context": self.context}
        if self.task_mode == "dataset":
            out["tasks"] = [[d, c] for d, c in self.tasks]
        return out

    def task_pool_parameters(self) -> list[nn.Parameter]:
        """The task prior pools of every scale (what incremental learning trains)."""
        return [lvl.task_prior for lvl in self._levels()]

    def _levels(self) -> Iterable[PriorFusionLevel]:
        yield from self.encoder_fusion.values()
        yield from self.decoder_fusion.values()

    # -- wiring ------------------------------------------------------------------------------------
    def bind(self, backbone: nn.Module) -> None:
        """Build one fusion level per wanted scale the backbone has; size heads from its widths.

        `levels_used` records {"encoder"/"decoder": [(wanted factor, backbone level), ...]}.
        """
        enc_c, dec_c = list(backbone.encoder_channels), list(backbone.decoder_channels)
        enc_s, dec_s = list(backbone.encoder_strides), list(backbone.decoder_strides)
        enc = pick_levels(enc_s, self.encoder_levels)
        dec = pick_levels(dec_s, self.decoder_levels)
        if not enc and not dec:
            raise ConfigError(
                f"hermes: the backbone has none of the scales 1/{self.encoder_levels} (encoder) "
                f"or 1/{self.decoder_levels} (decoder)"
            )
        n_t, n_m, l = len(self.tasks), len(self.modalities), self.tokens_per_modality
        self.encoder_fusion = nn.ModuleDict({
            str(lv): PriorFusionLevel(enc_c[lv], n_t, n_m, l, self.encoder_blocks[j], self.head_dim, self.mlp_ratio)
            for j, lv in enc
        })
        self.decoder_fusion = nn.ModuleDict({
            str(lv): PriorFusionLevel(dec_c[lv], n_t, n_m, l, self.decoder_blocks[j], self.head_dim, self.mlp_ratio)
            for j, lv in dec
        })
        self._order = [f"enc{lv}" for _, lv in enc] + [f"dec{lv}" for _, lv in dec]
        total = sum(enc_c[lv] for _, lv in enc) + sum(dec_c[lv] for _, lv in dec)
        if int(backbone.out_channels) != self.prototype_dim:
            self.projection = ConvBlock(int(backbone.out_channels), self.prototype_dim, (1, 1, 1))
        out = self.prototype_dim
        # Code: HierarchyPriorClassifier = LayerNorm -> Mlp(total->out) -> Mlp(out->out), xavier, zero bias.
        self.prototype = nn.Sequential(nn.LayerNorm(total), _mlp(total, total, out), _mlp(out, out, out))
        for m in self.prototype.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # Code: ModalityClassifier = LayerNorm -> average over the l tokens -> Mlp(total -> |M|).
        self.modality_norm = nn.LayerNorm(total)
        self.modality_head = _mlp(total, total, n_m)
        self.to(self.task_group.device)
        self.levels_used = {"encoder": [(self.encoder_levels[j], lv) for j, lv in enc],
                            "decoder": [(self.decoder_levels[j], lv) for j, lv in dec]}

    # -- per forward ----------------------------------------------------------------------------------
    def _task_lookup(self):
        """(dataset, class) -> task index, and each class's default task."""
        index = {t: i for i, t in enumerate(self.tasks)}
        default: dict[str, int] = {}
        for i, (_, c) in enumerate(self.tasks):
            default.setdefault(c, i)
        return index, default

    def _rows(self, names: list[str], datasets: Sequence[str | None] | None, batch_size: int):
        """Per sample: its context rows (each a list of (task, attends)) and, per asked class, the
        (row, task) that answers it. `group`/`prompted`: one row per sample."""
        index, default = self._task_lookup()

        def task(d, c):
            return index.get((d, c), default[c]) if d is not None and self.task_mode == "dataset" else default[c]

        group = self.task_group.tolist()
        rows, answers = [], []
        for b in range(batch_size):
            d = datasets[b] if datasets is not None else None
            if self.context == "dataset":
                own = self.table.index(d)
                ctx_sets = [own] if own is not None else list(dict.fromkeys(self.table.default(c) for c in names))
                which = [0 if own is not None else ctx_sets.index(self.table.default(c)) for c in names]
                tasks_of = [[task(self.table.datasets[t], c) for c in self.table.classes[t]] for t in ctx_sets]
                asked = [task(self.table.datasets[ctx_sets[w]], c) for w, c in zip(which, names)]
            else:
                asked = [task(d, c) for c in names]
                if self.context == "group":
                    wanted = {group[t] for t in asked}
                    tasks_of = [[t for t in range(len(self.tasks)) if group[t] in wanted]]
                else:
                    tasks_of = [list(dict.fromkeys(asked))]
                which = [0] * len(names)
            rows.append(tasks_of)
            answers.append(list(zip(which, asked)))
        return rows, answers

    def prepare(self, prompts: PromptBatch, batch_size: int) -> Context:
        ctx = Context(prompts=prompts, batch_size=batch_size)
        self.check_known(prompts, "hermes")
        datasets = prompts.datasets
        if datasets is not None and len(datasets) != batch_size:
            raise InputError(None, f"hermes: {len(datasets)} dataset names given for a batch of {batch_size}")
        names = [self.class_names[i] for i in prompts.indices]
        rows, answers = self._rows(names, datasets, batch_size)
        g = max(len(r) for r in rows)
        rows = [r + [r[0]] * (g - len(r)) for r in rows]  # the same count per sample (repeats unread)
        # Each row's tokens: its context (attended by the features), then asked tasks outside it
        # (read out only, masked from the features).
        tokens, masks, read, row_of = [], [], [], []
        for b in range(batch_size):
            extra = [t for _, t in answers[b]]
            for tasks in rows[b]:
                outside = [t for t in dict.fromkeys(extra) if t not in tasks]
                tokens.append(list(tasks) + outside)
                masks.append([True] * len(tasks) + [False] * len(outside))
            read.append([tokens[b * g + w].index(t) for w, t in answers[b]])
            row_of.append([b * g + w for w, _ in answers[b]])
        width = max(len(t) for t in tokens)
        dev = self.task_group.device
        task_idx = torch.zeros(batch_size * g, width, dtype=torch.long)
        task_mask = torch.zeros(batch_size * g, width, dtype=torch.bool)
        for r, (t, m) in enumerate(zip(tokens, masks)):
            task_idx[r, : len(t)] = torch.tensor(t, dtype=torch.long)
            task_mask[r, : len(m)] = torch.tensor(m, dtype=torch.bool)
        mod, given = self.modalities.indices(prompts.modality, batch_size)
        ctx["hermes.rows"] = g
        ctx["hermes.task_idx"] = task_idx.to(dev)
        ctx["hermes.task_mask"] = task_mask.to(dev)
        ctx["hermes.read"] = torch.tensor(read, dtype=torch.long, device=dev).view(batch_size, len(names))
        ctx["hermes.row_of"] = torch.tensor(row_of, dtype=torch.long, device=dev).view(batch_size, len(names))
        ctx["hermes.mod_idx"] = torch.tensor(mod, dtype=torch.long, device=dev).repeat_interleave(g)
        ctx["hermes.mod_target"] = torch.tensor([m if gv else -1 for m, gv in zip(mod, given)], dtype=torch.long,
                                                device=dev).repeat_interleave(g)
        ctx["hermes.task_post"] = {}
        ctx["hermes.mod_post"] = {}
        return ctx

    def on_input(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """One copy of each sample per context it is answered in (only at dataset-free inference)."""
        g = ctx["hermes.rows"]
        return x if g == 1 else x.repeat_interleave(g, 0)

    def _fuse(self, name: str, level: PriorFusionLevel, feat: torch.Tensor, ctx: Context) -> torch.Tensor:
        feat, task_post, mod_post = level(
            feat, ctx["hermes.task_idx"], ctx["hermes.task_mask"], ctx["hermes.mod_idx"],
            self.update_priors, self.update_features,
        )
        ctx["hermes.task_post"][name] = task_post
        ctx["hermes.mod_post"][name] = mod_post
        return feat

    def on_encoder(self, level: int, feat: torch.Tensor, ctx: Context) -> torch.Tensor:
        fusion = self.encoder_fusion[str(level)] if str(level) in self.encoder_fusion else None
        return feat if fusion is None else self._fuse(f"enc{level}", fusion, feat, ctx)

    def on_decoder(self, level: int, feat: torch.Tensor, ctx: Context) -> torch.Tensor:
        fusion = self.decoder_fusion[str(level)] if str(level) in self.decoder_fusion else None
        return feat if fusion is None else self._fuse(f"dec{level}", fusion, feat, ctx)

    def predict(self, decoder_out: torch.Tensor, encoder_feats: list[torch.Tensor], ctx: Context) -> torch.Tensor:
        missing = [n for n in self._order if n not in ctx["hermes.task_post"]]
        if self.prototype is None or missing:
            raise RuntimeError(f"hermes: fusion levels {missing or self._order} were not run (bind/backbone hooks)")
        read, row_of, g = ctx["hermes.read"], ctx["hermes.row_of"], ctx["hermes.rows"]
        b, k = read.shape
        tokens = torch.cat([ctx["hermes.task_post"][n] for n in self._order], dim=-1)   # [B*G, P, sum C]
        p = tokens.shape[1]
        tokens = tokens.reshape(-1, tokens.shape[-1]).index_select(0, (row_of * p + read).reshape(-1))
        proto = self.prototype(tokens.view(b, k, -1))                                     # [B, K, D]
        feats = self.projection(decoder_out)                                              # [B*G, D, *S]
        flat = feats.flatten(2).view(b, g, feats.shape[1], -1).to(proto.dtype)
        if g == 1:
            logits = torch.bmm(proto, flat[:, 0])                                         # [B, K, V]
        else:  # each class reads the copy of its sample run in its own context
            every = torch.einsum("bkd,bgdv->bkgv", proto, flat)
            which = (row_of - torch.arange(b, device=row_of.device)[:, None] * g)
            logits = torch.gather(every, 2, which[..., None, None].expand(b, k, 1, every.shape[-1]))[:, :, 0]
        mods = torch.cat([ctx["hermes.mod_post"][n] for n in self._order], dim=-1)       # [B*G, l, sum C]
        ctx["hermes.modality_logits"] = self.modality_head(self.modality_norm(mods).mean(dim=1))
        return logits.to(decoder_out.dtype).view(b, k, *decoder_out.shape[2:])

    def auxiliary_loss(self, ctx: Context) -> torch.Tensor | None:
        """Weighted modality cross-entropy over samples whose modality was given (0 if none)."""
        logits = ctx.data.get("hermes.modality_logits")
        if logits is None:
            return None
        target = ctx["hermes.mod_target"]
        if not bool((target >= 0).any()):
            return logits.sum() * 0.0  # keeps the classifier in the graph (DDP) with a zero gradient
        return self.modality_loss_weight * F.cross_entropy(logits.float(), target, ignore_index=-1)

    # -- continual learning --------------------------------------------------------------------------
    def class_parameters(self) -> dict[str, list[ClassPart]]:
        """Each class owns the rows of its tasks in every scale's task pool (and in `task_group`)."""
        out: dict[str, list[ClassPart]] = {n: [] for n in self.class_names}
        pools = [f"encoder_fusion.{k}.task_prior" for k in self.encoder_fusion]
        pools += [f"decoder_fusion.{k}.task_prior" for k in self.decoder_fusion]
        for t, (_, c) in enumerate(self.tasks):
            rows = slice(t, t + 1)
            out[c] += [ClassPart(key, rows) for key in pools] + [ClassPart("task_group", rows)]
        return out

    def add_classes(self, names: Sequence[str], embeddings: torch.Tensor | None = None,
                    datasets: Sequence[str | None] | None = None) -> None:
        """New task tokens (one row per scale each) in a new context group; nothing else changes.

        Class mode: `names` must be new classes, all in one new group (`datasets` is not used).
        Dataset mode: adds tasks (dataset, name) per dataset of `datasets` (one per name; None:
        dataset-free tasks), each joining that dataset's group if it exists (else a new group);
        names may then be existing classes.
        """
        names = [str(n) for n in names]
        if len(set(names)) != len(names):
            raise ConfigError(f"hermes: add_classes got duplicate names {names}")
        if datasets is not None and len(datasets) != len(names):
            raise ConfigError(f"hermes: add_classes got {len(datasets)} datasets for {len(names)} names")
        if self.task_mode == "class" or datasets is None:
            self._add_tasks(names, None)
            return
        by_ds: dict[str | None, list[str]] = {}
        for n, d in zip(names, datasets):
            by_ds.setdefault(None if d is None else str(d), []).append(n)
        for d, group in by_ds.items():
            self._add_tasks(group, d)

    def _add_tasks(self, names: list[str], dataset: str | None) -> None:
        new_tasks = [(dataset, n) for n in names]
        clash = [t for t in new_tasks if t in self.tasks] + (
            [(None, n) for n in names if n in self.class_names] if self.task_mode == "class" else [])
        if clash:
            raise ConfigError(f"hermes: task(s) {clash} already exist")
        groups = self.task_group.tolist()
        same = [groups[i] for i, (d, _) in enumerate(self.tasks) if d == dataset and dataset is not None]
        gid = same[0] if same else (max(groups) + 1 if groups else 0)
        self.tasks.extend(new_tasks)
        self.class_names.extend(n for n in names if n not in self.class_names)
        self.table.add(dataset if dataset is not None else f"added-{len(self.table)}", names)
        self.task_group = torch.cat([self.task_group, self.task_group.new_full((len(names),), gid)])
        for level in self._levels():
            level.grow(len(names))
