"""`promptseg bench compare`: every conditioner trained and scored under identical conditions.

Why a module of its own: a comparison is only fair when nothing but the method differs. Here each
method gets one run YAML that is byte-for-byte the suite's, except for `conditioner:` (the table
in configs/bench.yaml); it trains through `promptseg train` (the CLI entry itself) and predicts
through `inference.predictor.predict` (what `promptseg predict` calls), so the bench measures the
code users run. Two suites:

- phantom: 4 partially labelled phantom datasets -> held-out, fully labelled phantoms;
- real-ct: one real scan's labels split into 3 partial datasets (`split_partial_datasets`, shared
  with benchmarks/learn_real_ct.py) -> the same patient's larger field of view.

Each method trains with its own recipe (models/conditioners/recipes.yaml: optimiser, lr, schedule,
EMA, sampling), the suite fixing only the budget (steps, batch, patch). After scoring, the raw
logits on the scored cases give each class's prompt share and mean positive logit
(`bench_diagnostics.py`), so a task-blind model or a dead class is flagged in the table, never a
silent 0. `--seeds N` repeats every method with seeds s, s+1, ... and reports mean +- sd.

`--split validation` scores on cases no reported figure uses (phantom suite: phantoms of another
generator seed, `validation:` in configs/bench.yaml) -- the split to choose settings on, so the
test split's table stays untuned. Its runs live under OUT/<suite>-validation/.

Outputs under OUT/<suite>/: data/, cache/, <method>/{run.yaml, run/, predictions/} (with
several seeds: <method>/seed<i>/...), results.json and table.md (the printed table, with the
command that made it).
"""
from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from ..errors import ConfigError, InputError, PromptsegError
from ..evaluation.evaluate import json_safe
from ..evaluation.prompt_diagnostics import PRUNED_RATIO
from ..io.atomic import atomic_directory, atomic_write, refuse_foreign
from ..io.formats import WRITABLE, case_id, channel_file, image_ending
from ..io.labeltable import load_table, parse_label_mapping, read_label_json
from ..text import DEFAULT_TEMPLATE, embed_classes
from ..text.similarity import closest_pairs
from .bench_diagnostics import checkpoint_diagnostics
from .bench_report import finite_mean, fmt, format_table, similarity_lines

SUITES = ("phantom", "real-ct")
SPLITS = ("test", "validation")
SPLIT_TAG = "promptseg partial split"  # dataset.json description prefix: ours, safe to overwrite


# --- settings ------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _settings_text() -> str:
    return resources.files("promptseg.configs").joinpath("bench.yaml").read_text(encoding="utf-8")


def bench_settings() -> dict[str, Any]:
    """configs/bench.yaml (a fresh copy: callers may edit it)."""
    return yaml.safe_load(_settings_text())


def method_names() -> list[str]:
    return list(bench_settings()["methods"])


def conditioner_config(method: str) -> dict[str, Any]:
    """The `conditioner:` section the bench gives `method` (CPU-sized, see configs/bench.yaml)."""
    methods = bench_settings()["methods"]
    if method not in methods:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(methods)}")
    return dict(methods[method])


def suite_settings(suite: str) -> dict[str, Any]:
    suites = bench_settings()["suites"]
    if suite not in suites:
        raise ConfigError(f"unknown suite {suite!r}; choose from {', '.join(suites)}")
    return suites[suite]


