"""The run-config schema: every section's defaults and checks, in one place below train/ and inference/.

A run is one YAML file; `resolve_config` fills defaults and checks it at every level (an unknown
key inside a section is a one-line error naming it and the known keys), and the resolved config
is what checkpoints embed. Relative paths are relative to the YAML file, so a run folder can be
moved. The inference section's defaults serve the predictor too (`inference_settings`).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import yaml

from .data.augment import augment_params
from .data.patterns import PATTERN_KEYS
from .errors import ConfigError
from .preprocess import get_plan, modality_plans
from .runtime import precision_name, runtime_name
from .text.cache import DEFAULT_TEMPLATE

#: What the sliding window's Gaussian averages (`inference.blend`).
BLENDS = ("logits", "probabilities")
#: Inference settings and their defaults (a checkpoint's `inference:` section overrides them).
DEFAULT_INFERENCE: dict[str, Any] = {
    "window": [96, 96, 96],
    "overlap": 0.5,
    "mode": "gaussian",
    "blend": "logits",   # what the windows' Gaussian averages: logits | probabilities (SAT's authors)
    "sw_batch_size": 2,
    "thresholds": {},
    "postprocess": True,
    "crop_body": True,   # run the network only on the body's bounding box (plus body_margin)
    "body_margin": 8,    # voxels of the network grid
    "amp": None,         # float16 autocast on CUDA (legacy switch; `precision` wins when set)
    # autocast dtype of the windows: float32 (default: results equal to the float32 reference) |
    # bfloat16 (2-3x faster network on CPUs with native bf16, but masks can move: Dice 0.8-0.99 on
    # weakly confident classes) | float16 (CUDA) | auto (bfloat16/float16 where native)
    "precision": "float32",
    # engine of the windows on a CPU: torch (eager PyTorch) | auto (OpenVINO where the eager
    # estimate is long enough to repay compiling) | openvino | onnxruntime; GPUs always run PyTorch.
    # torch is the default: on the clinical CT (benchmarks/predict_speed.py --scale clinical --presets
    # small --rows lean-torch,lean-ov, quiet 2 cores, with the kept heap of runtime.kept_heap) openvino
    # took 87.7 s and 5.5 GB (network 60.8 s + 14.1 s compiling) against torch's 73.5 s and 4.2 GB
    # (network 60.9 s), masks min Dice 0.978; onnxruntime (--rows lean-torch,lean-ort) 96.0 s and
    # 5.6 GB (network 74.9 s + 7.0 s compiling) against torch's 71.7 s and 3.9 GB, masks min Dice 0.9992
    "runtime": "torch",
    # the Universal Model's per-class head compiled into one loop (torch.compile) on a CPU in float32
    # PyTorch: auto (default: volumes of at least 24 window batches) | true | false. 96^3 window batch
    # of 2, 32 classes, 2 threads: head 0.58 -> 0.20 s (benchmarks/head_speed.py), logits within
    # 1.2e-6. Clinical CT, 2 runs each (predict_speed.py --scale clinical --rows lean-torch,lean-fused),
    # lowest per-class Dice 0.99999: small U-Net 64.9-69.8 -> 54.3-56.0 s, peak 3.4 -> 3.5-3.7 GB;
    # SegResNet flare23 136.5-136.8 -> 128.2-134.6 s, peak 3.7-3.9 -> 3.8-4.0 GB (compiled before the
    # kept heap of the windows: 4.7 GB inside it). Compiling costs 5-8 s, ~20 s the first time on a
    # machine (inductor's disk cache); without a C++ compiler the eager head runs
    "fused_head": "auto",
    # class-voxels per chunk of the Universal Model's head: auto (131072 on a CPU, cache-sized;
    # 2^24 on a GPU, where each chunk costs kernel launches) | a number | 0 (one go)
    "head_chunk": "auto",
    "threads": None,      # torch CPU threads; None = the cores this process may use
    "interpolation": "linear",  # class results -> input grid: linear (probabilities) | nearest
    "fast_spacing": [3.0, 3.0, 3.0],  # grid of fast=True (TotalSegmentator's --fast: 3 mm)
    "roi_spacing": [6.0, 6.0, 6.0],   # grid of the pass that locates the asked classes (roi=True)
    "roi_margin_mm": 15.0,            # margin around the located classes
    "rules": None,       # overrides of postprocess_rules.yaml
    # test-time mirroring (nnU-Net's): the windows also run flipped along the axes that do not swap
    # left and right (those training mirrors along), logits averaged; 4x the network time. Off: on
    # multimodal.yaml's model, held-out sarcoma CT / MR / PET Dice 0.638 / 0.712 / 0.758 without,
    # 0.591 / 0.701 / 0.769 with (benchmarks/generalise.py --mirror)
    "mirror": False,
}

DEFAULT_TRAIN: dict[str, Any] = {
    "steps": 1000,
    "batch_size": 2,
    "patch_size": [96, 96, 96],
    "accumulate": 1,
    "fg_ratio": 0.6667,
    "rot90_prob": 0.1,
    "intensity_shift_prob": 0.2,
    "checkpoint_every": 200,
    "num_threads": None,
    "aux_loss_weight": None,
    "dice_weight": 1.0,        # soft Dice : BCE weight of the masked loss (the methods' 1 : 1)
    "workers": 1,
    "precision": "auto",       # auto: bf16 autocast on CUDA, fp32 on CPU; or fp32 / bf16 / fp16
    "channels_last": "auto",   # auto: on CUDA only
    "compile": False,          # true, a torch.compile mode, or a mapping of its arguments
    "augment": False,          # true = data/augment.py's recipe; a mapping overrides its values
    "loader_workers": 0,       # background processes that sample + augment (0 = in the loop)
}

#: Validation on held-out cases during training (train/validate.py): `datasets` are entries like
#: `datasets:`; `holdout` (patient ids) or `fraction` (of the patients, drawn with `seed`) takes a
#: patient-wise split of the training datasets whose names match `split_datasets` (globs), the
#: patient being the case id or the first group of the regex `patient`. `every` 0 = off.
#: `test` (patient ids) are set aside before that split: neither trained nor validated on, so the
#: patients a run is finally scored on (benchmarks/generalise.py) never choose a checkpoint or a recipe.
DEFAULT_VALIDATION: dict[str, Any] = {
    "every": 0,
    "datasets": [],
    "holdout": [],
    "test": [],
    "fraction": 0.0,
    "split_datasets": ["*"],
    "patient": None,
    "seed": 0,
    "window": None,      # sliding window (default: train.patch_size)
    "overlap": 0.25,
}
#: Training-recipe keys of the `train:` section. None (the default) = the value of the run's
#: method recipe (models/conditioners/recipes.yaml, applied by train/recipes.py); `recipe` names
#: another method whose recipe to use. A run YAML sets any of them to override its recipe.
RECIPE_KEYS = ("recipe", "optimizer", "lr", "weight_decay", "momentum", "warmup_steps", "schedule",
               "schedule_power", "final_lr_ratio", "ema", "clip_grad", "dataset_sampling", "max_queries",
               "negative_ratio", "head_lr_scale")
OPTIMIZERS = ("adamw", "sgd", "lamb")
SCHEDULES = ("cosine", "poly", "exponential", "constant")
DATASET_SAMPLING = ("uniform", "sqrt", "proportional")
DEFAULT_TRAIN.update({k: None for k in RECIPE_KEYS})

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "output": "runs/run",
    "seed": 0,
    "modality": "CT",
    "data_root": None,  # relative dataset paths resolve here (itself relative to the YAML); `train --data`
    "datasets": [],
    "classes": None,
    "taxonomy": None,  # a YAML of the user's own classes, added to the packaged registry
    "plan": {"name": "universal_ct"},
    "plans": {},       # modality -> plan (name or mapping) for multi-modal runs; others from plans.yaml
    "backbone": {"name": "unet", "preset": "small"},
    "conditioner": {"name": "universal", "text_encoder": "minilm", "template": DEFAULT_TEMPLATE},
    "train": DEFAULT_TRAIN,
    "inference": DEFAULT_INFERENCE,
    "validation": DEFAULT_VALIDATION,
    "cache_dir": None,
}

# Sections of `promptseg extend` / `promptseg finetune` runs (read by train/continual.py).
STRATEGIES = ("pseudo-label", "freeze-backbone", "lora", "naive")
EXTEND_DEFAULTS: dict[str, Any] = {
    "strategy": "pseudo-label",
    "pseudo_labels": "hard",      # hard: old model's sigmoid >= pseudo_threshold; soft: the sigmoid
    "pseudo_threshold": 0.5,
    "lora": {"rank": 32, "alpha": 64, "targets": "conv"},
    "evaluate": {"old": None, "new": None},  # held-out sets for the forgetting report
}
FINETUNE_DEFAULTS: dict[str, Any] = {
    "init": "all",       # all | backbone | encoder: what is taken from the trained model
    "freeze": "none",    # none | encoder | backbone: what stays fixed while fine-tuning
}

#: Sections that merge key by key with their defaults (others replace the default whole).
SECTIONS_MERGED = ("train", "inference", "validation")
#: Keys a dataset entry may have.
DATASET_KEYS = PATTERN_KEYS  # a plain folder needs only `path`; pattern entries describe their files
#: Sections that must be a mapping with a 'name' (the rest are the class's own arguments,
#: checked when the model or plan is built).
NAMED_SECTIONS = ("plan", "backbone", "conditioner")


def check_keys(given: Mapping[str, Any], known, where: str) -> None:
    """One-line error for keys of `given` that are not in `known`."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(where + k for k in unknown)}; "
                          f"known: {', '.join(sorted(known))}")


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if k in SECTIONS_MERGED:
            if not isinstance(v, dict):
                raise ConfigError(f"'{k}' must be a mapping, got {v!r}")
            check_keys(v, base[k], f"{k}.")
            out[k].update(copy.deepcopy(v))
        else:
            out[k] = copy.deepcopy(v)
    return out


