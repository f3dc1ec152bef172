"""Datasets described by file patterns, for layouts that are neither nnU-Net nor MSD.

Why: users keep data as it came (e.g. `STS_001/{CT,MR_T1,PET}_{image,mask}.nii.gz`); copying it
into nnU-Net folders only to train is a waste and a source of mistakes. A pattern entry names
the files instead:

    path: ../shared/data/sts_sarcoma          # root the patterns are relative to
    image: "{case}/CT_image.nii.gz"           # glob with one {case} key
    label: "{case}/CT_mask.nii.gz"            # same {case}; the label of that image
    labels: {1: soft tissue sarcoma}          # label value -> class name (taxonomy)
    modality: CT

With a `{modality}` key and `modalities: {CT: CT, MR: MR_T1, PET: PET}` (modality -> the text
the key stands for) one entry gives one dataset per modality, named `<name>_<modality>`.
The case id is what `{case}` matched; other glob characters (`*`, `?`, `[...]`) may be used too.
"""
from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError
from ..taxonomy import default_taxonomy
from .manifest import DatasetManifest, image_ending
from .mapping import canonical_target
from .records import Case, LabelMapping

PATTERN_KEYS = ("path", "name", "image", "label", "labels", "modality", "modalities")


def _regex(pattern: str) -> re.Pattern:
    """A glob with `{case}` -> a regex capturing the case id (one path component or less)."""
    out = []
    for part in re.split(r"(\{case\}|\*|\?|\[[^\]]*\])", pattern):
        if part == "{case}":
            out.append(r"(?P<case>[^/]+?)")
        elif part == "*":
            out.append(r"[^/]*")
        elif part == "?":
            out.append(r"[^/]")
        elif part.startswith("[") and part.endswith("]") and len(part) > 2:
            out.append(part)
        else:
            out.append(re.escape(part))
    return re.compile("^" + "".join(out) + "$")


def _check_pattern(pattern: Any, what: str, dataset: str) -> str:
    if not isinstance(pattern, str) or pattern.count("{case}") != 1:
        raise ConfigError(f"dataset {dataset}: `{what}` must be a file pattern with exactly one {{case}} key, "
                          f"got {pattern!r}")
    return pattern


def _label_map(labels: Any, dataset: str, taxonomy) -> list[LabelMapping]:
    if not isinstance(labels, dict) or not labels:
        raise ConfigError(f"dataset {dataset}: `labels` must map label values to class names, e.g. {{1: liver}}")
    out = [LabelMapping(0, "background", None, "background")]
    for raw, name in labels.items():
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"dataset {dataset}: label value {raw!r} is not an integer") from None
        if value == 0:
            continue
        target = None if name is None else canonical_target(str(name), taxonomy, where=f"dataset {dataset}")
        out.append(LabelMapping(value, str(name), target, "user" if target else "ignore"))
    return sorted(out, key=lambda m: m.value)


def scan_patterns(root: str | Path, image: str, label: str, labels: dict, modality: str,
                  name: str | None = None, taxonomy=None) -> DatasetManifest:
    """One dataset from an image and a label pattern; every image must have its label."""
    root = Path(root).resolve()
    name = name or root.name
    if not root.is_dir():
        raise InputError(root, f"dataset {name}: folder not found")
    if not modality:
        raise ConfigError(f"dataset {name}: a pattern dataset needs `modality` (CT, MR, PET, ...)")
    image, label = _check_pattern(image, "image", name), _check_pattern(label, "label", name)
    taxonomy = taxonomy or default_taxonomy()
    rx = _regex(image)
    files = sorted(Path(p) for p in glob.glob(str(root / image.replace("{case}", "*"))))
    cases = []
    for f in files:
        m = rx.match(f.relative_to(root).as_posix())
        if m is None or not f.is_file():
            continue
        cid = m.group("case")
        lab = root / label.replace("{case}", cid)
        if not lab.is_file():
            raise InputError(f, f"dataset {name}: image of case {cid} has no label ({lab.relative_to(root)} "
                                f"not found, from label pattern {label!r})")
        cases.append(Case(cid, [f], lab))
    if not cases:
        raise InputError(root / image, f"dataset {name}: image pattern matches no file")
    mappings = _label_map(labels, name, taxonomy)
    return DatasetManifest(name=name, modality=str(modality).upper(), root=root, cases=cases, labels=mappings,
                           source_format="pattern", file_ending=image_ending(cases[0].images[0].name),
                           notes=[f"pattern image={image} label={label}"], taxonomy=taxonomy)


def is_pattern_entry(entry: dict) -> bool:
    return "image" in entry or "label" in entry


def datasets_from_entry(entry: dict, taxonomy=None) -> list[DatasetManifest]:
    """A run YAML pattern entry -> one dataset, or one per modality with `modalities:`."""
    unknown = set(entry) - set(PATTERN_KEYS)
    name = str(entry.get("name") or Path(entry["path"]).name)
    if unknown:
        raise ConfigError(f"dataset {name}: unknown keys {sorted(unknown)}; a pattern entry takes {list(PATTERN_KEYS)}")
    mods = entry.get("modalities")
    if mods is None:
        return [scan_patterns(entry["path"], entry.get("image"), entry.get("label"), entry.get("labels"),
                              entry.get("modality"), name, taxonomy)]
    if not isinstance(mods, dict) or not mods:
        raise ConfigError(f"dataset {name}: `modalities` must map a modality to the text of {{modality}}, "
                          f"e.g. {{CT: CT, MR: MR_T1}}")
    out = []
    for mod, token in mods.items():
        sub = {k: str(entry.get(k, "")).replace("{modality}", str(token)) for k in ("image", "label")}
        if "{modality}" not in str(entry.get("image", "")):
            raise ConfigError(f"dataset {name}: with `modalities`, the image pattern needs a {{modality}} key")
        out.append(scan_patterns(entry["path"], sub["image"], sub["label"], entry.get("labels"), str(mod),
                                 f"{name}_{str(mod).upper()}", taxonomy))
    return out
