"""Extending a trained model: new classes from new data only (continual learning), and fine-tuning
a trained model to a downstream task.

`extend(CHECKPOINT, NEW_RUN)`: the old model comes from its checkpoint alone (its run YAML and
datasets are never read). New classes get new per-class parameters through the conditioner's
`add_classes`; which parameters those are, the conditioner says (`class_parameters`), so this
file knows no method. Strategies (`extend.strategy`):
- pseudo-label (the journal papers' continual learning): everything trains; an old class that the
  new data does not annotate is supervised by the frozen old model's prediction on the same patch
  (soft sigmoid, or thresholded), a new class by its label;
- freeze-backbone (incremental learning of task priors): only the new per-class parameters train;
- lora (low-rank adapters): LoRA adapters on the backbone's convolutions + the new per-class parameters
  train, every pre-existing weight stays bit-identical; old classes pseudo-supervised as above;
- naive: everything trains on the new labels only; old classes unsupervised (the forgetting
  baseline).
What an extension did is recorded in the run config (`extension.history`), so the checkpoint it
writes reloads with `load_checkpoint` alone (`models/lora.apply_extension` replays the adapters).

`finetune(CHECKPOINT, RUN)`: a new model for the run's own classes, initialised from all of the
trained model (`finetune.init: all`: backbone, the conditioner's shared parts, and the per-class
parts of classes both models have, matched by name: `copy_classes_from`), or only its backbone /
encoder (`encoder_parameters`), with the
encoder or backbone optionally frozen.

Both reuse `Trainer` through its hooks (`build_model`, `build_optimizer`, `train_mode`,
`prepare_batch`); the loop, checkpoints, resume and DDP are the trainer's own.

An extension run YAML is a normal run (the architecture, plan and inference settings come from
the checkpoint and may be omitted):

    output: runs/organs+tumour
    datasets: [data/PhantomA_liver]          # the new data only
    train: {steps: 500, lr: 0.002, patch_size: [32, 32, 32]}
    extend:
      strategy: pseudo-label                 # pseudo-label | freeze-backbone | lora | naive
      pseudo_labels: hard                    # hard (>= pseudo_threshold) | soft (sigmoid)
      pseudo_threshold: 0.5
      lora: {rank: 32, alpha: 64, targets: conv}
      evaluate: {old: data/PhantomTest_full, new: data/PhantomTest_full}   # forgetting report
A fine-tuning YAML has a `finetune: {init: all|backbone|encoder, freeze: none|encoder|backbone}`
section instead.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..checkpoint import open_checkpoint
from ..config import (
    EXTEND_DEFAULTS,
    FINETUNE_DEFAULTS,
    STRATEGIES,
    check_extend_section,
    check_finetune_section,
    read_run_yaml,
    resolve_config,
    section,
)
from .recipes import build_optimizer, scale_head_lr
from .trainer import Trainer, class_list, load_datasets

#: Parts of a run that are the model's architecture: they come from the checkpoint.
ARCHITECTURE_KEYS = ("backbone", "conditioner")


# ---------------------------------------------------------------------------------------------
# run configs
# ---------------------------------------------------------------------------------------------
def _resolve(raw: dict[str, Any], base_dir: Path | None, where: str) -> dict[str, Any]:
    try:
        return resolve_config(raw, base_dir)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _same_architecture(raw: dict[str, Any], old: dict[str, Any], where: str) -> None:
    """A run may repeat the old model's architecture keys, never change them."""
    for key in ARCHITECTURE_KEYS:
        if key not in raw:
            continue
        given = raw[key] if isinstance(raw[key], dict) else {"name": raw[key]}
        old_sec = old.get(key) or {}
        diff = {k: v for k, v in given.items() if k in old_sec and old_sec[k] != v}
        if diff:
            raise ConfigError(
                f"{where}: '{key}' differs from the checkpoint's ({diff}); the architecture comes from the checkpoint"
            )


def _absolute(p: str | None, base: Path | None) -> str | None:
    if p is None:
        return None
    q = Path(p).expanduser()
    return str(q if q.is_absolute() or base is None else (base / q).resolve())


