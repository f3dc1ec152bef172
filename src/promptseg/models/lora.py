"""LoRA adapters on convolutions and linear layers (MedUniSeg*'s way to learn new tasks).

Why: a trained universal model is extended without touching a single one of its weights -- the
base layer is frozen and a low-rank residual is added beside it:
    y = base(x) + (alpha / r) * up(down(x))
`down` has the base's kernel, stride, padding and dilation but only r output channels; `up` is a
1x1 (or r -> out linear) map, zero-initialised, so a freshly adapted model computes exactly what
the base did. For a transposed conv, `down` is a transposed conv with the base's geometry.

The adapted layer is a *subclass* of the base layer type that keeps the very same `weight` and
`bias` Parameters under the very same state-dict keys; adapters add `<name>.lora.<i>.down/up`
keys. So (1) the old state dict is a strict subset of the new one, (2) bit-identity of the base is
checked key by key, (3) a layer can carry several adapters (one per extension step, older ones
frozen). `merge_lora` folds the adapters into the base weights and returns plain layers.

`apply_extension(model, config)` replays the extension history recorded in a run config (new
classes, adapters) so `build_model` rebuilds an extended model from its checkpoint alone.
"""
from __future__ import annotations

import fnmatch
import math
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..errors import ConfigError

CONV_TYPES = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
LINEAR_TYPES = (nn.Linear,)


