"""Preprocessing plans as data: `plans.yaml` + a validated `Plan` dataclass.

Why data: each seed method's recipe (SPEC table) is a handful of numbers; keeping them in one
YAML means a run config or a checkpoint can name, override or embed a plan without code changes.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from ..errors import ConfigError

INTENSITY_METHODS: dict[str, tuple[str, ...]] = {
    # method: required parameters (optional ones are filled with defaults below)
    "clip_scale": ("lower", "upper"),
    "clip_zscore": ("lower", "upper"),
    "percentile_zscore": ("lower_pct", "upper_pct"),
    "zscore": (),
    "none": (),
}
_INTENSITY_DEFAULTS = {"clip_scale": {"out_min": 0.0, "out_max": 1.0}}
_AXIS_PAIRS = ("LR", "PA", "IS")


@dataclass
class Plan:
    """One preprocessing recipe. `spacing` is in mm along array axes 0,1,2 after reorientation."""

    name: str
    modality: str = "CT"
    orientation: str | None = "RAS"
    spacing: tuple[float, float, float] | None = (1.5, 1.5, 1.5)
    intensity: dict[str, Any] = field(default_factory=lambda: {"method": "none"})
    crop: dict[str, Any] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON types; `get_plan(plan.to_dict())` gives an equal plan."""
        d = asdict(self)
        d["spacing"] = None if self.spacing is None else [float(s) for s in self.spacing]
        return d


def _validate(plan: Plan) -> None:
    where = f"plan '{plan.name}'"
    if not isinstance(plan.name, str) or not plan.name:
        raise ConfigError("a preprocessing plan needs a non-empty 'name'")
    if not isinstance(plan.modality, str) or not plan.modality:
        raise ConfigError(f"{where}: modality must be a string such as CT or MR")
    plan.modality = plan.modality.upper()
    if plan.orientation is not None:
        codes = str(plan.orientation).upper()
        pairs = sorted(next((i for i, pair in enumerate(_AXIS_PAIRS) if c in pair), -1) for c in codes)
        if len(codes) != 3 or pairs != [0, 1, 2]:
            raise ConfigError(f"{where}: orientation must be 3 axis codes like RAS or LPS (one of L/R, P/A, I/S each), got {plan.orientation!r}")
        plan.orientation = codes
    if plan.spacing is not None:
        try:
            sp = tuple(float(s) for s in plan.spacing)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: spacing must be 3 numbers (mm) or null, got {plan.spacing!r}") from None
        if len(sp) != 3 or any(not s > 0 for s in sp):
            raise ConfigError(f"{where}: spacing must be 3 positive numbers (mm) or null, got {plan.spacing!r}")
        plan.spacing = sp
    inten = plan.intensity if plan.intensity is not None else {"method": "none"}
    if not isinstance(inten, dict) or inten.get("method") not in INTENSITY_METHODS:
        raise ConfigError(f"{where}: intensity.method must be one of {sorted(INTENSITY_METHODS)}, got {inten!r}")
    method = inten["method"]
    full = {"method": method, **_INTENSITY_DEFAULTS.get(method, {}), **inten}
    allowed = {"method", *INTENSITY_METHODS[method], *_INTENSITY_DEFAULTS.get(method, {})}
    unknown = set(full) - allowed
    missing = [k for k in INTENSITY_METHODS[method] if k not in full]
    if unknown or missing:
        raise ConfigError(f"{where}: intensity '{method}' takes {sorted(allowed - {'method'})}; "
                          f"missing {missing}, unknown {sorted(unknown)}")
    for k in allowed - {"method"}:
        try:
            full[k] = float(full[k])
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: intensity.{k} must be a number, got {full[k]!r}") from None
    lo_key, hi_key = ("lower_pct", "upper_pct") if method == "percentile_zscore" else ("lower", "upper")
    if lo_key in full and not full[lo_key] < full[hi_key]:
        raise ConfigError(f"{where}: intensity.{lo_key} must be below {hi_key}")
    if method == "percentile_zscore" and not (0 <= full["lower_pct"] and full["upper_pct"] <= 100):
        raise ConfigError(f"{where}: percentiles must lie in [0, 100]")
    plan.intensity = full
    if plan.crop is not None:
        if plan.crop is False:
            plan.crop = None
        else:
            crop = {"threshold": 0.0, "margin": 0, **(plan.crop if isinstance(plan.crop, dict) else {})}
            if not isinstance(plan.crop, dict) or set(crop) - {"threshold", "margin"}:
                raise ConfigError(f"{where}: crop must be null or {{threshold: number|min, margin: voxels}}, got {plan.crop!r}")
            if crop["threshold"] != "min":
                try:
                    crop["threshold"] = float(crop["threshold"])
                except (TypeError, ValueError):
                    raise ConfigError(f"{where}: crop.threshold must be a number or 'min', got {crop['threshold']!r}") from None
            m = crop["margin"]
            margins = list(m) if isinstance(m, (list, tuple)) else [m] * 3
            if len(margins) != 3 or any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in margins):
                raise ConfigError(f"{where}: crop.margin must be a non-negative integer (or 3 of them), got {m!r}")
            crop["margin"] = m if isinstance(m, int) else margins
            plan.crop = crop