def extension_config(raw: dict[str, Any], old_config: dict[str, Any], base_dir: Path | None = None,
                     where: str = "run config") -> dict[str, Any]:
    """Resolved config of an extension run: the new YAML (datasets, train, output) + the old model's
    architecture, plan, modality and inference settings + the validated `extend` section."""
    raw = copy.deepcopy(raw)
    ext = check_extend_section(section(raw, "extend", EXTEND_DEFAULTS, where), where)
    raw.pop("finetune", None)
    _same_architecture(raw, old_config, where)
    if "plan" in raw and _resolve({"plan": raw["plan"]}, base_dir, where)["plan"] != old_config.get("plan"):
        raise ConfigError(f"{where}: 'plan' differs from the checkpoint's; old classes need the old preprocessing")
    inference_override = raw.pop("inference", None) or {}
    for key in ("backbone", "conditioner", "plan", "modality"):
        raw.pop(key, None)
    cfg = _resolve(raw, base_dir, where)
    for key in ("backbone", "conditioner", "plan", "modality"):
        if key in old_config:
            cfg[key] = copy.deepcopy(old_config[key])
    cfg["inference"] = {**copy.deepcopy(old_config.get("inference") or cfg["inference"]), **inference_override}
    ext["evaluate"] = {k: _absolute(v, base_dir) for k, v in (ext.get("evaluate") or {}).items()}
    cfg["extend"] = ext
    cfg["extension"] = copy.deepcopy(old_config.get("extension") or {"history": []})
    return cfg


def finetune_config(raw: dict[str, Any], old_config: dict[str, Any], base_dir: Path | None = None,
                    where: str = "run config") -> dict[str, Any]:
    """Resolved config of a fine-tuning run: the YAML with the checkpoint's backbone/conditioner
    (plan, modality and inference from the YAML when it sets them, else the checkpoint's)."""
    raw = copy.deepcopy(raw)
    ft = check_finetune_section(section(raw, "finetune", FINETUNE_DEFAULTS, where), where)
    raw.pop("extend", None)
    _same_architecture(raw, old_config, where)
    given = set(raw)
    for key in ARCHITECTURE_KEYS:
        raw.pop(key, None)
    cfg = _resolve(raw, base_dir, where)
    for key in ARCHITECTURE_KEYS:
        cfg[key] = copy.deepcopy(old_config[key])
    for key in ("plan", "modality", "inference"):
        if key not in given and key in old_config:
            cfg[key] = copy.deepcopy(old_config[key])
    cfg["finetune"] = ft
    cfg.pop("extension", None)
    return cfg


# ---------------------------------------------------------------------------------------------
# parameters: what is new, what grew, what is frozen
# ---------------------------------------------------------------------------------------------
@dataclass
class ParameterDiff:
    """Parameters after `add_classes` relative to before: new names, tensors grown along dim 0
    (old rows kept -> number of old rows), and everything else unchanged."""

    new: list[str] = field(default_factory=list)
    grown: dict[str, int] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)


def diff_parameters(before: dict[str, nn.Parameter], model: nn.Module, who: str) -> ParameterDiff:
    """Compare parameters by name; a pre-existing weight that changed in any other way than rows
    appended along dim 0 (old rows bit-identical) is refused with a one-line error."""
    after = dict(model.named_parameters())
    out = ParameterDiff()
    gone = sorted(set(before) - set(after))
    if gone:
        raise ConfigError(f"{who}.add_classes removed or renamed parameters {gone[:4]}; cannot extend it")
    for name, p in after.items():
        old = before.get(name)
        if old is None:
            out.new.append(name)
        elif p is old or (p.shape == old.shape and torch.equal(p.detach(), old.detach())):
            out.kept.append(name)
        elif (p.dim() == old.dim() and p.shape[1:] == old.shape[1:] and p.shape[0] > old.shape[0]
              and torch.equal(p.detach()[: old.shape[0]], old.detach())):
            out.grown[name] = int(old.shape[0])
        else:
            raise ConfigError(
                f"{who}.add_classes changed the pre-existing weight {name!r} ({tuple(old.shape)} -> {tuple(p.shape)}) "
                "other than by appending rows; its old values cannot stay bit-identical"
            )
    return out


def mask_old_rows(param: nn.Parameter, n_old: int):
    """Zero the gradient of a grown tensor's first `n_old` rows, so (with no weight decay) they
    never move: Adam's moments stay exactly 0 there and its update is exactly 0."""

    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:n_old] = 0
        return grad

    return param.register_hook(hook)


