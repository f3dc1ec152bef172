"""SAT's published models (SAT-Nano, SAT-Pro) as promptseg modules, loaded by key name.

Facts (zhaoziheng/SAT @ 5676be5: model/maskformer.py, model/build_model.py, sh/*.sh), written anew:
- SAT-Nano = vision backbone 'UNET', SAT-Pro = 'UNET-L' (see backbones/sat_unet.py); both use
  768-d queries (so `query_proj` is an Identity, no weights) and crop 288x288x96, patch 32;
- checkpoints are `torch.save({'model_state_dict': ddp_model.state_dict(), ...})`: keys start with
  "module."; dynamic-network-architectures registers every conv/norm twice (`.conv` and
  `.all_modules.0`, `.norm` and `.all_modules.1`), so each backbone tensor appears under two names;
- the input is the 1-channel normalised image repeated to 3 channels.
The query embeddings come from SAT's text tower (text/sat_text.py); a model may carry the
embeddings of its vocabulary (`term_embeddings`, per modality) and then runs with no text tower.
Such a model also speaks the predictor's model contract (`class_names`, `canonical`, `taxonomy`,
`prompt_batch`, `model(windows, prompts)`), so `promptseg predict` runs it like any checkpoint;
`sat_run_config` gives it the run config (plans per modality, the authors' windowing) it lacks.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import yaml
from scipy.ndimage import gaussian_filter
from torch import nn

from ..errors import CheckpointError, ConfigError, InputError
from ..io.atomic import atomic_directory
from ..config import inference_settings
from ..taxonomy import Taxonomy, default_taxonomy
from ..taxonomy.sat_vocabulary import resolve_sat_term
from .backbones.sat_unet import SAT_UNET_PRESETS, SATPlainUNet
from .conditioners.base import PromptBatch, PromptError
from .sat_query_decoder import SATQueryHead
from .state import read_torch_file, state_mismatch

SAT_VARIANTS = ("nano", "pro")
# projection hidden width and mask-head middle width per published variant (maskformer.py tables)
_HEAD_SIZES = {"nano": {"hidden": 768, "mask_mid": 256}, "pro": {"hidden": 1536, "mask_mid": 384}}
_ALIAS = re.compile(r"\.convs\.(\d+)\.all_modules\.([01])\.")
_ALIAS_TO = {"0": "conv", "1": "norm"}


class OfficialSAT(nn.Module):
    """SAT's Maskformer: `forward_embeddings(image, queries)` and the name-based `forward`."""

    #: runs only at its plan's spacing on its crop (fixed position code): no --fast / --roi passes
    fixed_scale = True

    def __init__(self, variant: str = "nano", crop: Sequence[int] = (288, 288, 96), patch: int = 32,
                 features: Sequence[int] | None = None, convs: int | None = None,
                 hidden: int | None = None, mask_mid: int | None = None, dim: int = 768,
                 layers: int = 6, heads: int = 8, ffn: int = 2048):
        super().__init__()
        self.spec = {"variant": variant, "crop": list(crop), "patch": patch, "features": list(features) if features else None,
                     "convs": convs, "hidden": hidden, "mask_mid": mask_mid, "dim": dim, "layers": layers,
                     "heads": heads, "ffn": ffn}
        if variant not in SAT_VARIANTS:
            raise ConfigError(f"unknown SAT variant {variant!r}; choose one of {SAT_VARIANTS}")
        self.variant = variant
        self.backbone = SATPlainUNet(variant, 3, features, convs)
        sizes = _HEAD_SIZES[variant]
        self.head = SATQueryHead(self.backbone.features, hidden or sizes["hidden"], mask_mid or sizes["mask_mid"],
                                 tuple(crop), patch, dim, layers, heads, ffn)
        self.dim = dim
        self.vocabulary: list[str] = []
        self.modalities: list[str] = []
        self.taxonomy: Taxonomy = default_taxonomy()  # prompts resolve through it (synonyms, ambiguity)
        self.register_buffer("term_embeddings", torch.zeros(0, 0, dim))

    @property
    def crop(self) -> tuple[int, int, int]:
        return self.head.crop

    @property
    def class_names(self) -> list[str]:
        """The terms this model carries embeddings for (SAT's vocabulary after an import)."""
        return list(self.vocabulary)

    def canonical(self, prompt: str) -> str:
        """The carried term a prompt means (any spelling `resolve_sat_term` knows); an unknown or
        ambiguous name is a one-line error listing the candidates."""
        term = prompt if prompt in self.vocabulary else resolve_sat_term(prompt, self.taxonomy)
        if term not in self.vocabulary:
            raise PromptError(f"{prompt!r} means SAT's {term!r}, which this model carries no embedding for; "
                              "import it again with that term")
        return term

    def prompt_batch(self, prompts: Sequence[str] | str | None = None, modality: Sequence[str] | str | None = None,
                     datasets: Sequence[str] | None = None, batch_size: int = 1) -> PromptBatch:
        """Prompts (None = every carried term) -> a PromptBatch of carried terms, as the segmenter's."""
        if isinstance(prompts, str):
            prompts = [prompts]
        names = [self.canonical(p) for p in (prompts if prompts is not None else self.vocabulary)]
        if isinstance(modality, str):
            modality = [modality] * batch_size
        return PromptBatch(classes=names, indices=[self.vocabulary.index(n) for n in names],
                           modality=list(modality) if modality is not None else None,
                           datasets=list(datasets) if datasets is not None else None)

    def forward_embeddings(self, image: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """image [B, 1, *crop] in the plan's space, queries [N, dim] (text tower output) -> [B, N, *crop]."""
        if image.ndim != 5 or image.shape[1] not in (1, 3):
            raise InputError("image", f"SAT takes [B, 1, H, W, D] images, got {list(image.shape)}")
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InputError("queries", f"SAT takes [N, {self.dim}] query embeddings, got {list(queries.shape)}")
        if tuple(image.shape[2:]) != self.crop:
            raise InputError("image", f"SAT expects windows of {list(self.crop)} voxels, got {list(image.shape[2:])}")
        x = image.expand(-1, 3, -1, -1, -1) if image.shape[1] == 1 else image
        skips, pixels = self.backbone(x)
        return self.head(queries, skips, pixels)

    def window_weights(self, window: Sequence[int]) -> torch.Tensor:
        """The authors' blending weights for a window (their crop's map, cut to a shorter window)."""
        return _gaussian_weights(self.crop)[tuple(slice(0, int(w)) for w in window)]

    def set_vocabulary(self, names: Sequence[str], embeddings: Mapping[str, torch.Tensor]) -> None:
        """Carry the embeddings of `names` per modality ({'ct': [V, dim], ...}) inside the model."""
        mods = sorted(embeddings)
        rows = [torch.as_tensor(embeddings[m], dtype=torch.float32) for m in mods]
        if any(r.shape != (len(names), self.dim) for r in rows):
            raise ConfigError(f"vocabulary embeddings must be [{len(names)}, {self.dim}] per modality")
        self.vocabulary, self.modalities = list(names), mods
        self.term_embeddings = torch.stack(rows).to(self.term_embeddings.device)

    def queries_for(self, names: Sequence[str], modality: str) -> torch.Tensor:
        """Stored embeddings of `names` (any spelling resolve_sat_term knows) for `modality` ([N, dim])."""
        mod = sat_modality(modality)
        if mod not in self.modalities:
            raise ConfigError(f"this SAT model carries embeddings for {self.modalities or 'no modality'}, not {mod!r}")
        names = [self.canonical(n) for n in names]
        index = torch.tensor([self.vocabulary.index(n) for n in names], device=self.term_embeddings.device)
        return self.term_embeddings[self.modalities.index(mod)].index_select(0, index)

    def forward(self, image: torch.Tensor, prompts: Sequence[str] | str | PromptBatch,
                modality: str = "ct") -> torch.Tensor:
        """Logits [B, N, *spatial] for names (or a PromptBatch, whose modality wins). Windows smaller
        than the crop are zero-padded at the high end, as the authors pad a short axis, and cut back."""
        if isinstance(prompts, PromptBatch):
            modality = prompts.modality[0] if prompts.modality else modality
            prompts = prompts.classes
        queries = self.queries_for([prompts] if isinstance(prompts, str) else list(prompts), modality)
        size = tuple(int(n) for n in image.shape[2:])
        if len(size) != 3 or any(n > c for n, c in zip(size, self.crop)):
            raise InputError("image", f"SAT takes windows of at most {list(self.crop)} voxels, got {list(size)}")
        pad = [v for n, c in zip(reversed(size), reversed(self.crop)) for v in (0, c - n)]
        x = nn.functional.pad(image, pad) if any(pad) else image
        out = self.forward_embeddings(x, queries)
        return out[(slice(None), slice(None), *(slice(0, n) for n in size))] if any(pad) else out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kw):
        key = prefix + "term_embeddings"
        if key in state_dict:  # the carried vocabulary decides the buffer's size
            self.term_embeddings = torch.empty_like(state_dict[key], device=self.term_embeddings.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kw)

    def get_extra_state(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary, "modalities": self.modalities}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.vocabulary = list(state.get("vocabulary", []))
        self.modalities = list(state.get("modalities", []))


