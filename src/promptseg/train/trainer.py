"""Training loop for every method: datasets -> cache -> patches -> masked loss -> checkpoints.

One loop serves all conditioners (only the YAML's `conditioner:` differs); each trains with its
method's recipe (optimiser, schedule, EMA, clipping, sampling: `recipes.py`) unless the YAML
overrides it. It resumes from the last checkpoint after a kill, and runs unchanged under torchrun
(DDP) -- see `distributed.py`.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import as_trained, latest, load_state_strict, read_meta, read_training_state, read_weights, save_checkpoint
from ..data.augment import build_augmenter
from ..data.loader import batch_stream
from ..errors import CheckpointError, ConfigError
from ..models.build import with_dataset_classes
from ..models.conditioners.queries import loss_pairs, training_queries
from ..preprocess import modality_plans
from ..io.atomic import atomic_write
from ..runtime import kept_heap, resolve_device
from ..taxonomy import Taxonomy, default_taxonomy, load_taxonomy
from .losses import masked_bce_dice, with_deep_supervision
from .recipes import apply_recipe, build_ema, build_optimizer, build_scheduler, scale_head_lr
from .validate import split_cases, validate


def load_entries(entries: list[dict[str, Any]]):
    """Dataset manifests of resolved dataset entries (folders or pattern entries)."""
    from ..data.manifest import load_dataset
    from ..data.patterns import datasets_from_entry, is_pattern_entry

    return [m for d in entries for m in (datasets_from_entry(d) if is_pattern_entry(d) else [load_dataset(d["path"])])]


def load_datasets(config: dict[str, Any]):
    if not config["datasets"]:
        raise ConfigError("the run lists no datasets")
    return load_entries(config["datasets"])


def class_list(config: dict[str, Any], datasets, taxonomy: Taxonomy | None = None) -> list[str]:
    """Config's classes, else the union of what the datasets annotate, in taxonomy order."""
    tax = taxonomy or default_taxonomy()
    if config.get("classes"):
        return [tax.resolve(c).name if tax.get(c) else c for c in config["classes"]]
    names = {c for d in datasets for c in d.annotated_classes}
    order = {c.name: c.id for c in tax.classes}
    return sorted(names, key=lambda n: (order.get(n, 10**9), n))


def prepare_cases(config: dict[str, Any], datasets, progress: bool = True):
    from ..data.cache import prepare_datasets
    plans = modality_plans(config["plan"], config.get("plans"))  # each dataset: its modality's plan
    cache_dir = Path(config.get("cache_dir") or Path(config["output"]) / "cache")
    return prepare_datasets(
        datasets, plans, cache_dir, workers=int(config["train"].get("workers") or 1), progress=progress
    )


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines after `step` (steps a killed run did after its last checkpoint, redone now)
    and any line a kill cut short, so no step is ever logged twice."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            if not line.endswith("\n") or int(json.loads(line).get("step", 0)) > step:
                continue
        except (ValueError, AttributeError):
            continue  # a line cut by the kill
        keep.append(line)
    if keep != lines:
        atomic_write(path, "".join(keep))


def training_classes(classes: list[str], batch, max_queries: int, rng: np.random.Generator,
                     conditioner=None) -> list[str]:
    """Prompts for one step, chosen by the conditioner's `training_queries` rule (the default
    rule without one) from the batch's annotated classes and the classes present in its crops."""
    ann = batch.annotated.numpy()
    present = (batch.targets.flatten(2).amax(-1) > 0).numpy()
    rule = conditioner.training_queries if conditioner is not None else training_queries
    return rule(classes, ann, present, max_queries, rng)


