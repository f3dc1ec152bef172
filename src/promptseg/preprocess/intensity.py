"""Intensity normalisation steps, each a small function other modules can reuse.

All work on float32 numpy arrays; with `inplace=True` a float32 input is modified in place, so
the pipeline never holds a second full-size copy (and never a float64 one: statistics are
accumulated in float64 chunk by chunk).
"""
from __future__ import annotations

from typing import Any

import numpy as np

_CHUNK = 1 << 22  # voxels per chunk for float64 accumulation
_PERCENTILE_SAMPLE = 1 << 24  # above this many voxels, percentiles use a regular subsample


def _as_f32(x, inplace: bool) -> np.ndarray:
    a = np.asarray(x)
    if inplace and a.dtype == np.float32 and a.flags.writeable:
        return a
    return a.astype(np.float32, copy=True)


def mean_std(x: np.ndarray) -> tuple[float, float]:
    """Mean and (population) standard deviation with float64 accumulation, chunked."""
    flat = np.asarray(x).ravel(order="K")
    n = flat.size
    if n == 0:
        return 0.0, 1.0
    s = ss = 0.0
    for start in range(0, n, _CHUNK):
        c = flat[start:start + _CHUNK].astype(np.float64)
        s += float(c.sum())
        ss += float(np.dot(c, c))
    mean = s / n
    var = max(ss / n - mean * mean, 0.0)
    return mean, float(np.sqrt(var))


def percentiles(x: np.ndarray, lower_pct: float, upper_pct: float) -> tuple[float, float]:
    """Two percentiles of all voxels (a regular subsample for very large volumes)."""
    flat = np.asarray(x).ravel(order="K")
    if flat.size > _PERCENTILE_SAMPLE:
        flat = flat[:: int(np.ceil(flat.size / _PERCENTILE_SAMPLE))]
    lo, hi = np.percentile(flat, [lower_pct, upper_pct])
    return float(lo), float(hi)


def clip_scale(x, lower: float, upper: float, out_min: float = 0.0, out_max: float = 1.0,
               inplace: bool = False) -> np.ndarray:
    """Clip to [lower, upper] and map linearly onto [out_min, out_max] (Universal Model, UniSeg CT)."""
    a = _as_f32(x, inplace)
    np.clip(a, lower, upper, out=a)
    scale = (out_max - out_min) / (upper - lower)
    a -= np.float32(lower)
    a *= np.float32(scale)
    a += np.float32(out_min)
    return a


def zscore(x, mean: float | None = None, std: float | None = None, inplace: bool = False) -> np.ndarray:
    """(x - mean) / std over the whole volume; a constant volume becomes zeros."""
    a = _as_f32(x, inplace)
    if mean is None or std is None:
        m, s = mean_std(a)
        mean = m if mean is None else mean
        std = s if std is None else std
    a -= np.float32(mean)
    if std > 1e-8:
        a /= np.float32(std)
    return a


def clip_zscore(x, lower: float, upper: float, inplace: bool = False) -> np.ndarray:
    """Clip to [lower, upper], then z-score (Hermes CT, SAT CT)."""
    a = _as_f32(x, inplace)
    np.clip(a, lower, upper, out=a)
    return zscore(a, inplace=True)


def percentile_zscore(x, lower_pct: float, upper_pct: float, inplace: bool = False) -> np.ndarray:
    """Clip at two percentiles, then z-score (MR/PET in Hermes and SAT)."""
    a = _as_f32(x, inplace)
    lo, hi = percentiles(a, lower_pct, upper_pct)
    np.clip(a, lo, hi, out=a)
    return zscore(a, inplace=True)


def apply_intensity(x, spec: dict[str, Any], inplace: bool = False) -> tuple[np.ndarray, dict[str, float]]:
    """Run a plan's `intensity` entry; returns the array and the statistics used (for the record)."""
    method = spec.get("method", "none")
    a = _as_f32(x, inplace)
    stats: dict[str, float] = {}
    if method == "none":
        return a, stats
    if method == "clip_scale":
        return clip_scale(a, spec["lower"], spec["upper"], spec.get("out_min", 0.0), spec.get("out_max", 1.0),
                          inplace=True), {"clip_lower": float(spec["lower"]), "clip_upper": float(spec["upper"])}
    if method == "percentile_zscore":
        lo, hi = percentiles(a, spec["lower_pct"], spec["upper_pct"])
        stats.update(clip_lower=lo, clip_upper=hi)
    elif method == "clip_zscore":
        lo, hi = float(spec["lower"]), float(spec["upper"])
        stats.update(clip_lower=lo, clip_upper=hi)
    elif method != "zscore":
        raise ValueError(f"unknown intensity method {method!r}")
    if "clip_lower" in stats:
        np.clip(a, stats["clip_lower"], stats["clip_upper"], out=a)
    mean, std = mean_std(a)
    stats.update(mean=mean, std=std)
    return zscore(a, mean, std, inplace=True), stats