class LoRAAdapter(nn.Module):
    """One low-rank residual branch: down (base geometry, r channels) then up (1x1, zero init)."""

    def __init__(self, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scale = self.alpha / self.rank
        w = base.weight
        kw = dict(device=w.device, dtype=w.dtype)
        if isinstance(base, nn.Linear):
            self.down = nn.Linear(base.in_features, rank, bias=False, **kw)
            self.up = nn.Linear(rank, base.out_features, bias=False, **kw)
        elif isinstance(base, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            conv_t = _plain_type(base)
            conv_1x1 = nn.Conv3d if issubclass(conv_t, nn.ConvTranspose3d) else nn.Conv2d
            self.down = conv_t(base.in_channels, rank, base.kernel_size, stride=base.stride, padding=base.padding,
                               output_padding=base.output_padding, dilation=base.dilation, bias=False, **kw)
            self.up = conv_1x1(rank, base.out_channels, 1, bias=False, **kw)
        elif isinstance(base, (nn.Conv2d, nn.Conv3d)):
            conv = nn.Conv3d if isinstance(base, nn.Conv3d) else nn.Conv2d
            self.down = conv(base.in_channels, rank, base.kernel_size, stride=base.stride, padding=base.padding,
                             dilation=base.dilation, bias=False, padding_mode=base.padding_mode, **kw)
            self.up = conv(rank, base.out_channels, 1, bias=False, **kw)
        else:  # pragma: no cover - guarded by apply_lora
            raise ConfigError(f"LoRA cannot adapt a {type(base).__name__}")
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if output_size is not None:
            h = self.down(x, output_size=output_size)
        else:
            h = self.down(x)
        return self.up(h) * self.scale

    def delta_weight(self, base: nn.Module) -> torch.Tensor:
        """The adapter as a change of the base weight (for merging)."""
        d, u = self.down.weight, self.up.weight
        if isinstance(base, nn.Linear):
            return (u @ d) * self.scale
        if isinstance(base, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            # base weight [in, out/g, *k]; down [in, r, *k]; up [out, r, 1..]
            return torch.einsum("ir...,or->io...", d, u.flatten(1)) * self.scale
        # base weight [out, in/g, *k]; down [r, in, *k]; up [out, r, 1..]
        return torch.einsum("or,ri...->oi...", u.flatten(1), d) * self.scale


class _LoRAMixin:
    """Forward = the base layer's own forward + every adapter's residual."""

    lora: nn.ModuleList

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # type: ignore[override]
        out = super().forward(x, *args, **kwargs)  # type: ignore[misc]
        for adapter in self.lora:
            out = out + (adapter(x, *args, **kwargs) if args or kwargs else adapter(x))
        return out


class LoRALinear(_LoRAMixin, nn.Linear):
    pass


class LoRAConv2d(_LoRAMixin, nn.Conv2d):
    pass


class LoRAConv3d(_LoRAMixin, nn.Conv3d):
    pass


class LoRAConvTranspose2d(_LoRAMixin, nn.ConvTranspose2d):
    pass


class LoRAConvTranspose3d(_LoRAMixin, nn.ConvTranspose3d):
    pass


_WRAPPERS: dict[type, type] = {
    nn.Linear: LoRALinear,
    nn.Conv2d: LoRAConv2d,
    nn.Conv3d: LoRAConv3d,
    nn.ConvTranspose2d: LoRAConvTranspose2d,
    nn.ConvTranspose3d: LoRAConvTranspose3d,
}


def _is_lora(module: nn.Module) -> bool:
    return isinstance(module, _LoRAMixin)


def _plain_type(module: nn.Module) -> type:
    """The torch layer type behind a (possibly LoRA-wrapped) layer."""
    return next(c for c in type(module).__mro__ if c in _WRAPPERS)


def _wrap(base: nn.Module) -> nn.Module:
    """The LoRA subclass of `base`, sharing its Parameters and buffers (no copy)."""
    cls = _WRAPPERS[type(base)]
    new = cls.__new__(cls)
    new.__dict__.update(base.__dict__)  # same Parameters, buffers, hooks and hyper-parameters
    new._modules = dict(base._modules)
    new._parameters = dict(base._parameters)
    new._buffers = dict(base._buffers)
    new.lora = nn.ModuleList()
    return new


def _kind_matches(module: nn.Module, targets: str) -> bool:
    if targets == "conv":
        return isinstance(module, CONV_TYPES)
    if targets == "linear":
        return isinstance(module, LINEAR_TYPES)
    if targets == "all":
        return isinstance(module, CONV_TYPES + LINEAR_TYPES)
    raise ConfigError(f"unknown LoRA targets {targets!r}; use 'conv', 'linear', 'all' or a list of module names")


def _adaptable(module: nn.Module) -> dict[str, nn.Module]:
    """Layers LoRA can adapt: exact torch Linear/Conv types or already-adapted ones, never the
    adapters' own down/up layers."""
    named = dict(module.named_modules())
    inside = tuple(n + "." for n, m in named.items() if isinstance(m, LoRAAdapter))
    return {n: m for n, m in named.items()
            if n and not n.startswith(inside) and (type(m) in _WRAPPERS or _is_lora(m))}


def _target_names(module: nn.Module, targets: str | Sequence[str]) -> list[str]:
    named = _adaptable(module)
    if isinstance(targets, str):
        return [n for n, m in named.items() if _kind_matches(m, targets)]
    out = []
    for pattern in targets:
        hits = [n for n in named if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ConfigError(f"LoRA target {pattern!r} names no Conv/Linear layer of {type(module).__name__}")
        out.extend(h for h in hits if h not in out)
    return out


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


def apply_lora(
    module: nn.Module, rank: int = 32, alpha: float = 64, targets: str | Sequence[str] = "conv", freeze: bool = True
) -> list[str]:
    """Add one LoRA adapter to every targeted layer of `module`; returns the adapted layer names.

    targets: "conv" (Conv2d/3d and transposed convs), "linear", "all", or a list of layer names
    (glob patterns allowed) -- the list this function returns, so an extension replays exactly.
    A layer that already has adapters gets one more. With `freeze`, the adapted layers' own weight
    and bias stop requiring gradients (older adapters are frozen by the caller if wanted).
    """
    names = _target_names(module, targets)
    if not names:
        raise ConfigError(f"LoRA found no {targets} layer to adapt in {type(module).__name__}")
    names = list(dict.fromkeys(names))
    for name in names:
        layer = module.get_submodule(name)
        if not _is_lora(layer):
            layer = _wrap(layer)
            _set_submodule(module, name, layer)
        if freeze:
            for p in layer._parameters.values():
                if p is not None:
                    p.requires_grad_(False)
        layer.lora.append(LoRAAdapter(layer, rank, alpha))
    return names


def lora_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, m in model.named_modules():
        if _is_lora(m):
            yield name, m


def lora_parameters(model: nn.Module, latest_only: bool = False) -> list[nn.Parameter]:
    """Adapter parameters (all adapters, or only each layer's newest one)."""
    out: list[nn.Parameter] = []
    for _, layer in lora_layers(model):
        adapters = list(layer.lora)[-1:] if latest_only else list(layer.lora)
        for a in adapters:
            out.extend(a.parameters())
    return out


def count_adapters(model: nn.Module) -> int:
    return sum(len(layer.lora) for _, layer in lora_layers(model))


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and turn the layer back into its plain type.

    The merged model computes the same function (up to float rounding) with the original
    architecture and state-dict keys. Grouped convs cannot absorb a dense adapter: refused.
    """
    for name, layer in list(lora_layers(model)):
        base_cls = _plain_type(layer)
        if getattr(layer, "groups", 1) != 1 and len(layer.lora):
            raise ConfigError(f"cannot merge LoRA into grouped conv {name!r} (groups={layer.groups})")
        weight = layer.weight.detach().clone()
        for adapter in layer.lora:
            weight += adapter.delta_weight(layer).to(weight)
        plain = base_cls.__new__(base_cls)
        plain.__dict__.update(layer.__dict__)
        plain._modules = {k: v for k, v in layer._modules.items() if k != "lora"}
        plain._parameters = dict(layer._parameters)
        plain._buffers = dict(layer._buffers)
        plain.weight = nn.Parameter(weight, requires_grad=True)
        if plain.bias is not None:
            plain.bias = nn.Parameter(plain.bias.detach().clone(), requires_grad=True)
        if name:
            _set_submodule(model, name, plain)
        else:
            model = plain
    return model


# -- extension replay -------------------------------------------------------------------------
def extension_history(config: dict[str, Any]) -> list[dict[str, Any]]:
    ext = (config or {}).get("extension") or {}
    history = ext.get("history") or []
    if not isinstance(history, list):
        raise ConfigError("config 'extension.history' must be a list of extension steps")
    return history


def apply_extension(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """Re-add the LoRA adapters an extended checkpoint was saved with, from its run config alone.

    Called at the end of `build_model`. New classes need nothing here: every conditioner builds
    with the full class list exactly the structure `add_classes` grows (the extension verifies
    this before training), so only the adapters -- which no config section describes -- are
    replayed, step by step, on the recorded layers. A config without history is left untouched.
    """
    for step in extension_history(config):
        lora = step.get("lora")
        if lora:
            apply_lora(model.backbone, rank=int(lora["rank"]), alpha=float(lora["alpha"]),
                       targets=list(lora["targets"]), freeze=True)
    return model