def default_data_dir() -> Path:
    """`$PROMPTSEG_SHARED_DATA`, else ../shared/data beside the clone (where CI keeps the scans)."""
    env = os.environ.get("PROMPTSEG_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3].parent / "shared" / "data"


# --- datasets ------------------------------------------------------------------------------------
@dataclass
class TestCase:
    """A held-out image, its label map and the label table (class name -> values) of that map."""

    name: str
    image: Path
    label: Path
    labels: dict[str, tuple[int, ...]]


@dataclass
class Suite:
    """What every method of one comparison shares: training datasets, test cases, run YAML body."""

    name: str
    title: str
    note: str
    datasets: list[Path]
    test_cases: list[TestCase]
    run: dict[str, Any]  # the run YAML minus `conditioner:` and `output:`


def _file_in(folder: Path, stem: str) -> Path:
    for ending in WRITABLE:
        p = folder / f"{stem}{ending}"
        if p.is_file():
            return p
    raise InputError(folder, f"no {stem}{{{','.join(WRITABLE)}}} here")


def _scan_labels(scan_dir: Path) -> dict[str, tuple[int, ...]]:
    """labels.json of a scan folder (value -> name) as name -> values."""
    return read_label_json(scan_dir / "labels.json")


def split_partial_datasets(scan_dir: str | Path, out_root: str | Path,
                           splits: Mapping[str, Sequence[str]]) -> dict[str, Path]:
    """Turn one labelled scan (image.*, labels.*, labels.json) into partially labelled nnU-Net v2
    raw folders, one per split: dataset -> the classes it annotates (any taxonomy spelling).

    Each folder holds the same image and a label map with only its classes (renumbered 1..n,
    named by their canonical taxonomy names); everything else is background there, which the
    masked loss never reads as "not this class". A folder is written under a temporary name and
    renamed into place; an existing folder is replaced only if an earlier split wrote it.
    """
    from ..io import read_image, read_label
    from ..taxonomy import default_taxonomy

    scan_dir, out_root = Path(scan_dir), Path(out_root)
    if not scan_dir.is_dir():
        raise InputError(scan_dir, "scan folder not found")
    image_path, label_path = _file_in(scan_dir, "image"), _file_in(scan_dir, "labels")
    tax = default_taxonomy()
    values: dict[str, tuple[int, ...]] = {}
    for raw, vals in _scan_labels(scan_dir).items():
        info = tax.get(raw)
        if info is not None:
            values[info.name] = values.get(info.name, ()) + vals
    image = read_image(image_path)
    label = read_label(label_path, reference=image)
    case = scan_dir.name
    out_root.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, classes in splits.items():
        names = []
        for c in classes:
            info = tax.get(c)
            if info is None:
                raise ConfigError(f"split {name}: {c!r} is not a taxonomy class")
            if info.name not in values:
                raise InputError(scan_dir / "labels.json", f"no label for {info.name!r} (asked by split {name})")
            names.append(info.name)
        arr = np.zeros(label.shape, np.uint8)
        for i, n in enumerate(names, start=1):
            arr[np.isin(label.array, values[n])] = i
        written[name] = _write_split(out_root, name, case, image_path, label.with_array(arr), names, scan_dir.name)
    return written


def _write_split(root: Path, name: str, case: str, image_path: Path, label, classes: list[str], source: str) -> Path:
    from ..io import write_image

    final = root / name
    refuse_foreign(final, SPLIT_TAG, "a promptseg partial split")
    ending = image_ending(image_path)
    with atomic_directory(final) as work:
        (work / "imagesTr").mkdir()
        shutil.copyfile(image_path, work / "imagesTr" / channel_file(case, 0, ending))
        write_image(label, work / "labelsTr" / f"{case}{ending}")
        meta = {
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, **{c: i for i, c in enumerate(classes, start=1)}},
            "numTraining": 1,
            "file_ending": ending,
            "name": name,
            "description": f"{SPLIT_TAG} of {source}: only {', '.join(classes)} annotated",
            "training": [{"image": f"./imagesTr/{channel_file(case, 0, ending)}", "label": f"./labelsTr/{case}{ending}"}],
        }
        atomic_write(work / "dataset.json", json.dumps(meta, indent=2) + "\n")
    return final


def nnunet_test_cases(folder: Path) -> list[TestCase]:
    """The `test` entries (image + label) of an nnU-Net-style dataset.json."""
    spec = load_table(folder / "dataset.json")
    labels = parse_label_mapping(spec["labels"], folder / "dataset.json")
    cases = []
    for e in spec.get("test") or []:
        image = (folder / e["image"]).resolve()
        cases.append(TestCase(case_id(image), image, (folder / e["label"]).resolve(), labels))
    if not cases:
        raise InputError(folder / "dataset.json", "lists no test cases")
    return cases


