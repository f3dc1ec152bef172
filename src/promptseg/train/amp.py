"""Mixed precision, channels-last and `torch.compile` for training, chosen per device.

Why each default:
- precision `auto`: bf16 autocast on CUDA (same exponent range as fp32, so no loss scaling and no
  overflow in the 3D convolutions), fp16 on GPUs without bf16, fp32 on CPU (CPU autocast is slower
  than fp32 for 3D convolutions). `fp16` always comes with a gradient scaler; a step whose scaled
  gradients overflow is skipped and the scale halved (torch.amp.GradScaler).
- channels-last (`channels_last_3d`) speeds cuDNN 3D convolutions under autocast; on CPU it does
  not help, so `auto` means "on CUDA only".
- `compile` (off by default): `nn.Module.compile` in place, so the state-dict keys, checkpoints
  and DDP wrapping are unchanged. `true` or a mapping of torch.compile arguments
  (backend, mode, dynamic, fullgraph, options).
The masked loss casts logits to fp32, so only the network runs in reduced precision.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable

import torch

from .. import runtime
from ..errors import ConfigError

_COMPILE_KEYS = {"backend", "mode", "dynamic", "fullgraph", "options"}


def resolve_precision(precision: str | None, device: torch.device | str) -> str:
    """'fp32', 'bf16' or 'fp16' for training at `precision` on `device` (`runtime.resolve_precision`)."""
    return runtime.resolve_precision(precision, device, training=True, setting="train.precision")


class MixedPrecision:
    """Autocast + gradient scaling for one device; a transparent no-op for fp32.

    Use: `with mp.autocast(): loss = ...`; `mp.backward(loss)`; `applied = mp.step(opt, params, clip)`.
    """

    def __init__(self, precision: str | None = "auto", device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.dtype = runtime.DTYPES[self.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, parameters: Iterable[torch.Tensor] | None = None,
             clip: float | None = None) -> bool:
        """Unscale, clip (on true gradients), step; False when fp16 overflowed and the step was skipped."""
        if clip:
            self.scaler.unscale_(optimizer)
            params = parameters if parameters is not None else [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, float(clip))
        if not self.scaler.is_enabled():
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= before

    def scale(self) -> float:
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0

    def state_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore the loss scale when the saved run used fp16 too (else keep the fresh one)."""
        if state and state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])


def want_channels_last(option: Any, device: torch.device | str) -> bool:
    """`train.channels_last`: true/false, or 'auto' (on CUDA only, where cuDNN gains from it)."""
    if option is None or option == "auto":
        return torch.device(device).type == "cuda"
    if isinstance(option, bool):
        return option
    raise ConfigError(f"train.channels_last must be true, false or auto, got {option!r}")


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """5D weights (3D convolutions) in channels_last_3d; other parameters stay as they are."""
    return model.to(memory_format=torch.channels_last_3d)


def input_to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Move a batch to the device, in the memory format the network expects."""
    if channels_last and x.dim() == 5:
        return x.to(device, memory_format=torch.channels_last_3d, non_blocking=True)
    return x.to(device, non_blocking=True)


def compile_options(option: Any) -> dict[str, Any] | None:
    """None (no compile) or the torch.compile keyword arguments of `train.compile`."""
    if option in (None, False):
        return None
    if option is True:
        return {}
    if isinstance(option, str):
        return {"mode": option}
    if isinstance(option, dict):
        unknown = set(option) - _COMPILE_KEYS
        if unknown:
            raise ConfigError(f"train.compile: unknown keys {sorted(unknown)}; known: {sorted(_COMPILE_KEYS)}")
        return dict(option)
    raise ConfigError(f"train.compile must be false, true, a mode name or a mapping, got {option!r}")


def maybe_compile(model: torch.nn.Module, option: Any) -> torch.nn.Module:
    """Compile `model` in place (its parameters, state-dict keys and class stay the same)."""
    kwargs = compile_options(option)
    if kwargs is not None:
        model.compile(**kwargs)
    return model


def check_train_options(train: dict[str, Any], device: torch.device | str) -> None:
    """Fail early, in one line, on a bad precision / channels_last / compile value."""
    resolve_precision(train.get("precision", "auto"), device)
    want_channels_last(train.get("channels_last", "auto"), device)
    compile_options(train.get("compile", False))
