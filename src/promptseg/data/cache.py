"""Preprocessing cache: each case is preprocessed once per (dataset, plan), then memory-mapped.

Layout: `cache_dir/<dataset>/<plan fingerprint>/`
    <case>.image.npy    float32 [C, X, Y, Z]   (network space of the plan)
    <case>.label.npy    the dataset's label values in network space (nearest)
    <case>.targets.npy  uint8 [K, X, Y, Z], one mask per annotated class (data/labels.py)
    <case>.json         commit record, written last: source fingerprints, classes, spacing,
                        left/right split, preprocessing record
    index.json          summary of all cases (rewritten at the end of a run)

Keys:
- plan fingerprint = sha1 of the plan's `to_dict()` and CACHE_VERSION: another plan gets its own
  folder, old ones stay valid;
- source fingerprint per file = size + mtime_ns + sha1 of the first and last MiB, stored per
  role (channel i, label), not per absolute path, so moving a dataset folder (mv, cp -p) keeps
  its cache. A file is stale when its size or mtime differ (a touched case is redone, on
  purpose: the mtime is how we notice a file rewritten in place); when both match, the file is
  not read at all, so re-preparing a large dataset costs one stat per file. The head/tail
  hash is provenance (it tells two files apart in the index), computed only for new files;
- targets key = sha1 of the label mappings, class list and taxonomy: editing a manifest's
  mapping recomputes only the targets from the cached label, without preprocessing again.
Interrupted runs resume: a case counts as done only once its `.json` exists and matches; arrays
are written to temp files and renamed, so a half-written case is just redone.
`COUNTS` (module level) tallies "preprocessed", "retargeted" and "reused" cases.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError, PromptsegError
from ..io.atomic import atomic_path, atomic_write
from ..io.volume import patient_axis
from ..preprocess import Plan, get_plan
from ..taxonomy import default_taxonomy
from .check import label_counts
from .labels import label_to_targets_with_info
from .manifest import DatasetManifest
from .records import Case, LabelMapping

CACHE_VERSION = 1
LABEL_SEMANTICS_VERSION = 1  # bump when data/labels.py changes what a target mask means
COUNTS: Counter = Counter()
_CHUNK = 1 << 20


@dataclass
class PreparedCase:
    id: str
    dataset: str
    modality: str
    image: np.ndarray        # float32 [C, X, Y, Z] (memory-mapped)
    targets: np.ndarray      # uint8 [K, X, Y, Z], one binary mask per class in `classes`
    classes: list[str]       # the dataset's annotated classes (canonical names)
    spacing: tuple[float, float, float]
    split: dict = field(default_factory=dict)   # left/right split record per paired group
    record: dict = field(default_factory=dict)  # preprocessing Record.to_dict()
    folder: Path | None = None

    def __getstate__(self) -> dict:
        """Memory-mapped arrays travel as their .npy paths (loader workers start by 'spawn' and
        re-open them), so a worker never receives a copy of the cached data."""
        state = dict(self.__dict__)
        for key in ("image", "targets"):
            arr = state[key]
            if isinstance(arr, np.memmap) and getattr(arr, "filename", None):
                state[key] = _MappedArray(str(arr.filename))
        return state

    def __setstate__(self, state: dict) -> None:
        for key in ("image", "targets"):
            if isinstance(state[key], _MappedArray):
                state[key] = np.load(state[key].path, mmap_mode="r")
        self.__dict__.update(state)


@dataclass(frozen=True)
class _MappedArray:
    path: str


# --- fingerprints --------------------------------------------------------------------------------
def file_fingerprint(path: Path) -> dict[str, Any]:
    """size + mtime_ns + sha1(first MiB + last MiB): cheap, and changes on rewrite or touch."""
    st = path.stat()
    h = hashlib.sha1()
    with open(path, "rb") as f:
        h.update(f.read(_CHUNK))
        if st.st_size > _CHUNK:
            f.seek(max(_CHUNK, st.st_size - _CHUNK))
            h.update(f.read(_CHUNK))
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "sha1_head_tail": h.hexdigest()}


def plan_fingerprint(plan) -> str:
    d = plan.to_dict() if hasattr(plan, "to_dict") else dict(plan)
    blob = json.dumps({"plan": d, "cache": CACHE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def targets_key(mappings: Sequence[LabelMapping], classes: Sequence[str], taxonomy) -> str:
    """Changes when anything that decides a target mask changes (mapping, classes, taxonomy)."""
    maps = [[int(m.value), list(m.all_values), m.target] for m in mappings]
    tx = [[c.id, c.name, c.parent, c.group, c.laterality] for c in taxonomy.classes]
    blob = json.dumps({"maps": maps, "classes": list(classes), "taxonomy": tx,
                       "semantics": LABEL_SEMANTICS_VERSION}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def _sources(case: Case) -> dict[str, Path]:
    out = {f"image{i}": Path(p) for i, p in enumerate(case.images)}
    if case.label is not None:
        out["label"] = Path(case.label)
    return out


def _fingerprints(case: Case, old: dict | None = None) -> dict[str, dict]:
    """Per-role fingerprints; a file whose size and mtime match `old` is not read again."""
    out = {}
    old = old or {}
    for role, p in _sources(case).items():
        if not p.is_file():
            raise InputError(p, f"case {case.id}: file not found")
        prev = old.get(role)
        st = p.stat()
        if prev and prev.get("size") == st.st_size and prev.get("mtime_ns") == st.st_mtime_ns:
            out[role] = prev
        else:
            out[role] = file_fingerprint(p)
    return out


# --- atomic array writes ---------------------------------------------------------------------------
def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _save_json(path: Path, doc: dict) -> None:
    atomic_write(path, json.dumps(doc, indent=1))


def _smallest_label_dtype(a: np.ndarray) -> np.dtype:
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    for dt in (np.uint8, np.uint16, np.int32):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


# --- one case -------------------------------------------------------------------------------------
@dataclass
class _Job:
    dataset: str
    modality: str
    case: Case
    mappings: list[LabelMapping]
    classes: list[str]
    plan: dict
    folder: Path
    key: str
    taxonomy: Any
    allowed: frozenset = frozenset()  # label values the dataset declares; others are an error


def _preprocess(job: _Job):
    from ..io import read_image, read_label
    from ..preprocess import apply_to_label, preprocess_image

    plan = get_plan(job.plan)
    vols = [read_image(p) for p in job.case.images]
    first = preprocess_image(vols[0], plan)
    rec = first.record
    chans = [first.array]
    if len(vols) > 1:
        nocrop = get_plan(plan.to_dict(), crop=None)
        lo, hi = rec.crop_lo, rec.crop_hi
        for v, p in zip(vols[1:], job.case.images[1:]):
            diffs = v.grid_differences(vols[0])
            if diffs:
                raise InputError(p, f"channel grid differs from channel 0: {'; '.join(diffs)}")
            a = preprocess_image(v, nocrop).array
            chans.append(np.ascontiguousarray(a[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]))
    image = np.stack(chans).astype(np.float32, copy=False)
    if job.case.label is None:
        raise InputError(job.case.images[0], f"case {job.case.id} has no label file")
    lab_vol = read_label(job.case.label, reference=vols[0])
    label = apply_to_label(lab_vol, rec)
    label = label.astype(_smallest_label_dtype(label), copy=False)
    return image, label, rec


def _run_job(job: _Job) -> dict:
    """Bring one case up to date in the cache; returns its commit record (+ what was done)."""
    stem = job.folder / _safe(job.case.id)
    meta_path = Path(f"{stem}.json")
    old = None
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            old = None
    fps = _fingerprints(job.case, (old or {}).get("sources"))
    arrays = [Path(f"{stem}.{n}.npy") for n in ("image", "label", "targets")]
    fresh = (old is not None and old.get("sources") == fps and old.get("cache_version") == CACHE_VERSION
             and all(p.is_file() for p in arrays))
    if fresh and old.get("targets_key") == job.key:
        return {**old, "action": "reused"}
    if fresh:
        action = "retargeted"
        image = np.load(arrays[0], mmap_mode="r")
        label = np.load(arrays[1])
        record = old["record"]
    else:
        action = "preprocessed"
        image, label, rec = _preprocess(job)
        record = rec.to_dict()
    _check_label_values(job, label)
    if action == "preprocessed":
        _save_npy(arrays[0], image)
        _save_npy(arrays[1], label)
    lr_axis, toward_right = patient_axis(record["network"]["direction"], "right")
    targets, split = label_to_targets_with_info(label, job.mappings, job.classes, job.taxonomy,
                                                image=np.asarray(image[0]), lr_axis=lr_axis,
                                                right_is_high=toward_right > 0)
    _save_npy(arrays[2], targets.astype(np.uint8))
    meta = {
        "cache_version": CACHE_VERSION, "case": job.case.id, "dataset": job.dataset, "modality": job.modality,
        "sources": fps, "targets_key": job.key, "classes": list(job.classes),
        "spacing": list(record["network"]["spacing"]), "shape": list(image.shape),
        "voxels": {c: int(n) for c, n in zip(job.classes, targets.reshape(len(job.classes), -1).sum(1))},
        "split": split, "record": record,
    }
    _save_json(meta_path, meta)
    return {**meta, "action": action}


def _check_label_values(job: _Job, label: np.ndarray) -> None:
    """Values in the label file that the dataset's label list does not declare (issue 16): training
    on them silently would treat a class nobody named as background."""
    if not job.allowed:
        return
    stray = sorted(v for v in label_counts(np.asarray(label)) if v not in job.allowed)
    if stray:
        raise InputError(job.case.label, f"label values {stray} are not in dataset {job.dataset}'s label list "
                                         f"(dataset.json / labels file); declare them there or remap the file")


def _run_job_safe(job: _Job) -> dict:
    try:
        return _run_job(job)
    except PromptsegError as exc:
        return {"case": job.case.id, "dataset": job.dataset, "error": str(exc)}


# --- many datasets ---------------------------------------------------------------------------------
def _load_case(meta: dict, folder: Path) -> PreparedCase:
    stem = folder / _safe(meta["case"])
    return PreparedCase(
        id=meta["case"], dataset=meta["dataset"], modality=meta["modality"],
        image=np.load(f"{stem}.image.npy", mmap_mode="r"),
        targets=np.load(f"{stem}.targets.npy", mmap_mode="r"),
        classes=list(meta["classes"]), spacing=tuple(float(s) for s in meta["spacing"]),
        split=meta.get("split", {}), record=meta.get("record", {}), folder=folder,
    )


def _plans_by_modality(plan) -> dict[str, Plan]:
    """One plan (name, mapping or Plan: for its own modality) or a modality -> plan mapping."""
    if isinstance(plan, dict) and "name" not in plan and "base" not in plan:
        return {str(m).upper(): get_plan(p) for m, p in plan.items()}
    p = plan if isinstance(plan, Plan) else get_plan(plan)
    return {p.modality: p}


def plan_for(dataset: DatasetManifest, plans: dict[str, Plan]) -> Plan:
    """The plan of the dataset's modality, or a one-line error naming the dataset and its file."""
    got = plans.get(str(dataset.modality).upper())
    if got is None:
        where = dataset.path or dataset.root
        raise PromptsegError(f"dataset {dataset.name} ({where}): modality {dataset.modality} has no plan; add "
                             f"`plans: {{{dataset.modality}: PLAN}}` to the run YAML (plans given for: "
                             f"{', '.join(sorted(plans)) or 'none'})")
    return got