def _positive_int(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")


def _number(value, what: str, low: float = 0.0, high: float | None = None, open_low: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v > low if open_low else v >= low) and (high is None or v < high)
    if not ok:
        bounds = f"{'>' if open_low else '>='} {low:g}" + (f" and < {high:g}" if high is not None else "")
        raise ConfigError(f"{what} must be a number {bounds}, got {value!r}")


def check_recipe(t: Mapping[str, Any], where: str = "train.") -> None:
    """The recipe keys of a train section (or a recipes.yaml entry); None = not set here."""
    def given(key):
        return t.get(key) is not None

    if given("recipe") and not isinstance(t["recipe"], str):
        raise ConfigError(f"{where}recipe must be a method name, got {t['recipe']!r}")
    for key, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("dataset_sampling", DATASET_SAMPLING)):
        if given(key) and t[key] not in allowed:
            raise ConfigError(f"{where}{key} must be one of {', '.join(allowed)}, got {t[key]!r}")
    for key in ("lr", "weight_decay", "clip_grad"):
        if given(key):
            _number(t[key], where + key)
    if given("head_lr_scale"):  # a number, or per conditioner: {uniseg: 30, default: 1}
        scale = t["head_lr_scale"]
        if isinstance(scale, Mapping):
            if not scale or not all(isinstance(k, str) for k in scale):
                raise ConfigError(f"{where}head_lr_scale: a number or a mapping conditioner name -> number, "
                                  f"got {scale!r}")
            for k, v in scale.items():
                _number(v, f"{where}head_lr_scale.{k}", open_low=True)
        else:
            _number(scale, where + "head_lr_scale", open_low=True)
    if given("schedule_power"):
        _number(t["schedule_power"], where + "schedule_power", open_low=True)
    for key in ("momentum", "ema"):
        if given(key):
            _number(t[key], where + key, high=1.0)
    if given("final_lr_ratio"):
        _number(t["final_lr_ratio"], where + "final_lr_ratio", open_low=True, high=1.0 + 1e-12)
    if given("max_queries"):
        _positive_int(t["max_queries"], where + "max_queries")
    if given("negative_ratio") and t["negative_ratio"] != "all":
        _number(t["negative_ratio"], where + "negative_ratio")
    w = t.get("warmup_steps")
    if w is not None and not ((isinstance(w, int) and not isinstance(w, bool) and w >= 0)
                              or (isinstance(w, float) and 0 <= w < 1)):
        raise ConfigError(f"{where}warmup_steps must be an integer >= 0 (steps) or a fraction in [0, 1) "
                          f"of the run's steps, got {w!r}")