def scan_test_case(scan_dir: Path) -> TestCase:
    """A scan folder (image.*, labels.*, labels.json) as a test case."""
    scan_dir = Path(scan_dir)
    if not scan_dir.is_dir():
        raise InputError(scan_dir, "scan folder not found")
    return TestCase(scan_dir.name, _file_in(scan_dir, "image"), _file_in(scan_dir, "labels"), _scan_labels(scan_dir))


def _run_body(settings: dict[str, Any], work: Path) -> dict[str, Any]:
    base = bench_settings()["run"]
    body = {**base, "train": dict(settings["train"]), "inference": dict(settings["inference"])}
    body["cache_dir"] = str(work / "cache")  # one preprocessing cache for all methods of the suite
    return body


def phantom_suite(work: str | Path, split: str = "test", progress: bool = True) -> Suite:
    """Phantom datasets written under WORK/data (deterministic: regenerated identically each time);
    scored on the held-out phantoms of the same generator (`test`) or, for `validation`, on
    phantoms of the generator seed the suite's `validation:` names (WORK/validation)."""
    from ..data.phantoms import make_phantom_datasets

    work = Path(work)
    s = suite_settings("phantom")
    p = dict(s.get("phantoms") or {})
    geometry = {k: p[k] for k in ("shape", "spacing") if k in p}
    folders = make_phantom_datasets(work / "data", seed=int(p.get("seed", 0)), n_train=p.get("n_train", (8, 8, 8, 4)),
                                    n_test=int(p.get("n_test", 4)), progress=progress, **geometry)
    test = folders.pop("PhantomTest_full")
    title, note = s["title"], " ".join(s["note"].split())
    if split == "validation":
        v = dict(s.get("validation") or {})
        if v.get("seed") is None or int(v["seed"]) == int(p.get("seed", 0)):
            raise ConfigError("bench.yaml: the phantom suite's validation seed must differ from its phantoms' seed")
        test = make_phantom_datasets(work / "validation", seed=int(v["seed"]), n_train=(0, 0, 0, 0),
                                     n_test=int(v.get("n_test", 4)), progress=progress, **geometry)["PhantomTest_full"]
        title = f"{title} [VALIDATION split]"
        note = (f"Scored on {v.get('n_test', 4)} validation phantoms of generator seed {v['seed']} (not the "
                f"reported test phantoms): choose settings here. Trained as the test split.")
    return Suite("phantom", title, note, list(folders.values()), nnunet_test_cases(test), _run_body(s, work))


def real_ct_suite(work: str | Path, data_dir: str | Path | None = None, test_scan: str | None = None) -> Suite:
    """The real scan's labels split into partial datasets under WORK/data; scored on `test_scan`
    (default: the suite's, ct_abdomen_pelvis; benchmarks/learn_real_ct.py scores the training scan)."""
    work = Path(work)
    s = suite_settings("real-ct")
    data = Path(data_dir) if data_dir else default_data_dir()
    train_scan = data / s["train_scan"]
    if not train_scan.is_dir():
        raise InputError(train_scan, "real scan not found (the scans live in ../shared/data beside the clone; pass --data DIR)")
    folders = split_partial_datasets(train_scan, work / "data", s["splits"])
    test = scan_test_case(data / (test_scan or s["test_scan"]))
    note = " ".join(s["note"].split())
    if test_scan == s["train_scan"]:
        note = f"Trained and scored on the same scan ({test_scan}): learnability only."
    return Suite("real-ct", s["title"], note, list(folders.values()), [test], _run_body(s, work))


def build_suite(name: str, work: str | Path, data_dir: str | Path | None = None, split: str = "test",
                progress: bool = True) -> Suite:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if name == "phantom":
        return phantom_suite(work, split, progress)
    if name == "real-ct":
        if split != "test":
            raise ConfigError("the real-ct suite has one scored scan and no validation split; choose settings "
                              "on `--suite phantom --split validation`")
        return real_ct_suite(work, data_dir)
    raise ConfigError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")


