"""Run the per-window network through a compiled CPU runtime (OpenVINO, ONNX Runtime) or PyTorch.

Why: eager PyTorch runs these small 3D convnets far below a CPU's capacity (issue 20 measured the
small U-Net + per-class dynamic head on one 96^3 window, batch 2, 2 threads: 1.34 s eager float32, 0.34 s
in OpenVINO float32 with max |d| 1.7e-6; with the prepared segmenter of `predict`, whose head
runs in slabs, 1.26 s against 1.5 s eager on a quiet machine, so PyTorch stays the default).
Everything prompt-dependent (text codes, class
indices, priors) is fixed before conversion (`FixedPrompts`), so the compiled graph is
image -> logits for one list of classes. It is converted once, from a small window with its
spatial sides left open, and compiled for each window shape (the batch stays the traced one).

`compile_for_cpu(module, example_input)` returns a callable `x -> logits` (torch tensors in and
out). runtime "auto" picks OpenVINO when it is installed and the input is on the CPU, else plain
PyTorch (the fallback, and always the path on a GPU). Precision float32 by default; "bfloat16" is
opt-in (OpenVINO's inference precision hint; ONNX Runtime has no bf16 CPU kernels and refuses).
Each input shape (batch included) is compiled on first use and cached (a fraction of a second):
a short last batch is not zero-padded, because models that normalise with batch statistics at
inference (the official U-Net's ContBatchNorm) would then see other statistics. The prediction
path (`WindowRunner` in windows.py) compiles `PreparedForward` -- the segmenter with one
volume's prompts prepared.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..models.conditioners.base import PromptBatch
from ..runtime import runtime_name
PRECISIONS = {"float32": "f32", "fp32": "f32", "bfloat16": "bf16", "bf16": "bf16"}


def available(runtime: str) -> bool:
    """True when the runtime's package imports here (torch always)."""
    if runtime == "torch":
        return True
    return importlib.util.find_spec(runtime) is not None


class FixedPrompts(nn.Module):
    """A segmenter with its prompts fixed: `forward(x)` -> logits [B, K, *spatial] (for export)."""

    def __init__(self, segmenter: nn.Module, prompts: Sequence[str] | PromptBatch | None = None,
                 modality: str | None = None):
        super().__init__()
        self.segmenter = segmenter
        self.prompts = prompts
        self.modality = modality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmenter(x, self.prompts, modality=self.modality).float()


class PreparedForward(nn.Module):
    """`segmenter.forward_prepared(x, prepared)` as a module (prompts prepared once, for export)."""

    def __init__(self, segmenter: nn.Module, prepared):
        super().__init__()
        self.segmenter = segmenter
        self.prepared = prepared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmenter.forward_prepared(x, self.prepared).float()


def _threads(threads: int | None) -> int:
    return int(threads) if threads else torch.get_num_threads()


def _trace_example(example: torch.Tensor, trace_side: int | None) -> torch.Tensor:
    """A small input of the example's batch and channels to convert from (tracing a 96^3 window
    took 40 s of the 45 s OpenVINO needed; a 32^3 one 6 s, both on loaded cores): the converted
    graph keeps its spatial sides open and is fixed to each window shape afterwards."""
    if not trace_side:
        return example
    spatial = [min(int(n), int(trace_side)) for n in example.shape[2:]]
    return torch.zeros(list(example.shape[:2]) + spatial, dtype=example.dtype)


@functools.lru_cache(maxsize=None)
def _openvino_core():
    """One OpenVINO Core for the process, never released. Why: each Core's CPU plugin points the
    calling thread's signal stack (sigaltstack) at memory of its own and, when the Core is freed,
    puts back the stack it found and unmaps its own. Two Cores freed in the order they were made
    leave the thread's signal stack on unmapped memory, and the next signal whose handler runs
    there (Python installs every handler that way: SIGINT, SIGCHLD after a DataLoader) kills the
    process with SIGSEGV (openvino 2026.4; the plugin's AMX signal-stack setup, openvino PR #11894;
    seen as CI's segfault in the test session)."""
    import openvino as ov

    return ov.Core()


class _OpenVINO:
    """One converted OpenVINO model (spatial sides open when traced small), compiled per shape."""

    def __init__(self, module: nn.Module, trace: torch.Tensor, precision: str, threads: int, dynamic: bool):
        import openvino as ov

        with torch.no_grad():
            self.model = ov.convert_model(module, example_input=trace)
        if dynamic:
            self.model.reshape({0: ov.PartialShape([int(trace.shape[0]), int(trace.shape[1]), -1, -1, -1])})
        self.core = _openvino_core()
        self.config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "INFERENCE_NUM_THREADS": threads,
                       "PERFORMANCE_HINT": "LATENCY"}

    def build(self, shape: tuple[int, ...]) -> Callable:
        model = self.model.clone()
        model.reshape({0: list(shape)})
        request = self.core.compile_model(model, "CPU", self.config).create_infer_request()

        def run(x: np.ndarray) -> np.ndarray:
            return request.infer({0: x})[0]
        return run


