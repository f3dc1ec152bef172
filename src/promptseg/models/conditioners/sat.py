"""SAT (Segment Anything in radiology scans, by Text): text embeddings as queries of a decoder.

Why this shape (paper §6.3 and the authors' code, model/maskformer.py + transformer_decoder.py):
- query  = trainable projection of a text embedding of the class name + learned modality embedding;
- keys/values = every encoder level average-pooled to the coarsest (bottleneck) grid, concatenated
  along channels and projected to d_model by a 2-layer MLP; a fixed 3D sinusoidal positional
  encoding is added to the keys only;
- `depth` pre-norm decoder layers of cross-attention (queries <- image tokens) + FFN; the authors'
  layer has **no self-attention between queries** (it is commented out in their code), which is
  also what makes the logits of class k depend on query k only. `query_self_attention=True` turns
  it on for experiments and breaks that property;
- mask = <MLP(query) -> pixel_dim, per-voxel decoder features projected to pixel_dim>.
  SAT's per-voxel features are its U-Net's last decoder stage, 64 channels wide. `pixel_levels=L`
  (not the authors'; default 1 = their form) reads the last L decoder stages instead (all of them
  where the backbone has fewer), the coarser ones upsampled (trilinear) to the finest grid and
  concatenated before the projection: on a backbone whose last stage is narrow (the small U-Net's
  8 channels) the read-out of a class is otherwise linear in 8 numbers per voxel, too few to tell
  a tumour from the organ around it.
  Phantom bench, validation phantoms, SAT's recipe, 1,000 steps, mean Dice for seeds 0 / 1 / 2:
  L=1 0.918 / 0.864 / 0.891 (seed 2's pancreas tumour 0.555, dead), L=3 0.931 / 0.916 / 0.935
  (pancreas tumour 0.71 / 0.65 / 0.77).
Only `predict` is implemented (and `on_encoder` / `on_decoder`, which just record features): the
backbone stays a plain U-Net, so SAT trains through the same trainer as every other conditioner.

`text_norm="centred"` (the default; not the authors': "none" is theirs): a text embedding
enters the projection minus a fixed centre (the mean embedding of the classes the model was
built with, a buffer that later classes never move) and rescaled to unit RMS per dimension.
MiniLM's unit vectors share most of their direction (cosine 0.70-0.97 between our classes;
after centring -0.01-0.89) and are ~1/sqrt(E) per entry against the modality embedding's ~1, so
the queries start almost alike. Phantom bench, validation phantoms, SAT's recipe, 600 steps,
mean Dice over 2 seeds: 0.51 as given, 0.60 centred (lr 1e-4); centred at lr 1e-3 (the recipe
since): 0.85, as given at that lr 0.75. The published SAT weights load through
models/official_sat.py, not this class; checkpoints saved before the option existed have no
`text_centre` buffer and load as "none" (`checkpoint.as_trained`).

Open vocabulary: embeddings of `class_names` are a buffer (the checkpoint is self-contained);
any other prompt is embedded at run time by a text encoder (`set_text_encoder`, else
`promptseg.text.embed_classes` with this conditioner's encoder name and template) and cached.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, InputError
from ...text import DEFAULT_TEMPLATE
from .base import ClassPart, Conditioner, Context, PromptBatch, PromptError, unit_rms
from .queries import sample_queries  # noqa: F401 - SAT's sampling rule, importable from here

TextEncoder = Callable[[list[str]], torch.Tensor]
#: "centred": minus the buffer `text_centre`, then unit RMS per dimension; "none": as given.
TEXT_NORMS = ("centred", "none")

#: Spellings of a modality folded onto the canonical names (SAT merges T1/T2/FLAIR/DWI into MRI).
_MODALITY_ALIASES = {
    "CT": "CT",
    "MR": "MR", "MRI": "MR", "T1": "MR", "T1W": "MR", "T1C": "MR", "T1CE": "MR", "T2": "MR",
    "T2W": "MR", "FLAIR": "MR", "DWI": "MR", "ADC": "MR",
    "PET": "PET", "PT": "PET",
    "US": "US", "ULTRASOUND": "US",
}


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------
def sinusoidal_3d(grid: Sequence[int], dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Fixed 3D sine/cosine encoding of a (X, Y, Z) token grid -> [X*Y*Z, dim] (row-major order).

    Same scheme as the `positional_encodings` package SAT uses: each axis gets an even share
    c = 2*ceil(dim/6) of the channels, with sin/cos pairs at frequencies 1/10000^(2i/c) of the
    integer index along that axis; the three blocks are concatenated and cut to `dim`.
    """
    if len(grid) != 3:
        raise ValueError(f"sinusoidal_3d needs a 3D grid, got {tuple(grid)}")
    c = 2 * math.ceil(dim / 6)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, c, 2, device=device, dtype=torch.float32) / c))
    blocks = []
    for axis, n in enumerate(grid):
        ang = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv_freq[None]  # [n, c/2]
        emb = torch.stack((ang.sin(), ang.cos()), dim=-1).flatten(-2)  # sin, cos interleaved: [n, c]
        shape = [1, 1, 1, c]
        shape[axis] = n
        blocks.append(emb.view(shape).expand(*grid, c))
    return torch.cat(blocks, dim=-1)[..., :dim].reshape(-1, dim).to(dtype)


