"""What predict reads and where it will write: case names, the inputs of a folder, the output
paths of each case, and the refusal to write over any input.

Why all before any work: a typo in a path, two cases with one name, or `-o` pointing at the input's
own folder must fail in one line before a checkpoint is loaded or an image is read, so an input is
never replaced by a label map (the campaign of issue 16 lost a CT that way).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from ..io.formats import case_id as case_name
from ..io.formats import image_ending
from ..io.formats import output_ending as output_extension

OUTPUT_TYPES = ("nifti", "dicom-seg", "rtstruct")


def slug(name: str) -> str:
    """File-name form of a class name: lower case, spaces and '/' -> '_'."""
    s = re.sub(r"[\s/\\]+", "_", name.strip().lower())
    return re.sub(r"[^a-z0-9_.+-]", "", s) or "class"


def is_dicom_dir(p: Path) -> bool:
    import SimpleITK as sitk

    try:
        return p.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p)))
    except RuntimeError:
        return False


def collect_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files / DICOM series folders to predict: a file, a series folder, or a folder of them."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if not p.exists():
            raise InputError(p, "input not found")
        if p.is_file() or is_dicom_dir(p):
            out.append(p)
            continue
        found = []
        for child in sorted(p.iterdir()):
            if child.name.startswith("."):
                continue
            if child.is_file() and image_ending(child.name):
                found.append(child)
            elif child.is_dir() and is_dicom_dir(child):
                found.append(child)
        if not found:
            raise InputError(p, "no images here (NIfTI, NRRD, MHA files or DICOM series folders)")
        out.extend(found)
    cases = [case_name(p) for p in out]
    dup = sorted({c for c in cases if cases.count(c) > 1})
    if dup:
        raise InputError(None, f"several inputs have the same case name {dup}: outputs would overwrite each other")
    return out


@dataclass(frozen=True)
class CaseOutputs:
    """Where one case's outputs go. `label_map` is written last: while it is missing, the case is
    not finished. `folder` holds the masks, statistics, preview and DICOM files; it is built
    aside and renamed into place whole."""

    case: str
    label_map: Path | None
    folder: Path | None
    labels: Path | None

    def paths(self) -> list[Path]:
        return [p for p in (self.label_map, self.folder, self.labels) if p is not None]


def is_file_output(out: str | Path) -> bool:
    """`-o seg.nii.gz` names the label map itself (TotalSegmentator's habit); anything else is a folder."""
    p = Path(out)
    return bool(image_ending(p)) and not p.is_dir()


def plan_outputs(inputs: Sequence[Path], out: str | Path, folder_needed: bool, nifti: bool = True) -> list[CaseOutputs]:
    """Output paths of every case, refused (one line, before any work) where one would replace
    or delete an input: a label map onto an input file, or a case folder that holds an input."""
    out = Path(out)
    plans = []
    if is_file_output(out):
        if len(inputs) != 1:
            raise InputError(out, f"-o names one label map file but {len(inputs)} inputs were given; "
                                  "give a folder to -o")
        ext = image_ending(out)
        stem = out.name[: -len(ext)]
        folder = out.with_name(stem) if folder_needed else None
        plans.append(CaseOutputs(case_name(inputs[0]), out, folder, out.with_name(f"{stem}_labels.json")))
    else:
        for f in inputs:
            case = case_name(f)
            label = out / f"{case}{output_extension(f)}" if nifti else None
            plans.append(CaseOutputs(case, label, out / case if folder_needed else None,
                                     out / "labels.json" if nifti else None))
    check_not_inputs(inputs, plans)
    return plans


def check_not_inputs(inputs: Sequence[Path], plans: Sequence[CaseOutputs]) -> None:
    """One-line InputError when an output path is an input, or a replaced folder contains one."""
    resolved = [Path(p).resolve() for p in inputs]
    for plan in plans:
        for target in plan.paths():
            t = target.resolve()
            for src in resolved:
                if t == src or (target == plan.folder and src.is_relative_to(t)):
                    raise InputError(src, f"the output {target} would overwrite this input; "
                                          "choose another output (-o) folder or file name")