def check_train(t: Mapping[str, Any]) -> None:
    """A train section's values (recipe keys may still be None: the method's recipe fills them)."""
    for key in ("steps", "batch_size", "accumulate", "checkpoint_every", "workers"):
        _positive_int(t[key], f"train.{key}")
    if not isinstance(t["patch_size"], (list, tuple)) or len(t["patch_size"]) != 3:
        raise ConfigError(f"train.patch_size needs 3 numbers, got {t['patch_size']!r}")
    for key in ("fg_ratio", "rot90_prob", "intensity_shift_prob"):
        if not isinstance(t[key], (int, float)) or not 0 <= float(t[key]) <= 1:
            raise ConfigError(f"train.{key} must be a probability in [0, 1], got {t[key]!r}")
    _number(t["dice_weight"], "train.dice_weight")
    check_recipe(t)
    augment_params(t["augment"])
    w = t["loader_workers"]
    if isinstance(w, bool) or not isinstance(w, int) or w < 0:
        raise ConfigError(f"train.loader_workers must be an integer >= 0, got {w!r}")


def _check_validation(v: dict[str, Any]) -> None:
    if isinstance(v["every"], bool) or not isinstance(v["every"], int) or v["every"] < 0:
        raise ConfigError(f"validation.every must be an integer >= 0 (steps; 0 = off), got {v['every']!r}")
    if not isinstance(v["fraction"], (int, float)) or not 0 <= float(v["fraction"]) < 1:
        raise ConfigError(f"validation.fraction must be in [0, 1), got {v['fraction']!r}")
    for key in ("holdout", "test", "split_datasets"):
        if not isinstance(v[key], list) or not all(isinstance(x, str) for x in v[key]):
            raise ConfigError(f"validation.{key} must be a list of names, got {v[key]!r}")
    if v["holdout"] and v["fraction"]:
        raise ConfigError("validation: give `holdout` (patient ids) or `fraction`, not both")
    both = sorted(set(v["holdout"]) & set(v["test"]))
    if both:
        raise ConfigError(f"validation: patient(s) {', '.join(both)} in both `holdout` and `test`; "
                          f"a test patient must not choose the checkpoint")
    if v["every"] and not (v["datasets"] or v["holdout"] or v["fraction"]):
        raise ConfigError("validation.every is set but there is nothing to validate on: give `datasets`, "
                          "`holdout` or `fraction`")
    if not 0 <= float(v["overlap"]) < 1:
        raise ConfigError(f"validation.overlap must be in [0, 1), got {v['overlap']!r}")