# --- one method: train, predict, score ------------------------------------------------------------
def write_run_yaml(suite: Suite, method: str, run_dir: str | Path, steps: int | None = None,
                   conditioner: Mapping[str, Any] | None = None, train: Mapping[str, Any] | None = None,
                   seed_offset: int = 0) -> Path:
    """RUN_DIR/run.yaml: the suite's run body + this method's `conditioner:` (nothing else differs;
    `train` overrides train settings for every method alike, e.g. a shorter test run;
    `seed_offset` is added to the suite's seed for repeated runs)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    raw = {"name": f"bench-{suite.name}", "output": "run", **json.loads(json.dumps(suite.run)),
           "datasets": [str(p) for p in suite.datasets],
           "conditioner": dict(conditioner) if conditioner is not None else conditioner_config(method)}
    raw.setdefault("train", {}).update(dict(train or {}))
    if seed_offset:
        raw["seed"] = int(raw.get("seed", 0)) + int(seed_offset)
    if steps is not None:
        if int(steps) < 1:
            raise ConfigError(f"--steps must be a positive integer, got {steps}")
        raw["train"]["steps"] = int(steps)
    path = run_dir / "run.yaml"
    atomic_write(path, yaml.safe_dump(raw, sort_keys=False))
    return path


@dataclass
class TrainResult:
    checkpoint: Path
    steps: int
    seconds: float           # the training loop only (set-up and caching excluded)
    seconds_per_step: float  # median over steps 2..N (the first pays one-off allocation)


def train_run(run_yaml: str | Path, device: str = "auto", progress: bool = True) -> TrainResult:
    """`promptseg train RUN_YAML` from scratch (an earlier run folder is removed), timed."""
    from ..cli import main as cli_main
    from ..checkpoint import find_checkpoint
    from ..config import load_config

    run_yaml = Path(run_yaml)
    out = Path(load_config(run_yaml)["output"])
    if out.exists():  # timings and results must come from one uninterrupted, fresh run
        if any(out.iterdir()) and not any((out / n).exists() for n in ("log.jsonl", "last", "model")):
            raise InputError(out, "run output folder holds something other than a promptseg run; refusing to clear it")
        shutil.rmtree(out)
    argv = ["train", str(run_yaml), "--device", device] + ([] if progress else ["--quiet"])
    rc = cli_main(argv)
    if rc:
        raise PromptsegError(f"{run_yaml}: `promptseg {' '.join(argv)}` failed (exit {rc})")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    secs = [float(r["seconds"]) for r in log]
    # median step time: robust to other jobs' bursts on a shared machine (the mean is in `seconds`)
    per_step = float(np.median(np.diff(secs))) if len(secs) > 1 else secs[-1]
    return TrainResult(find_checkpoint(out / "model"), len(log), secs[-1], per_step)


@dataclass
class ScoreResult:
    dice: dict[str, float]                    # class -> mean Dice over test cases (NaN: not scorable)
    per_case: dict[str, dict[str, float]]
    seconds_per_volume: float                  # predict() per case: preprocess .. write
    params: int


def score_checkpoint(checkpoint: str | Path, cases: Sequence[TestCase], out_dir: str | Path,
                     device: str = "auto", prompts: Sequence[str] | None = None) -> ScoreResult:
    """Predict the test cases with `predict` (the function behind `promptseg predict`) and score
    each class's mask with Dice against the reference (organ = own label + its tumours)."""
    from ..evaluation.labelmap import LabelMap
    from ..evaluation.metrics import dice
    from ..inference import predict
    from ..io import read_label
    from ..taxonomy import default_taxonomy
    from ..checkpoint import open_checkpoint
    import torch

    ckpt = open_checkpoint(checkpoint, device="cpu")
    model = ckpt.model
    params = int(sum(p.numel() for p in model.parameters()))
    classes = list(prompts) if prompts else list(model.class_names)
    # this process's thread count (`bench --threads`), not predict's default of every core, which
    # would also carry over to the next method's training
    results = predict(ckpt, [c.image for c in cases], out_dir, prompts=classes, device=device, progress=False,
                      inference={"threads": torch.get_num_threads()})
    tax = default_taxonomy()
    per_case: dict[str, dict[str, float]] = {}
    seconds = []
    for case, res in zip(cases, results):
        pred = res["prediction"]
        seconds.append(sum(pred.timings.values()))
        gt = read_label(case.label)
        ref = LabelMap(gt.array, case.labels, gt.spacing, tax, path=case.label)
        whole = tuple(slice(0, n) for n in gt.shape)
        scores = {}
        for name in pred.masks:
            mask = pred.masks[name].array
            if mask.shape != gt.shape:
                raise InputError(case.label, f"reference grid {gt.shape} differs from the prediction's {mask.shape}")
            scores[name] = dice(mask, ref.mask(name, whole)) if ref.can_score(name) else math.nan
        per_case[case.name] = scores
    names = list(dict.fromkeys(n for s in per_case.values() for n in s))
    mean = {n: finite_mean([s.get(n, math.nan) for s in per_case.values()]) for n in names}
    return ScoreResult(mean, per_case, float(np.mean(seconds)), params)