class Trainer:
    """Builds everything from a resolved config and runs the optimisation."""

    def __init__(self, config: dict[str, Any], device: str | None = "auto", progress: bool = True):
        from ..data.sampling import PatchSampler
        from . import amp, distributed

        self.config = config = apply_recipe(config)
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
        self.dataset_names = [d.name for d in datasets]
        trained = {str(d.modality).upper() for d in datasets}
        config["plans"] = {m: p.to_dict() for m, p in modality_plans(config["plan"], config.get("plans")).items()
                           if m in trained}  # what the checkpoint will say it knows
        self.taxonomy = load_taxonomy(config.get("taxonomy"))
        self.classes = class_list(config, datasets, self.taxonomy)
        config["conditioner"] = with_dataset_classes(config["conditioner"], {d.name: d.annotated_classes for d in datasets})
        with distributed.local_main_first(self.dist):  # one process per node fills the cache
            self.cases = prepare_cases(config, datasets, self.progress)
            # patient-wise hold-out (+ validation datasets): never sampled for training
            self.cases, self.val_cases = split_cases(
                config, self.cases, lambda entries: prepare_cases(config, load_entries(entries), False))
        if not self.cases:
            raise ConfigError("validation holds out every case: nothing is left to train on")
        self.best = None  # best validation mean so far (read back from best/ on resume)
        self.model = self.build_model(in_channels=self.cases[0].image.shape[0]).to(self.device)
        if self.channels_last:
            amp.to_channels_last(self.model)
        if self.dist.enabled:  # same initial weights everywhere, then rank-distinct torch randomness
            torch.manual_seed(distributed.rank_seed(seed, self.rank))
        self.optimizer = self.build_optimizer()
        self.scheduler = build_scheduler(self.optimizer, t)
        self.ema = build_ema(self.model, t)
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

        return build_model(self.config, self.classes, in_channels=in_channels, taxonomy=self.taxonomy)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The recipe's optimiser over the parameters that require gradients (all in plain training);
        the conditioner's head parameters at lr x `head_lr_scale`."""
        t = self.config["train"]
        params = [p for p in self.model.parameters() if p.requires_grad]
        return build_optimizer(scale_head_lr(params, self.model.conditioner.head_parameters(), t), t)

    def train_mode(self) -> None:
        """Put the network in training mode before each step."""
        self.net.train()

    def prepare_batch(self, batch):
        """A sampled batch before it reaches the loss (e.g. pseudo-labels for old classes)."""
        return batch

    # ------------------------------------------------------------------------------------
    def _check_same_conditioner(self, ckpt: Path, meta: dict) -> None:
        """A run saved under other conditioner settings than this run builds (a default that
        changed since, e.g. `text_norm`, `channel_layout`) would resume as another model with the
        same weights: refuse in one line that names the key and the value to set."""
        saved = (as_trained(meta.get("config") or {}, {}).get("conditioner") or {})
        for key, value in self.model.conditioner.config_updates().items():
            if isinstance(value, (str, int, float, bool)) and key in saved and saved[key] != value:
                raise CheckpointError(f"{ckpt}: saved with conditioner.{key}: {saved[key]}, this run builds "
                                      f"{value}; set conditioner.{key}: {saved[key]} in the run YAML to resume it")

    def _resume(self) -> None:
        """Continue from the newest complete `last` checkpoint (hashes checked; a corrupt one is an
        error, never a silent restart), and drop log lines after its step."""
        ckpt = latest(self.out / "last")
        if ckpt is not None:
            meta = read_meta(ckpt)
            self._check_same_conditioner(ckpt, meta)
            load_state_strict(self.model, read_weights(ckpt, meta), str(ckpt))
            state = read_training_state(ckpt, meta)
            if state is None:
                raise CheckpointError(f"{ckpt}: no training state to resume from")
            saved_groups = len(state["optimizer"].get("param_groups", []))
            if saved_groups != len(self.optimizer.param_groups):
                raise CheckpointError(
                    f"{ckpt}: its optimiser has {saved_groups} parameter group(s), this run's has "
                    f"{len(self.optimizer.param_groups)}: was the run started with another train.head_lr_scale? "
                    "(runs from before the key existed resume with head_lr_scale: 1)")
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.amp.load_state_dict(state.get("amp"))
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            self.step = int(state.get("step", meta.get("step", 0)))
            self._restore_random(state)
            if self.progress:
                print(f"resuming {self.out} at step {self.step} (from {ckpt.name})")
            best = latest(self.out / "best")
            if best is not None:
                self.best = read_meta(best).get("validation", {}).get("mean")
        if self.rank == 0:
            truncate_log(self.out / "log.jsonl", self.step)

    def _restore_random(self, state: dict[str, Any]) -> None:
        """Random streams as they were at the checkpoint (bit-exact resume), or fresh rank-distinct
        ones when the process count changed."""
        from . import distributed

        mine = (state.get("sampler_rng") or {}).get(self.rank)
        if mine is not None and self.dist.world_size == state.get("world_size", 1):
            self.sampler.rng.bit_generator.state = mine
            query = (state.get("query_rng") or {}).get(self.rank)
            if query is not None:
                self.query_rng.bit_generator.state = query
            torch_state = (state.get("torch_rng") or {}).get(self.rank)
            if torch_state is not None:
                torch.set_rng_state(torch_state)
        else:
            self.sampler.rng = np.random.default_rng(distributed.rank_seed(int(self.config["seed"]) + self.step, self.rank))

    def _meta(self) -> dict[str, Any]:
        """What checkpoints record besides the config: datasets and the modalities trained on
        (the predictor's default modality when a model knows only one)."""
        return {"datasets": self.dataset_names, "modalities": sorted({c.modality for c in self.cases})}

    def _save(self, final: bool = False) -> None:
        from . import distributed

        rngs = distributed.gather_objects(
            (self.sampler.rng.bit_generator.state, self.query_rng.bit_generator.state, torch.get_rng_state()), self.dist
        )
        if self.rank != 0:
            return
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "world_size": self.dist.world_size,
            "sampler_rng": {r: s for r, (s, _, _) in enumerate(rngs)},
            "query_rng": {r: q for r, (_, q, _) in enumerate(rngs)},
            "torch_rng": {r: t for r, (_, _, t) in enumerate(rngs)},
            "amp": self.amp.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }
        extra = self._meta()
        save_checkpoint(self.model, self.out / "last", self.config, self.step, training_state=state, extra=extra)
        if final:
            save_checkpoint(self.saved_model, self.out / "model", self.config, self.step, extra=extra)

    @property
    def saved_model(self) -> torch.nn.Module:
        """The model the run saves (model/, best/): with the recipe's EMA, the weight average;
        the raw weights then only resume a run (last/)."""
        return self.ema.module if self.ema is not None else self.model

    def train_step(self) -> dict[str, float]:
        """One optimiser step (with gradient accumulation); returns the logged figures."""
        from . import amp, distributed

        t = self.config["train"]
        accumulate = int(t["accumulate"])
        dice_weight = float(t["dice_weight"])
        logs = {"loss": 0.0, "bce": 0.0, "dice": 0.0}
        self.train_mode()
        for micro in range(accumulate):
            batch = self.prepare_batch(next(self.batches) if self.batches is not None else self.sampler.sample())
            names = training_classes(self.classes, batch, int(t["max_queries"]), self.query_rng,
                                     self.model.conditioner)
            idx = [self.classes.index(n) for n in names]
            prompts = self.model.prompt_batch(names, modality=batch.modality, datasets=batch.datasets,
                                              batch_size=batch.image.shape[0])
            image = amp.input_to(batch.image, self.device, self.channels_last)
            asked = batch.targets[:, idx]
            targets = asked.to(self.device, non_blocking=True)
            annotated = batch.annotated[:, idx]
            if t["negative_ratio"] != "all":  # the recipe caps each sample's negative pairs
                present = asked.flatten(2).amax(-1) > 0
                annotated = torch.from_numpy(loss_pairs(annotated.numpy(), present.numpy(), t["negative_ratio"],
                                                        int(t["max_queries"]), self.query_rng))
            annotated = annotated.to(self.device)
            sync = micro == accumulate - 1
            with self.dist.no_sync(self.net, sync):
                with self.amp.autocast():
                    logits, ctx = self.net(image, prompts, return_context=True)
                loss, parts = masked_bce_dice(logits, targets, annotated, dice_weight=dice_weight)
                loss = with_deep_supervision(loss, self.model.conditioner.deep_supervision(ctx), targets, annotated,
                                             dice_weight)
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
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        logs["lr"] = self.scheduler.get_last_lr()[0]
        return logs

    def validate(self) -> dict[str, Any] | None:
        """Dice on the held-out cases (rank 0), logged; a better mean than before saves `best/`."""
        v = self.config.get("validation") or {}
        if not self.val_cases or self.rank != 0:
            return None
        window = v.get("window") or self.config["train"]["patch_size"]
        scored = self.saved_model  # best/ is chosen on, and holds, the weights model/ will hold
        result = validate(scored, self.val_cases, window, float(v.get("overlap", 0.25)), self.device)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, "validation": result}) + "\n")
        if self.progress:
            print(f"step {self.step}: validation Dice {result['mean']:.3f} "
                  + " ".join(f"{k}={d:.3f}" for k, d in result["dice"].items()))
        if result["flags"]:  # a dead class scores 0 like a hard one; say which it is, even without progress
            print(f"step {self.step}: warning: " + ", ".join(f"{k} {f}" for k, f in result["flags"].items())
                  + " (its own voxels are called background; see train/validate.py)", file=sys.stderr)
        if result["mean"] == result["mean"] and (self.best is None or result["mean"] > self.best):
            self.best = result["mean"]
            save_checkpoint(scored, self.out / "best", self.config, self.step,
                            extra={**self._meta(), "validation": result})
        return result

    def run(self, max_steps: int | None = None) -> Path:
        from tqdm import tqdm

        t = self.config["train"]
        total = int(t["steps"])
        stop = total if max_steps is None else min(total, self.step + max_steps)
        bar = tqdm(total=total, initial=self.step, desc="train", disable=not self.progress, dynamic_ncols=True)
        log_path = self.out / "log.jsonl"
        started = time.time()
        # freed activations stay in the process: fresh memory costs a page fault per 4 KiB (a
        # 48^3 batch of the small U-Net: 0.57 -> 0.45 s per step on 2 cores; runtime.kept_heap)
        with kept_heap(self.device.type == "cpu"):
            while self.step < stop:
                logs = self.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.3f}", dice_loss=f"{logs['dice']:.3f}", lr=f"{logs['lr']:.1e}")
                if self.rank == 0:
                    with open(log_path, "a") as f:
                        f.write(json.dumps({"step": self.step, **logs, "seconds": round(time.time() - started, 2)}) + "\n")
                every = int((self.config.get("validation") or {}).get("every") or 0)
                if every and (self.step % every == 0 or self.step == stop):
                    self.validate()
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
