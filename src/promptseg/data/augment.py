"""Training-patch augmentation built from MONAI dictionary transforms (nnU-Net's recipe, in MONAI).

Why MONAI and not batchgeneratorsv2: MONAI is already a dependency (preprocessing, sliding
window, Swin UNETR), its dictionary transforms move an image and its K target masks together
with explicit keys (bilinear for the image, nearest for the masks), and every transform takes a
seed, so a worker's stream is reproducible. batchgeneratorsv2 would add a second augmentation
stack (and its own dependencies) for the same operations.

What (probabilities and ranges after nnU-Net v2's defaults; each one a config value, see
AUGMENT_DEFAULTS): rotation and scaling (one affine resample), elastic deformation, gamma,
brightness (multiplicative), contrast (around the mean, range kept), Gaussian noise, Gaussian
blur, simulated low resolution, mirroring. Mirroring never flips the left-right axis: a flipped
patch would show a left kidney where the right one belongs, and the prompt says which side.
Determinism: `Augmenter.reseed(seed)` before each sample, from the sampler's own generator, so
a patch is a function of the sampler's state (resume and worker streams stay reproducible).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from monai.transforms import (Compose, Rand3DElasticd, RandAdjustContrastd, RandAffined, RandFlipd,
                              RandGaussianNoised, RandGaussianSmoothd, RandScaleIntensityd,
                              RandScaleIntensityFixedMeand, RandSimulateLowResolutiond)

from ..errors import ConfigError

AUGMENT_DEFAULTS: dict[str, Any] = {
    "spatial_prob": 0.2,          # rotation + scaling, one resample
    "rotate_deg": 30.0,           # about each axis, uniform in [-deg, deg]
    "scale_delta": 0.3,           # zoom factor uniform in [1 - d, 1 + d]
    "elastic_prob": 0.1,
    "elastic_sigma": [5.0, 8.0],  # smoothing of the displacement field (voxels)
    "elastic_magnitude": [50.0, 150.0],
    "gamma_prob": 0.3,
    "gamma": [0.7, 1.5],
    "brightness_prob": 0.15,
    "brightness": 0.25,           # multiply by 1 + U(-b, b)
    "contrast_prob": 0.15,
    "contrast": 0.25,             # scale around the mean by 1 + U(-c, c), range kept
    "noise_prob": 0.1,
    "noise_std": 0.1,
    "blur_prob": 0.2,
    "blur_sigma": [0.5, 1.0],
    "lowres_prob": 0.25,
    "lowres_zoom": [0.5, 1.0],
    "mirror_prob": 0.5,           # per axis, along the axes that do not swap left and right
}


def augment_params(spec: Any) -> dict[str, Any] | None:
    """`train.augment` (false / true / a mapping of AUGMENT_DEFAULTS keys) -> full values or None."""
    if spec is False or spec is None:
        return None
    if spec is True:
        return dict(AUGMENT_DEFAULTS)
    if not isinstance(spec, dict):
        raise ConfigError(f"train.augment must be true, false or a mapping of {sorted(AUGMENT_DEFAULTS)}, got {spec!r}")
    unknown = set(spec) - set(AUGMENT_DEFAULTS)
    if unknown:
        raise ConfigError(f"train.augment: unknown keys {sorted(unknown)}; known: {sorted(AUGMENT_DEFAULTS)}")
    out = {**AUGMENT_DEFAULTS, **spec}
    for k, v in out.items():
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0) or (
            isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v) and v[0] <= v[1])
        if not ok or (k.endswith("_prob") and not v <= 1):
            raise ConfigError(f"train.augment.{k}: expected {'a probability' if k.endswith('_prob') else 'a number >= 0 or [low, high]'}, got {v!r}")
    return out


class Augmenter:
    """Augments one patch: image float32 [C, *patch] and targets [K, *patch] (0/1)."""

    def __init__(self, params: dict[str, Any]):
        p = params
        rad = math.radians(float(p["rotate_deg"]))
        keys, modes = ["image", "targets"], ["bilinear", "nearest"]
        self.spatial = Compose([
            RandAffined(keys, prob=p["spatial_prob"], rotate_range=(rad, rad, rad),
                        scale_range=(p["scale_delta"],) * 3, mode=modes, padding_mode=["border", "zeros"]),
            Rand3DElasticd(keys, sigma_range=tuple(p["elastic_sigma"]), magnitude_range=tuple(p["elastic_magnitude"]),
                           prob=p["elastic_prob"], mode=modes, padding_mode=["border", "zeros"]),
        ])
        self.intensity = Compose([
            RandSimulateLowResolutiond("image", prob=p["lowres_prob"], zoom_range=tuple(p["lowres_zoom"])),
            RandGaussianNoised("image", prob=p["noise_prob"], std=p["noise_std"]),
            RandGaussianSmoothd("image", sigma_x=tuple(p["blur_sigma"]), sigma_y=tuple(p["blur_sigma"]),
                                sigma_z=tuple(p["blur_sigma"]), prob=p["blur_prob"]),
            RandScaleIntensityd("image", factors=p["brightness"], prob=p["brightness_prob"]),
            RandScaleIntensityFixedMeand("image", factors=p["contrast"], preserve_range=True, prob=p["contrast_prob"]),
            RandAdjustContrastd("image", gamma=tuple(p["gamma"]), prob=p["gamma_prob"]),
        ])
        self.flips = {ax: RandFlipd(keys, prob=p["mirror_prob"], spatial_axis=ax) for ax in range(3)}

    def reseed(self, seed: int) -> None:
        rs = np.random.RandomState(int(seed) % (2**32))
        for t in (self.spatial, self.intensity, *self.flips.values()):
            t.set_random_state(seed=int(rs.randint(2**31)))

    def __call__(self, image: np.ndarray, targets: np.ndarray, lr_axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
        d = {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
             "targets": torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))}
        d = self.spatial(d)
        d = self.intensity(d)
        for ax, flip in self.flips.items():
            if ax != lr_axis:  # never swap left and right
                d = flip(d)
        img = _numpy(d["image"])
        tgt = (_numpy(d["targets"]) > 0.5).astype(np.float32)
        return img, tgt


def _numpy(x) -> np.ndarray:
    t = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)


def build_augmenter(spec: Any) -> Augmenter | None:
    """The run's `train.augment` -> an Augmenter, or None when augmentation is off."""
    params = augment_params(spec)
    return None if params is None else Augmenter(params)