def freeze_norm_statistics(model: nn.Module) -> None:
    """Eval mode for normalisation layers whose parameters are all frozen, so their running
    statistics (state-dict buffers) are not updated either."""
    for m in model.modules():
        if getattr(m, "track_running_stats", False) and getattr(m, "running_mean", None) is not None:
            params = list(m.parameters(recurse=False))
            if all(not p.requires_grad for p in params):
                m.eval()


def add_new_classes(model: nn.Module, names: Sequence[str], dataset_of: dict[str, str] | None = None,
                    conditioner_config: dict[str, Any] | None = None) -> None:
    """Grow the model's conditioner by `names` (text embeddings computed for text conditioners with
    the run's `conditioner:` text settings; each name's dataset passed along for methods with
    per-dataset tasks)."""
    from ..models.build import class_embeddings

    cond = model.conditioner
    names = list(names)
    if not names:
        return
    datasets = [(dataset_of or {}).get(n) for n in names]
    try:
        emb = None
        if cond.needs_text:
            emb = class_embeddings(conditioner_config or {}, names)
        cond.add_classes(names, emb, datasets)
    except NotImplementedError:
        raise ConfigError(f"{type(cond).__name__} cannot add classes") from None


def new_class_parameters(model: nn.Module, names: Sequence[str]) -> ParameterDiff:
    """The trainable per-class parameters of `names`, as the conditioner declares them: tensors
    wholly theirs (`new`) and shared tensors whose rows from the first new row on are theirs
    (`grown`: name -> number of rows before)."""
    params = dict(model.named_parameters())
    parts = model.conditioner.class_parameters()
    whole: set[str] = set()
    first: dict[str, int] = {}
    for name in names:
        for part in parts.get(name, []):
            key = f"conditioner.{part.key}"
            if key not in params:
                continue  # a buffer (e.g. a stored text embedding): nothing to train
            if part.rows is None:
                whole.add(key)
            else:
                first[key] = min(first.get(key, math.inf), int(part.rows.start or 0))
    out = ParameterDiff(new=[n for n in params if n in whole], grown={n: int(first[n]) for n in params if n in first})
    out.kept = [n for n in params if n not in whole and n not in first]
    return out


