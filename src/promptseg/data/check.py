"""Dataset integrity check (`promptseg data check`): find what would break or poison training.

Per case: missing files; unreadable files (including NaN/inf voxels, which the reader rejects);
channel and image/label grid mismatches (shape, spacing, origin, direction); label values that
the dataset's label list does not declare; empty labels (warning); for CT, intensities that are
not Hounsfield units (1st percentile above -200 HU: no air or fat, e.g. raw unsigned values or an
MR; or 99th above 4000). Across all given datasets: duplicate cases (same image voxels, hashed
after casting to float32 so the same scan stored as int16 or float still matches).
Errors make the CLI exit 1; warnings do not.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError, PromptsegError
from ..io import read_image, read_label
from .manifest import MANIFEST_NAME, DatasetManifest, load_dataset, scan_folder
from .mapping import MappingConfig
from .records import Case

CT_P1_MAX = -200.0
CT_P99_MAX = 4000.0


@dataclass
class Finding:
    dataset: str
    case: str
    level: str      # "error" | "warning"
    kind: str       # missing | unreadable | nan | grid | label-values | empty | intensity | duplicate | dataset
    message: str


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    n_cases: int = 0
    n_datasets: int = 0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def table(self) -> str:
        """Plain-text columns: DATASET  CASE  LEVEL  KIND  PROBLEM, then a summary line."""
        head = ("DATASET", "CASE", "LEVEL", "KIND", "PROBLEM")
        rows = [(f.dataset, f.case, f.level, f.kind, f.message) for f in self.findings]
        lines = []
        if rows:
            widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
            fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
            lines.append(fmt.format(*head))
            lines += [fmt.format(*r) for r in rows]
        summary = (f"{self.n_cases} case(s) in {self.n_datasets} dataset(s): "
                   f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        lines.append(summary if rows else f"{summary}; all OK")
        return "\n".join(lines)


def _sample(a: np.ndarray, max_voxels: int = 2_000_000) -> np.ndarray:
    step = max(1, int(np.ceil((a.size / max_voxels) ** (1 / 3))))
    return a[::step, ::step, ::step]


def label_counts(a: np.ndarray) -> dict[int, int]:
    """Voxels per label value present (bincount for small non-negative integers, else unique)."""
    if a.size == 0:
        return {}
    if np.issubdtype(a.dtype, np.integer) and a.min() >= 0 and a.max() < 1 << 16:
        counts = np.bincount(a.ravel())
        return {int(v): int(n) for v, n in enumerate(counts) if n}
    vals, counts = np.unique(a, return_counts=True)
    return {int(v): int(n) for v, n in zip(vals, counts)}


def image_hash(array: np.ndarray, slab: int = 16) -> str:
    """sha1 of the voxels as float32 (so int16 and float copies of a scan match), slab by slab."""
    h = hashlib.sha1(str(tuple(array.shape)).encode())
    for k in range(0, max(array.shape[-1], 1), slab):
        h.update(np.ascontiguousarray(array[..., k:k + slab], dtype=np.float32).tobytes())
    return h.hexdigest()


def _check_case(m: DatasetManifest, case: Case, allowed: set[int], is_ct: list[bool]) -> tuple[list[Finding], str | None]:
    out: list[Finding] = []

    def add(level, kind, msg):
        out.append(Finding(m.name, case.id, level, kind, msg))

    def rel(p: Path) -> str:
        try:
            return Path(p).relative_to(m.root).as_posix()
        except ValueError:
            return str(p)

    missing = [p for p in case.images if not (Path(p).is_file() or Path(p).is_dir())]  # a dir: DICOM series
    for p in missing:
        add("error", "missing", f"image file missing: {rel(p)}")
    if case.label is None:
        add("error", "missing", "no label file")
    elif not Path(case.label).is_file():
        add("error", "missing", f"label file missing: {rel(case.label)}")
    if missing:
        return out, None

    vols = []
    for p in case.images:
        try:
            vols.append(read_image(p))
        except PromptsegError as exc:
            kind = "nan" if "NaN" in str(exc) else "unreadable"
            add("error", kind, f"{rel(p)}: {getattr(exc, 'problem', exc)}")
            vols.append(None)
    digest = None
    ref = vols[0]
    if ref is not None:
        digest = image_hash(ref.array)
    for i, v in enumerate(vols):
        if v is None:
            continue
        if i and ref is not None:
            diffs = v.grid_differences(ref)
            if diffs:
                add("error", "grid", f"channel {i} grid differs from channel 0: {'; '.join(diffs)}")
        if i < len(is_ct) and is_ct[i] and v.array.size:
            p1, p99 = np.percentile(_sample(v.array), [1, 99])
            if p1 > CT_P1_MAX or p99 > CT_P99_MAX:
                add("error", "intensity", f"channel {i}: intensities {p1:.0f}..{p99:.0f} (1st..99th percentile) "
                                          f"do not look like CT in HU")
    if case.label is not None and Path(case.label).is_file():
        try:
            lab = read_label(case.label, series_dir=case.images[0] if Path(case.images[0]).is_dir() else None)
        except PromptsegError as exc:
            kind = "nan" if "NaN" in str(exc) else "unreadable"
            add("error", kind, f"{rel(case.label)}: {getattr(exc, 'problem', exc)}")
            return out, digest
        if ref is not None:
            diffs = lab.grid_differences(ref)
            if diffs:
                add("error", "grid", f"label grid differs from image: {'; '.join(diffs)}")
        counts = label_counts(lab.array)
        stray = {v: n for v, n in counts.items() if v not in allowed}
        if stray:
            desc = ", ".join(f"{v} ({n} voxels)" for v, n in sorted(stray.items())[:6])
            add("error", "label-values", f"{rel(case.label)}: label values not in the dataset's label list: {desc}")
        if not any(v != 0 for v in counts):
            add("warning", "empty", "label is empty (background only)")
    return out, digest


def check_datasets(manifests: Sequence[DatasetManifest], workers: int = 1, progress: bool = False) -> CheckReport:
    """Check every case of every dataset; duplicates are looked for across all of them."""
    report = CheckReport(n_datasets=len(manifests), n_cases=sum(len(m.cases) for m in manifests))
    jobs = []
    for m in manifests:
        for note in m.notes:
            if "numTraining" in note:
                report.findings.append(Finding(m.name, "-", "warning", "dataset", note))
        ids = [c.id for c in m.cases]
        for dup in sorted({i for i in ids if ids.count(i) > 1}):
            report.findings.append(Finding(m.name, dup, "error", "duplicate", "case id listed twice"))
        chans = [c.lower() for c in m.channels] or [m.modality.lower()]
        is_ct = [c == "ct" or (len(chans) == 1 and m.modality.upper() == "CT") for c in chans]
        allowed = m.label_values
        if len(m.channels) > 1 and any(len(c.images) < len(m.channels) for c in m.cases):
            report.findings.append(Finding(m.name, "-", "error", "dataset",
                                           f"{len(m.channels)} channels in one 4D file per case: not supported, "
                                           f"store one file per channel (nnU-Net v2 layout)"))
            continue
        jobs += [(m, c, allowed, is_ct) for c in m.cases]

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="check", unit="case")

    def run(job):
        res = _check_case(*job)
        if bar:
            bar.update(1)
        return res

    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(run, jobs))
    else:
        results = [run(j) for j in jobs]
    if bar:
        bar.close()
    seen: dict[str, tuple[str, str]] = {}
    for (m, case, _, _), (findings, digest) in zip(jobs, results):
        report.findings += findings
        if digest is None:
            continue
        if digest in seen:
            ds, cid = seen[digest]
            report.findings.append(Finding(m.name, case.id, "error", "duplicate",
                                           f"same image as {ds}/{cid}"))
        else:
            seen[digest] = (m.name, case.id)
    return report


def undeclared_label_values(m: DatasetManifest, workers: int = 2) -> list[tuple[Path, list[int]]]:
    """(label file, values) for every label file holding values the dataset does not declare."""
    allowed = m.label_values
    labels = [c.label for c in m.cases if c.label is not None and Path(c.label).is_file()]

    def stray(path):
        return path, sorted(v for v in label_counts(read_label(path).array) if v not in allowed)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return [(p, vals) for p, vals in pool.map(stray, labels) if vals]


def require_declared_values(m: DatasetManifest, workers: int = 2) -> None:
    """One-line error (first file, its values, how many more) when label files hold undeclared
    values: `data add` refuses such a dataset (issue 16), `data check` lists every file."""
    bad = undeclared_label_values(m, workers)
    if bad:
        path, vals = bad[0]
        more = f" (and {len(bad) - 1} more file(s); `promptseg data check` lists them)" if len(bad) > 1 else ""
        raise InputError(path, f"dataset {m.name}: label values {vals} are not in the dataset's label list "
                               f"(dataset.json / labels file){more}")


def manifest_for_check(path: str | Path) -> DatasetManifest:
    """A manifest file, a folder's saved manifest, or the folder scanned (confirmations not needed)."""
    p = Path(path)
    if p.is_dir() and not (p / MANIFEST_NAME).is_file():
        return scan_folder(p, scorer=_no_scorer, config=MappingConfig())
    return load_dataset(p, require_confirmed=False)


def _no_scorer(names):
    """The check needs label values, not classes: skip loading the text encoder."""
    return [[] for _ in names]
