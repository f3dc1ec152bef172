"""Window geometry and the window runner shared by both stitchers (sliding.py, lean_masks.py).

Why one place: the stitched-logits path (MONAI) and the lean thresholded path must place the
same windows (multiples of the backbone's down-sampling factor, no larger than the image needs,
MONAI's scan interval and padding) and call the model the same way (prompts prepared once).
"""
from __future__ import annotations

import contextlib
import math
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


def run_device(model, image: torch.Tensor, device) -> torch.device:
    """Where the windows run: `device` when given, else the model's (the image's if it has no weights)."""
    if device is None:
        try:
            return next(model.parameters()).device
        except StopIteration:
            return image.device
    return torch.device(device)


class WindowRunner:
    """Runs a segmenter on window batches with everything prompt-dependent prepared once.

    A model with the segmenter's `prepare` / `forward_prepared` gets the prompts prepared once
    per volume (the conditioner's per-volume work, and its fast head with `head_chunk`
    class-voxels per chunk); any other model is called as `model(x, prompts)`.
    """

    def __init__(self, model, prompt_batch: PromptBatch, dtype: torch.dtype | None = None,
                 head_chunk: int | None = 131072):
        self.model = model
        self.prompt_batch = prompt_batch
        self.dtype = dtype
        self.prepared = None
        self._batches: dict[int, PromptBatch] = {}
        if callable(getattr(model, "forward_prepared", None)):
            self.prepared = model.prepare(prompt_batch, head_chunk=int(head_chunk) if head_chunk else 0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        autocast = (torch.autocast(x.device.type, dtype=self.dtype) if self.dtype is not None
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            if self.prepared is not None:
                return self.model.forward_prepared(x, self.prepared).float()
            if n not in self._batches:
                self._batches[n] = self.prompt_batch.repeat(n)
            return self.model(x, self._batches[n]).float()


def scan_interval(image_size: Sequence[int], roi: Sequence[int], overlap: float) -> tuple[int, ...]:
    """MONAI's step between windows: int(roi * (1 - overlap)), the roi itself when it spans the axis."""
    out = []
    for n, r in zip(image_size, roi):
        out.append(int(r) if r == n else max(1, int(r * (1 - overlap))))
    return tuple(out)


def window_grid(image_shape: Sequence[int], roi: Sequence[int], overlap: float):
    """(padding, padded shape, window start tuples) exactly as MONAI's sliding_window_inference."""
    from monai.data.utils import dense_patch_slices

    pad = [(max(r - n, 0) // 2, max(r - n, 0) - max(r - n, 0) // 2) for n, r in zip(image_shape, roi)]
    padded = tuple(max(n, r) for n, r in zip(image_shape, roi))
    slices = dense_patch_slices(padded, tuple(roi), scan_interval(padded, roi, overlap))
    starts = [tuple(int(s.start) for s in sl) for sl in slices]
    return pad, padded, starts