def _nans(scores: Mapping[str, float | None]) -> dict[str, float]:
    """JSON null (how NaN is stored) back to NaN."""
    return {k: math.nan if v is None else float(v) for k, v in scores.items()}


@dataclass
class MethodResult:
    method: str
    params: int
    steps: int
    seconds_per_step: float
    seconds_per_volume: float
    train_minutes: float
    dice: dict[str, float]
    per_case: dict[str, dict[str, float]] = field(default_factory=dict)
    run_yaml: str = ""
    checkpoint: str = ""
    seed: int = 0
    diagnostics: dict[str, dict[str, Any]] = field(default_factory=dict)  # class -> share, logit, flags

    @property
    def mean_dice(self) -> float:
        return finite_mean(self.dice.values())


def train_and_score(suite: Suite, method: str, run_dir: str | Path, steps: int | None = None, device: str = "auto",
                    progress: bool = True, conditioner: Mapping[str, Any] | None = None,
                    train: Mapping[str, Any] | None = None, reuse: bool = False, seed_offset: int = 0) -> MethodResult:
    """One method end to end: run.yaml -> `promptseg train` -> predict the suite's test cases -> Dice,
    then the prompt diagnostics of the trained model on the same cases.

    RUN_DIR/result.json records the outcome together with the run YAML it came from; `reuse`
    returns it instead of training again when that YAML is unchanged (a bench killed half-way).
    """
    run_dir = Path(run_dir)
    yml = write_run_yaml(suite, method, run_dir, steps=steps, conditioner=conditioner, train=train,
                         seed_offset=seed_offset)
    record = run_dir / "result.json"
    if reuse and record.is_file():
        try:
            doc = json.loads(record.read_text(encoding="utf-8"))
            if doc.get("run_yaml_text") == yml.read_text(encoding="utf-8"):
                doc.pop("run_yaml_text")
                doc.pop("mean_dice", None)
                doc["dice"] = _nans(doc["dice"])
                doc["per_case"] = {c: _nans(d) for c, d in doc["per_case"].items()}
                return MethodResult(**doc)
        except (OSError, ValueError, TypeError, KeyError):
            pass  # unreadable or from another version: train again
    if record.exists():
        record.unlink()
    tr = train_run(yml, device=device, progress=progress)
    pred_dir = run_dir / "predictions"
    if pred_dir.exists():
        shutil.rmtree(pred_dir)
    sc = score_checkpoint(tr.checkpoint, suite.test_cases, pred_dir, device=device)
    diag = checkpoint_diagnostics(tr.checkpoint, suite.test_cases, bench_settings().get("diagnostics"),
                                  device=device, dice=sc.dice)
    result = MethodResult(method, sc.params, tr.steps, tr.seconds_per_step, sc.seconds_per_volume, tr.seconds / 60.0,
                          sc.dice, sc.per_case, str(yml), str(tr.checkpoint), int(suite.run.get("seed", 0)) + seed_offset,
                          {c: asdict(d) for c, d in diag.items()})
    doc = {**asdict(result), "mean_dice": result.mean_dice, "run_yaml_text": yml.read_text(encoding="utf-8")}
    atomic_write(record, json.dumps(json_safe(doc), indent=1) + "\n")
    return result