class QueryDecoderLayer(nn.Module):
    """Pre-norm decoder layer: [self-attention among queries] -> cross-attention -> FFN.

    Positional encoding is added to the keys only (values are the raw image tokens), as in SAT.
    """

    def __init__(self, d_model: int, heads: int, ffn_dim: int, dropout: float, self_attention: bool):
        super().__init__()
        self.self_attn = (
            nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True) if self_attention else None
        )
        self.norm_self = nn.LayerNorm(d_model) if self_attention else None
        self.norm_cross = nn.LayerNorm(d_model)
        self.cross_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, d_model)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if self.self_attn is not None:
            h = self.norm_self(q)
            q = q + self.drop(self.self_attn(h, h, h, need_weights=False)[0])
        h = self.norm_cross(q)
        q = q + self.drop(self.cross_attn(h, memory + pos, memory, need_weights=False)[0])
        return q + self.drop(self.ffn(self.norm_ffn(q)))


class QueryDecoder(nn.Module):
    """`depth` layers and a final LayerNorm; queries [B, K, d], memory [B, N, d], pos [N, d]."""

    def __init__(self, d_model: int, depth: int, heads: int, ffn_dim: int, dropout: float, self_attention: bool):
        super().__init__()
        self.layers = nn.ModuleList(
            QueryDecoderLayer(d_model, heads, ffn_dim, dropout, self_attention) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, q: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        pos = pos.unsqueeze(0)
        for layer in self.layers:
            q = layer(q, memory, pos)
        return self.norm(q)


def _mlp(sizes: Sequence[int], last_act: bool) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        mods.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_act:
            mods.append(nn.GELU())
    return nn.Sequential(*mods)


# ----------------------------------------------------------------------------------------------
# The conditioner
# ----------------------------------------------------------------------------------------------
class SATConditioner(Conditioner):
    """SAT query decoder + mask generator on any `Backbone` (see module docstring).

    Defaults are SAT-Nano's: d_model 768, 6 layers, 8 heads, FFN 2048, dropout 0.1, d' = 64,
    mask MLP hidden 256. `text_dim` is only needed when there are no class embeddings to read it
    from (empty `class_names`).
    """

    needs_text = True
    open_vocabulary = True

    def __init__(
        self,
        class_names: Sequence[str] = (),
        embeddings: torch.Tensor | None = None,
        d_model: int = 768,
        depth: int = 6,
        heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        pixel_dim: int = 64,
        mask_hidden: int = 256,
        modalities: Sequence[str] = ("CT", "MR", "PET"),
        default_modality: str = "CT",
        query_self_attention: bool = False,
        text_encoder: str = "minilm",
        template: str = DEFAULT_TEMPLATE,
        text_dim: int | None = None,
        text_norm: str = "centred",
        pixel_levels: int = 1,
    ):
        super().__init__(class_names)
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError("sat: class_names contains duplicates")
        if text_norm not in TEXT_NORMS:
            raise ConfigError(f"sat: text_norm must be one of {', '.join(TEXT_NORMS)}, got {text_norm!r}")
        self.text_norm = text_norm
        if isinstance(pixel_levels, bool) or not isinstance(pixel_levels, int) or pixel_levels < 1:
            raise ConfigError(f"sat: pixel_levels must be a positive integer, got {pixel_levels!r}")
        self.pixel_levels = pixel_levels
        if d_model % heads:
            raise ConfigError(f"sat: d_model ({d_model}) must be divisible by heads ({heads})")
        if depth < 1:
            raise ConfigError(f"sat: depth must be >= 1, got {depth}")
        self.text_encoder_name = text_encoder
        self.template = template
        self._text_fn: TextEncoder | None = None
        self._runtime_cache: dict[str, torch.Tensor] = {}

        if embeddings is None:
            if self.class_names:
                embeddings = self._encode(self.class_names)
            else:
                embeddings = torch.zeros(0, text_dim or 384)
        embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(self.class_names):
            raise ConfigError(
                f"sat: embeddings must be [{len(self.class_names)}, E] (one row per class), "
                f"got {tuple(embeddings.shape)}"
            )
        if text_dim is not None and embeddings.shape[1] != text_dim:
            raise ConfigError(f"sat: text_dim {text_dim} does not match embeddings of width {embeddings.shape[1]}")
        self.register_buffer("embeddings", embeddings.clone())
        self.text_dim = int(embeddings.shape[1])
        if text_norm == "centred":  # fixed at construction: classes added later do not move it
            centre = embeddings.mean(dim=0) if len(embeddings) else embeddings.new_zeros(self.text_dim)
            self.register_buffer("text_centre", centre.clone())

        self.modalities = [self._canonical_modality(m, check=False) for m in modalities]
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"sat: duplicate modalities in {list(modalities)}")
        self.default_modality = self._canonical_modality(default_modality)

        self.d_model, self.pixel_dim = d_model, pixel_dim
        # Query = text projection (SAT's knowledge-encoder head: Linear-GELU-Linear) + modality.
        self.text_proj = _mlp([self.text_dim, d_model, d_model], last_act=False)
        self.modality_embed = nn.Embedding(len(self.modalities), d_model)
        self.decoder = QueryDecoder(d_model, depth, heads, ffn_dim, dropout, query_self_attention)
        self.mask_mlp = _mlp([d_model, mask_hidden, pixel_dim], last_act=True)
        self.query_self_attention = query_self_attention
        # Sized by `bind` from the backbone's channel counts.
        self.memory_proj: nn.Module | None = None
        self.pixel_proj: nn.Module | None = None
        self._coarsest = -1
        self._pixel_stages: list[int] = []

    # -- wiring --------------------------------------------------------------------------------
    def bind(self, backbone: nn.Module) -> None:
        """Size the image-token and per-voxel projections from the backbone's channels."""
        enc = list(backbone.encoder_channels)
        strides = [tuple(s) for s in getattr(backbone, "encoder_strides", [])] or [(1, 1, 1)] * len(enc)
        if len(strides) != len(enc):
            raise ConfigError("sat: backbone encoder_strides and encoder_channels differ in length")
        self._n_levels = len(enc)
        # The grid every level is pooled to: the level with the largest down-sampling (bottleneck).
        self._coarsest = max(range(len(enc)), key=lambda i: (math.prod(strides[i]), i))
        # SAT: concatenated pooled levels -> Linear-GELU-Linear-GELU to d_model.
        self.memory_proj = _mlp([sum(enc), self.d_model, self.d_model], last_act=True)
        # SAT uses the last decoder stage (64 ch = d') as is; any backbone width is mapped to d'
        # (with `pixel_levels` > 1, the output and the coarser decoder stages before it).
        # A backbone with fewer decoder stages than `pixel_levels` gives all it has.
        dec = list(getattr(backbone, "decoder_channels", []))
        levels = min(self.pixel_levels, max(len(dec), 1))
        self._pixel_stages = list(range(len(dec) - levels, len(dec) - 1))
        width = int(backbone.out_channels) + sum(int(dec[d]) for d in self._pixel_stages)
        self.pixel_proj = nn.Conv3d(width, self.pixel_dim, kernel_size=1)
        ref = self.embeddings
        self.memory_proj.to(ref.device)
        self.pixel_proj.to(ref.device)

    def head_parameters(self) -> list[nn.Parameter]:
        """The text projection (`head_lr_scale`): class names reach the decoder only through it,
        and MiniLM's embeddings of them are close (cosine 0.7-0.97), so at the backbone's lr the
        queries stay alike and classes compete for the same voxels (phantom bench datasets, 600
        steps, SAT's recipe, scored on phantoms of another seed than the bench's: mean Dice 0.29 at
        x1; 0.40 at x30, 0.51 at x100, 0.51 at x300, each the mean of two training seeds, at the
        paper's lr 1e-4; at lr 1e-3 with `text_norm="centred"`, x30 0.85 and x100 0.84)."""
        return list(self.text_proj.parameters())

    def config_updates(self) -> dict:
        """Checkpoints record how text embeddings enter (older ones: "none", `checkpoint.as_trained`)."""
        return {"text_norm": self.text_norm, "pixel_levels": self.pixel_levels}

    def set_text_encoder(self, fn: TextEncoder | None) -> None:
        """Use `fn(names) -> Tensor[N, E]` for prompts outside `class_names` (None: promptseg.text)."""
        self._text_fn = fn
        self._runtime_cache.clear()

    # -- text ------------------------------------------------------------------------------------
    def _encode(self, names: list[str]) -> torch.Tensor:
        if self._text_fn is not None:
            out = self._text_fn(list(names))
        else:
            try:
                from ...text import embed_classes
            except ImportError as exc:
                raise PromptError(
                    f"sat: cannot embed {names[:3]!r}: no text encoder available ({exc})"
                ) from None
            out = embed_classes(list(names), encoder=self.text_encoder_name, template=self.template)
        out = torch.as_tensor(out, dtype=torch.float32).detach().cpu()
        if out.ndim != 2 or out.shape[0] != len(names):
            raise PromptError(f"sat: text encoder returned {tuple(out.shape)} for {len(names)} names")
        if hasattr(self, "text_dim") and out.shape[1] != self.text_dim:
            raise PromptError(
                f"sat: text encoder gives {out.shape[1]}-d embeddings, the model was built with {self.text_dim}-d"
            )
        return out

    def embed(self, names: Sequence[str], indices: Sequence[int] | None = None) -> torch.Tensor:
        """Text embeddings [K, E] for prompts: stored rows for known classes, encoded for others."""
        index = {n: i for i, n in enumerate(self.class_names)}
        rows: list[int | None] = []
        for j, name in enumerate(names):
            i = indices[j] if indices is not None and j < len(indices) else -1
            if not (0 <= i < len(self.class_names) and self.class_names[i] == name):
                i = index.get(name, -1)
            rows.append(i if i >= 0 else None)
        missing = [n for n, r in zip(names, rows) if r is None and n not in self._runtime_cache]
        if missing:
            missing = list(dict.fromkeys(missing))
            for n, e in zip(missing, self._encode(missing)):
                self._runtime_cache[n] = e
        buf = self.embeddings
        out = [buf[r] if r is not None else self._runtime_cache[n].to(buf.device) for n, r in zip(names, rows)]
        return torch.stack(out) if out else buf.new_zeros(0, self.text_dim)

    # -- modality --------------------------------------------------------------------------------
    def _canonical_modality(self, name: str, check: bool = True) -> str:
        key = str(name).strip().upper()
        canon = _MODALITY_ALIASES.get(key, key)
        if check and canon not in self.modalities:
            raise InputError(None, f"sat: unknown modality {name!r}; this model knows {', '.join(self.modalities)}")
        return canon

    def modality_ids(self, modality: Sequence[str] | None, batch_size: int) -> torch.Tensor:
        """Index of each sample's modality in `modalities` (default_modality when not given)."""
        mods = list(modality) if modality is not None else [self.default_modality] * batch_size
        if len(mods) != batch_size:
            raise InputError(None, f"sat: {len(mods)} modalities given for a batch of {batch_size}")
        ids = [self.modalities.index(self._canonical_modality(m)) for m in mods]
        return torch.tensor(ids, dtype=torch.long, device=self.modality_embed.weight.device)

    # -- hooks -----------------------------------------------------------------------------------
    def prepare(self, prompts: PromptBatch, batch_size: int) -> Context:
        ctx = Context(prompts=prompts, batch_size=batch_size)
        ctx["sat.text"] = self.embed(prompts.classes, prompts.indices)
        ctx["sat.modality"] = self.modality_ids(prompts.modality, batch_size)
        ctx["sat.encoder"] = {}
        if self._pixel_stages:
            ctx["sat.decoder"] = {}
        return ctx

    def on_encoder(self, level: int, feat: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Record the multi-scale encoder features (keys/values of the query decoder)."""
        if "sat.encoder" in ctx.data:
            ctx["sat.encoder"][level] = feat
        return feat

    def on_decoder(self, level: int, feat: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Record the decoder stages the per-voxel embedding reads (`pixel_levels` > 1)."""
        if level in self._pixel_stages and "sat.decoder" in ctx.data:
            ctx["sat.decoder"][level] = feat
        return feat

    def pixel_features(self, decoder_out: torch.Tensor, ctx: Context) -> torch.Tensor:
        """[B, d', *spatial]: the per-voxel embedding (module docstring, `pixel_levels`)."""
        if self.pixel_proj is None:
            raise RuntimeError("SATConditioner.bind(backbone) was not called")
        parts = [decoder_out]
        if self._pixel_stages:
            stages = ctx.data.get("sat.decoder", {})
            missing = [d for d in self._pixel_stages if d not in stages]
            if missing:
                raise RuntimeError(f"sat: decoder stages {missing} were not recorded (on_decoder not called)")
            size = tuple(decoder_out.shape[2:])
            parts += [F.interpolate(stages[d].to(decoder_out.dtype), size=size, mode="trilinear", align_corners=False)
                      for d in self._pixel_stages]
        return self.pixel_proj(torch.cat(parts, dim=1) if len(parts) > 1 else decoder_out)

    def text_input(self, text: torch.Tensor) -> torch.Tensor:
        """What the text projection sees: the embeddings as `text_norm` says (module docstring)."""
        if self.text_norm == "none":
            return text
        return unit_rms(text - self.text_centre.to(text))

    def queries(self, ctx: Context) -> torch.Tensor:
        """[B, K, d]: projected text embedding + the sample's modality embedding."""
        q = self.text_proj(self.text_input(ctx["sat.text"]))
        return q.unsqueeze(0) + self.modality_embed(ctx["sat.modality"]).unsqueeze(1)

    def image_tokens(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool every level to the coarsest grid, concat, project: memory [B, N, d], pos [N, d]."""
        if self.memory_proj is None:
            raise RuntimeError("SATConditioner.bind(backbone) was not called")
        if len(feats) != self._n_levels:
            raise RuntimeError(f"sat: expected {self._n_levels} encoder levels, got {len(feats)}")
        grid = tuple(feats[self._coarsest].shape[2:])
        pooled = [f if tuple(f.shape[2:]) == grid else F.adaptive_avg_pool3d(f, grid) for f in feats]
        x = torch.cat(pooled, dim=1).flatten(2).transpose(1, 2)  # [B, N, sum C]
        memory = self.memory_proj(x)
        pos = sinusoidal_3d(grid, self.d_model, device=memory.device, dtype=memory.dtype)
        return memory, pos

    def predict(self, decoder_out: torch.Tensor, encoder_feats: list[torch.Tensor], ctx: Context) -> torch.Tensor:
        feats = list(encoder_feats) if encoder_feats else [
            ctx["sat.encoder"][k] for k in sorted(ctx.data.get("sat.encoder", {}))
        ]
        b, k = decoder_out.shape[0], len(ctx.prompts)
        if b != ctx.batch_size:
            raise RuntimeError(f"sat: decoder output batch {b} != input batch {ctx.batch_size}")
        if k == 0:
            return decoder_out.new_zeros((b, 0, *decoder_out.shape[2:]))
        memory, pos = self.image_tokens(feats)
        q = self.decoder(self.queries(ctx).to(memory.dtype), memory, pos)  # [B, K, d]
        g = self.mask_mlp(q)  # [B, K, d']
        u = self.pixel_features(decoder_out, ctx)  # [B, d', *spatial]
        return torch.einsum("bkc,bc...->bk...", g.to(u.dtype), u)

    # -- continual learning ------------------------------------------------------------------------
    def class_parameters(self) -> dict[str, list[ClassPart]]:
        """Each known class owns only its row of the embedding table; everything else is shared."""
        return {n: [ClassPart("embeddings", slice(i, i + 1))] for i, n in enumerate(self.class_names)}

    def add_classes(self, names: Sequence[str], embeddings: torch.Tensor | None = None,
                    datasets: Sequence[str | None] | None = None) -> None:
        """Nothing structural: queries are text, so new classes only extend the embedding table."""
        names = list(names)
        if embeddings is None:
            new = [n for n in dict.fromkeys(names) if n not in self.class_names]
            embeddings = self._encode(new) if new else self.embeddings.new_zeros(0, self.text_dim)
        else:
            embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
            if embeddings.ndim != 2 or embeddings.shape != (len(names), self.text_dim):
                raise ConfigError(
                    f"sat: add_classes needs embeddings [{len(names)}, {self.text_dim}], got {tuple(embeddings.shape)}"
                )
            keep = [i for i, n in enumerate(names) if n not in self.class_names and n not in names[:i]]
            new, embeddings = [names[i] for i in keep], embeddings[keep]
        if not new:
            return
        self.embeddings = torch.cat([self.embeddings, embeddings.to(self.embeddings)], dim=0)
        self.class_names.extend(new)
        for n in new:
            self._runtime_cache.pop(n, None)
