"""PyTorch's own distributed engine (torchrun + DDP), and nothing home-made.

`setup()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); without it
training is single-process and every helper here is a no-op, so one YAML runs either way.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistState:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    def no_sync(self, net, sync: bool):
        """Skip the gradient all-reduce on accumulation micro-steps (DDP's no_sync)."""
        if self.enabled and not sync and hasattr(net, "no_sync"):
            return net.no_sync()
        return contextlib.nullcontext()


def setup(device: str | None = "auto") -> DistState:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistState()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in (None, "auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistState(True, rank, world, local_rank, dev)


def wrap(model: torch.nn.Module, state: DistState, find_unused_parameters: bool = True):
    """DDP around the model when distributed. Unused per-class parameters (classes not asked in
    a step) are allowed: their gradient is exactly zero on every rank after the all-reduce."""
    if not state.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [state.device.index] if state.device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def rank_seed(seed: int, rank: int) -> int:
    """Distinct, reproducible random streams per rank."""
    return int(seed) * 1000 + int(rank)


def gather_objects(obj, state: DistState) -> list:
    if not state.enabled:
        return [obj]
    out = [None] * state.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(state: DistState) -> None:
    if state.enabled:
        dist.barrier()


def cleanup(state: DistState) -> None:
    if state.enabled and dist.is_initialized():
        dist.destroy_process_group()