# --- the comparison ---------------------------------------------------------------------------------
def machine_line(device: str = "auto") -> str:
    """Where the timings come from: device, torch threads, load average (a busy box inflates them)."""
    import torch

    from ..runtime import resolve_device

    dev = resolve_device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} torch thread(s)"
    load = "/".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return f"Timings: {name}; load average {load} on {os.cpu_count()} CPUs when written."


def compare(suite: str, methods: Sequence[str] | None = None, steps: int | None = None, out: str | Path = "bench_out",
            device: str = "auto", data_dir: str | Path | None = None, progress: bool = True,
            threads: int | None = None, command: str = "", resume: bool = False, seeds: int = 1,
            split: str = "test") -> dict[str, Any]:
    """Train and score every method on one suite (`seeds` times each, seeds s, s+1, ...); print and
    write the table. Returns results.json's content. `split="validation"` scores on the suite's
    validation cases instead, in OUT/<suite>-validation.

    `resume` keeps the runs an earlier, interrupted call already finished with the same run YAML.
    """
    if isinstance(seeds, bool) or int(seeds) < 1:
        raise ConfigError(f"--seeds must be a positive integer, got {seeds}")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    methods = list(dict.fromkeys(methods or method_names()))
    for m in methods:
        conditioner_config(m)  # unknown names fail before any work
    work = Path(out).resolve() / (suite if split == "test" else f"{suite}-{split}")
    t0 = time.time()
    s = build_suite(suite, work, data_dir, split, progress)
    rows: list[MethodResult] = []
    pruned_ratio = float((bench_settings().get("diagnostics") or {}).get("pruned_ratio", PRUNED_RATIO))
    table = format_table(s, rows, command, machine_line(device), pruned_ratio)
    for m in methods:
        for i in range(int(seeds)):
            print(f"[bench {suite}] {m} (seed {i + 1}/{seeds}): training {steps or s.run['train']['steps']} steps",
                  file=sys.stderr, flush=True)
            run_dir = work / m if int(seeds) == 1 else work / m / f"seed{i}"
            r = train_and_score(s, m, run_dir, steps=steps, device=device, progress=progress, reuse=resume, seed_offset=i)
            flags = {c: d["flags"] for c, d in r.diagnostics.items() if d["flags"]}
            print(f"[bench {suite}] {m}: mean Dice {fmt(r.mean_dice)}, {r.seconds_per_step:.2f} s/step, "
                  f"{r.seconds_per_volume:.2f} s/volume; flagged: {flags or 'none'}", file=sys.stderr, flush=True)
            rows.append(r)
        table = format_table(s, rows, command, machine_line(device), pruned_ratio)  # rewritten per method: a killed run keeps its rows
        atomic_write(work / "table.md", table)
    result = {
        "suite": suite, "split": split, "title": s.title, "note": s.note, "command": command, "device": device,
        "threads": threads, "seeds": int(seeds), "minutes": (time.time() - t0) / 60.0, "machine": machine_line(device),
        "datasets": [str(p) for p in s.datasets], "test_cases": [str(c.image) for c in s.test_cases],
        "methods": [{**asdict(r), "mean_dice": r.mean_dice} for r in rows],
    }
    pairs = prompt_similarity(list(dict.fromkeys(c for r in rows for c in r.dice)))
    result["closest_prompts"] = [{"a": a, "b": b, "cosine": c} for a, b, c in pairs]
    table = table.rstrip("\n") + "\n" + "\n".join(similarity_lines(pairs, SIMILARITY_ENCODER)) + "\n"
    atomic_write(work / "table.md", table)
    atomic_write(work / "results.json", json.dumps(json_safe(result), indent=1) + "\n")
    print(table)
    return result


