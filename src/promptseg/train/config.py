"""A run is one YAML file. This module reads it, fills defaults and checks it.

Relative paths in the YAML are relative to the YAML file, so a run folder can be moved.
The resolved config (with defaults) is what checkpoints embed.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ..data.augment import augment_params
from ..data.patterns import PATTERN_KEYS, is_pattern_entry
from ..errors import ConfigError
from ..preprocess import modality_plans

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "output": "runs/run",
    "seed": 0,
    "modality": "CT",
    "datasets": [],
    "classes": None,
    "plan": {"name": "universal_ct"},
    "plans": {},                   # data: modality -> plan (name or mapping); others from plans.yaml
    "backbone": {"name": "unet", "preset": "small"},
    "conditioner": {"name": "universal", "text_encoder": "minilm", "template": "A computerized tomography of a {}."},
    "train": {
        "steps": 1000,
        "batch_size": 2,
        "patch_size": [96, 96, 96],
        "lr": 1e-4,
        "weight_decay": 1e-5,
        "warmup_steps": 50,
        "accumulate": 1,
        "clip_grad": 12.0,
        "fg_ratio": 0.6667,
        "dataset_sampling": "uniform",
        "rot90_prob": 0.1,
        "intensity_shift_prob": 0.2,
        "checkpoint_every": 200,
        "keep_checkpoints": 2,
        "num_threads": None,
        "aux_loss_weight": None,
        "max_queries": 32,
        "workers": 1,
        "precision": "auto",       # auto: bf16 autocast on CUDA, fp32 on CPU; or fp32 / bf16 / fp16
        "channels_last": "auto",   # auto: on CUDA only
        "compile": False,          # true, a torch.compile mode, or a mapping of its arguments
        "augment": False,          # data: true = data/augment.py's recipe; a mapping overrides its values
        "loader_workers": 0,       # data: background processes that sample + augment (0 = in the loop)
    },
    "inference": {
        "window": [96, 96, 96],
        "overlap": 0.5,
        "mode": "gaussian",
        "sw_batch_size": 2,
        "thresholds": {},
        "postprocess": True,
    },
    "cache_dir": None,
}

SECTIONS_MERGED = ("train", "inference")


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k in SECTIONS_MERGED:
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_config(raw: dict[str, Any], base_dir: Path | None = None) -> dict[str, Any]:
    """Defaults + raw, with paths made absolute against `base_dir` and values checked."""
    if not isinstance(raw, dict):
        raise ConfigError("a run config must be a mapping")
    unknown = set(raw) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown top-level keys {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    cfg = _merge(DEFAULTS, raw)
    base = Path(base_dir) if base_dir else Path.cwd()

    def absolute(p):
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    cfg["output"] = absolute(cfg["output"])
    if cfg.get("cache_dir"):
        cfg["cache_dir"] = absolute(cfg["cache_dir"])
    datasets = []
    for d in cfg["datasets"] or []:
        entry = {"path": d} if isinstance(d, str) else dict(d)
        if "path" not in entry:
            raise ConfigError(f"dataset entry {d!r} needs a 'path'")
        entry["path"] = absolute(entry["path"])
        datasets.append(entry)
    cfg["datasets"] = datasets
    _check_data_keys(cfg)
    if isinstance(cfg["plan"], str):
        cfg["plan"] = {"name": cfg["plan"]}
    t = cfg["train"]
    for key in ("steps", "batch_size", "accumulate", "checkpoint_every"):
        if not isinstance(t[key], int) or t[key] < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {t[key]!r}")
    if len(t["patch_size"]) != 3:
        raise ConfigError(f"train.patch_size needs 3 numbers, got {t['patch_size']!r}")
    if t["dataset_sampling"] not in ("uniform", "sqrt", "proportional"):
        raise ConfigError(f"train.dataset_sampling must be uniform, sqrt or proportional, got {t['dataset_sampling']!r}")
    if not 0 <= float(cfg["inference"]["overlap"]) < 1:
        raise ConfigError("inference.overlap must be in [0, 1)")
    return cfg


def _check_data_keys(cfg: dict[str, Any]) -> None:
    """The data engineer's keys: pattern dataset entries, `plans`, train.augment / loader_workers."""
    for d in cfg["datasets"]:
        if is_pattern_entry(d) and set(d) - set(PATTERN_KEYS):
            raise ConfigError(f"dataset {d['path']}: unknown keys {sorted(set(d) - set(PATTERN_KEYS))}")
    # every modality's full plan in the resolved config, so a checkpoint holds them all
    cfg["plans"] = {m: p.to_dict() for m, p in modality_plans(cfg["plan"], cfg["plans"]).items()}
    augment_params(cfg["train"]["augment"])
    w = cfg["train"]["loader_workers"]
    if not isinstance(w, int) or isinstance(w, bool) or w < 0:
        raise ConfigError(f"train.loader_workers must be a non-negative integer, got {w!r}")


def read_run_yaml(path: str | Path) -> tuple[dict[str, Any], Path]:
    """The run YAML's mapping as written (no defaults) and the folder its paths are relative to."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: run config not found")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a run config must be a mapping")
    return raw, p.parent


def load_config(path: str | Path) -> dict[str, Any]:
    raw, base = read_run_yaml(path)
    try:
        return resolve_config(raw, base)
    except ConfigError as exc:
        raise ConfigError(f"{Path(path)}: {exc}") from None
