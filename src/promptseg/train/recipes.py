"""Each method trained the way its paper trains it: recipes as data, applied to a run's `train:`.

The recipes (optimiser, lr, warm-up, schedule, EMA, gradient clipping, dataset sampling, query
cap) live in models/conditioners/recipes.yaml, next to the methods they belong to. The trainer
asks for the recipe of the run's conditioner by its registry name, so this module knows no
method: a new conditioner without an entry trains with the `default` recipe. Keys the run YAML
sets win over the recipe (config.RECIPE_KEYS; None there = "the recipe's").
"""
from __future__ import annotations

import copy
import math
import warnings
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable, Mapping

import torch
import yaml

from ..config import RECIPE_KEYS, check_recipe, check_train
from ..errors import ConfigError

RECIPE_FILE = "recipes.yaml"
RECIPE_PACKAGE = "promptseg.models.conditioners"


@lru_cache(maxsize=1)
def _recipes_text() -> str:
    return resources.files(RECIPE_PACKAGE).joinpath(RECIPE_FILE).read_text(encoding="utf-8")


def recipes() -> dict[str, dict[str, Any]]:
    """Every recipe of recipes.yaml (a fresh copy), each checked; `default` included."""
    doc = yaml.safe_load(_recipes_text()) or {}
    where = f"{RECIPE_PACKAGE}/{RECIPE_FILE}"
    if not isinstance(doc, dict) or not isinstance(doc.get("default"), dict):
        raise ConfigError(f"{where}: needs a mapping with a 'default' recipe")
    for name, entry in doc.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: recipe {name!r} must be a mapping")
        unknown = sorted(set(entry) - (set(RECIPE_KEYS) - {"recipe"}))
        if unknown:
            raise ConfigError(f"{where}: recipe {name!r} has unknown key(s) {', '.join(unknown)}")
        check_recipe(entry, f"{where}: {name}.")
    return doc


def method_recipe(name: str) -> dict[str, Any]:
    """The recipe of method `name` over the default one (a method without an entry: the default)."""
    table = recipes()
    return {**table["default"], **(table.get(name) or {}), "recipe": name}


def method_value(value: Any, method: str) -> Any:
    """A recipe value given per conditioner ({NAME: 30, default: 1}: a budget recipe borrowed by
    several methods, whose heads need different speeds at its lr) -> the run's conditioner's."""
    if isinstance(value, Mapping):
        return value.get(method, value.get("default", 1.0))
    return value


def warmup_steps(value: int | float, steps: int) -> int:
    """Warm-up length in steps: an integer as is, a fraction of the run's steps rounded."""
    return int(value) if isinstance(value, int) else int(round(float(value) * steps))


def apply_recipe(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config with every recipe key of `train:` filled: the run's own value where set, else the
    recipe of `train.recipe` or of the run's conditioner. Warm-up fractions become steps."""
    cfg = copy.deepcopy(dict(config))
    t = cfg["train"]
    name = t.get("recipe") or cfg["conditioner"]["name"]
    if t.get("recipe") and name not in recipes():
        raise ConfigError(f"train.recipe: no recipe {name!r}; known: {', '.join(sorted(recipes()))}")
    base = method_recipe(name)
    own_lr, own_scale = t.get("lr") is not None, t.get("head_lr_scale") is not None
    for key in RECIPE_KEYS:
        if t.get(key) is None:
            t[key] = base[key]
    t["warmup_steps"] = warmup_steps(t["warmup_steps"], int(t["steps"]))
    t["head_lr_scale"] = method_value(t["head_lr_scale"], cfg["conditioner"]["name"])
    if own_lr and not own_scale and float(t["head_lr_scale"]) != 1.0 and float(t["lr"]) != float(base["lr"]):
        # the multiplier was chosen at the recipe's lr: at a much higher one it can kill classes
        warnings.warn(f"train.lr {t['lr']:g} replaces recipe {name!r}'s {float(base['lr']):g}, but its head_lr_scale "
                      f"{t['head_lr_scale']:g} (chosen at that lr) stays: set train.head_lr_scale for this lr "
                      f"(1 = no multiplier), or borrow a recipe made for it (train.recipe: cpu-short)", UserWarning,
                      stacklevel=2)
    check_train(t)
    return cfg


def build_optimizer(params: Iterable, t: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The recipe's optimiser over `params` (tensors or parameter groups)."""
    lr, wd, name = float(t["lr"]), float(t["weight_decay"]), t["optimizer"]
    momentum = float(t["momentum"])
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=(momentum, 0.999))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=momentum, nesterov=momentum > 0)
    if name == "lamb":
        import torch_optimizer  # LAMB (You et al. 2020): only the runs that ask for it need the package

        return torch_optimizer.Lamb(params, lr=lr, weight_decay=wd, betas=(momentum, 0.999))
    raise ConfigError(f"train.optimizer must be adamw, sgd or lamb, got {name!r}")


def scale_head_lr(groups: Iterable, head: Iterable[torch.nn.Parameter], t: Mapping[str, Any]) -> list:
    """Parameter groups with the conditioner's head parameters (`head`: Conditioner.head_parameters)
    split off at lr x `head_lr_scale`; unchanged (same groups, same optimizer state layout) at
    scale 1. `groups`: tensors or parameter-group dicts."""
    groups = list(groups)
    scale = float(t.get("head_lr_scale") or 1.0)
    if scale == 1.0:
        return groups
    if groups and isinstance(groups[0], torch.Tensor):
        groups = [{"params": groups}]
    ids = {id(p) for p in head}
    out = []
    for g in groups:
        params = list(g["params"])
        rest = [p for p in params if id(p) not in ids]
        mine = [p for p in params if id(p) in ids]
        if rest:
            out.append({**g, "params": rest})
        if mine:
            out.append({**g, "params": mine, "lr": float(g.get("lr", t["lr"])) * scale})
    return out


def lr_multiplier(step: int, t: Mapping[str, Any]) -> float:
    """LR factor at `step`: linear warm-up, then the recipe's decay over the remaining steps."""
    warm, total = int(t["warmup_steps"]), int(t["steps"])
    if step < warm:
        return (step + 1) / max(1, warm)
    progress = min(1.0, (step - warm) / max(1, total - warm))
    schedule = t["schedule"]
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "poly":
        return (1.0 - progress) ** float(t["schedule_power"])
    if schedule == "exponential":
        return float(t["final_lr_ratio"]) ** progress
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, t: Mapping[str, Any]) -> torch.optim.lr_scheduler.LambdaLR:
    settings = {k: t[k] for k in ("warmup_steps", "steps", "schedule", "schedule_power", "final_lr_ratio")}
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, settings))


def ema_decay(decay: float, updates: int) -> float:
    """The EMA's decay after `updates` averages: ramped up as (1 + n) / (10 + n) until it reaches
    the recipe's, so a short run's average is not dominated by its first, untrained weights."""
    return min(float(decay), (1.0 + updates) / (10.0 + updates))


def build_ema(model: torch.nn.Module, t: Mapping[str, Any]) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of the weights (and buffers) when the recipe asks for one."""
    decay = float(t.get("ema") or 0.0)
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel

    def average(avg: torch.Tensor, new: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        # avg + (new - avg)(1 - d): a weight that did not move (frozen, masked old rows) stays bit-exact
        return avg + (new - avg) * (1.0 - ema_decay(decay, int(n)))

    return AveragedModel(model, avg_fn=average, use_buffers=True)