_DEFAULTS_KEY = "modality_defaults"  # the one entry of plans.yaml that is not a plan


@lru_cache(maxsize=1)
def _plans_yaml() -> dict[str, Any]:
    text = resources.files("promptseg.preprocess").joinpath("plans.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


@lru_cache(maxsize=1)
def _builtin() -> dict[str, dict[str, Any]]:
    return {name: {"name": name, **spec} for name, spec in _plans_yaml().items() if name != _DEFAULTS_KEY}


def modality_defaults() -> dict[str, str]:
    """Modality -> built-in plan name used when a run names none for that modality (plans.yaml)."""
    return {str(m).upper(): str(n) for m, n in (_plans_yaml().get(_DEFAULTS_KEY) or {}).items()}


def modality_plans(plan: str | dict | Plan | None = None, plans: dict | None = None) -> dict[str, Plan]:
    """Modality -> Plan for a run: plans.yaml's defaults, then the run's `plan` for its own
    modality, then the run's `plans:` entries (modality -> plan name or mapping)."""
    out = {m: get_plan(n) for m, n in modality_defaults().items()}
    if plan is not None:
        p = get_plan(plan)
        out[p.modality] = p
    if plans is not None and not isinstance(plans, dict):
        raise ConfigError(f"plans must map a modality to a plan (e.g. {{MR: universal_mr}}), got {plans!r}")
    for mod, spec in (plans or {}).items():
        p = get_plan(spec)
        if p.modality != str(mod).upper():
            raise ConfigError(f"plans.{mod}: plan {p.name!r} is for {p.modality}, not {str(mod).upper()}")
        out[p.modality] = p
    return out


def plan_names() -> list[str]:
    """Names of the built-in plans, in file order."""
    return list(_builtin())


_FIELD_NAMES = frozenset(f.name for f in fields(Plan))


def get_plan(name_or_dict: str | dict | Plan, **overrides) -> Plan:
    """A built-in plan by name, or a plan from a dict, with field overrides.

    A dict may be a whole plan (as `Plan.to_dict()` gives) or a built-in's name (`name` or
    `base`) plus the fields to change, e.g. `{"name": "universal_ct", "spacing": None}`.
    """
    builtin = _builtin()
    if isinstance(name_or_dict, Plan):
        spec = name_or_dict.to_dict()
    elif isinstance(name_or_dict, str):
        if name_or_dict not in builtin:
            raise ConfigError(f"unknown preprocessing plan '{name_or_dict}'; known plans: {', '.join(builtin)}")
        spec = copy.deepcopy(builtin[name_or_dict])
    elif isinstance(name_or_dict, dict):
        given = dict(name_or_dict)
        base_name = given.pop("base", None)
        if base_name is None and given.get("name") in builtin:
            base_name = given["name"]
        if base_name is not None:
            if base_name not in builtin:
                raise ConfigError(f"unknown base preprocessing plan '{base_name}'; known plans: {', '.join(builtin)}")
            spec = {**copy.deepcopy(builtin[base_name]), **given}
        else:
            spec = given
            required = {"name", "modality", "orientation", "spacing", "intensity"}
            missing = sorted(required - set(spec))
            if missing:
                raise ConfigError(f"plan {spec.get('name', '<unnamed>')!r} is not a built-in plan "
                                  f"({', '.join(builtin)}) and lacks fields {missing}")
    else:
        raise ConfigError(f"a plan is a name or a mapping, got {type(name_or_dict).__name__}")
    spec.update(overrides)
    unknown = set(spec) - _FIELD_NAMES
    if unknown:
        raise ConfigError(f"plan {spec.get('name')!r}: unknown fields {sorted(unknown)}; known: {sorted(_FIELD_NAMES)}")
    return Plan(**copy.deepcopy(spec))
