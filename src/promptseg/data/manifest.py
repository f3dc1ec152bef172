"""Dataset manifests: one small YAML file per dataset saying which cases it has and what its labels mean.

Why a manifest: public datasets (MSD, nnU-Net, KiTS, BTCV, AMOS, ...) name and number their labels
differently. Reading a folder once, mapping each label value to a taxonomy class (with the reason
recorded), and letting the user confirm or edit the result keeps every later stage (cache,
sampler, masked loss) free of per-dataset code.

Readable layouts (`scan_folder`):
- nnU-Net v2 raw folder: `dataset.json` with `channel_names`, `labels` (name -> value, or a list of
  values for a region), `file_ending`; `imagesTr/{case}_{XXXX}{ending}`, `labelsTr/{case}{ending}`.
- MSD Decathlon folder: `dataset.json` with `modality`, `labels` (value -> name), `training` list.
- plain folder: a labels file (`labels.json|yaml`, value -> name or name -> value) and either a
  pairs file (`pairs.csv|tsv|txt`: `image,label[,case]` per line, paths relative to the folder),
  an `image.*` + `label(s).*` pair in the folder itself, or one such pair per sub-folder.

Paths in a saved manifest are relative: `root` relative to the manifest file, case files relative
to `root`, so a dataset folder can move together with its manifest.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError, PromptsegError
from ..io.atomic import atomic_write
from ..io.formats import channel_file, image_ending, split_channel
from ..io.labeltable import label_entries, load_table
from ..taxonomy import default_taxonomy
from .labels import annotated_classes
from .mapping import canonical_target, dataset_context, is_group_target, map_labels
from .records import Case, LabelMapping, PendingMapping
from ..io.dicom_labels import dicom_label_modality

MANIFEST_NAME = "promptseg_dataset.yaml"
MANIFEST_FORMAT = "promptseg-dataset/1"


@dataclass
class DatasetManifest:
    name: str
    modality: str
    root: Path
    cases: list[Case]
    labels: list[LabelMapping]
    pending: list[PendingMapping] = field(default_factory=list)
    source_format: str = "manifest"  # "nnunetv2" | "msd" | "plain" | "manifest"
    file_ending: str = ""
    channels: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    path: Path | None = None  # the manifest file this was loaded from / saved to
    taxonomy: Any = field(default=None, repr=False, compare=False)

    # --- semantics -----------------------------------------------------------------------
    def _taxonomy(self):
        if self.taxonomy is None:
            return default_taxonomy()
        return self.taxonomy

    @property
    def annotated_classes(self) -> list[str]:
        """Canonical classes this dataset annotates (groups expanded), ordered by taxonomy id."""
        return annotated_classes(self.labels, self._taxonomy())

    @property
    def unmapped(self) -> list[LabelMapping]:
        return [m for m in self.labels if m.source == "unmapped"]

    @property
    def label_values(self) -> set[int]:
        """Every value the dataset's label files may contain (mapped, ignored or pending)."""
        out = {0}
        for m in [*self.labels, *self.pending]:
            out.update(int(v) for v in m.all_values)
        return out

    def confirm(self, value: int | None = None, target: str | None | object = ...) -> None:
        """Accept pending proposals (all, or the one for `value`), optionally with another target."""
        keep = []
        for p in self.pending:
            if value is not None and p.value != value:
                keep.append(p)
                continue
            if target is ...:
                tgt, src = p.proposal, (f"{p.reason.split(';')[0]} (confirmed)" if p.reason else "user")
            else:
                tgt, src = target, "user"
            if tgt is not None:
                tgt = canonical_target(tgt, self._taxonomy(), where=f"dataset {self.name}")
            self.labels.append(LabelMapping(p.value, p.name, tgt, src, list(p.values)))
        if value is not None and len(keep) == len(self.pending):
            raise PromptsegError(f"dataset {self.name}: no pending mapping for value {value}")
        self.pending = keep
        self.labels.sort(key=lambda m: m.value)

    def require_confirmed(self) -> None:
        """Raise (one line) when low-confidence mappings still wait for the user."""
        if self.pending:
            where = self.path or self.root
            items = "; ".join(p.describe() for p in self.pending)
            raise PromptsegError(
                f"{where}: {len(self.pending)} label mapping(s) need confirmation: {items}. "
                f"Run `promptseg data add {self.root}`, then set `confirm: true` (after editing `proposal` "
                f"if wrong) under `pending:` in the manifest it writes; or add --yes to accept the proposals"
            )

    # --- files ---------------------------------------------------------------------------
    def to_dict(self, relative_to: Path | None = None) -> dict:
        root = Path(self.root)
        root_str = str(root)
        if relative_to is not None:
            try:
                root_str = os.path.relpath(root.resolve(), Path(relative_to).resolve())
            except ValueError:  # another drive (Windows)
                root_str = str(root.resolve())

        def rel(p: Path | None):
            if p is None:
                return None
            p = Path(p)
            try:
                return p.relative_to(root).as_posix()
            except ValueError:
                return str(p)

        labels = []
        for m in self.labels:
            d: dict[str, Any] = {"value": int(m.value), "name": m.name, "target": m.target, "source": m.source}
            if m.values:
                d["values"] = [int(v) for v in m.values]
            if m.target is not None and is_group_target(m.target, self._taxonomy()):
                d["split"] = "left/right by the patient's midline (promptseg.data.labels)"
            labels.append(d)
        pending = []
        for p in self.pending:
            d = {"value": int(p.value), "name": p.name, "proposal": p.proposal, "confirm": bool(p.confirm),
                 "reason": p.reason,
                 "candidates": [{"class": c, "similarity": round(float(s), 3)} for c, s in p.candidates]}
            if p.values:
                d["values"] = [int(v) for v in p.values]
            pending.append(d)
        return {
            "format": MANIFEST_FORMAT,
            "name": self.name,
            "modality": self.modality,
            "root": root_str,
            "source_format": self.source_format,
            "file_ending": self.file_ending,
            "channels": list(self.channels),
            "annotated_classes": self.annotated_classes,
            "labels": labels,
            "pending": pending,
            "notes": list(self.notes),
            "cases": [{"id": c.id, "images": [rel(p) for p in c.images], "label": rel(c.label)} for c in self.cases],
        }

    def save(self, path: str | Path) -> Path:
        """Write YAML (or JSON for a .json path) atomically; paths become relative."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = self.to_dict(relative_to=path.parent)
        if path.suffix.lower() == ".json":
            text = json.dumps(doc, indent=1)
        else:
            header = ("# promptseg dataset manifest. Edit `target` of a label to change its class (null = ignore);\n"
                      "# under `pending`, set `confirm: true` to accept `proposal` (edit it first if wrong).\n")
            text = header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120)
        atomic_write(path, text)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path, taxonomy=None) -> "DatasetManifest":
        """Read a manifest; confirmed pending entries (`confirm: true`) become label mappings."""
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "manifest file not found")
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise InputError(path, f"not valid YAML/JSON ({str(exc).splitlines()[0]})") from None
        return cls.from_dict(doc, path, taxonomy)

    @classmethod
    def from_dict(cls, doc: Any, path: Path, taxonomy=None) -> "DatasetManifest":
        if not isinstance(doc, dict):
            raise InputError(path, "manifest must be a mapping with name, modality, root, labels, cases")
        missing = [k for k in ("name", "labels", "cases") if k not in doc]
        if missing:
            raise InputError(path, f"manifest lacks {', '.join(missing)}")
        if taxonomy is None:
            taxonomy = default_taxonomy()
        root = Path(str(doc.get("root", ".")))
        if not root.is_absolute():
            root = (path.parent / root).resolve()

        def ivalue(raw, what):
            try:
                return int(raw)
            except (TypeError, ValueError):
                raise InputError(path, f"{what}: label value {raw!r} is not an integer") from None

        labels = []
        for i, d in enumerate(doc.get("labels") or []):
            if not isinstance(d, dict) or "value" not in d:
                raise InputError(path, f"labels entry #{i + 1} needs at least `value` and `target`")
            value = ivalue(d["value"], f"labels entry #{i + 1}")
            tgt = d.get("target")
            if tgt is not None:
                tgt = canonical_target(str(tgt), taxonomy, where=f"{path}: label {value}")
            labels.append(LabelMapping(value, str(d.get("name", value)), tgt, str(d.get("source", "user")),
                                       [ivalue(v, f"label {value}") for v in d.get("values") or []]))
        pending = []
        for i, d in enumerate(doc.get("pending") or []):
            if not isinstance(d, dict) or "value" not in d:
                raise InputError(path, f"pending entry #{i + 1} needs `value`")
            cands = [(str(c.get("class")), float(c.get("similarity", 0.0)))
                     for c in d.get("candidates") or [] if isinstance(c, dict)]
            pending.append(PendingMapping(ivalue(d["value"], f"pending entry #{i + 1}"), str(d.get("name", "")),
                                          d.get("proposal"), cands, str(d.get("reason", "")),
                                          [ivalue(v, "pending values") for v in d.get("values") or []],
                                          bool(d.get("confirm", False))))
        cases = []
        for i, d in enumerate(doc.get("cases") or []):
            if not isinstance(d, dict) or "id" not in d or not d.get("images"):
                raise InputError(path, f"cases entry #{i + 1} needs `id` and `images`")
            imgs = d["images"] if isinstance(d["images"], list) else [d["images"]]
            cases.append(Case(str(d["id"]), [_under(root, p) for p in imgs],
                              _under(root, d["label"]) if d.get("label") else None))
        m = cls(name=str(doc["name"]), modality=str(doc.get("modality", "CT")), root=root, cases=cases,
                labels=labels, pending=pending, source_format=str(doc.get("source_format", "manifest")),
                file_ending=str(doc.get("file_ending", "")), channels=[str(c) for c in doc.get("channels") or []],
                notes=[str(n) for n in doc.get("notes") or []], path=path, taxonomy=taxonomy)
        confirmed = [p for p in m.pending if p.confirm]
        for p in confirmed:
            m.confirm(p.value, target=p.proposal)  # edited or not, the user decided: source "user"
        seen: dict[int, str] = {}
        for lm in m.labels:  # plain values are unique; nnU-Net regions may overlap them
            if lm.values:
                continue
            if lm.value in seen:
                raise InputError(path, f"label value {lm.value} is listed twice ({seen[lm.value]!r} and {lm.name!r})")
            seen[lm.value] = lm.name
        return m


def _under(root: Path, p) -> Path:
    p = Path(str(p))
    return p if p.is_absolute() else root / p


# --- folder scanning ---------------------------------------------------------------------------
def _modality_from_channels(channels: list[str]) -> str:
    names = [c.strip().lower() for c in channels]
    if any(n == "ct" or n.startswith("ct") for n in names):
        return "CT"
    if any("pet" in n for n in names):
        return "PET"
    return "MR"


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InputError(path, "expected a JSON object")
    return doc


def _int_key(k, path: Path) -> int:
    try:
        return int(str(k).strip())
    except ValueError:
        raise InputError(path, f"label value {k!r} is not an integer") from None


def _label_entries(doc, path: Path) -> list[tuple[int, str, list[int]]]:
    """(value, name, region values) per entry of a label table (`io.labeltable`): a region's
    value is its smallest, its values listed; a single value lists none."""
    out = []
    for name, vals in label_entries(doc, path):
        out.append((vals[0] if len(vals) == 1 else min(vals), name, list(vals) if len(vals) > 1 else []))
    return out


def read_labels_file(path: Path) -> list[tuple[int, str, list[int]]]:
    """A plain labels file: {value: name} (like MSD) or {name: value} (like nnU-Net)."""
    entries = _label_entries(load_table(path), path)
    if not entries:
        raise InputError(path, "labels file must map label values to names")
    return entries


def _scan_nnunet(root: Path, doc: dict, djson: Path) -> tuple[list[Case], list, str, list[str], list[str]]:
    notes = []
    if not isinstance(doc.get("labels"), dict):
        raise InputError(djson, "nnU-Net dataset.json needs `labels` (name -> value)")
    chan = doc.get("channel_names") or doc.get("modality") or {"0": "CT"}
    channels = [str(chan[k]) for k in sorted(chan, key=lambda k: _int_key(k, djson))]
    ending = doc.get("file_ending")
    if not ending:
        ending = ".nii.gz"
        notes.append("dataset.json has no file_ending; assumed .nii.gz")
    n = len(channels)

    def case_ids(img_dir: Path, lab_dir: Path) -> set[str]:
        ids: set[str] = set()
        if img_dir.is_dir():
            for f in img_dir.iterdir():
                case, ch = split_channel(f.name[: -len(ending)]) if f.name.endswith(ending) else ("", None)
                if ch is not None and case and not f.name.startswith("."):
                    ids.add(case)
        if lab_dir.is_dir():
            for f in lab_dir.iterdir():
                if f.name.endswith(ending) and not f.name.startswith("."):
                    ids.add(f.name[: -len(ending)])
        return ids

    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    ids = case_ids(img_dir, lab_dir)
    if not ids:  # a held-out set: labelled cases in imagesTs/labelsTs only
        img_dir, lab_dir = root / "imagesTs", root / "labelsTs"
        ids = case_ids(img_dir, lab_dir) if lab_dir.is_dir() else set()
        if ids:
            notes.append("no imagesTr/labelsTr cases; using the labelled test cases in imagesTs/labelsTs")
    if not ids:
        raise InputError(root, f"nnU-Net folder has no cases in imagesTr/labelsTr ending in {ending}")
    cases = []
    for cid in sorted(ids):
        lab = lab_dir / f"{cid}{ending}"
        cases.append(Case(cid, [img_dir / channel_file(cid, i, ending) for i in range(n)], lab if lab.exists() else None))
    nt = doc.get("numTraining")
    if isinstance(nt, int) and nt != len(cases) and img_dir.name == "imagesTr":
        notes.append(f"dataset.json numTraining is {nt} but {len(cases)} cases were found")
    return cases, _label_entries(doc["labels"], djson), ending, channels, notes


def _scan_msd(root: Path, doc: dict, djson: Path) -> tuple[list[Case], list, str, list[str], list[str]]:
    notes = []
    if not isinstance(doc.get("labels"), dict):
        raise InputError(djson, "MSD dataset.json needs `labels` (value -> name)")
    mod = doc.get("modality") or {"0": "CT"}
    channels = [str(mod[k]) for k in sorted(mod, key=lambda k: _int_key(k, djson))]
    entries = doc.get("training")
    test = doc.get("test")
    if not entries and isinstance(test, list) and test and all(isinstance(e, dict) and e.get("label") for e in test):
        entries = test
        notes.append("no training cases; using the labelled `test` list")
    cases = []
    ending = ""
    if isinstance(entries, list) and entries:
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or "image" not in e:
                raise InputError(djson, f"training entry #{i + 1} needs `image` (and `label`)")
            img = _under(root, os.path.normpath(str(e["image"])))
            ending = ending or image_ending(img.name)
            cid = img.name[: -len(image_ending(img.name))] if image_ending(img.name) else img.stem
            lab = _under(root, os.path.normpath(str(e["label"]))) if e.get("label") else None
            cases.append(Case(cid, [img], lab))
    else:
        img_dir = root / "imagesTr"
        files = sorted(f for f in img_dir.iterdir() if not f.name.startswith(".")) if img_dir.is_dir() else []
        for f in files:
            end = image_ending(f.name)
            if not end:
                continue
            ending = ending or end
            cid = f.name[: -len(end)]
            cases.append(Case(cid, [f], root / "labelsTr" / f.name))
        notes.append("dataset.json has no `training` list; cases taken from imagesTr/")
    if not cases:
        raise InputError(djson, "no training cases listed or found")
    if len(channels) > 1:
        notes.append(f"{len(channels)} channels ({', '.join(channels)}) are stored in each 4D image file")
    nt = doc.get("numTraining")
    if isinstance(nt, int) and nt != len(cases):
        notes.append(f"dataset.json numTraining is {nt} but {len(cases)} cases are listed")
    return cases, _label_entries(doc["labels"], djson), ending, channels, notes


def _find_pair(folder: Path) -> tuple[Path, Path] | None:
    imgs = [f for f in folder.iterdir() if f.is_file() and image_ending(f.name)
            and f.name[: -len(image_ending(f.name))].lower() in ("image", "img", "ct", "mr", "volume")]
    labs = [f for f in folder.iterdir() if f.is_file() and image_ending(f.name)
            and f.name[: -len(image_ending(f.name))].lower() in ("label", "labels", "seg", "segmentation", "mask")]
    if len(imgs) == 1 and len(labs) == 1:
        return imgs[0], labs[0]
    # a DICOM case: image/ holds one series, mask/ one RTSTRUCT or DICOM-SEG (values = ROI numbers)
    if (folder / "image").is_dir() and (folder / "mask").is_dir():
        dlabs = [f for f in (folder / "mask").iterdir() if f.is_file() and dicom_label_modality(f)]
        if len(dlabs) == 1:
            return folder / "image", dlabs[0]
    return None


def _scan_plain(root: Path, labels_file: Path | None, pairs_file: Path | None) -> tuple[list[Case], list, str, list[str], list[str]]:
    if labels_file is None:
        for n in ("labels.json", "labels.yaml", "labels.yml", "classes.json"):
            if (root / n).is_file():
                labels_file = root / n
                break
    if labels_file is None:
        raise InputError(root, "no dataset.json and no labels file (labels.json: value -> name); pass --labels FILE")
    labels = read_labels_file(Path(labels_file))
    if pairs_file is None:
        for n in ("pairs.csv", "pairs.tsv", "pairs.txt"):
            if (root / n).is_file():
                pairs_file = root / n
                break
    cases: list[Case] = []
    if pairs_file is not None:
        pairs_file = Path(pairs_file)
        base = pairs_file.parent
        for lineno, line in enumerate(pairs_file.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p.strip() for p in re.split(r"[,\t]" if ("," in line or "\t" in line) else r"\s+", line)]
            if lineno == 1 and parts[0].lower() in ("image", "img", "images"):
                continue
            if len(parts) < 2:
                raise InputError(pairs_file, f"line {lineno}: expected `image,label[,case]`")
            img, lab = _under(base, parts[0]), _under(base, parts[1])
            cid = parts[2] if len(parts) > 2 and parts[2] else img.name[: -len(image_ending(img.name)) or None]
            cases.append(Case(cid, [img], lab))
    else:
        pair = _find_pair(root)
        if pair:
            cases.append(Case(root.name, [pair[0]], pair[1]))
        else:
            for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
                pair = _find_pair(sub)
                if pair:
                    cases.append(Case(sub.name, [pair[0]], pair[1]))
    if not cases:
        raise InputError(root, "no cases: expected a pairs file (image,label per line), image.* + label.* files, "
                               "or sub-folders holding them")
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(pairs_file or root, f"case ids used twice: {', '.join(dup[:5])}")
    ending = image_ending(cases[0].images[0].name)
    return cases, labels, ending, [], [f"labels from {Path(labels_file).name}"]


def _guess_modality(case: Case) -> str:
    from ..io import read_image
    import numpy as np

    try:
        arr = read_image(case.images[0]).array
    except PromptsegError:
        return "CT"
    return "CT" if float(np.min(arr)) <= -500 else "MR"


def scan_folder(path: str | Path, name: str | None = None, modality: str | None = None, taxonomy=None,
                config=None, labels_file: str | Path | None = None, pairs_file: str | Path | None = None,
                overrides: dict[str, str | None] | None = None, scorer=None) -> DatasetManifest:
    """Read an nnU-Net v2 / MSD / plain folder and map its labels to the taxonomy (see mapping.py).

    The result may hold `pending` proposals; nothing is written to disk.
    """
    root = Path(path).resolve()
    if not root.is_dir():
        raise InputError(Path(path), "not a folder")
    if taxonomy is None:
        taxonomy = default_taxonomy()
    djson = root / "dataset.json"
    json_name = ""
    if djson.is_file() and labels_file is None and pairs_file is None:
        doc = _read_json(djson)
        json_name = str(doc.get("name", ""))
        if "channel_names" in doc or "file_ending" in doc:
            fmt = "nnunetv2"
            cases, raw_labels, ending, channels, notes = _scan_nnunet(root, doc, djson)
        elif "modality" in doc or "training" in doc:
            fmt = "msd"
            cases, raw_labels, ending, channels, notes = _scan_msd(root, doc, djson)
        else:
            raise InputError(djson, "neither nnU-Net v2 (channel_names, file_ending) nor MSD (modality, training)")
    else:
        fmt = "plain"
        cases, raw_labels, ending, channels, notes = _scan_plain(root, Path(labels_file) if labels_file else None,
                                                                 Path(pairs_file) if pairs_file else None)
    ds_name = name or root.resolve().name
    if modality:
        mod = modality
    elif channels:
        mod = _modality_from_channels(channels)
    else:
        mod = _guess_modality(cases[0])
        notes.append(f"modality {mod} guessed from the first image's intensities (pass --modality to set it)")
    context = dataset_context([ds_name, json_name], taxonomy)
    labels, pending = map_labels(raw_labels, taxonomy=taxonomy, context=context, config=config,
                                 overrides=overrides, scorer=scorer)
    return DatasetManifest(name=ds_name, modality=mod, root=root.resolve(), cases=cases, labels=labels,
                           pending=pending, source_format=fmt, file_ending=ending, channels=channels,
                           notes=notes, path=None, taxonomy=taxonomy)


def load_dataset(path: str | Path, taxonomy=None, require_confirmed: bool = True) -> DatasetManifest:
    """A manifest file, or a dataset folder (its saved manifest when present, else scanned now).

    Raises `PromptsegError` listing low-confidence mappings that nobody confirmed yet.
    """
    p = Path(path)
    if p.is_file():
        m = DatasetManifest.load(p, taxonomy)
    elif p.is_dir():
        saved = p / MANIFEST_NAME
        m = DatasetManifest.load(saved, taxonomy) if saved.is_file() else scan_folder(p, taxonomy=taxonomy)
    else:
        raise InputError(p, "dataset folder or manifest not found")
    if require_confirmed:
        m.require_confirmed()
    return m