def _check_sections(cfg: dict[str, Any]) -> None:
    for key in NAMED_SECTIONS:
        sec = cfg[key]
        if isinstance(sec, str):
            cfg[key] = sec = {"name": sec}
        if not isinstance(sec, dict) or not isinstance(sec.get("name"), str):
            raise ConfigError(f"'{key}' must be a name or a mapping with a 'name', got {sec!r}")
    if not isinstance(cfg["modality"], str) or not cfg["modality"]:
        raise ConfigError(f"'modality' must be a name such as CT, MR or PET, got {cfg['modality']!r}")
    if cfg["classes"] is not None and not (isinstance(cfg["classes"], list) and all(isinstance(c, str) for c in cfg["classes"])):
        raise ConfigError(f"'classes' must be a list of class names, got {cfg['classes']!r}")
    if isinstance(cfg["seed"], bool) or not isinstance(cfg["seed"], int):
        raise ConfigError(f"'seed' must be an integer, got {cfg['seed']!r}")


def _dataset_entries(given, absolute, where: str) -> list[dict[str, Any]]:
    if not isinstance(given or [], list):
        raise ConfigError(f"'{where}' must be a list, got {given!r}")
    out = []
    for d in given or []:
        entry = {"path": d} if isinstance(d, str) else d
        if not isinstance(entry, dict) or "path" not in entry:
            raise ConfigError(f"{where} entry {d!r} needs a 'path'")
        check_keys(entry, DATASET_KEYS, f"{where}[].")
        out.append({**entry, "path": absolute(entry["path"])})
    return out