#: The text encoder whose class similarities the table shows (the Universal Model's and SAT's default).
SIMILARITY_ENCODER = "minilm"


def prompt_similarity(classes: Sequence[str], top: int = 5) -> list[tuple[str, str, float]]:
    """Closest class pairs under SIMILARITY_ENCODER with the default template ([] for < 2 classes)."""
    if len(classes) < 2:
        return []
    return closest_pairs(list(classes), embed_classes(list(classes), SIMILARITY_ENCODER, DEFAULT_TEMPLATE), top)


# --- benchmarks/learn_real_ct.py ----------------------------------------------------------------
def learn_real_ct(out: str | Path, steps: int | None = None, method: str = "universal", device: str = "auto",
                  data_dir: str | Path | None = None, progress: bool = True,
                  train: Mapping[str, Any] | None = None) -> MethodResult:
    """Train on the real-CT suite's partial datasets and score the training scan itself (issue 3):
    can the method learn real anatomy from partial labels at native 3 mm? Same datasets and run
    YAML as the real-CT compare suite, but trained with the suite's `learn_recipe` (the short-budget
    recipe its 1,500-step bar was set with) unless `train` names another; `steps`/`train` shorten it
    (the integration test)."""
    s = suite_settings("real-ct")
    suite = real_ct_suite(Path(out).resolve(), data_dir, test_scan=s["train_scan"])
    train = {"recipe": s.get("learn_recipe"), **dict(train or {})}
    return train_and_score(suite, method, Path(out).resolve() / method, steps=steps, device=device,
                           progress=progress, train=train)


# --- CLI -------------------------------------------------------------------------------------------
def _echo_argv(args) -> list[str]:
    """The options as given (for the table's 'Command:' line)."""
    out = ["--suite", args.suite]
    if args.steps is not None:
        out += ["--steps", str(args.steps)]
    if args.methods:
        out += ["--methods", *args.methods]
    out += ["--out", args.out]
    if args.device != "auto":
        out += ["--device", args.device]
    if args.data:
        out += ["--data", args.data]
    if args.threads:
        out += ["--threads", str(args.threads)]
    if args.seeds != 1:
        out += ["--seeds", str(args.seeds)]
    if getattr(args, "split", "test") != "test":
        out += ["--split", args.split]
    return out


def add_compare_arguments(p) -> None:
    p.add_argument("--suite", required=True, choices=SUITES, help="phantom (CPU, minutes) or real-ct")
    p.add_argument("--steps", type=int, default=None, help="training steps per method (default: the suite's)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help=f"conditioners to compare (default: all of {', '.join(method_names())})")
    p.add_argument("--out", default="bench_out", help="work folder (data, runs, predictions, table)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--data", default=None, help="folder of the real scans (default: ../shared/data beside the clone)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--seeds", type=int, default=1, help="runs per method (seeds s, s+1, ...): the table shows mean ± sd")
    p.add_argument("--resume", action="store_true",
                   help="keep methods an interrupted run already finished (same run YAML); train the rest")
    p.add_argument("--split", default="test", choices=SPLITS,
                   help="score on the test cases (report these) or the validation cases (choose settings "
                        "on these; phantom suite only)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_compare_args(args) -> int:
    """`promptseg bench compare ...` (also benchmarks/compare_methods.py)."""
    command = "promptseg bench compare " + " ".join(shlex.quote(a) for a in _echo_argv(args))
    compare(args.suite, methods=args.methods, steps=args.steps, out=args.out, device=args.device,
            data_dir=args.data, progress=not args.quiet, threads=args.threads, command=command,
            resume=args.resume, seeds=args.seeds, split=args.split)
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: `promptseg bench compare --suite phantom|real-ct`")
    verbs = p.add_subparsers(dest="bench_verb", metavar="BENCH")
    c = verbs.add_parser("compare", help="train every conditioner alike and print one comparison table")
    add_compare_arguments(c)
    c.set_defaults(func=run_compare_args)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])
