"""Sliding-window inference: MONAI's stitcher around a prompt-conditioned model.

Why a wrapper: the model needs its prompts with every window batch (and a per-sample modality
list of the right length), windows must be multiples of the backbone's down-sampling factor, and
a window larger than the image only wastes compute. MONAI does the tiling, padding and Gaussian
blending; this file only adapts sizes and prompts.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from typing import Sequence

import torch

from ..models.conditioners.base import PromptBatch


def size_multiple(model) -> tuple[int, int, int]:
    """The factor every input side must be a multiple of (1 if the backbone does not say)."""
    m = getattr(getattr(model, "backbone", None), "size_multiple", None)
    if m is None:
        return (1, 1, 1)
    m = tuple(int(v) for v in (m if isinstance(m, (tuple, list)) else (m, m, m)))
    return m  # type: ignore[return-value]


def fit_window(
    window: Sequence[int] | int, image_shape: Sequence[int], multiple: Sequence[int] = (1, 1, 1)
) -> tuple[int, int, int]:
    """Window sides rounded up to `multiple`, and no larger than the image needs.

    A side larger than the image (rounded up to the multiple) is shrunk to that size: MONAI then
    pads the image to the window, so one window covers the whole axis at the least cost.
    """
    if isinstance(window, int):
        window = (window,) * 3
    if len(window) != 3:
        raise ValueError(f"window needs 3 sides, got {window!r}")
    out = []
    for w, n, m in zip(window, image_shape, multiple):
        w = max(int(w), 1)
        w = math.ceil(w / m) * m
        need = math.ceil(int(n) / m) * m
        out.append(max(m, min(w, need)))
    return tuple(out)  # type: ignore[return-value]


def _batch_prompts(pb: PromptBatch, n: int) -> PromptBatch:
    """The same prompts for a window batch of `n` samples (per-sample fields repeated)."""
    mod = pb.modality
    ds = pb.datasets
    return replace(
        pb,
        modality=None if mod is None else [mod[0]] * n,
        datasets=None if ds is None else [ds[0]] * n,
    )


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; anything else as torch understands it."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def sliding_window_logits(
    model,
    image: torch.Tensor,
    prompt_batch: PromptBatch | Sequence[str],
    window: Sequence[int] | int = (96, 96, 96),
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int = 4,
    device: str | torch.device | None = None,
    out_device: str | torch.device | None = None,
    progress: bool = False,
    sigma_scale: float = 0.125,
    amp: bool | None = None,
) -> torch.Tensor:
    """Logits [1, K, X, Y, Z] for `image` [1, C, X, Y, Z], one channel per prompt.

    `device` runs the windows (default: the model's device); `out_device` holds the stitched
    logits (default: `device`). `amp` uses float16 autocast on CUDA (default: on for CUDA).
    Runs under `torch.inference_mode`; the model should be in eval mode.
    """
    from monai.inferers import sliding_window_inference

    if image.ndim != 5 or image.shape[0] != 1:
        raise ValueError(f"expected an image [1, C, X, Y, Z], got {tuple(image.shape)}")
    if device is None:
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = image.device
    device = torch.device(device)
    out_device = torch.device(out_device) if out_device is not None else device
    if not isinstance(prompt_batch, PromptBatch):
        prompt_batch = model.prompt_batch(list(prompt_batch), batch_size=1)
    roi = fit_window(window, image.shape[2:], size_multiple(model))
    use_amp = (device.type == "cuda") if amp is None else (amp and device.type == "cuda")
    cache: dict[int, PromptBatch] = {}

    def run(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n not in cache:
            cache[n] = _batch_prompts(prompt_batch, n)
        out = model(x, cache[n])
        return out.float()

    autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
    if device.type != "cpu":
        image = image.to(device, non_blocking=True)  # one copy up, not one per window
    with torch.inference_mode(), autocast:
        logits = sliding_window_inference(
            image.float(),
            roi_size=roi,
            sw_batch_size=max(1, int(sw_batch_size)),
            predictor=run,
            overlap=float(overlap),
            mode=mode,
            sigma_scale=sigma_scale,
            padding_mode="constant",
            cval=float(image.min()) if image.numel() else 0.0,
            sw_device=device,
            device=out_device,
            progress=progress,
        )
    return logits