def resolve_config(raw: dict[str, Any], base_dir: Path | None = None, data_root: str | Path | None = None) -> dict[str, Any]:
    """Defaults + raw, with paths made absolute against `base_dir` and values checked at every level;
    dataset paths resolve against `data_root` (given, else the config's, else `base_dir`)."""
    if not isinstance(raw, dict):
        raise ConfigError("a run config must be a mapping")
    check_keys(raw, DEFAULTS, "")
    cfg = _merge(DEFAULTS, raw)
    base = Path(base_dir) if base_dir else Path.cwd()

    def absolute(p):
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    cfg["output"] = absolute(cfg["output"])
    for key in ("cache_dir", "taxonomy"):
        if cfg.get(key):
            cfg[key] = absolute(cfg[key])
    if data_root is not None:
        cfg["data_root"] = str(Path(data_root).expanduser().resolve())
    elif cfg["data_root"]:
        cfg["data_root"] = absolute(cfg["data_root"])
    data = Path(cfg["data_root"]) if cfg["data_root"] else base

    def data_path(p):
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (data / q).resolve())

    cfg["datasets"] = _dataset_entries(cfg["datasets"], data_path, "datasets")
    cfg["validation"]["datasets"] = _dataset_entries(cfg["validation"]["datasets"], data_path, "validation.datasets")
    _check_sections(cfg)
    check_train(cfg["train"])
    _check_validation(cfg["validation"])
    if not isinstance(cfg["plans"], dict):
        raise ConfigError(f"'plans' must be a mapping modality -> plan, got {cfg['plans']!r}")
    # the full plan of each modality the run names (its `plan`'s and those in `plans:`); the
    # trainer narrows this to the modalities its datasets hold, so a checkpoint claims only those
    named = {get_plan(cfg["plan"]).modality} | {str(m).upper() for m in cfg["plans"]}
    cfg["plans"] = {m: p.to_dict() for m, p in modality_plans(cfg["plan"], cfg["plans"]).items() if m in named}
    cfg["inference"] = inference_settings(cfg["inference"])
    return cfg