def prepare_datasets(datasets: list[DatasetManifest], plan, cache_dir: Path, workers: int = 1,
                     progress: bool = True) -> list[PreparedCase]:
    """Preprocess what is missing or stale, reuse the rest; cases come back memory-mapped.

    `plan`: one plan (for datasets of its modality) or a mapping modality -> plan, so one run
    mixes CT, MR and PET, each dataset preprocessed by its own modality's plan. `workers > 1`
    runs cases in a process pool. A case that fails (unreadable file, grid mismatch, undeclared
    label values) stops the run with one line naming it, after the other cases are saved.
    """
    plans = _plans_by_modality(plan)
    cache_dir = Path(cache_dir)
    names = [d.name for d in datasets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PromptsegError(f"dataset names must be unique in one run (cache folders); repeated: {', '.join(dup)}")
    jobs: list[_Job] = []
    folders: dict[str, Path] = {}
    ds_plans: dict[str, Plan] = {}
    for d in datasets:
        d.require_confirmed()
        ds_plans[d.name] = plan = plan_for(d, plans)
        if len(d.channels) > 1 and any(len(c.images) < len(d.channels) for c in d.cases):
            raise PromptsegError(f"dataset {d.name}: {len(d.channels)} channels stored in one 4D file per case "
                                 f"(MSD layout) are not supported; store one file per channel (nnU-Net v2 layout)")
        tx = d.taxonomy or default_taxonomy()
        classes = d.annotated_classes
        if not classes:
            raise PromptsegError(f"dataset {d.name}: no label maps to a taxonomy class; nothing to train on")
        folder = cache_dir / _safe(d.name) / plan_fingerprint(plan)
        folder.mkdir(parents=True, exist_ok=True)
        folders[d.name] = folder
        key = targets_key(d.labels, classes, tx)
        allowed = frozenset(d.label_values)
        jobs += [_Job(d.name, d.modality, c, list(d.labels), classes, plan.to_dict(), folder, key, tx, allowed)
                 for c in d.cases]

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=f"prepare ({', '.join(sorted({p.name for p in ds_plans.values()}))})", unit="case")
    results: list[dict] = []
    try:
        if workers > 1 and len(jobs) > 1:
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                futures = [pool.submit(_run_job_safe, j) for j in jobs]
                for fut in as_completed(futures):
                    results.append(fut.result())
                    if bar:
                        bar.update(1)
        else:
            for j in jobs:
                results.append(_run_job_safe(j))
                if bar:
                    bar.update(1)
    finally:
        if bar:
            bar.close()
    errors = [r for r in results if "error" in r]
    for r in results:
        if "action" in r:
            COUNTS[r["action"]] += 1
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise PromptsegError(f"dataset {errors[0]['dataset']} case {errors[0]['case']}: {errors[0]['error']}{more}")
    by_key = {(r["dataset"], r["case"]): r for r in results}
    for d in datasets:
        index = {c.id: {k: by_key[(d.name, c.id)][k] for k in ("sources", "targets_key", "shape", "voxels")}
                 for c in d.cases}
        _save_json(folders[d.name] / "index.json",
                   {"dataset": d.name, "modality": d.modality, "plan": ds_plans[d.name].to_dict(),
                    "plan_fingerprint": plan_fingerprint(ds_plans[d.name]), "classes": d.annotated_classes,
                    "cases": index})
    return [_load_case(by_key[(j.dataset, j.case.id)], j.folder) for j in jobs]
