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
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import yaml
from torch import nn

from ..errors import CheckpointError, ConfigError, InputError
from ..io.atomic import atomic_directory
from ..taxonomy.sat_vocabulary import resolve_sat_term
from .backbones.sat_unet import SAT_UNET_PRESETS, SATPlainUNet
from .sat_query_decoder import SATQueryHead
from .state import read_torch_file, state_mismatch

SAT_VARIANTS = ("nano", "pro")
# projection hidden width and mask-head middle width per published variant (maskformer.py tables)
_HEAD_SIZES = {"nano": {"hidden": 768, "mask_mid": 256}, "pro": {"hidden": 1536, "mask_mid": 384}}
_ALIAS = re.compile(r"\.convs\.(\d+)\.all_modules\.([01])\.")
_ALIAS_TO = {"0": "conv", "1": "norm"}


class OfficialSAT(nn.Module):
    """SAT's Maskformer: `forward_embeddings(image, queries)` and the name-based `forward`."""

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
        self.register_buffer("term_embeddings", torch.zeros(0, 0, dim))

    @property
    def crop(self) -> tuple[int, int, int]:
        return self.head.crop

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
        names = [n if n in self.vocabulary else resolve_sat_term(n) for n in names]
        missing = [n for n in names if n not in self.vocabulary]
        if missing:
            raise ConfigError(f"this SAT model carries no embedding for {missing}; embed them with the text tower")
        index = torch.tensor([self.vocabulary.index(n) for n in names], device=self.term_embeddings.device)
        return self.term_embeddings[self.modalities.index(mod)].index_select(0, index)

    def forward(self, image: torch.Tensor, names: Sequence[str], modality: str = "ct") -> torch.Tensor:
        return self.forward_embeddings(image, self.queries_for(list(names), modality))

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


@lru_cache(maxsize=1)
def sat_settings() -> dict[str, Any]:
    """Preprocessing, inference settings and modality codes of the authors' code (data file)."""
    return yaml.safe_load(resources.files("promptseg.models").joinpath("official_sat_settings.yaml").read_text())


def sat_modality(modality: str) -> str:
    """The authors' modality key ('ct', 'mri', 'us', 'pet') for a user spelling (CT, MR, T1, ...)."""
    m = str(modality).strip().lower()
    for key, spellings in sat_settings()["modality_aliases"].items():
        if m == key or m in spellings:
            return key
    raise ConfigError(f"SAT knows modalities {list(sat_settings()['modality_aliases'])}, not {modality!r}")


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


def load_official_sat(path: str | Path, variant: str | None = None, **kw) -> OfficialSAT:
    """A SAT-Nano / SAT-Pro .pth file -> OfficialSAT in eval mode (weights only; nothing unpickled)."""
    path = Path(path)
    ckpt = read_torch_file(path)
    try:
        sd = unwrap_sat(ckpt)
        found = detect_sat_variant(sd)
        if variant is not None and variant != found:
            raise CheckpointError(f"checkpoint is SAT-{found}, not SAT-{variant}")
        model = OfficialSAT(found, **kw)
        result = model.load_state_dict(sat_to_native(sd, model), strict=False)
        unset = [k for k in result.missing_keys if k != "term_embeddings" and not k.endswith("_extra_state")]
        if unset or result.unexpected_keys:
            raise CheckpointError(f"SAT weights left keys unset/unused: {unset} {result.unexpected_keys}")
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return model.eval()


SAT_WEIGHTS, SAT_META = "sat.safetensors", "sat.json"


def is_sat_file(path: str | Path) -> bool:
    """Whether a .pth file holds a SAT model (read once more by the loader; cheap next to building)."""
    try:
        sd = unwrap_sat(read_torch_file(path))
    except (CheckpointError, InputError):
        return False
    return "backbone.encoder.stages.0.0.convs.0.conv.weight" in sd


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
    meta = json.loads((folder / SAT_META).read_text())
    model = OfficialSAT(**meta["spec"])
    state = load_file(str(folder / SAT_WEIGHTS))
    state["_extra_state"] = {"vocabulary": meta["vocabulary"], "modalities": meta["modalities"]}
    problem = state_mismatch({k: v for k, v in model.state_dict().items() if k not in ("_extra_state", "term_embeddings")},
                             {k: v for k, v in state.items() if k not in ("_extra_state", "term_embeddings")}, limit=20)
    if problem:
        raise CheckpointError(f"{folder}: weights do not fit SAT-{model.variant}: {problem}")
    model.load_state_dict(state)
    return model.eval()