# ---------------------------------------------------------------------------------------------
# trainers
# ---------------------------------------------------------------------------------------------
class ExtensionTrainer(Trainer):
    """`Trainer` that starts from a trained model, grows it by new classes and trains by strategy."""

    def __init__(self, config: dict[str, Any], source, device: str | None = "auto", progress: bool = True,
                 source_path: str | None = None):
        self.source = source
        self.source_path = source_path
        self.old_classes = list(source.class_names)
        self.ext = config["extend"]
        self.strategy = self.ext["strategy"]
        datasets = load_datasets(config)
        wanted = class_list(config, datasets)
        self.new_classes = [c for c in wanted if c not in self.old_classes]
        if not self.new_classes:
            raise ConfigError(
                f"the new datasets annotate no class the model lacks (it has {len(self.old_classes)}: "
                f"{', '.join(self.old_classes[:6])}{' ...' if len(self.old_classes) > 6 else ''}); use `promptseg finetune`"
            )
        self.dataset_of = {c: d.name for d in datasets for c in d.annotated_classes if c in self.new_classes}
        config["classes"] = self.old_classes + self.new_classes
        self.old_model = None
        self._hooks: list = []
        self.grown: dict[str, int] = {}
        super().__init__(config, device=device, progress=progress)

    # -- hooks -------------------------------------------------------------------------------------
    def build_model(self, in_channels: int):
        from ..models.lora import apply_lora

        model = copy.deepcopy(self.source).cpu()
        if int(getattr(model.backbone, "in_channels", in_channels)) != in_channels:
            raise ConfigError(
                f"the new datasets have {in_channels} image channel(s), the model takes {model.backbone.in_channels}"
            )
        if self.strategy in ("pseudo-label", "lora"):
            old = copy.deepcopy(self.source).to(self.device).eval()
            for p in old.parameters():
                p.requires_grad_(False)
            if getattr(self, "channels_last", False):
                from . import amp

                amp.to_channels_last(old)
            self.old_model = old
        who = type(model.conditioner).__name__
        before = dict(model.named_parameters())
        add_new_classes(model, self.new_classes, self.dataset_of, self.config.get("conditioner"))
        if list(model.class_names) != self.classes:
            raise ConfigError(f"{who}: class list after add_classes is {model.class_names}, expected {self.classes}")
        grew = diff_parameters(before, model, who)  # old weights must be bit-identical
        diff = new_class_parameters(model, self.new_classes)
        if set(diff.new) != set(grew.new) or diff.grown != grew.grown:
            raise ConfigError(
                f"{who}.class_parameters() does not name what add_classes added (new {sorted(grew.new)[:3]}, "
                f"grown {sorted(grew.grown)[:3]}); continual learning needs it to"
            )
        self.grown = dict(diff.grown)
        params = dict(model.named_parameters())
        step: dict[str, Any] = {"strategy": self.strategy, "base_classes": list(self.old_classes),
                                "added": list(self.new_classes), "source": self.source_path}
        if self.strategy in ("pseudo-label", "naive"):
            for p in model.parameters():
                p.requires_grad_(True)
            self.grown = {}
        else:
            for p in model.parameters():
                p.requires_grad_(False)
            trainable = diff.new + list(diff.grown)
            if self.strategy == "freeze-backbone" and not trainable:
                raise ConfigError(
                    f"freeze-backbone: {who} adds no per-class parameters for new classes (its class_parameters "
                    "are shared or buffers), so nothing could learn them; use lora or pseudo-label"
                )
            for name in trainable:
                params[name].requires_grad_(True)
            if self.strategy == "lora":
                lora = self.ext["lora"]
                targets = apply_lora(model.backbone, rank=int(lora["rank"]), alpha=float(lora["alpha"]),
                                     targets=lora.get("targets", "conv"), freeze=True)
                step["lora"] = {"rank": int(lora["rank"]), "alpha": float(lora["alpha"]), "targets": targets}
            for name, n_old in self.grown.items():
                self._hooks.append(mask_old_rows(params[name], n_old))
            step["new_parameters"] = diff.new
            step["grown_parameters"] = diff.grown
        self.config.setdefault("extension", {"history": []}).setdefault("history", []).append(step)
        self.config["conditioner"] = {**self.config["conditioner"], **model.conditioner.config_updates()}
        check_rebuild(model, self.config, in_channels)
        return model

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The recipe's optimiser; grown tensors (old rows masked) get no weight decay so their old rows stay exact."""
        t = self.config["train"]
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not named:
            raise ConfigError(f"extend ({self.strategy}): nothing to train")
        decay = [p for n, p in named if n not in self.grown]
        fixed = [p for n, p in named if n in self.grown]
        groups = [{"params": decay, "weight_decay": float(t["weight_decay"])}]
        if fixed:
            groups.append({"params": fixed, "weight_decay": 0.0})
        return build_optimizer(scale_head_lr(groups, self.model.conditioner.head_parameters(), t), t)

    def train_mode(self) -> None:
        super().train_mode()
        freeze_norm_statistics(self.model)

    @torch.no_grad()
    def pseudo_targets(self, image: torch.Tensor, classes: Sequence[str], modality, datasets) -> torch.Tensor:
        """The old model's targets for `classes` on `image`: sigmoid (soft) or >= threshold (hard)."""
        pb = self.old_model.prompt_batch(list(classes), modality=modality, datasets=datasets,
                                         batch_size=image.shape[0])
        amp = getattr(self, "amp", None)  # the trainer's mixed precision (absent in bare test stubs)
        if amp is not None:
            from . import amp as amp_mod

            with amp.autocast():
                logits = self.old_model(amp_mod.input_to(image, self.device, self.channels_last), pb)
        else:
            logits = self.old_model(image.to(self.device), pb)
        probs = torch.sigmoid(logits.float())
        if self.ext["pseudo_labels"] == "hard":
            return (probs >= float(self.ext["pseudo_threshold"])).float()
        return probs

    def prepare_batch(self, batch):
        """Old classes the sample's dataset does not annotate: pseudo-labels (pseudo-label, lora)
        or nothing (naive). freeze-backbone: old classes leave the loss (their weights are fixed)."""
        old_idx = [self.classes.index(c) for c in self.old_classes]
        if self.strategy == "freeze-backbone":
            batch.annotated[:, old_idx] = False
            return batch
        if self.strategy == "naive" or self.old_model is None:
            return batch
        need = [k for k in old_idx if not bool(batch.annotated[:, k].all())]
        if not need:
            return batch
        pseudo = self.pseudo_targets(batch.image, [self.classes[k] for k in need], batch.modality,
                                     batch.datasets).to(batch.targets.device, batch.targets.dtype)
        for j, k in enumerate(need):
            fill = ~batch.annotated[:, k]
            batch.targets[fill, k] = pseudo[fill, j]
            batch.annotated[fill, k] = True
        return batch