class _OnnxRuntime:
    """One ONNX export (spatial axes dynamic when traced small) in one ONNX Runtime session."""

    def __init__(self, module: nn.Module, trace: torch.Tensor, precision: str, threads: int, dynamic: bool):
        import onnxruntime as ort

        if PRECISIONS[precision] != "f32":
            raise ConfigError("onnxruntime: bfloat16 is not supported on the CPU; use precision float32")
        buf = io.BytesIO()
        open_axes = {2: "x", 3: "y", 4: "z"}
        axes = {"image": open_axes, "logits": open_axes} if dynamic else None
        with torch.no_grad():
            torch.onnx.export(module, (trace,), buf, input_names=["image"], output_names=["logits"],
                              dynamic_axes=axes, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])

    def build(self, shape: tuple[int, ...]) -> Callable:
        def run(x: np.ndarray) -> np.ndarray:
            return self.session.run(None, {"image": x})[0]
        return run


_ENGINES = {"openvino": _OpenVINO, "onnxruntime": _OnnxRuntime}


class RuntimeMismatch(RuntimeError):
    """A compiled graph whose logits differ from PyTorch's on the reference batch."""


def agrees(out: torch.Tensor, ref: torch.Tensor, precision: str) -> tuple[bool, float]:
    """(within tolerance, max |d|): float32 within 1e-3 of the logits' range (measured: 1e-4 on a
    96^3 window of logits +-63; a graph fixed to the wrong shape is off by O(1)); bfloat16 within 5%."""
    if out.shape != ref.shape:
        return False, float("inf")
    diff = float((out.float() - ref.float()).abs().max()) if ref.numel() else 0.0
    span = float(ref.max() - ref.min()) if ref.numel() else 0.0
    tol = (1e-3 if PRECISIONS[precision] == "f32" else 5e-2) * max(1.0, span)
    return diff <= tol, diff


class CompiledWindows:
    """Callable over window batches: converts once, compiles each new input shape (batch included).

    `trace_side`: convert from a window of at most this side and fix the graph to each shape
    afterwards (fast); `reference` = (x, PyTorch's logits for x): the compiled graph must give
    them (`agrees`), else the module is converted again at x's own shape (exact trace) and checked
    again; a second disagreement raises RuntimeMismatch.
    """

    def __init__(self, module: nn.Module, example: torch.Tensor, runtime: str, precision: str, threads: int,
                 trace_side: int | None = None, reference: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.precision = precision
        self._runs: dict[tuple[int, ...], Callable] = {}
        example = example.float().cpu()
        trace = _trace_example(example, trace_side)
        dynamic = tuple(trace.shape) != tuple(example.shape)
        self._shape = tuple(example.shape)
        self.dynamic = dynamic
        self._engine = _ENGINES[runtime](module, trace, precision, threads, dynamic)
        if reference is None:
            self._compiled(example)
            return
        ok, diff = self._check(reference)
        if not ok and dynamic:  # a shape the trace fixed: convert at the window's own shape
            self._runs.clear()
            self._engine = _ENGINES[runtime](module, example, precision, threads, False)
            self.dynamic = False
            ok, diff = self._check(reference)
        if not ok:
            raise RuntimeMismatch(f"{runtime} {precision} logits differ from PyTorch's by {diff:.3g}")

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether this graph runs `shape`: any spatial sides when converted with open sides, else
        only the shape it was traced at (a trace may fix sizes inside the graph). The batch stays
        the traced one: per-sample prompt tensors are constants of the graph."""
        shape = tuple(shape)
        return shape == self._shape or (self.dynamic and shape[:2] == self._shape[:2])

    def _check(self, reference: tuple[torch.Tensor, torch.Tensor]) -> tuple[bool, float]:
        x, ref = reference
        return agrees(self(x), ref, self.precision)

    def _compiled(self, example: torch.Tensor) -> Callable:
        key = tuple(example.shape)
        if key not in self._runs:
            self._runs[key] = self._engine.build(key)
        return self._runs[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().cpu()
        run = self._compiled(x)
        return torch.from_numpy(np.asarray(run(np.ascontiguousarray(x.numpy())), dtype=np.float32))


def _torch_callable(module: nn.Module, precision: str, device: torch.device) -> Callable:
    dtype = torch.bfloat16 if PRECISIONS[precision] == "bf16" else None

    def run(x: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            return module(x).float()
    return run


def resolve_runtime(runtime: str, device: torch.device) -> str:
    """The runtime that will run: 'auto' -> OpenVINO on a CPU when installed, else torch."""
    runtime = runtime_name(runtime)
    if device.type != "cpu":
        return "torch"
    if runtime == "auto":
        return "openvino" if available("openvino") else "torch"
    if not available(runtime):
        raise ConfigError(f"runtime {runtime!r} is not installed (pip install {runtime})")
    return runtime


def compile_for_cpu(module: nn.Module, example_input: torch.Tensor, precision: str = "float32",
                    runtime: str = "auto", threads: int | None = None, trace_side: int | None = None,
                    reference: tuple[torch.Tensor, torch.Tensor] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """`x -> logits` for `module` (image -> logits, prompts fixed, e.g. `FixedPrompts`).

    example_input: one window batch of the shape that will be run ([B, C, X, Y, Z]).
    trace_side / reference: convert from a smaller window and check the result against PyTorch's
    logits on a reference batch (see `CompiledWindows`).
    On a GPU, or with runtime 'auto' and no OpenVINO, this is the module itself under
    inference mode (bfloat16 autocast when asked).
    """
    if str(precision).lower() not in PRECISIONS:
        raise ConfigError(f"precision must be float32 or bfloat16, got {precision!r}")
    precision = str(precision).lower()
    module = module.eval()
    name = resolve_runtime(runtime, example_input.device)
    if name == "torch":
        return _torch_callable(module, precision, example_input.device)
    return CompiledWindows(module, example_input, name, precision, _threads(threads), trace_side, reference)
