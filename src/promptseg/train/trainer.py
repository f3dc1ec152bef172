"""Training loop for every method: datasets -> cache -> patches -> masked loss -> checkpoints.

One loop serves all conditioners (only the YAML's `conditioner:` differs). It resumes from the
last checkpoint after a kill, and runs unchanged under torchrun (DDP) -- see `distributed.py`.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.augment import build_augmenter
from ..data.loader import batch_stream
from ..errors import ConfigError
from ..taxonomy import default_taxonomy
from .checkpoint import find_checkpoint, load_state_strict, load_training_state, save_checkpoint
from .losses import masked_bce_dice


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warm-up, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA device is available")
    return torch.device(device)


def load_datasets(config: dict[str, Any]):
    from ..data.manifest import load_dataset
    from ..data.patterns import datasets_from_entry, is_pattern_entry

    if not config["datasets"]:
        raise ConfigError("the run lists no datasets")
    return [m for d in config["datasets"]
            for m in (datasets_from_entry(d) if is_pattern_entry(d) else [load_dataset(d["path"])])]


def class_list(config: dict[str, Any], datasets) -> list[str]:
    """Config's classes, else the union of what the datasets annotate, in taxonomy order."""
    tax = default_taxonomy()
    if config.get("classes"):
        return [tax.resolve(c).name if tax.get(c) else c for c in config["classes"]]
    names = {c for d in datasets for c in d.annotated_classes}
    order = {c.name: c.id for c in tax.classes}
    return sorted(names, key=lambda n: (order.get(n, 10**9), n))


def prepare_cases(config: dict[str, Any], datasets, rank: int = 0):
    from ..data.cache import prepare_datasets
    from ..preprocess import modality_plans

    plans = modality_plans(config["plan"], config.get("plans"))  # each dataset: its modality's plan
    cache_dir = Path(config.get("cache_dir") or Path(config["output"]) / "cache")
    return prepare_datasets(
        datasets, plans, cache_dir, workers=int(config["train"].get("workers") or 1), progress=rank == 0
    )


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines after `step` (steps a killed run did after its last checkpoint, redone now)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            if int(json.loads(line).get("step", 0)) > step:
                continue
        except (ValueError, AttributeError):
            continue  # a line cut by the kill
        keep.append(line)
    if keep != lines:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(keep))
        os.replace(tmp, path)


def training_classes(classes: list[str], batch, max_queries: int, rng: np.random.Generator) -> list[str]:
    """Prompts for one step: the classes any sample of the batch annotates (others would get no
    loss, and the full-resolution per-class head is the costliest part of a step). When that is
    more than `max_queries`, each sample's queries are drawn SAT's way (its positives first plus
    some annotated negatives) and the union is capped."""
    ann = batch.annotated.numpy()
    wanted = [i for i in range(len(classes)) if ann[:, i].any()]
    if len(wanted) <= max_queries:
        return [classes[i] for i in wanted] or classes[:1]
    from ..models.conditioners.sat import sample_queries

    present = (batch.targets.flatten(2).amax(-1) > 0).numpy()
    chosen: set[str] = set()
    seed = int(rng.integers(2**31))
    for b in range(ann.shape[0]):
        names = [classes[i] for i in range(len(classes)) if ann[b, i]]
        here = [classes[i] for i in range(len(classes)) if ann[b, i] and present[b, i]]
        chosen |= set(sample_queries(names, here, max_queries, rng=seed + b))
    picked = [c for c in classes if c in chosen]
    if len(picked) > max_queries:
        keep = set(rng.choice(len(picked), max_queries, replace=False).tolist())
        picked = [c for j, c in enumerate(picked) if j in keep]
    return picked