def check_rebuild(model: nn.Module, config: dict[str, Any], in_channels: int) -> None:
    """The checkpoint of `model` must reload from `config` alone: same state-dict keys and shapes."""
    from ..models.build import build_model

    emb = getattr(model.conditioner, "embeddings", None)
    rebuilt = build_model(config, model.class_names,
                          embeddings=torch.zeros(*emb.shape) if isinstance(emb, torch.Tensor) else None,
                          in_channels=in_channels)
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if mine != theirs:
        bad = sorted(set(mine) ^ set(theirs)) + sorted(k for k in set(mine) & set(theirs) if mine[k] != theirs[k])
        raise CheckpointError(
            f"{type(model.conditioner).__name__}: the extended model would not reload from its checkpoint "
            f"(build_model gives a different structure at {bad[:4]})"
        )


class FinetuneTrainer(Trainer):
    """`Trainer` whose model is initialised from a trained model (all or part of it)."""

    def __init__(self, config: dict[str, Any], source, device: str | None = "auto", progress: bool = True):
        self.source = source
        self.ft = config["finetune"]
        self.transfer: dict[str, Any] = {}
        super().__init__(config, device=device, progress=progress)

    def build_model(self, in_channels: int):
        from ..models.build import build_model
        from ..models.lora import lora_layers, merge_lora

        src = copy.deepcopy(self.source).cpu()
        if any(True for _ in lora_layers(src)):
            src = merge_lora(src)
        model = build_model(self.config, self.classes, in_channels=in_channels)
        self.transfer = transfer_weights(src, model, self.ft["init"])
        freeze = self.ft["freeze"]
        frozen = model.backbone.named_parameters() if freeze == "backbone" else (
            model.backbone.encoder_parameters() if freeze == "encoder" else [])
        for _, p in frozen:
            p.requires_grad_(False)
        if self.progress:
            t = self.transfer
            print(f"fine-tune: {t['copied']} tensors from the checkpoint ({t['classes_matched']} classes matched by name), "
                  f"{t['fresh']} new; frozen: {freeze}")
        return model

    def train_mode(self) -> None:
        super().train_mode()
        freeze_norm_statistics(self.model)


# ---------------------------------------------------------------------------------------------
# weight transfer for fine-tuning
# ---------------------------------------------------------------------------------------------
def transfer_weights(src: nn.Module, dst: nn.Module, init: str) -> dict[str, Any]:
    """Copy what fits from `src` into `dst`: backbone (or its encoder) by name and shape; with
    init='all' also the conditioner's shared tensors and, by class name, its per-class parts
    (`copy_classes_from`)."""
    src_state, dst_state = src.state_dict(), dst.state_dict()
    new_state = dict(dst_state)
    copied = 0
    skipped: list[str] = []
    for key, value in dst_state.items():
        if not key.startswith("backbone."):
            continue
        if init == "encoder" and not dst.backbone.in_encoder(key[len("backbone."):]):
            continue
        if key in src_state and src_state[key].shape == value.shape:
            new_state[key] = src_state[key].clone()
            copied += 1
        else:
            skipped.append(key)
    matched: list[str] = []
    if init == "all":
        pre = "conditioner."
        per_class = {pre + p.key for parts in dst.conditioner.class_parameters().values() for p in parts}
        for key, value in dst_state.items():
            if key.startswith(pre) and key not in per_class and key in src_state and src_state[key].shape == value.shape:
                new_state[key] = src_state[key].clone()
                copied += 1
    dst.load_state_dict(new_state, strict=True)
    if init == "all":
        matched = dst.conditioner.copy_classes_from(src.conditioner)
        copied += sum(len(parts) for n, parts in dst.conditioner.class_parameters().items() if n in matched)
    return {"copied": copied, "fresh": len(dst_state) - copied, "skipped": skipped, "classes_matched": len(matched)}


