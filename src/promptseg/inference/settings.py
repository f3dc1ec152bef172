"""Inference settings: their defaults, their checks, and the coarse grids of --fast / --roi.

Why a module of its own: the checkpoint's `inference:` section, the CLI flags and the Python API
all end here, so a bad value fails the same way (one-line ConfigError) whoever set it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..runtime import precision_name
from ..preprocess import get_plan
from .sliding import size_multiple

#: Inference settings and their defaults (a checkpoint's `inference:` section overrides them).
DEFAULT_INFERENCE: dict[str, Any] = {
    "window": [96, 96, 96],
    "overlap": 0.5,
    "mode": "gaussian",
    "sw_batch_size": 2,
    "thresholds": {},
    "postprocess": True,
    "crop_body": True,   # run the network only on the body's bounding box (plus body_margin)
    "body_margin": 8,    # voxels of the network grid
    "amp": None,         # float16 autocast on CUDA (legacy switch; `precision` wins when set)
    # autocast dtype of the windows: float32 (default: results equal to the float32 reference) |
    # bfloat16 (2-3x faster network on CPUs with native bf16, but masks can move: Dice 0.8-0.99 on
    # weakly confident classes) | float16 (CUDA) | auto (bfloat16/float16 where native)
    "precision": "float32",
    "head_chunk": 131072,  # class-voxels per chunk of the Universal Model's head (0 = one go)
    "threads": None,      # torch CPU threads; None = the cores this process may use
    "interpolation": "linear",  # class results -> input grid: linear (probabilities) | nearest
    "fast_spacing": [3.0, 3.0, 3.0],  # grid of fast=True (TotalSegmentator's --fast: 3 mm)
    "roi_spacing": [6.0, 6.0, 6.0],   # grid of the pass that locates the asked classes (roi=True)
    "roi_margin_mm": 15.0,            # margin around the located classes
    "rules": None,       # overrides of postprocess_rules.yaml
}

def inference_settings(inference: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults + the given settings, checked (one-line ConfigError on a bad value)."""
    cfg = {**DEFAULT_INFERENCE, **dict(inference or {})}
    if cfg["threads"] is None and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        cfg["threads"] = int(os.environ["OMP_NUM_THREADS"])  # the usual way to cap a job's cores
    w = cfg["window"]
    w = [int(w)] * 3 if isinstance(w, (int, float)) else [int(v) for v in w]
    if len(w) != 3 or min(w) < 1:
        raise ConfigError(f"inference.window must be 3 positive integers, got {cfg['window']!r}")
    cfg["window"] = w
    if not 0 <= float(cfg["overlap"]) < 1:
        raise ConfigError(f"inference.overlap must be in [0, 1), got {cfg['overlap']!r}")
    if cfg["mode"] not in ("gaussian", "constant"):
        raise ConfigError(f"inference.mode must be gaussian or constant, got {cfg['mode']!r}")
    if int(cfg["sw_batch_size"]) < 1:
        raise ConfigError(f"inference.sw_batch_size must be >= 1, got {cfg['sw_batch_size']!r}")
    for k, t in (cfg["thresholds"] or {}).items():
        if not 0 < float(t) < 1:
            raise ConfigError(f"inference.thresholds[{k!r}] must be in (0, 1), got {t!r}")
    precision_name(cfg["precision"], "inference.precision")
    if cfg["interpolation"] not in ("linear", "nearest"):
        raise ConfigError(f"inference.interpolation must be linear or nearest, got {cfg['interpolation']!r}")
    if cfg["threads"] is not None and int(cfg["threads"]) < 1:
        raise ConfigError(f"inference.threads must be >= 1, got {cfg['threads']!r}")
    for key in ("fast_spacing", "roi_spacing"):
        v = cfg[key]
        v = [float(v)] * 3 if isinstance(v, (int, float)) else [float(x) for x in v]
        if len(v) != 3 or min(v) <= 0:
            raise ConfigError(f"inference.{key} must be 3 positive numbers (mm), got {cfg[key]!r}")
        cfg[key] = v
    return cfg


def min_window(window, model) -> list[int]:
    """At least two bottleneck voxels per axis (instance norm needs more than one)."""
    return [max(int(w), 2 * m) for w, m in zip(window, size_multiple(model))]


def scaled_plan(plan, window, spacing, name: str):
    """(plan on `spacing` mm, window scaled to cover the same millimetres) for fast/roi passes.

    A network trained at the plan's spacing sees anatomy at another scale here: an approximation
    (TotalSegmentator ships a separately trained 3 mm model for --fast). Windows shrink with the
    grid so that instance-norm statistics and context cover the same body region.
    """
    check_coarse(plan, name)
    new = get_plan(plan, spacing=[float(v) for v in spacing], name=f"{plan.name}_{name}")
    win = [max(8, int(round(w * float(s0) / float(s1)))) for w, s0, s1 in zip(window, plan.spacing, spacing)]
    return new, win


def check_coarse(plan, name: str) -> None:
    """--fast / --roi need a plan that resamples: say so in plain words before any image is read."""
    if plan.spacing is None:
        raise ConfigError(
            f"--{name} cannot run with this checkpoint: its plan {plan.name!r} keeps each image's own voxel "
            f"spacing, so there is no fixed grid to coarsen; predict without --{name}")