class Trainer:
    """Builds everything from a resolved config and runs the optimisation."""

    def __init__(self, config: dict[str, Any], device: str | None = "auto", progress: bool = True):
        from ..data.sampling import PatchSampler
        from . import amp, distributed

        self.config = config
        self.dist = distributed.setup(device)
        self.device = self.dist.device if self.dist.enabled else resolve_device(device)
        self.rank = self.dist.rank
        self.progress = progress and self.rank == 0
        t = config["train"]
        if t.get("num_threads"):
            torch.set_num_threads(int(t["num_threads"]))
        amp.check_train_options(t, self.device)
        self.amp = amp.MixedPrecision(t.get("precision", "auto"), self.device)
        self.channels_last = amp.want_channels_last(t.get("channels_last", "auto"), self.device)
        seed = int(config["seed"])
        torch.manual_seed(seed)
        self.out = Path(config["output"])
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        datasets = load_datasets(config)
        self.classes = class_list(config, datasets)
        with distributed.local_main_first(self.dist):  # one process per node fills the cache
            self.cases = prepare_cases(config, datasets, self.rank)
        self.model = self.build_model(in_channels=self.cases[0].image.shape[0]).to(self.device)
        if self.channels_last:
            amp.to_channels_last(self.model)
        if self.dist.enabled:  # same initial weights everywhere, then rank-distinct torch randomness
            torch.manual_seed(distributed.rank_seed(seed, self.rank))
        self.optimizer = self.build_optimizer()
        total = int(t["steps"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, int(t["warmup_steps"]), total)
        )
        self.sampler = PatchSampler(
            self.cases,
            self.classes,
            t["patch_size"],
            batch_size=int(t["batch_size"]),
            dataset_sampling=t["dataset_sampling"],
            fg_ratio=float(t["fg_ratio"]),
            rot90_prob=float(t["rot90_prob"]),
            intensity_shift_prob=float(t["intensity_shift_prob"]),
            seed=distributed.rank_seed(seed, self.rank),
            augment=build_augmenter(t.get("augment")),
        )
        self.query_rng = np.random.default_rng(distributed.rank_seed(seed + 1, self.rank))
        self.step = 0
        self._resume()
        workers = int(t.get("loader_workers") or 0)  # 0: self.sampler draws in the loop (resume bit-exact)
        self.batches = batch_stream(self.sampler, workers, distributed.rank_seed(seed + self.step, self.rank)) if workers else None
        distributed.ensure_same(self.step, self.dist, "the step to resume from (is the output folder on storage every node sees?)")
        amp.maybe_compile(self.model, t.get("compile"))
        self.net = distributed.wrap(self.model, self.dist)

    # -- hooks (overridden by continual learning / fine-tuning, see continual.py) ----------
    def build_model(self, in_channels: int):
        """The model to train (called once, after the cases are prepared)."""
        from ..models.build import build_model

        return build_model(self.config, self.classes, in_channels=in_channels)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the parameters that require gradients (all of them in plain training)."""
        t = self.config["train"]
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=float(t["lr"]), weight_decay=float(t["weight_decay"]))

    def train_mode(self) -> None:
        """Put the network in training mode before each step."""
        self.net.train()

    def prepare_batch(self, batch):
        """A sampled batch before it reaches the loss (e.g. pseudo-labels for old classes)."""
        return batch

    # ------------------------------------------------------------------------------------
    def _resume(self) -> None:
        try:
            ckpt = find_checkpoint(self.out / "last")
        except Exception:
            return
        from safetensors.torch import load_file

        from .checkpoint import WEIGHTS

        load_state_strict(self.model, load_file(str(ckpt / WEIGHTS)), str(ckpt))
        state = load_training_state(ckpt) or {}
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        self.amp.load_state_dict(state.get("amp"))
        self.step = int(state.get("step", 0))
        rng_states = state.get("sampler_rng") or {}
        mine = rng_states.get(self.rank)
        if mine is not None and self.dist.world_size == state.get("world_size", 1):
            self.sampler.rng.bit_generator.state = mine
            query = (state.get("query_rng") or {}).get(self.rank)
            if query is not None:
                self.query_rng.bit_generator.state = query
        else:  # a different process count: fresh, still rank-distinct, streams
            from . import distributed

            self.sampler.rng = np.random.default_rng(distributed.rank_seed(int(self.config["seed"]) + self.step, self.rank))
        if self.rank == 0:
            truncate_log(self.out / "log.jsonl", self.step)
            if self.progress:
                print(f"resuming {self.out} at step {self.step}")

    def _save(self, final: bool = False) -> None:
        from . import distributed

        rngs = distributed.gather_objects((self.sampler.rng.bit_generator.state, self.query_rng.bit_generator.state), self.dist)
        if self.rank != 0:
            return
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "world_size": self.dist.world_size,
            "sampler_rng": {r: s for r, (s, _) in enumerate(rngs)},
            "query_rng": {r: q for r, (_, q) in enumerate(rngs)},
            "amp": self.amp.state_dict(),
        }
        save_checkpoint(self.model, self.out / "last", self.config, self.step, training_state=state)
        if final:
            save_checkpoint(self.model, self.out / "model", self.config, self.step)

    def train_step(self) -> dict[str, float]:
        """One optimiser step (with gradient accumulation); returns the logged figures."""
        from . import amp, distributed

        t = self.config["train"]
        accumulate = int(t["accumulate"])
        logs = {"loss": 0.0, "bce": 0.0, "dice": 0.0}
        self.train_mode()
        for micro in range(accumulate):
            batch = self.prepare_batch(next(self.batches) if self.batches is not None else self.sampler.sample())
            names = training_classes(self.classes, batch, int(t.get("max_queries") or 32), self.query_rng)
            idx = [self.classes.index(n) for n in names]
            prompts = self.model.prompt_batch(names, modality=batch.modality, datasets=batch.datasets,
                                              batch_size=batch.image.shape[0])
            image = amp.input_to(batch.image, self.device, self.channels_last)
            targets = batch.targets[:, idx].to(self.device, non_blocking=True)
            annotated = batch.annotated[:, idx].to(self.device)
            sync = micro == accumulate - 1
            with self.dist.no_sync(self.net, sync):
                with self.amp.autocast():
                    logits, ctx = self.net(image, prompts, return_context=True)
                loss, parts = masked_bce_dice(logits, targets, annotated)
                # this rank's share of the global batch's annotated pairs (1.0 alone): DDP's mean
                # then equals the pair mean over all ranks, as one process with the whole batch
                share = distributed.pair_weight(parts["pairs"], self.dist)
                loss = loss * share
                aux = self.model.conditioner.auxiliary_loss(ctx)
                if aux is not None:
                    weight = t.get("aux_loss_weight")
                    loss = loss + (aux if weight is None else float(weight) * aux)
                self.amp.backward(loss / accumulate)
            logs["loss"] += float(loss.detach()) / accumulate
            logs["bce"] += share * parts["bce"] / accumulate
            logs["dice"] += share * parts["dice"] / accumulate
        logs = distributed.mean_over_ranks(logs, self.dist)  # global-batch figures for rank 0's log
        self.amp.step(self.optimizer, self.model.parameters(), t.get("clip_grad"))
        if self.amp.scaler.is_enabled():
            logs["loss_scale"] = self.amp.scale()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        logs["lr"] = self.scheduler.get_last_lr()[0]
        return logs

    def run(self, max_steps: int | None = None) -> Path:
        from tqdm import tqdm

        t = self.config["train"]
        total = int(t["steps"])
        stop = total if max_steps is None else min(total, self.step + max_steps)
        bar = tqdm(total=total, initial=self.step, desc="train", disable=not self.progress, dynamic_ncols=True)
        log_path = self.out / "log.jsonl"
        started = time.time()
        while self.step < stop:
            logs = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.3f}", dice_loss=f"{logs['dice']:.3f}", lr=f"{logs['lr']:.1e}")
            if self.rank == 0:
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": self.step, **logs, "seconds": round(time.time() - started, 2)}) + "\n")
            if self.step % int(t["checkpoint_every"]) == 0 and self.step < total:
                self._save()
        bar.close()
        self._save(final=self.step >= total)
        from . import distributed

        distributed.barrier(self.dist)
        return self.out / ("model" if self.step >= total else "last")


def train(config: dict[str, Any], device: str | None = "auto", progress: bool = True, max_steps: int | None = None) -> Path:
    """Train a run config to completion (or `max_steps` more steps); returns the checkpoint folder."""
    trainer = Trainer(config, device=device, progress=progress)
    try:
        return trainer.run(max_steps=max_steps)
    finally:
        from . import distributed

        distributed.cleanup(trainer.dist)
