"""The Universal Model's per-class dynamic head (1x1x1 convs 8 -> 8 -> 1 whose weights are generated
per class), in two numerically equivalent forms.

`batched_head`: every (sample, class) head at once as batched matrix products (`baddbmm`). Each
layer writes and reads K x 8 channels per voxel, so on a CPU it is bound by memory traffic: two
thirds of the small U-Net's window time on a 32-class clinical CT (96^3 window batch of 2, 2
threads: head 0.67 s, convolutions 0.38 s).

`compiled_head`: one sample's head written with elementwise operations only (`pointwise_head`)
and compiled by torch.compile (inductor), which fuses the whole head into one loop over
(class, voxel) that keeps every intermediate in registers. Measured on this 2-core CPU (96^3
window batch of 2, 32 classes, `benchmarks/head_speed.py`): 0.20-0.28 s against 0.6-0.7 s, max |d|
1.2e-6. Compiling costs ~23 s the first time on a machine and ~4 s once inductor's on-disk cache
holds the kernel, per (window size, class count); inference uses it when asked
(`inference.fused_head`, auto by default: config.py has the end-to-end figures). Eager, `pointwise_head`
would hold ~136 [K, V] tensors at once, so the compiled function runs it only while being traced
and falls back to `batched_head` in voxel chunks wherever torch.compile hands back to Python (a
recompile limit, say).
"""
from __future__ import annotations

import contextlib
import locale
import sys
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

#: compiled heads, one per head size (weights per layer, biases per layer, hidden channels)
_COMPILED: dict[tuple, Callable] = {}
#: class-voxels per chunk of `chunked_head` on a CPU: a chunk's K x 8-channel intermediate stays
#: in cache (inference's `head_chunk: auto`, and the compiled head's fallback)
CPU_CHUNK = 131072


