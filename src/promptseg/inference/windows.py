"""Window geometry and the window runner shared by both stitchers (sliding.py, lean_masks.py).

Why one place: the stitched-logits path (MONAI) and the lean thresholded path must place the
same windows (multiples of the backbone's down-sampling factor, no larger than the image needs,
MONAI's scan interval and padding) and call the model the same way (prompts prepared once).
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from itertools import combinations
from typing import Sequence

import torch

from ..models.conditioners.base import PromptBatch
from ..models.conditioners.dynamic_head import CPU_CHUNK
from .cpu_runtime import PreparedForward, RuntimeMismatch, agrees, compile_for_cpu, resolve_runtime


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


#: Class-voxels per chunk of a dynamic (per-class) head, per device type. On a CPU a chunk's
#: intermediates stay in cache (~5x faster head than one go). On a GPU each chunk costs a dozen
#: kernel launches: the CPU size made 25,920 baddbmm launches for one clinical CT on an H100
#: (benchmarks/gpu_predict.py, SegResNet + 32 classes; 1.9 s of host time, 0.27 s on the GPU), so
#: chunks there are 128x larger (a 32-class head's 8-channel intermediate: 0.5 GB in float32).
#: Measured after the change, same script and CT, H100: network stage 6.23 -> 2.76 s per CT,
#: peak allocated 1.65 -> 3.38 GB (within FLARE's 4 GB).
HEAD_CHUNK = {"cpu": CPU_CHUNK, "cuda": 1 << 24}


def head_chunk_for(setting: int | str | None, device: torch.device) -> int:
    """Class-voxels per head chunk: `setting` ('auto' = `HEAD_CHUNK` of `device`'s type; 0 or None =
    the whole window batch in one go)."""
    if isinstance(setting, str) and setting.lower() == "auto":
        return HEAD_CHUNK.get(torch.device(device).type, HEAD_CHUNK["cpu"])
    return int(setting) if setting else 0


class WindowRunner:
    """Runs a segmenter on window batches with everything prompt-dependent prepared once.

    A model with the segmenter's `prepare` / `forward_prepared` gets the prompts prepared once
    per volume (the conditioner's per-volume work, and its fast head with `head_chunk`
    class-voxels per chunk, see `head_chunk_for`); any other model is called as `model(x, prompts)`. On a CPU,
    `runtime` (see cpu_runtime.py; 'auto' = OpenVINO when installed) converts that prepared
    forward once and compiles it for each window batch shape; float32 or bfloat16 only (float16
    runs in torch). `cache` (a dict kept by the caller, e.g. the Predictor) keeps the compiled
    graphs across volumes, keyed by the prompts, engine, precision and the weights' version
    counters (so a model trained further is compiled again).

    The first window batch of a volume always runs in PyTorch: its logits are the reference the
    compiled graph must reproduce (`cpu_runtime.agrees`; the graph is converted from a small
    window, `trace_side`, and fixed to each shape, which is 7x faster than tracing a 96^3 window),
    and its time decides 'auto': only if that time x `batches` reaches `AUTO_COMPILE_S` is the
    graph compiled (conversion + compilation cost seconds). A graph that disagrees with PyTorch is
    dropped with a warning and the volume runs in PyTorch. A graph in `cache` was checked when it
    was built, so a later volume runs every batch compiled.

    `fused_head` (True | False | 'auto'): on a CPU in float32 PyTorch, the conditioner's compiled
    per-class head where it has one (models/conditioners/dynamic_head.py);
    'auto' (the default) only from `AUTO_FUSE_BATCHES` network calls, where the ~2.5x faster head
    repays compiling. Its first window batch also runs the eager head: the compiled head must give
    the same logits (`cpu_runtime.agrees`), else it is dropped with a warning; one that fails to
    compile (no C++ compiler, say) is dropped too, with a warning only where it was asked for
    (True); then (and for later volumes, through `cache`) the eager head runs.

    `mirror_axes` (spatial axes 0-2; empty: off) is nnU-Net's test-time mirroring: each window
    batch also runs flipped along every non-empty subset of those axes, each result is flipped
    back, and the logits are averaged (2^n passes).
    """

    #: estimated eager network seconds from which runtime 'auto' compiles
    AUTO_COMPILE_S = 10.0
    #: slabs the compiled graph's per-class head runs in
    HEAD_PIECES = 8
    #: network calls from which `fused_head='auto'` compiles the head: it saves ~0.2 s per window
    #: (96^3, 32 classes, 2 CPU threads) and compiling costs ~4 s with inductor's disk cache warm,
    #: ~23 s cold (dynamic_head.py)
    AUTO_FUSE_BATCHES = 24
    #: key of `cache` remembering that the compiled head failed in this process
    FUSE_FAILED = ("fused_head", "failed")

    def __init__(self, model, prompt_batch: PromptBatch, dtype: torch.dtype | None = None,
                 head_chunk: int | str | None = "auto", runtime: str = "torch", cache: dict | None = None,
                 batches: int | None = None, mirror_axes: Sequence[int] = (), fused_head: bool | str = False):
        self.model = model
        axes = sorted({int(a) for a in mirror_axes})
        if any(a not in (0, 1, 2) for a in axes):
            raise ValueError(f"mirror_axes must be spatial axes 0, 1, 2; got {list(mirror_axes)}")
        # tensor dims of every flip: each non-empty subset of the axes (nnU-Net's combinations)
        self.flips = [[2 + a for a in c] for r in range(1, len(axes) + 1) for c in combinations(axes, r)]
        self.prompt_batch = prompt_batch
        self.dtype = dtype
        self.prepared = None
        self.runtime = runtime
        self.cache = {} if cache is None else cache
        self.compile_s = 0.0  # seconds spent compiling (counted inside the network time)
        self.batches = batches * (1 + len(self.flips)) if batches else batches  # network calls: flips included
        self.ran: set[str] = set()  # engines that ran windows
        self._worth: bool | None = None if runtime == "auto" and batches else True
        self._reference: tuple[torch.Tensor, torch.Tensor] | None = None  # first eager batch, its logits
        self._failed = False
        self._batches: dict[int, PromptBatch] = {}
        if callable(getattr(model, "forward_prepared", None)):
            weights = next(model.parameters(), None)
            device = weights.device if weights is not None else torch.device("cpu")
            self.prepared = model.prepare(prompt_batch, head_chunk=head_chunk_for(head_chunk, device))
        self.fused = None  # the prepared forward with the compiled head; checked on the first batch
        self._fused_checked = False
        self._fused_asked = fused_head is True  # 'auto' falls back without a warning
        if self.prepared is not None and self._wants_fused(fused_head, device):
            try:
                fused = model.prepare(prompt_batch, head_chunk=head_chunk_for(head_chunk, device), fused_head=True)
                self.fused = fused if fused.fused else None
            except Exception as err:  # noqa: BLE001 - torch.compile unusable here: the eager head runs
                self._drop_fused(f"torch.compile is not usable ({type(err).__name__}: {_first_line(err)})")

    @property
    def fused_used(self) -> bool:
        """Whether the windows run the compiled per-class head (checked on the first batch)."""
        return self.fused is not None and self._fused_checked

    @property
    def compiles_next(self) -> bool:
        """Whether the next batch compiles the per-class head (the caller keeps it out of
        `runtime.kept_heap`: the compiler's many long-lived allocations scattered among the
        windows' freed blocks raised the peak by ~0.3-0.9 GB there)."""
        return self.fused is not None and not self._fused_checked

    def _wants_fused(self, setting: bool | str, device: torch.device) -> bool:
        if isinstance(setting, str) and setting.lower() == "auto":
            setting = bool(self.batches) and self.batches >= self.AUTO_FUSE_BATCHES
        return (bool(setting) and callable(getattr(self.model, "features_prepared", None))
                and torch.device(device).type == "cpu" and self.dtype is None
                and self.engine(device) == "torch" and not self.cache.get(self.FUSE_FAILED))

    def engine(self, device: torch.device) -> str:
        """The runtime that runs the windows on `device` ('torch' unless a compiled one applies)."""
        if self.prepared is None or self.dtype not in (None, torch.bfloat16):
            return "torch"
        return resolve_runtime(self.runtime, device)

    @property
    def trace_side(self) -> int:
        """Side of the window the graph is converted from: two down-sampling units, at least 32."""
        return max(32, 2 * max(size_multiple(self.model)))

    def _compiled(self, x: torch.Tensor):
        """The compiled forward, or None where PyTorch runs this batch."""
        if self._failed or self.engine(x.device) == "torch":
            return None
        precision = "bfloat16" if self.dtype is torch.bfloat16 else "float32"
        pb = self.prompt_batch
        version = sum(int(p._version) for p in self.model.parameters())
        key = (id(self.model), version, tuple(pb.classes), tuple(pb.indices), tuple(pb.modality or ()),
               tuple(pb.datasets or ()), self.engine(x.device), precision)
        if key not in self.cache:
            if self._reference is None or not self._worth:
                return None
            for old in [k for k in self.cache if k[:2] != key[:2]]:  # graphs of older weights
                del self.cache[old]
            t0 = time.perf_counter()
            try:
                # the head in slabs, not voxel chunks: a chunk loop would be unrolled at the traced
                # size, and one slab's K x 8-channel intermediate (not the window's 1.8 GB) is live
                whole = self.model.prepare(self.prompt_batch, head_pieces=self.HEAD_PIECES)
                self.cache[key] = compile_for_cpu(PreparedForward(self.model, whole), self._reference[0],
                                                  precision=precision, runtime=self.runtime,
                                                  trace_side=self.trace_side, reference=self._reference)
            except RuntimeMismatch as err:
                warnings.warn(f"{err}; this volume's windows run in PyTorch", stacklevel=2)
                self._failed = True
                return None
            finally:
                self.compile_s += time.perf_counter() - t0
                self._reference = None
        compiled = self.cache[key]
        return compiled if compiled.fits(tuple(x.shape)) else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self._run(x)
        if not self.flips:
            return out
        for dims in self.flips:  # not in place: a compiled runtime may hand back its own buffer
            out = out + torch.flip(self._run(torch.flip(x, dims)), dims)
        return out / (1 + len(self.flips))

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        compiled = self._compiled(x)
        if compiled is not None:
            self.ran.add(self.engine(x.device))
            return compiled(x)
        self.ran.add("torch")
        t0 = time.perf_counter()
        out = self._eager(x)
        if self._worth is None:  # runtime 'auto': does compiling pay for this volume?
            self._worth = (time.perf_counter() - t0) * self.batches >= self.AUTO_COMPILE_S
        if self._worth and self._reference is None and not self._failed and self.engine(x.device) != "torch":
            self._reference = (x, out)  # kept (not copied) until the graph is built; never where none will be
        return out

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        autocast = (torch.autocast(x.device.type, dtype=self.dtype) if self.dtype is not None
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            if self.fused_used:
                return self.model.forward_prepared(x, self.fused).float()
            if self.prepared is not None and self.compiles_next:  # both heads on one backbone pass
                features = self.model.features_prepared(x, self.prepared)
                out = self.model.head_prepared(features, self.prepared).float()
                self._check_fused(features, out)
                return out
            if self.prepared is not None:
                return self.model.forward_prepared(x, self.prepared).float()
            if n not in self._batches:
                self._batches[n] = self.prompt_batch.repeat(n)
            return self.model(x, self._batches[n]).float()

    def _check_fused(self, features, reference: torch.Tensor) -> None:
        """Run the compiled head on the first batch's backbone `features` (compiling it) and keep
        it only if it gives `reference`, the eager head's logits."""
        t0 = time.perf_counter()
        try:
            import torch._inductor.config as inductor_config

            with inductor_config.patch(compile_threads=1):  # no pool of compile processes for one kernel
                out = self.model.head_prepared(features, self.fused).float()
            ok, diff = agrees(out, reference, "float32")
            problem = None if ok else f"its logits differ from the eager head's by {diff:.3g}"
            wrong = not ok
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back to the eager head
            problem = f"it did not compile ({type(err).__name__}: {_first_line(err)})"
            wrong = False
        finally:
            self.compile_s += time.perf_counter() - t0
        if problem is None:
            self._fused_checked = True
            return
        self._drop_fused(problem, always=wrong)

    def _drop_fused(self, problem: str, always: bool = False) -> None:
        """The eager head from now on, for this and (through `cache`) later volumes. One warning
        where the compiled head was asked for (`fused_head=True`) or gave other numbers (`always`:
        a compiler fault worth reporting); a head that merely does not compile under 'auto' (the
        default: no C++ compiler, say) falls back silently, `stats["fused_head"]` says which ran."""
        if self._fused_asked or always:
            warnings.warn(f"the compiled per-class head is not used: {problem}; the eager head runs", stacklevel=4)
        self.cache[self.FUSE_FAILED] = True
        self.fused = None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200]


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
