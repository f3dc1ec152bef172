"""UniSeg's published 11-task model (yeerwen/UniSeg) as a promptseg module, loaded by key name.

Facts (read from the authors' code; recorded in `official_uniseg_settings.yaml` and, for the key
layout, `official_uniseg_keys.json`), written anew here:
- an nnU-Net v1 generic U-Net: 6 stages of conv-InstanceNorm-LeakyReLU blocks (2 per stage),
  strided convolutions instead of pooling (strides = the plan's pool kernels), transposed
  convolutions (no bias) for up-sampling, a 1x1x1 head without bias per decoder stage;
- the first convolution exists three times, for inputs of 1, 2 and 4 channels (CT / MR, CT+PET,
  4 MR sequences), and the input's channel count picks it;
- the task prompt: a learned tensor [1, T, *bottleneck grid] is concatenated to the bottleneck
  features, FUSE (3 conv blocks, (C+T) -> (C+T)//4 -> (C+T)//4 -> T) turns it into T task maps,
  the asked task's map is concatenated to the bottleneck (C+1 channels) and the decoder runs;
- the network gives 4 logits per voxel (softmax at inference); task t reads its first
  `channels` of them (settings), channel c = label c of its dataset.
The prompt's grid is fixed by the training patch, so windows must be exactly the plan's patch.

Checked against the authors' network (their Prompt_generic_UNet.py built as UniSeg_Trainer builds
it, run outside the repository): with `random_uniseg_state_dict` weights, on a 64x192x192 window of
../shared/data/ct_abdomen_pelvis resampled to 3x1.5x1.5 mm and clipped as their preprocessor does,
max |d| of the logits = 0 for each of the 11 tasks (1-channel input; also 4 channels for BraTS and
2 for AutoPET). tests/integration/test_official_uniseg_reference.py keeps a small network of the
same design against numbers their code produced.
"""
from __future__ import annotations

import json
import re
import zlib
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import yaml
from torch import nn

from ..errors import CheckpointError, InputError
from .state import read_torch_file, state_mismatch