def chunk_voxels(class_voxels: int, classes: int) -> int:
    """Voxels per chunk for a budget of `class_voxels` shared by `classes` classes (at least 1024)."""
    return max(1024, int(class_voxels) // max(1, int(classes)))


def batched_head(feats: torch.Tensor, params: torch.Tensor, weight_nums: Sequence[int],
                 bias_nums: Sequence[int], hidden: int) -> torch.Tensor:
    """Every (sample, class) head at once: feats [B, C, *S], params [B, K, P] -> [B, K, *S].

    A 1x1x1 conv with groups = B*K is a batched matrix product, so it runs as `baddbmm`: the same
    numbers as the official `F.conv3d(..., groups=N)` (tested), ~2x faster on CPU, and the first
    layer reads the shared features without copying them K times.
    """
    b, c = feats.shape[:2]
    spatial = feats.shape[2:]
    k = params.shape[1]
    n = len(weight_nums)
    splits = torch.split(params, list(weight_nums) + list(bias_nums), dim=-1)
    x = feats.reshape(b, c, -1)                                            # [B, C, S]
    for layer in range(n):
        cout = hidden if layer < n - 1 else 1
        w = splits[layer].reshape(b, k, cout, -1)                           # [B, K, out, in]
        bias = splits[n + layer].reshape(b, k, cout, 1)
        if layer == 0:  # all classes read the same features: one [K*out, C] matrix per sample
            x = torch.baddbmm(bias.reshape(b, k * cout, 1), w.reshape(b, k * cout, c), x)
        else:
            x = torch.baddbmm(bias.reshape(b * k, cout, 1), w.reshape(b * k, cout, -1), x.reshape(b * k, -1, x.shape[-1]))
        if layer < n - 1:
            x = F.relu(x)
    return x.reshape(b, k, *spatial)


def chunked_head(flat: torch.Tensor, params: torch.Tensor, weight_nums: Sequence[int], bias_nums: Sequence[int],
                 hidden: int, chunk: int) -> torch.Tensor:
    """`batched_head` over flat features [B, C, V] in chunks of `chunk` voxels -> float32 [B, K, V]:
    each chunk's K x 8-channel intermediate stays in cache instead of the window's 0.9 GB."""
    b, _, n = flat.shape
    out = torch.empty((b, params.shape[1], n), dtype=torch.float32, device=flat.device)
    for s in range(0, n, chunk):
        out[:, :, s:s + chunk] = batched_head(flat[:, :, s:s + chunk], params, weight_nums, bias_nums, hidden)
    return out


def pointwise_head(x: torch.Tensor, params: torch.Tensor, weight_nums: Sequence[int], bias_nums: Sequence[int],
                   hidden: int) -> torch.Tensor:
    """`batched_head` for one sample as elementwise operations: x [1, C, V], params [1, K, P] ->
    [1, K, V]. Each hidden unit is a [K, V] tensor summed from per-class weights ([K, 1]) times the
    units below it, so a fusing compiler sees one elementwise graph (the module docstring)."""
    p = params[0, :, :, None]                                             # [K, P, 1]
    units = [x[0, i][None] for i in range(x.shape[1])]                    # C x [1, V]
    n = len(weight_nums)
    w_at, b_at = 0, sum(weight_nums)
    for layer in range(n):
        cout = hidden if layer < n - 1 else 1
        cin = len(units)
        out = []
        for j in range(cout):  # weights of a layer are [out, in] row-major, as batched_head reads them
            acc = p[:, b_at + j]
            for i in range(cin):
                acc = acc + p[:, w_at + j * cin + i] * units[i]
            out.append(torch.relu(acc) if layer < n - 1 else acc)
        units = out
        w_at += cout * cin
        b_at += cout
    return units[0][None]


@contextlib.contextmanager
def _utf8_text() -> Iterator[None]:
    """A UTF-8 LC_CTYPE for the block: torch._inductor reads its code templates in the locale's
    encoding when it is imported, and the C locale makes that ASCII, which fails on their non-ASCII
    characters. A process may run in the C locale (a user's, or one where a C library set it: ITK's
    GDCM writer did, until io/dicom.py restored the locale after it)."""
    if sys.flags.utf8_mode or locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
        yield
        return
    old = locale.setlocale(locale.LC_CTYPE)
    try:
        for name in ("C.UTF-8", "C.utf8", "en_US.UTF-8"):
            try:
                locale.setlocale(locale.LC_CTYPE, name)
                break
            except locale.Error:
                continue
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, old)


def compiled_head(weight_nums: Sequence[int], bias_nums: Sequence[int], hidden: int) -> Callable:
    """(x [1, C, V], params [1, K, P], out [1, K, V]) -> None: `pointwise_head` compiled and
    written straight into `out` (a view of the batch's logits: no [K, V] result to allocate and
    copy; 0.38-0.43 -> 0.33 s per 96^3 batch of 2 with 32 classes). Compiled once per head size
    in this process; inductor compiles again for each new window size or class count."""
    key = (tuple(weight_nums), tuple(bias_nums), int(hidden))
    if key not in _COMPILED:
        wn, bn = list(key[0]), list(key[1])

        def head(x: torch.Tensor, params: torch.Tensor, out: torch.Tensor) -> None:
            if torch.compiler.is_compiling():
                out.copy_(pointwise_head(x, params, wn, bn, hidden))
            else:
                out.copy_(chunked_head(x, params, wn, bn, hidden, chunk_voxels(CPU_CHUNK, params.shape[1])))

        with _utf8_text():
            import torch._inductor.compile_fx  # noqa: F401 - imported here, under a UTF-8 locale
        _COMPILED[key] = torch.compile(head, dynamic=False)
    return _COMPILED[key]


def per_sample(kernel: Callable, flat: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """A one-sample head (`compiled_head`) over a batch: flat [B, C, V], params [B, K, P] -> float32
    [B, K, V], one call per sample, so one compiled shape serves every batch size."""
    out = torch.empty((flat.shape[0], params.shape[1], flat.shape[-1]), dtype=torch.float32, device=flat.device)
    for i in range(flat.shape[0]):
        kernel(flat[i:i + 1].float(), params[i:i + 1].float(), out[i:i + 1])
    return out
