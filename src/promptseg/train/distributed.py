"""PyTorch's own distributed engine (torchrun + DDP), and nothing home-made.

`setup()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); without it
training is single-process and every helper here is a no-op, so one YAML runs either way:

    promptseg train run.yaml                                            # 1 process
    torchrun --nproc_per_node=8 -m promptseg.cli train run.yaml         # 8 GPUs of one machine
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d \\
             --rdzv_endpoint=HOST:PORT -m promptseg.cli train run.yaml  # run on both machines

NCCL on GPUs, Gloo on CPU. Besides the default group a Gloo group with a long time-out carries
Python objects and the "wait while local rank 0 prepares the cache" barrier, which may take far
longer than NCCL's watchdog allows.

Loss normalisation: the masked loss is a mean over the annotated (sample, class) pairs of a batch.
DDP averages gradients over ranks, which equals the mean over all pairs only when every rank has
the same number of pairs. `pair_weight` rescales each rank's loss by its share of the pairs, so N
ranks with batch B give the gradient of one process with batch N*B, whatever the dataset mix.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError

#: Time-out of the object/barrier group (cache preparation on rank 0 can take hours).
LONG_TIMEOUT = datetime.timedelta(hours=24)


@dataclass
class DistState:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    cpu_group: Any = None  # Gloo group with LONG_TIMEOUT (objects, long barriers)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and progress bars."""
        return self.rank == 0

    def no_sync(self, net, sync: bool):
        """Skip the gradient all-reduce on accumulation micro-steps (DDP's no_sync)."""
        if self.enabled and not sync and hasattr(net, "no_sync"):
            return net.no_sync()
        return contextlib.nullcontext()


def setup(device: str | None = "auto") -> DistState:
    """Join torchrun's process group (NCCL on CUDA, Gloo on CPU); single-process without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistState()
    if device not in (None, "auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda under torchrun, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA device is available")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in (None, "auto", "cuda")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                              f"start at most that many processes per node (--nproc_per_node)")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if use_cuda else {}
        dist.init_process_group(backend=backend, **kwargs)
    cpu_group = dist.new_group(backend="gloo", timeout=LONG_TIMEOUT)
    return DistState(True, rank, world, local_rank, dev, backend, cpu_group)


def wrap(model: torch.nn.Module, state: DistState, find_unused_parameters: bool = True):
    """DDP around the model when distributed.

    find_unused_parameters: per-class parameters of classes not asked in a step (per-class
    controller MLPs) are outside the autograd graph; DDP then marks them ready itself instead of waiting
    (hanging) for their gradient. A parameter unused on every rank keeps `.grad = None` (the
    optimiser skips it); one used on some rank gets the rank average like any other.
    BatchNorm layers become SyncBatchNorm on CUDA so statistics span the global batch.
    """
    if not state.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = None
    if state.device.type == "cuda":
        ids = [state.device.index]
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DDP(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def rank_seed(seed: int, rank: int) -> int:
    """Distinct, reproducible random streams per rank."""
    return int(seed) * 1000 + int(rank)


def gather_objects(obj, state: DistState) -> list:
    """Every rank's `obj`, in rank order (a one-element list when single-process)."""
    if not state.enabled:
        return [obj]
    out = [None] * state.world_size
    dist.all_gather_object(out, obj, group=state.cpu_group)
    return out


def ensure_same(value, state: DistState, what: str) -> None:
    """Stop with one line when the ranks disagree on `value` (they would deadlock later)."""
    values = gather_objects(value, state)
    if any(v != values[0] for v in values):
        raise ConfigError(f"ranks disagree on {what}: {values}")


def pair_weight(pairs: int, state: DistState) -> float:
    """World size x this rank's share of the annotated pairs of the global batch (1.0 alone).

    Multiplying each rank's pair-averaged loss by this makes DDP's gradient average the gradient
    of the pair-averaged loss over the global batch (see the module docstring).
    """
    if not state.enabled:
        return 1.0
    t = torch.tensor([float(pairs)], dtype=torch.float64, device=state.device)
    dist.all_reduce(t)
    total = float(t.item())
    return state.world_size * float(pairs) / total if total > 0 else 1.0


def mean_over_ranks(values: dict[str, float], state: DistState) -> dict[str, float]:
    """The rank average of each figure (what rank 0 logs); the figures themselves alone."""
    if not state.enabled or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=state.device)
    dist.all_reduce(t)
    return {k: float(v) / state.world_size for k, v in zip(keys, t.tolist())}


def barrier(state: DistState, long: bool = False) -> None:
    """Wait for every rank; `long` uses the Gloo group with LONG_TIMEOUT (cache preparation)."""
    if not state.enabled:
        return
    if long and state.cpu_group is not None:
        dist.barrier(group=state.cpu_group)
    elif state.device.type == "cuda":
        dist.barrier(device_ids=[state.device.index])
    else:
        dist.barrier()


@contextlib.contextmanager
def local_main_first(state: DistState):
    """Local rank 0 runs the body first (e.g. fills the cache); the others follow once it is done."""
    if state.enabled and state.local_rank != 0:
        barrier(state, long=True)
    yield
    if state.enabled and state.local_rank == 0:
        barrier(state, long=True)


def cleanup(state: DistState) -> None:
    if state.enabled and dist.is_initialized():
        dist.destroy_process_group()
