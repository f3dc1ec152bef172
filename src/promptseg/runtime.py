"""Where and how torch runs: device, CPU threads and numeric precision, one answer for training,
inference and the benchmarks.

Why one module: the train and predict paths each had their own `resolve_device` and
`resolve_precision` with different names for the same precisions and different CUDA defaults.
Precision names are canonical `fp32` / `bf16` / `fp16` (aliases: float32, bfloat16, float16, half).
`auto` means: on CUDA bf16 where the GPU has it, else fp16; on a CPU bf16 for inference only where
the CPU runs it natively (2-3x faster), else fp32 (CPU autocast slows 3D training down).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from typing import Iterator

import torch

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_ALIASES = {"float32": "fp32", "32": "fp32", "bfloat16": "bf16", "float16": "fp16", "16": "fp16", "half": "fp16"}
#: autocast dtype of each precision (None: plain float32).
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: engines that can run the inference windows on a CPU (see inference/cpu_runtime.py); "auto" =
#: the fastest installed one whose float32 logits equal PyTorch's (OpenVINO), else torch.
CPU_RUNTIMES = ("auto", "openvino", "onnxruntime", "torch")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) -> CUDA when present, else CPU; 'cuda' without a GPU is a one-line error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a torch device (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} asked for, but no CUDA device is available")
    return dev


def machine_threads() -> int:
    """CPU cores this process may use (cgroup/affinity aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int | None = None) -> int:
    """torch intra-op threads: `threads`, else the cores this process may use; returns the count."""
    n = int(threads) if threads else machine_threads()
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads!r}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: inside `kept_heap`: blocks up to 1 GiB come from the heap, and up to 2 GiB of freed heap stays
_KEPT = {_M_MMAP_THRESHOLD: 1 << 30, _M_TRIM_THRESHOLD: (1 << 31) - 1}
#: after it: glibc's own steady state (its dynamic mmap threshold stops at 32 MiB, trim at twice it)
_AFTER = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 64 << 20}


_HEAP_LOCK = threading.Lock()
_HEAP_DEPTH = [0]  # kept_heap blocks open now
_HEAP_KEPT = [False]  # whether glibc took the outermost block's settings


def _glibc():
    """The C library's allocator controls, or None where it is not glibc (macOS, Windows, musl)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc's own symbol: musl's mallopt does nothing)
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return mallopt, trim


@contextlib.contextmanager
def kept_heap(enabled: bool = True) -> Iterator[bool]:
    """Inside the block, memory the process frees stays in it for its next allocations; yields
    whether that applies (`enabled`, glibc, and glibc took the settings).

    Why: glibc returns every freed block above 32 MiB to the kernel, so each tensor a window's
    forward allocates (the activations of a 96^3 batch are hundreds of MB) is fresh memory that
    costs a page fault per 4 KiB when first written. One clinical CT through the small U-Net with
    32 classes (benchmarks/predict_speed.py --scale clinical, 2 cores): 17 million page faults,
    network 83-87 s; with the heap kept, 2.2 million and 53 s, the same masks. On leaving, the
    thresholds go to glibc's usual steady values and the freed pages go back to the kernel
    (`malloc_trim`), so the stages after it hold no more memory than before. Process-wide while
    it lasts (glibc has one allocator per process); nested blocks (validation inside training)
    leave it to the outermost."""
    ctl = _glibc() if enabled else None
    if ctl is None:
        yield False
        return
    mallopt, trim = ctl
    with _HEAP_LOCK:
        _HEAP_DEPTH[0] += 1
        if _HEAP_DEPTH[0] == 1:
            _HEAP_KEPT[0] = all([mallopt(param, value) == 1 for param, value in _KEPT.items()])
        kept = _HEAP_KEPT[0]
    try:
        yield kept
    finally:
        with _HEAP_LOCK:
            _HEAP_DEPTH[0] -= 1
            if _HEAP_DEPTH[0] == 0:
                for param, value in _AFTER.items():
                    mallopt(param, value)
                trim(0)


def cpu_has_bf16() -> bool:
    """True when oneDNN runs bfloat16 natively here (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_bf16() -> bool:
    """True when the current GPU computes in bfloat16 (Ampere and later)."""
    try:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    except Exception:  # no driver: the caller asked about CUDA without having one
        return True


def precision_name(precision: str | None, setting: str = "precision") -> str:
    """Canonical name ('auto', 'fp32', 'bf16', 'fp16') of a precision setting; a one-line
    `ConfigError` naming `setting` for anything else."""
    p = "auto" if precision is None else str(precision).lower()
    p = _ALIASES.get(p, p)
    if p not in PRECISIONS:
        raise ConfigError(f"{setting} must be one of {', '.join(PRECISIONS)} "
                          f"(or float32, bfloat16, float16), got {precision!r}")
    return p


def runtime_name(runtime: str | None, setting: str = "runtime") -> str:
    """Canonical name of a CPU runtime setting; a one-line `ConfigError` naming `setting` otherwise."""
    r = "auto" if runtime is None else str(runtime).lower()
    if r not in CPU_RUNTIMES:
        raise ConfigError(f"{setting} must be one of {', '.join(CPU_RUNTIMES)}, got {runtime!r}")
    return r


def resolve_precision(precision: str | None, device: torch.device | str, *, training: bool = False,
                      setting: str = "precision") -> str:
    """'fp32', 'bf16' or 'fp16' for `precision` on `device` (see the module note for 'auto').
    Inference refuses fp16 on a CPU (no fast kernels there); training allows it."""
    p = precision_name(precision, setting)
    dev = torch.device(device)
    if p == "auto":
        if dev.type == "cuda":
            return "bf16" if cuda_bf16() else "fp16"
        return "bf16" if not training and dev.type == "cpu" and cpu_has_bf16() else "fp32"
    if p == "fp16" and dev.type == "cpu" and not training:
        raise ConfigError(f"{setting}: float16 is for CUDA; on a CPU use bfloat16 or float32")
    return p


def autocast_dtype(precision: str | None, device: torch.device | str, *, training: bool = False) -> torch.dtype | None:
    """torch dtype to autocast to for `precision` on `device` (None: float32, no autocast)."""
    return DTYPES[resolve_precision(precision, device, training=training)]