@lru_cache(maxsize=1)
def uniseg_settings() -> dict[str, Any]:
    """Network shape, task table, preprocessing and inference settings of the published model."""
    text = resources.files("promptseg.models").joinpath("official_uniseg_settings.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


@lru_cache(maxsize=1)
def uniseg_key_facts() -> dict[str, Any]:
    """The content of official_uniseg_keys.json (the authors' state-dict names and shapes)."""
    return json.loads(resources.files("promptseg.models").joinpath("official_uniseg_keys.json").read_text(encoding="utf-8"))


def uniseg_layout() -> dict[str, tuple[int, ...]]:
    """The authors' state-dict names -> shapes of the published model."""
    return {k: tuple(s) for k, s in uniseg_key_facts()["keys"]}


class ConvNormAct(nn.Module):
    """conv -> InstanceNorm3d(affine) -> LeakyReLU: nnU-Net's basic block (dropout p=0 omitted)."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int] | int = 1,
                 eps: float = 1e-5, slope: float = 0.01):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, tuple(kernel), stride, tuple(k // 2 for k in kernel))
        self.norm = nn.InstanceNorm3d(cout, eps=eps, affine=True)
        self.act = nn.LeakyReLU(slope, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ChannelStem(nn.Module):
    """The first block, with one convolution per accepted input channel count."""

    def __init__(self, channel_counts: Sequence[int], cout: int, kernel: Sequence[int],
                 eps: float = 1e-5, slope: float = 0.01):
        super().__init__()
        self.convs = nn.ModuleDict({str(c): nn.Conv3d(c, cout, tuple(kernel), 1, tuple(k // 2 for k in kernel))
                                    for c in channel_counts})
        self.norm = nn.InstanceNorm3d(cout, eps=eps, affine=True)
        self.act = nn.LeakyReLU(slope, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = str(x.shape[1])
        if key not in self.convs:
            raise InputError("image", f"UniSeg takes images of {sorted(int(c) for c in self.convs)} channels, "
                                      f"got {x.shape[1]}")
        return self.act(self.norm(self.convs[key](x)))


class OfficialUniSeg(nn.Module):
    """The authors' UniSeg network: `forward(image, task)` -> [B, out_channels, *patch] logits."""

    def __init__(self, patch: Sequence[int], tasks: int, in_channels: Sequence[int], base_features: int,
                 max_features: int, out_channels: int, convs_per_stage: int, pool_kernels: Sequence[Sequence[int]],
                 conv_kernels: Sequence[Sequence[int]], fusion_convs: int = 3, prompt_divisor: Sequence[int] = (16, 32, 32),
                 norm_eps: float = 1e-5, negative_slope: float = 0.01):
        super().__init__()
        n_pool = len(pool_kernels)
        if len(conv_kernels) != n_pool + 1 or convs_per_stage < 2 or fusion_convs < 2:
            raise CheckpointError("UniSeg settings: need one conv kernel per stage (pools + 1), >= 2 convs per stage and FUSE")
        kw = {"eps": norm_eps, "slope": negative_slope}
        feats = [min(base_features * 2 ** d, max_features) for d in range(n_pool + 1)]
        self.patch = tuple(int(p) for p in patch)
        self.tasks, self.convs_per_stage, self.out_channels = tasks, convs_per_stage, out_channels
        self.encoder = nn.ModuleList()
        for d in range(n_pool + 1):
            cin = feats[d - 1] if d else None
            stride = pool_kernels[d - 1] if d else 1
            first = (ChannelStem(in_channels, feats[0], conv_kernels[0], **kw) if d == 0
                     else ConvNormAct(cin, feats[d], conv_kernels[d], stride, **kw))
            rest = [ConvNormAct(feats[d], feats[d], conv_kernels[d], **kw) for _ in range(convs_per_stage - 1)]
            self.encoder.append(nn.Sequential(first, *rest))
        grid = [p // q for p, q in zip(self.patch, prompt_divisor)]
        self.prompt = nn.Parameter(torch.zeros(1, tasks, *grid))
        c = feats[-1]
        mid = (c + tasks) // 4
        widths = [c + tasks] + [mid] * (fusion_convs - 1) + [tasks]
        self.fuse = nn.Sequential(*[ConvNormAct(a, b, conv_kernels[-1], **kw) for a, b in zip(widths, widths[1:])])
        self.up, self.decoder, self.heads = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        down = c + 1
        for u in range(n_pool):
            skip = feats[n_pool - 1 - u]
            # as the authors index it: decoder stage u convolves with the kernel of stage n_pool - u,
            # one coarser than its resolution (so the finest decoder stage is 3x3x3, not 1x3x3)
            kernel, stride = conv_kernels[n_pool - u], pool_kernels[n_pool - 1 - u]
            self.up.append(nn.ConvTranspose3d(down, skip, tuple(stride), tuple(stride), bias=False))
            blocks = [ConvNormAct(2 * skip, skip, kernel, **kw)]
            blocks += [ConvNormAct(skip, skip, kernel, **kw) for _ in range(convs_per_stage - 1)]
            self.decoder.append(nn.Sequential(*blocks))
            self.heads.append(nn.Conv3d(skip, out_channels, 1, bias=False))
            down = skip

    def task_maps(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """FUSE of the bottleneck features and the prompt: [B, T, *grid], one map per task."""
        prompt = self.prompt.expand(bottleneck.shape[0], -1, -1, -1, -1)
        return self.fuse(torch.cat([bottleneck, prompt], dim=1))

    def forward(self, image: torch.Tensor, task: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
        """image [B, C, *patch] (C = 1, 2 or 4, normalised as the plan says); task: one id for the
        batch or one per sample -> logits [B, out_channels, *patch] (deep-supervision heads unused)."""
        if image.ndim != 5 or tuple(image.shape[2:]) != self.patch:
            raise InputError("image", f"UniSeg takes [B, C, {', '.join(map(str, self.patch))}] windows "
                                      f"(its task prompt is fixed to the training patch), got {list(image.shape)}")
        ids = torch.as_tensor(task, dtype=torch.long, device=image.device).reshape(-1)
        if ids.numel() == 1:
            ids = ids.expand(image.shape[0])
        if ids.numel() != image.shape[0] or bool(((ids < 0) | (ids >= self.tasks)).any()):
            raise InputError("task", f"UniSeg tasks are 0..{self.tasks - 1}, one for the batch or one per sample; "
                                     f"got {ids.tolist()} for a batch of {image.shape[0]}")
        skips = []
        x = image
        for stage in self.encoder[:-1]:
            x = stage(x)
            skips.append(x)
        x = self.encoder[-1](x)
        maps = self.task_maps(x)
        chosen = maps[torch.arange(x.shape[0], device=x.device), ids].unsqueeze(1)
        x = torch.cat([x, chosen], dim=1)
        for up, block, skip in zip(self.up, self.decoder, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.heads[-1](x)


def build_official_uniseg(**overrides) -> OfficialUniSeg:
    """The published network's shape from the settings (`overrides` change any of its fields)."""
    net = {"tasks": len(uniseg_settings()["tasks"]), **uniseg_settings()["network"], **overrides}
    return OfficialUniSeg(**net)


# ---- the authors' key names <-> ours ----------------------------------------------------------
_PART = {"conv": "conv", "norm": "instnorm"}


def _two_part(prefix: str, j: int, n: int) -> str:
    """nnU-Net's bottleneck / decoder stage = StackedConvLayers(n-1 blocks) + StackedConvLayers(1)."""
    return f"{prefix}.0.blocks.{j}" if j < n - 1 else f"{prefix}.1.blocks.0"


def official_name(key: str, model: OfficialUniSeg) -> str:
    """Our state-dict key -> the authors' name for the same tensor."""
    n, last = model.convs_per_stage, len(model.encoder) - 1
    if key == "prompt":
        return "intermedia_prompt"
    m = re.fullmatch(r"encoder\.0\.0\.convs\.(\d+)\.(weight|bias)", key)
    if m:
        return f"conv_blocks_context.0.blocks.0.conv_{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"(encoder|decoder|fuse)\.(?:(\d+)\.)?(\d+)\.(conv|norm)\.(weight|bias)", key)
    if m:
        where, stage, j, part, param = m.group(1), m.group(2), int(m.group(3)), _PART[m.group(4)], m.group(5)
        if where == "fuse":
            return f"fusion_layer.blocks.{j}.{part}.{param}"
        if where == "encoder" and int(stage) < last:
            return f"conv_blocks_context.{stage}.blocks.{j}.{part}.{param}"
        base = "conv_blocks_context" if where == "encoder" else "conv_blocks_localization"
        return f"{_two_part(f'{base}.{stage}', j, n)}.{part}.{param}"
    m = re.fullmatch(r"(up|heads)\.(\d+)\.weight", key)
    if m:
        return f"{'tu' if m.group(1) == 'up' else 'seg_outputs'}.{m.group(2)}.weight"
    raise CheckpointError(f"no UniSeg name for promptseg key {key!r}")


def name_map(model: OfficialUniSeg) -> dict[str, str]:
    """The authors' name -> our key, for every tensor of `model`."""
    return {official_name(k, model): k for k in model.state_dict()}


def random_uniseg_state_dict(seed: int = 0, prefix: str = "",
                             layout: Mapping[str, Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
    """The published model's key layout (or another `layout` of the authors' names, e.g. a small
    test network's) with seeded random values (He-scaled convolutions, norm scales near 1, a
    unit-variance prompt): what `model_final_checkpoint.model` looks like to the loader, for tests
    and timing without the real weights (never downloaded here). Each tensor draws from its own
    generator (seed and name), so the values do not depend on the order of the layout."""
    sd: dict[str, torch.Tensor] = {}
    for key, shape in (layout or uniseg_layout()).items():
        shape = tuple(shape)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
        value = torch.randn(shape, generator=gen)
        if key.endswith("instnorm.weight"):
            value = 1.0 + 0.1 * value
        elif key.endswith("bias"):
            value = 0.05 * value
        elif len(shape) == 5 and key != "intermedia_prompt":
            fan_in = shape[1] * shape[2] * shape[3] * shape[4]
            value = value * (2.0 / fan_in) ** 0.5
        sd[prefix + key] = value
    return sd


def unwrap_uniseg(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The state dict inside an nnU-Net v1 checkpoint ({'state_dict': ...} or bare), 'module.' stripped."""
    inner = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(inner, Mapping):
        raise CheckpointError("not a UniSeg checkpoint: no 'state_dict' mapping")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in inner.items()}


def is_uniseg_state(state_dict: Mapping[str, Any]) -> bool:
    """Whether a state dict has UniSeg's signature keys (task prompt and FUSE)."""
    keys = [k[len("module."):] if k.startswith("module.") else k for k in state_dict]
    return "intermedia_prompt" in keys and any(k.startswith("fusion_layer.") for k in keys)


def uniseg_from_state_dict(state_dict: Mapping[str, Any], where: str = "checkpoint") -> OfficialUniSeg:
    """A model with the authors' weights; every missing, unused and mis-shaped key is listed in one
    CheckpointError naming `where`."""
    sd = unwrap_uniseg(state_dict)
    problem = state_mismatch(uniseg_layout(), sd)
    if problem:
        raise CheckpointError(f"{where}: not the layout of UniSeg's published 11-task model: {problem}")
    with torch.device("meta"):
        model = build_official_uniseg()
    names = name_map(model)
    model = build_official_uniseg()
    model.load_state_dict({names[k]: torch.as_tensor(v) for k, v in sd.items()}, strict=True)
    return model.eval()


# numpy 1.x (the authors' environment) pickles scalars as numpy.core.multiarray.scalar, numpy 2 as
# numpy._core.multiarray.scalar; dtypes as numpy.dtype (1.x) or numpy.dtypes.*DType (2.x)
_SCALAR = np._core.multiarray.scalar
NUMPY_PICKLE_GLOBALS = [_SCALAR, (_SCALAR, "numpy.core.multiarray.scalar"), np.dtype,
                         *(type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_))]


def read_uniseg_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a published `.model` file. nnU-Net pickles its loss curves with numpy
    scalars, so numpy's scalar/dtype reconstructors are allowed next to torch's weights-only set."""
    with torch.serialization.safe_globals(NUMPY_PICKLE_GLOBALS):
        return unwrap_uniseg(read_torch_file(path, "UniSeg checkpoint"))


def load_official_uniseg(path: str | Path) -> OfficialUniSeg:
    """Read the authors' `model_final_checkpoint.model` (renamed as the user likes) into our model."""
    return uniseg_from_state_dict(read_uniseg_file(path), str(path))