@lru_cache(maxsize=4)
def _gaussian_weights(crop: tuple[int, int, int]) -> torch.Tensor:
    """A centred delta blurred with sigma crop/8, peak scaled to 10, in float16, zeros -> the least
    non-zero value (the authors' importance map; MONAI's clamps at 1e-3 instead)."""
    delta = np.zeros(crop)
    delta[tuple(c // 2 for c in crop)] = 1
    g = gaussian_filter(delta, [c / 8 for c in crop], 0, mode="constant", cval=0)
    g = (g / g.max() * 10).astype(np.float16)
    g[g == 0] = g[g != 0].min()
    return torch.from_numpy(g.astype(np.float32))


@lru_cache(maxsize=1)
def sat_settings() -> dict[str, Any]:
    """Preprocessing, inference settings and modality codes of the authors' code (data file)."""
    return yaml.safe_load(resources.files("promptseg.models").joinpath("official_sat_settings.yaml").read_text(encoding="utf-8"))


def sat_modality(modality: str) -> str:
    """The authors' modality key ('ct', 'mri', 'us', 'pet') for a user spelling (CT, MR, T1, ...)."""
    m = str(modality).strip().lower()
    for key, spellings in sat_settings()["modality_aliases"].items():
        if m == key or m in spellings:
            return key
    raise ConfigError(f"SAT knows modalities {list(sat_settings()['modality_aliases'])}, not {modality!r}")


def sat_run_config(model: OfficialSAT) -> dict[str, Any]:
    """The run config a SAT model lacks (what a native checkpoint embeds): one plan per modality it
    carries embeddings for, and the authors' windowing as predictor settings (crop-sized windows,
    half-window stride, Gaussian blending of sigmoids, strict > threshold, no post-processing)."""
    s = sat_settings()
    plans = {s["plans"][m]["modality"]: s["plans"][m]["plan"] for m in model.modalities if m in s["plans"]}
    if not plans:
        raise ConfigError(f"this SAT model carries embeddings for {model.modalities or 'no modality'}; "
                          f"promptseg has plans for {list(s['plans'])}")
    inf = s["inference"]
    inference = inference_settings({
        "window": list(model.crop), "overlap": inf["overlap"], "mode": inf["blend"],
        "sw_batch_size": inf["sw_batch_size"], "blend": "probabilities" if inf["sigmoid"] == "before_blending"
        else "logits", "thresholds": {}, **s["predictor"]})
    first = next(iter(plans))
    return {"name": f"sat-{model.variant}", "modality": first, "plan": plans[first], "plans": plans,
            "classes": model.class_names, "backbone": {"name": "sat_plain_unet", "preset": model.variant},
            "conditioner": {"name": "sat_query_decoder", "dim": model.dim}, "inference": inference, "output": None,
            "official": {"sat": model.variant, "spec": model.spec, "source": "zhaoziheng/SAT"}}


def build_official_sat(variant: str, **kw) -> OfficialSAT:
    return OfficialSAT(variant, **kw)


def _alias_of(native_key: str) -> str | None:
    m = re.search(r"\.convs\.(\d+)\.(conv|norm)\.", native_key)
    if m is None or not native_key.startswith("backbone."):
        return None
    idx = "0" if m.group(2) == "conv" else "1"
    return native_key[:m.start()] + f".convs.{m.group(1)}.all_modules.{idx}." + native_key[m.end():]


def _official_name(native_key: str) -> str:
    return native_key[len("head."):] if native_key.startswith("head.") else native_key


def _native_name(official_key: str) -> str:
    return official_key if official_key.startswith("backbone.") else "head." + official_key


def sat_layout(model: OfficialSAT) -> dict[str, tuple[int, ...]]:
    """The authors' state-dict names (without 'module.') -> shapes, for a model of this shape."""
    out: dict[str, tuple[int, ...]] = {}
    for key, value in model.state_dict().items():
        if key == "term_embeddings" or key.endswith("_extra_state"):
            continue
        out[_official_name(key)] = tuple(value.shape)
        alias = _alias_of(key)
        if alias:
            out[alias] = tuple(value.shape)
    return out


def random_sat_state_dict(variant: str, seed: int = 0, prefix: str = "module.", **kw) -> dict[str, torch.Tensor]:
    """The authors' key layout with seeded random values (norm scales near 1): what a published SAT
    file looks like to the loader; aliases share storage exactly as torch.save writes them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        layout = sat_layout(OfficialSAT(variant, **kw))
    sd: dict[str, torch.Tensor] = {}
    for key, shape in layout.items():
        if _ALIAS.search(key):
            continue
        value = torch.randn(shape, generator=gen) * 0.05
        if re.search(r"norm\d?\.weight$", key):
            value = value + 1.0
        sd[prefix + key] = value
        alias = _alias_of(_native_name(key))
        if alias:
            sd[prefix + alias] = value
    return sd


def unwrap_sat(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict inside a SAT file ({'model_state_dict': ...} or bare), 'module.' stripped."""
    inner = checkpoint.get("model_state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(inner, Mapping):
        raise CheckpointError("not a SAT checkpoint: no 'model_state_dict' mapping")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in inner.items()}


def detect_sat_variant(state_dict: Mapping[str, Any]) -> str:
    """'nano' (2 convolutions per stage) or 'pro' (3), read from the backbone's first stage."""
    first = "backbone.encoder.stages.0.0.convs.{}.conv.weight"
    if first.format(0) not in state_dict:
        raise CheckpointError(f"not a SAT checkpoint: no {first.format(0)!r}")
    n = sum(1 for j in range(8) if first.format(j) in state_dict)
    for name, spec in SAT_UNET_PRESETS.items():
        if n == spec["convs"]:
            return name
    raise CheckpointError(f"SAT backbone with {n} convolutions per stage is neither Nano (2) nor Pro (3)")


def sat_to_native(state_dict: Mapping[str, Any], model: OfficialSAT) -> dict[str, torch.Tensor]:
    """Authors' keys -> `model`'s keys. Strict: every missing, unexpected and mis-shaped key listed;
    an alias that differs from its twin is an error too."""
    sd = unwrap_sat(state_dict)
    problem = state_mismatch(sat_layout(model), sd, limit=20)
    if problem:
        raise CheckpointError(f"SAT-{model.variant} checkpoint does not match the authors' layout: {problem}")
    out = {}
    for key, value in sd.items():
        m = _ALIAS.search(key)
        if m:
            twin = key[:m.start()] + f".convs.{m.group(1)}.{_ALIAS_TO[m.group(2)]}." + key[m.end():]
            if not torch.equal(value, sd[twin]):
                raise CheckpointError(f"SAT checkpoint key {key!r} differs from its twin {twin!r}")
            continue
        out[_native_name(key)] = value
    return out


def sat_widths(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Channel widths read from the weights (stage features, projection and mask-head widths), so a
    file decides its own shape; the published files give the presets' numbers."""
    feats = []
    while (w := state_dict.get(f"backbone.encoder.stages.{len(feats)}.0.convs.0.conv.weight")) is not None:
        feats.append(int(w.shape[0]))
    out: dict[str, Any] = {"features": tuple(feats)} if feats else {}
    for name, key in (("hidden", "projection_layer.0.weight"), ("mask_mid", "mask_embed_proj.0.weight")):
        if getattr(state_dict.get(key), "ndim", 0) == 2:
            out[name] = int(state_dict[key].shape[0])
    return out


def load_official_sat(path: str | Path, variant: str | None = None, **kw) -> OfficialSAT:
    """A SAT-Nano / SAT-Pro .pth file -> OfficialSAT in eval mode (weights only; nothing unpickled).
    Widths come from the file (`sat_widths`); `kw` overrides them (and sets the crop)."""
    path = Path(path)
    ckpt = read_torch_file(path)
    try:
        sd = unwrap_sat(ckpt)
        found = detect_sat_variant(sd)
        if variant is not None and variant != found:
            raise CheckpointError(f"checkpoint is SAT-{found}, not SAT-{variant}")
        model = OfficialSAT(found, **{**sat_widths(sd), **kw})
        result = model.load_state_dict(sat_to_native(sd, model), strict=False)
        unset = [k for k in result.missing_keys if k != "term_embeddings" and not k.endswith("_extra_state")]
        if unset or result.unexpected_keys:
            raise CheckpointError(f"SAT weights left keys unset/unused: {unset} {result.unexpected_keys}")
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return model.eval()


SAT_WEIGHTS, SAT_META = "sat.safetensors", "sat.json"


def is_sat_file(path: str | Path) -> bool:
    """Whether a .pth file holds a SAT model (memory-mapped where the file allows: only keys are read)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - old-format or unreadable files: the full reader decides
        try:
            ckpt = read_torch_file(path)
        except InputError:
            return False
    try:
        return "backbone.encoder.stages.0.0.convs.0.conv.weight" in unwrap_sat(ckpt)
    except CheckpointError:
        return False


def is_sat_folder(path: str | Path) -> bool:
    """Whether `path` is a folder written by `save_sat_model`."""
    return (Path(path) / SAT_META).is_file()


def save_sat_model(model: OfficialSAT, folder: str | Path) -> Path:
    """Weights (with the carried vocabulary embeddings) + a JSON of shape and vocabulary, written atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    meta = {"format": "promptseg-sat", "spec": model.spec, "vocabulary": model.vocabulary, "modalities": model.modalities}
    with atomic_directory(folder) as work:
        save_file(state, str(work / SAT_WEIGHTS))
        (work / SAT_META).write_text(json.dumps(meta, indent=1))
    return folder


def load_sat_model(folder: str | Path) -> OfficialSAT:
    """A folder written by `save_sat_model` -> OfficialSAT in eval mode (no text tower needed)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / SAT_META).is_file() or not (folder / SAT_WEIGHTS).is_file():
        raise InputError(folder, f"not an imported SAT model (needs {SAT_META} and {SAT_WEIGHTS})")
    meta = json.loads((folder / SAT_META).read_text(encoding="utf-8"))
    model = OfficialSAT(**meta["spec"])
    state = load_file(str(folder / SAT_WEIGHTS))
    state["_extra_state"] = {"vocabulary": meta["vocabulary"], "modalities": meta["modalities"]}
    problem = state_mismatch({k: v for k, v in model.state_dict().items() if k not in ("_extra_state", "term_embeddings")},
                             {k: v for k, v in state.items() if k not in ("_extra_state", "term_embeddings")}, limit=20)
    if problem:
        raise CheckpointError(f"{folder}: weights do not fit SAT-{model.variant}: {problem}")
    model.load_state_dict(state)
    return model.eval()
