"""Sliding-window inference: MONAI's stitcher around a prompt-conditioned model.

Why a wrapper: the model needs its prompts with every window batch (and a per-sample modality
list of the right length), windows must be multiples of the backbone's down-sampling factor, and
a window larger than the image only wastes compute. MONAI does the tiling, padding and Gaussian
blending; this file only adapts sizes and prompts.
The lean, thresholded stitcher is lean_masks.py; window sizes and the runner are windows.py.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..models.conditioners.base import PromptBatch
from ..runtime import autocast_dtype
from .windows import WindowRunner, fit_window, run_device, size_multiple


def sliding_window_logits(
    model,
    image: torch.Tensor,
    prompt_batch: PromptBatch | Sequence[str] | str,
    window: Sequence[int] | int = (96, 96, 96),
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int = 4,
    device: str | torch.device | None = None,
    out_device: str | torch.device | None = None,
    progress: bool = False,
    sigma_scale: float = 0.125,
    amp: bool | None = None,
    precision: str | None = None,
    head_chunk: int | None = None,
    mirror_axes: Sequence[int] = (),
) -> torch.Tensor:
    """Logits [1, K, X, Y, Z] for `image` [1, C, X, Y, Z], one channel per prompt.

    `device` runs the windows (default: the model's device); `out_device` holds the stitched
    logits (default: `device`). `amp` uses float16 autocast on CUDA (default: on for CUDA).
    `precision` (auto/float32/bfloat16/float16) overrides `amp`; `head_chunk` bounds a
    conditioner's chunked head (class-voxels per chunk, see `WindowRunner`); `mirror_axes`:
    test-time mirroring along these spatial axes (`WindowRunner`). Runs under
    `torch.inference_mode`; the model should be in eval mode.
    """
    from monai.inferers import sliding_window_inference

    if image.ndim != 5 or image.shape[0] != 1:
        raise ValueError(f"expected an image [1, C, X, Y, Z], got {tuple(image.shape)}")
    device = run_device(model, image, device)
    out_device = torch.device(out_device) if out_device is not None else device
    if not isinstance(prompt_batch, PromptBatch):
        prompt_batch = model.prompt_batch(prompt_batch, batch_size=1)
    roi = fit_window(window, image.shape[2:], size_multiple(model))
    if precision is not None:
        dtype = autocast_dtype(precision, device)
    else:
        use_amp = (device.type == "cuda") if amp is None else (amp and device.type == "cuda")
        dtype = torch.float16 if use_amp else None
    run = WindowRunner(model, prompt_batch, dtype, head_chunk, mirror_axes=mirror_axes)
    if device.type != "cpu":
        image = image.to(device, non_blocking=True)  # one copy up, not one per window
    with torch.inference_mode():
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
