"""Lean sliding window: per-class masks and uint16 probabilities, thresholded slab by slab.

Why a second stitcher: MONAI keeps float logits of every class for the whole image (K x N x 4
bytes: 1.4 GB for 32 classes of a 1.5 mm abdomen) and the predictor then thresholds them. Here
windows are run in the order of one axis and each slab of that axis is thresholded as soon as
no later window touches it, so float memory is K x (window + step) slices, whatever the
image's length. Window positions and Gaussian weights are MONAI's own (same numbers).
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Sequence

import torch

from ..config import BLENDS
from ..models.conditioners.base import PromptBatch
from ..runtime import autocast_dtype, kept_heap
from .windows import WindowRunner, fit_window, run_device, size_multiple, window_grid


def _logit(t: float) -> float:
    return math.log(t / (1.0 - t))


#: probabilities are kept as round(PROB_SCALE * p) in uint16
PROB_SCALE = 65535.0


def sliding_window_masks(
    model,
    image: torch.Tensor,
    prompt_batch: PromptBatch,
    thresholds: Sequence[float],
    window: Sequence[int] | int = (96, 96, 96),
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int = 2,
    device: str | torch.device | None = None,
    precision: str | None = "auto",
    head_chunk: int | str | None = "auto",
    sigma_scale: float = 0.125,
    region: Sequence[slice] | None = None,
    progress: bool = False,
    stats: dict | None = None,
    runtime: str = "torch",
    compiled: dict | None = None,
    blend: str = "logits",
    mirror_axes: Sequence[int] = (),
    fused_head: bool | str = False,
):
    """Per-class bool masks and uint16 probabilities [K, X, Y, Z] (numpy, CPU) for `image` [1, C, ...].

    Same windows, Gaussian weights and blending as `sliding_window_logits` (MONAI), but only a
    slab of float logits is ever held. mask = logit > logit(t) (= sigmoid > t); prob =
    round(PROB_SCALE * sigmoid) (uint16: 2e-5 steps, fine enough that resampling it later matches
    resampling float32 probabilities; uint8's 4e-3 steps moved boundaries of flat fields). `region` (slices of the image) runs only the windows that overlap it;
    inside it the logits are exactly those of the full run (every window covering a voxel there
    is run), outside it everything is background. `stats` (a dict) receives the windows run,
    the windows of the full grid, the network seconds (compilation included), the runtime and
    whether the compiled per-class head ran (`fused_head`).
    `runtime` / `compiled`: the CPU engine and the caller's cache of compiled graphs (`WindowRunner`).
    `blend`: what the Gaussian averages, "logits" (MONAI) or "probabilities" (each window's sigmoid,
    as some authors blend); the masks are then prob > t. A model with `window_weights(roi)` gives
    its own Gaussian weights (a published method's map may differ from MONAI's near the window faces).
    `mirror_axes`: test-time mirroring along these spatial axes (`WindowRunner`).
    `fused_head`: the conditioner's compiled per-class head on a CPU (`WindowRunner`).
    """
    import numpy as np
    import torch.nn.functional as F
    from monai.data.utils import compute_importance_map
    from tqdm import tqdm

    if image.ndim != 5 or image.shape[0] != 1:
        raise ValueError(f"expected an image [1, C, X, Y, Z], got {tuple(image.shape)}")
    k = len(prompt_batch)
    if len(thresholds) != k:
        raise ValueError(f"{len(thresholds)} thresholds for {k} prompts")
    device = run_device(model, image, device)
    dtype = autocast_dtype(precision, device)
    shape = tuple(int(s) for s in image.shape[2:])
    roi = fit_window(window, shape, size_multiple(model))
    pad, padded, starts = window_grid(shape, roi, overlap)
    x = image.float()
    if any(p for pp in pad for p in pp):
        flat_pad = [v for a in reversed(range(3)) for v in pad[a]]
        x = F.pad(x, flat_pad, mode="constant", value=float(image.min()) if image.numel() else 0.0)
    x = x.to(device)

    n_full = len(starts)
    if region is not None:  # keep windows overlapping the region (in padded coordinates)
        lo = [(r.start or 0) + p[0] for r, p in zip(region, pad)]
        hi = [(shape[a] if region[a].stop is None else region[a].stop) + pad[a][0] for a in range(3)]
        starts = [s for s in starts if all(s[a] < hi[a] and s[a] + roi[a] > lo[a] for a in range(3))]
    bs = max(1, int(sw_batch_size))
    runner = WindowRunner(model, prompt_batch, dtype, head_chunk, runtime=runtime, cache=compiled,
                          batches=math.ceil(len(starts) / bs), mirror_axes=mirror_axes,
                          fused_head=fused_head)
    # Stream along axis 0: MONAI's window order is already sorted by it, so the windows run in the
    # same order and the same batches as `sliding_window_inference` -- which matters for models
    # whose normalisation uses batch statistics at inference (the official U-Net's ContBatchNorm).
    axis = 0
    own = getattr(model, "window_weights", None)  # a model whose authors blend with their own weights
    weight = (own(roi).to(device=device, dtype=torch.float32) if callable(own) and mode == "gaussian" else
              compute_importance_map(roi, mode=mode, sigma_scale=sigma_scale, device=device, dtype=torch.float32))
    bounds = sorted({0, padded[axis]} | {s[axis] for s in starts} | {s[axis] + roi[axis] for s in starts})
    bounds = [b for b in bounds if b <= padded[axis]]

    masks = np.zeros((k,) + shape, dtype=bool)
    probs = np.zeros((k,) + shape, dtype=np.uint16)
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    as_prob = blend == "probabilities"
    cut = torch.tensor([float(t) if as_prob else _logit(float(t)) for t in thresholds], dtype=torch.float32,
                       device=device).view(k, 1, 1, 1)
    acc: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    other = [a for a in range(3) if a != axis]

    def chunk(j: int):
        if j not in acc:
            size = [padded[a] for a in range(3)]
            size[axis] = bounds[j + 1] - bounds[j]
            acc[j] = (torch.zeros([k] + size, dtype=torch.float32, device=device),
                      torch.zeros([1] + size, dtype=torch.float32, device=device))
        return acc[j]

    def finish(j: int) -> None:
        """Slab j is complete: blend, threshold, crop the padding, write into the outputs."""
        if j not in acc:
            return
        total, wsum = acc.pop(j)
        covered = wsum > 0
        total.div_(wsum.clamp_min(1e-12))
        lo_p, hi_p = bounds[j], bounds[j + 1]
        sel = [slice(pad[a][0], pad[a][0] + shape[a]) for a in range(3)]
        a0, a1 = max(lo_p, pad[axis][0]), min(hi_p, pad[axis][0] + shape[axis])
        if a1 <= a0:
            return
        sel[axis] = slice(a0 - lo_p, a1 - lo_p)
        z = total[(slice(None), *sel)]
        cov = covered[(slice(None), *sel)]
        out = [slice(None)] * 3
        out[axis] = slice(a0 - pad[axis][0], a1 - pad[axis][0])
        m = (z > cut) & cov
        # uint16 on the device: half the bytes of int32 to copy to the host, and no host-side cast
        p = (z if as_prob else torch.sigmoid(z)).mul_(PROB_SCALE).round_().mul_(cov).to(torch.uint16)
        masks[(slice(None), *out)] = m.cpu().numpy()
        probs[(slice(None), *out)] = p.cpu().numpy()

    t0 = time.perf_counter()
    done = 0  # slabs [0, done) are written
    # freed activations stay in the process for the next batch: fresh memory costs a page fault
    # per 4 KiB (a third of the network's time on a CPU; runtime.kept_heap)
    with contextlib.ExitStack() as heap:
        kept = False
        bar = tqdm(total=len(starts), desc="windows", unit="win", disable=not progress, leave=False)
        for b0 in range(0, len(starts), bs):
            if not kept and not runner.compiles_next:  # a batch that compiles runs before it
                heap.enter_context(kept_heap(device.type == "cpu"))
                kept = True
            batch = starts[b0:b0 + bs]
            xs = torch.cat([x[(slice(None), slice(None), *(slice(s[a], s[a] + roi[a]) for a in range(3)))] for s in batch])
            logits = runner(xs)
            if as_prob:
                logits = torch.sigmoid(logits)
            if logits.shape[1] != k or tuple(logits.shape[2:]) != tuple(roi):
                raise RuntimeError(f"model returned {tuple(logits.shape)} for windows {tuple(xs.shape)} and {k} prompts")
            for i, s in enumerate(batch):
                j = bounds.index(s[axis])
                while bounds[j] < s[axis] + roi[axis]:
                    total, wsum = chunk(j)
                    w_lo, w_hi = bounds[j] - s[axis], bounds[j + 1] - s[axis]
                    src = [slice(None)] * 3
                    src[axis] = slice(w_lo, w_hi)
                    dst = [slice(s[a], s[a] + roi[a]) for a in range(3)]
                    dst[axis] = slice(None)
                    w = weight[tuple(src)]
                    total[(slice(None), *dst)].addcmul_(logits[i][(slice(None), *src)], w)
                    wsum[(slice(None), *dst)] += w
                    j += 1
            bar.update(len(batch))
            nxt = starts[b0 + bs][axis] if b0 + bs < len(starts) else padded[axis]
            while done < len(bounds) - 1 and bounds[done + 1] <= nxt:
                finish(done)
                done += 1
        bar.close()
        for j in list(acc):
            finish(j)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if region is not None:  # outside the region windows are incomplete: background there
        keep = np.zeros(shape, dtype=bool)
        keep[tuple(region)] = True
        masks &= keep
        probs *= keep
    if stats is not None:
        stats.update(windows=len(starts), windows_full=n_full, window=tuple(roi),
                     network_s=time.perf_counter() - t0, precision=str(dtype or torch.float32).replace("torch.", ""),
                     runtime="+".join(sorted(runner.ran)) or runner.engine(device), compile_s=runner.compile_s,
                     fused_head=runner.fused_used)
    return masks, probs
