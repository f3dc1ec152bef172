"""Inference settings: their defaults, their checks, and the coarse grids of --fast / --roi.

Why a module of its own: the checkpoint's `inference:` section, the CLI flags and the Python API
all end here, so a bad value fails the same way (one-line ConfigError) whoever set it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..config import inference_settings as config_inference_settings
from ..errors import ConfigError
from ..preprocess import get_plan
from .windows import size_multiple

def inference_settings(inference: Mapping[str, Any] | None) -> dict[str, Any]:
    """`promptseg.config.inference_settings`, with OMP_NUM_THREADS as the thread count when none is
    set (the usual way to cap a job's cores)."""
    given = dict(inference or {})
    if given.get("threads") is None and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        given["threads"] = int(os.environ["OMP_NUM_THREADS"])
    return config_inference_settings(given)


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
