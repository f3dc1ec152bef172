"""Run the per-window network through a compiled CPU runtime (OpenVINO, ONNX Runtime) or PyTorch.

Why: eager PyTorch runs these small 3D convnets far below a CPU's capacity (issue 20 measured the
small U-Net + per-class dynamic head on one 96^3 window, batch 2, 2 threads: 1.34 s eager float32, 0.34 s
in OpenVINO float32 with max |d| 1.7e-6). Everything prompt-dependent (text codes, class
indices, priors) is fixed before conversion (`FixedPrompts`), so the compiled graph is
image -> logits for one list of classes and one window batch size.

`compile_for_cpu(module, example_input)` returns a callable `x -> logits` (torch tensors in and
out). runtime "auto" picks OpenVINO when it is installed and the input is on the CPU, else plain
PyTorch (the fallback, and always the path on a GPU). Precision float32 by default; "bfloat16" is
opt-in (OpenVINO's inference precision hint; ONNX Runtime has no bf16 CPU kernels and refuses).
Each input shape (batch included) is compiled on first use and cached: a short last batch is
not zero-padded, because models that normalise with batch statistics at inference (the official
U-Net's ContBatchNorm) would then see other statistics. The prediction path (`WindowRunner` in
sliding.py) compiles `PreparedForward` -- the segmenter with one volume's prompts prepared.
"""
from __future__ import annotations

import contextlib
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


def _openvino(module: nn.Module, example: torch.Tensor, precision: str, threads: int) -> Callable:
    import openvino as ov

    with torch.no_grad():
        model = ov.convert_model(module, example_input=example)
    config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "INFERENCE_NUM_THREADS": threads,
              "PERFORMANCE_HINT": "LATENCY"}
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        return request.infer({0: x})[0]
    return run


def _onnxruntime(module: nn.Module, example: torch.Tensor, precision: str, threads: int) -> Callable:
    import onnxruntime as ort

    if PRECISIONS[precision] != "f32":
        raise ConfigError("onnxruntime: bfloat16 is not supported on the CPU; use precision float32")
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, (example,), buf, input_names=["image"], output_names=["logits"], dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {"image": x})[0]
    return run


_BUILDERS = {"openvino": _openvino, "onnxruntime": _onnxruntime}


class CompiledWindows:
    """Callable over window batches: compiles each new input shape once (batch size included)."""

    def __init__(self, module: nn.Module, example: torch.Tensor, runtime: str, precision: str, threads: int):
        self.module, self.runtime, self.precision, self.threads = module, runtime, precision, threads
        self._runs: dict[tuple[int, ...], Callable] = {}
        self._compiled(example)

    def _compiled(self, example: torch.Tensor) -> Callable:
        key = tuple(example.shape)
        if key not in self._runs:
            self._runs[key] = _BUILDERS[self.runtime](self.module, example.float().cpu(), self.precision, self.threads)
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
                    runtime: str = "auto", threads: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """`x -> logits` for `module` (image -> logits, prompts fixed, e.g. `FixedPrompts`).

    example_input: one window batch of the shape that will be run ([B, C, X, Y, Z]).
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
    return CompiledWindows(module, example_input, name, precision, _threads(threads))
