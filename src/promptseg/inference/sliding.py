"""Sliding-window inference: MONAI's stitcher around a prompt-conditioned model.

Why a wrapper: the model needs its prompts with every window batch (and a per-sample modality
list of the right length), windows must be multiples of the backbone's down-sampling factor, and
a window larger than the image only wastes compute. MONAI does the tiling, padding and Gaussian
blending; this file only adapts sizes and prompts.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Sequence

import torch

from ..models.conditioners.base import PromptBatch
from ..runtime import autocast_dtype
from .cpu_runtime import PreparedForward, compile_for_cpu, resolve_runtime


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




def _run_device(model, image: torch.Tensor, device) -> torch.device:
    """Where the windows run: `device` when given, else the model's (the image's if it has no weights)."""
    if device is None:
        try:
            return next(model.parameters()).device
        except StopIteration:
            return image.device
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
    precision: str | None = None,
    head_chunk: int | None = None,
) -> torch.Tensor:
    """Logits [1, K, X, Y, Z] for `image` [1, C, X, Y, Z], one channel per prompt.

    `device` runs the windows (default: the model's device); `out_device` holds the stitched
    logits (default: `device`). `amp` uses float16 autocast on CUDA (default: on for CUDA).
    `precision` (auto/float32/bfloat16/float16) overrides `amp`; `head_chunk` bounds a
    conditioner's chunked head (class-voxels per chunk, see `WindowRunner`). Runs under
    `torch.inference_mode`; the model should be in eval mode.
    """
    from monai.inferers import sliding_window_inference

    if image.ndim != 5 or image.shape[0] != 1:
        raise ValueError(f"expected an image [1, C, X, Y, Z], got {tuple(image.shape)}")
    device = _run_device(model, image, device)
    out_device = torch.device(out_device) if out_device is not None else device
    if not isinstance(prompt_batch, PromptBatch):
        prompt_batch = model.prompt_batch(list(prompt_batch), batch_size=1)
    roi = fit_window(window, image.shape[2:], size_multiple(model))
    if precision is not None:
        dtype = autocast_dtype(precision, device)
    else:
        use_amp = (device.type == "cuda") if amp is None else (amp and device.type == "cuda")
        dtype = torch.float16 if use_amp else None
    run = WindowRunner(model, prompt_batch, dtype, head_chunk)
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


# --- the lean path ----------------------------------------------------------------------------
# Why a second stitcher: MONAI keeps float logits of every class for the whole image (K x N x 4
# bytes: 1.4 GB for 32 classes of a 1.5 mm abdomen) and the predictor then thresholds them. Here
# windows are run in the order of one axis and each slab of that axis is thresholded as soon as
# no later window touches it, so float memory is K x (window + step) slices, whatever the
# image's length. Window positions and Gaussian weights are MONAI's own (same numbers).

class WindowRunner:
    """Runs a segmenter on window batches with everything prompt-dependent prepared once.

    A model with the segmenter's `prepare` / `forward_prepared` gets the prompts prepared once
    per volume (the conditioner's per-volume work, and its fast head with `head_chunk`
    class-voxels per chunk); any other model is called as `model(x, prompts)`. On a CPU,
    `runtime` (see cpu_runtime.py; 'auto' = OpenVINO when installed) compiles that prepared
    forward on the first window batch of each shape; float32 or bfloat16 only (float16 runs in
    torch). `cache` (a dict kept by the caller, e.g. the Predictor) keeps the compiled graphs
    across volumes, keyed by the prompts, window batch shape, precision and the weights' version
    counters (so a model trained further is compiled again).

    Compiling costs seconds (conversion + graph compilation), so 'auto' compiles only where it
    pays: given `batches` (window batches of the volume), the first batch runs in PyTorch and is
    timed; only if that time x `batches` reaches `AUTO_COMPILE_S` is the graph compiled, and a
    shape seen after the first (the short last batch) runs in PyTorch unless already compiled.
    The numbers agree either way (max |d| ~1e-6 on logits).
    """

    #: estimated eager network seconds from which runtime 'auto' compiles
    AUTO_COMPILE_S = 10.0

    def __init__(self, model, prompt_batch: PromptBatch, dtype: torch.dtype | None = None,
                 head_chunk: int | None = 131072, runtime: str = "torch", cache: dict | None = None,
                 batches: int | None = None):
        self.model = model
        self.prompt_batch = prompt_batch
        self.dtype = dtype
        self.prepared = None
        self.runtime = runtime
        self.cache = {} if cache is None else cache
        self.compile_s = 0.0  # seconds spent compiling (counted inside the network time)
        self.batches = batches
        self.ran: set[str] = set()  # engines that ran windows
        self._worth: bool | None = None if runtime == "auto" and batches else True
        self._shapes: set[tuple[int, ...]] = set()
        self._batches: dict[int, PromptBatch] = {}
        if callable(getattr(model, "forward_prepared", None)):
            self.prepared = model.prepare(prompt_batch, head_chunk=int(head_chunk) if head_chunk else 0)

    def engine(self, device: torch.device) -> str:
        """The runtime that runs the windows on `device` ('torch' unless a compiled one applies)."""
        if self.prepared is None or self.dtype not in (None, torch.bfloat16):
            return "torch"
        return resolve_runtime(self.runtime, device)

    def _compiled(self, x: torch.Tensor):
        """The compiled forward for `x`'s shape, or None where PyTorch runs the windows."""
        if self.engine(x.device) == "torch":
            return None
        precision = "bfloat16" if self.dtype is torch.bfloat16 else "float32"
        pb = self.prompt_batch
        version = sum(int(p._version) for p in self.model.parameters())
        key = (id(self.model), version, tuple(pb.classes), tuple(pb.indices), tuple(pb.modality or ()),
               tuple(pb.datasets or ()), tuple(x.shape), self.engine(x.device), precision)
        first = not self._shapes or tuple(x.shape) in self._shapes
        self._shapes.add(tuple(x.shape))
        if key not in self.cache:
            if self._worth is None or not self._worth or (self.runtime == "auto" and not first):
                return None
            for old in [k for k in self.cache if k[:2] != key[:2]]:  # graphs of older weights
                del self.cache[old]
            t0 = time.perf_counter()
            self.cache[key] = compile_for_cpu(PreparedForward(self.model, self.prepared), x.float(),
                                              precision=precision, runtime=self.runtime)
            self.compile_s += time.perf_counter() - t0
        return self.cache[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        compiled = self._compiled(x)
        if compiled is not None:
            self.ran.add(self.engine(x.device))
            return compiled(x)
        self.ran.add("torch")
        t0 = time.perf_counter()
        out = self._eager(x)
        if self._worth is None:  # runtime 'auto': does compiling pay for this volume?
            self._worth = (time.perf_counter() - t0) * self.batches >= self.AUTO_COMPILE_S
        return out

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
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
    head_chunk: int | None = 131072,
    sigma_scale: float = 0.125,
    region: Sequence[slice] | None = None,
    progress: bool = False,
    stats: dict | None = None,
    runtime: str = "torch",
    compiled: dict | None = None,
):
    """Per-class bool masks and uint16 probabilities [K, X, Y, Z] (numpy, CPU) for `image` [1, C, ...].

    Same windows, Gaussian weights and blending as `sliding_window_logits` (MONAI), but only a
    slab of float logits is ever held. mask = logit > logit(t) (= sigmoid > t); prob =
    round(PROB_SCALE * sigmoid) (uint16: 2e-5 steps, fine enough that resampling it later matches
    resampling float32 probabilities; uint8's 4e-3 steps moved boundaries of flat fields). `region` (slices of the image) runs only the windows that overlap it;
    inside it the logits are exactly those of the full run (every window covering a voxel there
    is run), outside it everything is background. `stats` (a dict) receives the windows run,
    the windows of the full grid, the network seconds (compilation included) and the runtime.
    `runtime` / `compiled`: the CPU engine and the caller's cache of compiled graphs (`WindowRunner`).
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
    device = _run_device(model, image, device)
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
                          batches=math.ceil(len(starts) / bs))
    # Stream along axis 0: MONAI's window order is already sorted by it, so the windows run in the
    # same order and the same batches as `sliding_window_inference` -- which matters for models
    # whose normalisation uses batch statistics at inference (the official U-Net's ContBatchNorm).
    axis = 0
    weight = compute_importance_map(roi, mode=mode, sigma_scale=sigma_scale, device=device, dtype=torch.float32)
    bounds = sorted({0, padded[axis]} | {s[axis] for s in starts} | {s[axis] + roi[axis] for s in starts})
    bounds = [b for b in bounds if b <= padded[axis]]

    masks = np.zeros((k,) + shape, dtype=bool)
    probs = np.zeros((k,) + shape, dtype=np.uint16)
    cut = torch.tensor([_logit(float(t)) for t in thresholds], dtype=torch.float32, device=device).view(k, 1, 1, 1)
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
        p = torch.sigmoid(z).mul_(PROB_SCALE).round_().mul_(cov).to(torch.int32)
        masks[(slice(None), *out)] = m.cpu().numpy()
        probs[(slice(None), *out)] = p.cpu().numpy().astype(np.uint16)

    t0 = time.perf_counter()
    done = 0  # slabs [0, done) are written
    bar = tqdm(total=len(starts), desc="windows", unit="win", disable=not progress, leave=False)
    for b0 in range(0, len(starts), bs):
        batch = starts[b0:b0 + bs]
        xs = torch.cat([x[(slice(None), slice(None), *(slice(s[a], s[a] + roi[a]) for a in range(3)))] for s in batch])
        logits = runner(xs)
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
                     runtime="+".join(sorted(runner.ran)) or runner.engine(device), compile_s=runner.compile_s)
    return masks, probs
