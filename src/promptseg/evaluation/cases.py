"""Which label-map files a folder holds, under which case names, and what their values mean.

Layouts understood (for predictions and ground truth alike):
- flat: `DIR/{case}.nii.gz` (or .nii/.nrrd/.nhdr/.mha/.mhd), the label names in `DIR/{case}.json`,
  `DIR/labels.json`, `DIR/dataset.json`, or the same files in the parent folder (nnU-Net:
  `DatasetXXX/labelsTr/` beside `DatasetXXX/dataset.json`);
- one folder per case: `DIR/{case}/labels.nii.gz` (or label/seg/segmentation.*) with
  `DIR/{case}/labels.json` (the `shared/data` layout); the case name is the folder name;
- a single case folder given directly (it holds `labels.nii.gz`): one case, named after the folder.
Label JSONs may map value -> name (`{"1": "spleen"}`), name -> value (nnU-Net `labels`, values may
be lists of values for region labels), either under a `labels`/`classes` key; value 0 and
'background' are dropped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..io.formats import DEFAULT_ENDING, IMAGE_ENDINGS, channel_file, split_ending
from ..io.labeltable import read_label_json

CASE_FILE_STEMS = ("labels", "label", "seg", "segmentation")
IMAGE_FILE_STEMS = ("image", "img", "ct", "mr", "mri")
FOLDER_JSONS = ("labels.json", "dataset.json")


@dataclass
class CaseFile:
    """One label map on disk and the meaning of its values."""

    case: str
    path: Path
    labels: dict[str, tuple[int, ...]]  # raw class name -> label values
    labels_source: Path
    image: Path | None = None


@dataclass
class CaseFolder:
    """All cases of one folder, plus the dataset name it reports under."""

    root: Path
    cases: dict[str, CaseFile] = field(default_factory=dict)
    dataset: str = ""


def _try_case_json(path: Path) -> dict[str, tuple[int, ...]] | None:
    """A per-case JSON may hold other things (statistics): use it only if it is a label map."""
    try:
        m = read_label_json(path)
    except InputError:
        return None
    return m or None


def _folder_labels(folders: list[Path]) -> tuple[dict[str, tuple[int, ...]], Path] | None:
    for folder in folders:
        for name in FOLDER_JSONS:
            p = folder / name
            if p.is_file():
                m = read_label_json(p)
                if m:
                    return m, p
    return None


def _dataset_name(root: Path) -> str:
    for folder in (root, root.parent):
        p = folder / "dataset.json"
        if p.is_file():
            try:
                name = json.loads(p.read_text(encoding="utf-8")).get("name")
            except (OSError, ValueError, AttributeError):
                name = None
            if isinstance(name, str) and name.strip():
                return name.strip()
    if root.name.lower().startswith("labels") and root.parent.name:  # nnU-Net labelsTr / labelsTs
        return root.parent.name
    return root.name


def _label_file_in(folder: Path) -> Path | None:
    hits = [p for p in sorted(folder.iterdir()) if p.is_file() and (se := split_ending(p)) and se[0].lower() in CASE_FILE_STEMS]
    if len(hits) > 1:
        raise InputError(folder, f"more than one label map ({', '.join(h.name for h in hits)})")
    return hits[0] if hits else None


def _image_in(folder: Path) -> Path | None:
    for p in sorted(folder.iterdir()):
        se = split_ending(p)
        if p.is_file() and se and se[0].lower() in IMAGE_FILE_STEMS:
            return p
    return None


def _nnunet_image(root: Path, case: str) -> Path | None:
    for sub in ("imagesTr", "imagesTs", "images"):
        d = root.parent / sub
        if d.is_dir():
            for ext in IMAGE_ENDINGS:
                for name in (channel_file(case, 0, ext), f"{case}{ext}"):
                    if (d / name).is_file():
                        return d / name
    return None


def _case_dir(folder: Path, root_labels) -> CaseFile | None:
    label_file = _label_file_in(folder)
    if label_file is None:
        return None
    found = _folder_labels([folder]) or root_labels
    if found is None:
        raise InputError(label_file, "no labels.json or dataset.json names its label values")
    return CaseFile(folder.name, label_file, found[0], found[1], _image_in(folder))


def find_cases(root: str | Path, dataset: str | None = None) -> CaseFolder:
    """Every case of a prediction or ground-truth folder, with its label names."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "not a folder of label maps")
    out = CaseFolder(root=root, dataset=dataset or _dataset_name(root))
    root_labels = _folder_labels([root, root.parent])
    single = _case_dir(root, _folder_labels([root.parent]))
    if single is not None:  # a case folder given directly
        out.cases[single.case] = single
        return out
    for p in sorted(root.iterdir()):
        if p.is_dir():
            cf = _case_dir(p, root_labels)
            if cf is None:
                continue
        else:
            se = split_ending(p)
            if se is None:
                continue
            case = se[0]
            labels = _try_case_json(root / f"{case}.json")
            source = root / f"{case}.json"
            if labels is None:
                if root_labels is None:
                    raise InputError(p, "no labels.json, dataset.json or {case}.json names its label values")
                labels, source = root_labels
            cf = CaseFile(case, p, labels, source, _nnunet_image(root, case))
        if cf.case in out.cases:
            raise InputError(root, f"case {cf.case!r} appears twice ({out.cases[cf.case].path.name}, {cf.path.name})")
        out.cases[cf.case] = cf
    if not out.cases:
        raise InputError(root, f"no label maps found (expected {{case}}{DEFAULT_ENDING} files or {{case}}/labels{DEFAULT_ENDING})")
    return out