# ---------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------
def _load_source(checkpoint: str | Path):
    ckpt = open_checkpoint(checkpoint, device="cpu")
    if not ckpt.config:
        raise CheckpointError(f"{checkpoint}: the checkpoint carries no run config to extend")
    return ckpt


def _source_id(checkpoint: str | Path) -> str:
    return str(Path(checkpoint).resolve())


def extend(checkpoint: str | Path, run: str | Path | dict[str, Any], device: str | None = "auto",
           progress: bool = True, max_steps: int | None = None, report: bool = True,
           overrides: dict[str, Any] | None = None) -> Path:
    """Extend the model of `checkpoint` by the new classes of `run` (a YAML path or a raw mapping);
    returns the checkpoint folder written. With held-out sets in `extend.evaluate`, prints the
    forgetting report and writes it to OUTPUT/forgetting.json."""
    source = _load_source(checkpoint)
    if isinstance(run, dict):
        raw, base = copy.deepcopy(run), None
        where = "run config"
    else:
        raw, base = read_run_yaml(run)
        where = str(run)
    config = extension_config(raw, source.config, base, where)
    apply_overrides(config, overrides)
    trainer = ExtensionTrainer(config, source.model, device=device, progress=progress, source_path=_source_id(checkpoint))
    try:
        ckpt = trainer.run(max_steps=max_steps)
    finally:
        from . import distributed

        distributed.cleanup(trainer.dist)
    finished = ckpt.name == "model"
    ev = config["extend"].get("evaluate") or {}
    if report and finished and trainer.rank == 0 and (ev.get("old") or ev.get("new")):
        from .forgetting import format_report, forgetting_report, write_report

        after = open_checkpoint(ckpt, device="cpu")
        rep = forgetting_report(source, after, trainer.old_classes, trainer.new_classes, ev.get("old"),
                                ev.get("new"), device=device or "auto")
        rep["strategy"] = trainer.strategy
        write_report(rep, Path(config["output"]) / "forgetting.json")
        print(f"forgetting report ({trainer.strategy}):\n{format_report(rep)}")
    return ckpt


def finetune(checkpoint: str | Path, run: str | Path | dict[str, Any], device: str | None = "auto",
             progress: bool = True, max_steps: int | None = None, overrides: dict[str, Any] | None = None) -> Path:
    """Fine-tune the model of `checkpoint` to the datasets and classes of `run`; returns the
    checkpoint folder written."""
    source = _load_source(checkpoint)
    if isinstance(run, dict):
        raw, base, where = copy.deepcopy(run), None, "run config"
    else:
        raw, base = read_run_yaml(run)
        where = str(run)
    config = finetune_config(raw, source.config, base, where)
    apply_overrides(config, overrides)
    trainer = FinetuneTrainer(config, source.model, device=device, progress=progress)
    try:
        return trainer.run(max_steps=max_steps)
    finally:
        from . import distributed

        distributed.cleanup(trainer.dist)


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any] | None) -> None:
    """Command-line overrides: 'steps', 'output', and `extend`/`finetune` keys ('strategy', ...)."""
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "steps":
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"--steps must be a positive integer, got {value!r}")
            config["train"]["steps"] = value
        elif key == "output":
            config["output"] = str(Path(value).resolve())
        elif key in ("strategy", "pseudo_labels", "pseudo_threshold"):
            config["extend"][key] = value
            check_extend_section(config["extend"])
        elif key in ("lora_rank", "lora_alpha"):
            config["extend"]["lora"][key.split("_")[1]] = value
            check_extend_section(config["extend"])
        elif key in ("eval_old", "eval_new"):
            config["extend"]["evaluate"][key.split("_")[1]] = str(Path(value).resolve())
        elif key in ("init", "freeze"):
            config["finetune"][key] = value
            check_finetune_section(config["finetune"])
        else:
            raise ConfigError(f"unknown override {key!r}")