def inference_settings(inference: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults + the given inference settings, checked (one-line ConfigError on a bad key or value)."""
    given = dict(inference or {})
    check_keys(given, DEFAULT_INFERENCE, "inference.")
    cfg = {**copy.deepcopy(DEFAULT_INFERENCE), **given}
    w = cfg["window"]
    w = [int(w)] * 3 if isinstance(w, (int, float)) else [int(v) for v in w]
    if len(w) != 3 or min(w) < 1:
        raise ConfigError(f"inference.window must be 3 positive integers, got {cfg['window']!r}")
    cfg["window"] = w
    if not 0 <= float(cfg["overlap"]) < 1:
        raise ConfigError(f"inference.overlap must be in [0, 1), got {cfg['overlap']!r}")
    if cfg["mode"] not in ("gaussian", "constant"):
        raise ConfigError(f"inference.mode must be gaussian or constant, got {cfg['mode']!r}")
    if cfg["blend"] not in BLENDS:
        raise ConfigError(f"inference.blend must be {' or '.join(BLENDS)}, got {cfg['blend']!r}")
    if int(cfg["sw_batch_size"]) < 1:
        raise ConfigError(f"inference.sw_batch_size must be >= 1, got {cfg['sw_batch_size']!r}")
    for k, t in (cfg["thresholds"] or {}).items():
        if not 0 < float(t) < 1:
            raise ConfigError(f"inference.thresholds[{k!r}] must be in (0, 1), got {t!r}")
    precision_name(cfg["precision"], "inference.precision")
    cfg["runtime"] = runtime_name(cfg["runtime"], "inference.runtime")
    if cfg["interpolation"] not in ("linear", "nearest"):
        raise ConfigError(f"inference.interpolation must be linear or nearest, got {cfg['interpolation']!r}")
    if not (isinstance(cfg["fused_head"], bool) or str(cfg["fused_head"]).lower() == "auto"):
        raise ConfigError(f"inference.fused_head must be true, false or auto, got {cfg['fused_head']!r}")
    if not isinstance(cfg["mirror"], bool):
        raise ConfigError(f"inference.mirror must be true or false, got {cfg['mirror']!r}")
    if cfg["threads"] is not None and int(cfg["threads"]) < 1:
        raise ConfigError(f"inference.threads must be >= 1, got {cfg['threads']!r}")
    for key in ("fast_spacing", "roi_spacing"):
        v = cfg[key]
        v = [float(v)] * 3 if isinstance(v, (int, float)) else [float(x) for x in v]
        if len(v) != 3 or min(v) <= 0:
            raise ConfigError(f"inference.{key} must be 3 positive numbers (mm), got {cfg[key]!r}")
        cfg[key] = v
    return cfg


def section(raw: dict[str, Any], key: str, defaults: dict[str, Any], where: str) -> dict[str, Any]:
    """The `key` section of `raw` (removed from it) over `defaults`, nested keys checked too."""
    given = raw.pop(key, None) or {}
    if not isinstance(given, dict):
        raise ConfigError(f"{where}: '{key}' must be a mapping")
    out = copy.deepcopy(defaults)
    try:
        check_keys(given, defaults, f"{key}.")
        for k, v in given.items():
            if isinstance(defaults.get(k), dict) and isinstance(v, dict):
                check_keys(v, defaults[k], f"{key}.{k}.")
                out[k].update(v)
            else:
                out[k] = v
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return out


def check_extend_section(ext: dict[str, Any], where: str = "run config") -> dict[str, Any]:
    if ext["strategy"] not in STRATEGIES:
        raise ConfigError(f"{where}: extend.strategy must be one of {', '.join(STRATEGIES)}, got {ext['strategy']!r}")
    if ext["pseudo_labels"] not in ("hard", "soft"):
        raise ConfigError(f"{where}: extend.pseudo_labels must be 'hard' or 'soft', got {ext['pseudo_labels']!r}")
    if not 0.0 < float(ext["pseudo_threshold"]) < 1.0:
        raise ConfigError(f"{where}: extend.pseudo_threshold must be in (0, 1), got {ext['pseudo_threshold']!r}")
    lora = ext["lora"]
    if not isinstance(lora.get("rank"), int) or lora["rank"] < 1 or float(lora.get("alpha", 0)) <= 0:
        raise ConfigError(f"{where}: extend.lora needs a positive integer rank and a positive alpha, got {lora}")
    return ext


def check_finetune_section(ft: dict[str, Any], where: str = "run config") -> dict[str, Any]:
    if ft["init"] not in ("all", "backbone", "encoder"):
        raise ConfigError(f"{where}: finetune.init must be all, backbone or encoder, got {ft['init']!r}")
    if ft["freeze"] not in ("none", "encoder", "backbone"):
        raise ConfigError(f"{where}: finetune.freeze must be none, encoder or backbone, got {ft['freeze']!r}")
    return ft


def read_yaml(path: str | Path, what: str) -> Any:
    """A YAML file's content; a missing or invalid file is a one-line ConfigError naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} not found")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None


def read_run_yaml(path: str | Path) -> tuple[dict[str, Any], Path]:
    """The run YAML's mapping as written (no defaults) and the folder its paths are relative to."""
    p = Path(path)
    raw = read_yaml(p, "run config") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a run config must be a mapping")
    return raw, p.parent


def load_config(path: str | Path, data_root: str | Path | None = None) -> dict[str, Any]:
    """The resolved run config of a YAML file (`data_root`: where its relative dataset paths
    resolve, overriding the YAML's); errors name the file."""
    raw, base = read_run_yaml(path)
    try:
        return resolve_config(raw, base, data_root)
    except ConfigError as exc:
        raise ConfigError(f"{Path(path)}: {exc}") from None
