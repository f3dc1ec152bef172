"""The class registry: names, synonyms and anatomy facts, read from YAML data.

Why a registry: datasets name the same structure many ways ("IVC", "inferior_vena_cava",
"postcava"); every stage (label mapping, post-processing, merging, evaluation by region) reads its
facts from here instead of keeping its own table.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable

import yaml

from ..errors import TaxonomyError

KINDS = ("organ", "vessel", "lesion")
LATERALITIES = ("none", "left", "right")


def normalize(name: str) -> str:
    """Case/space/underscore/punctuation-insensitive key: 'Kidney_Left' == 'kidney, left'."""
    s = name.strip().lower()
    s = re.sub(r"[_\-,;:()\[\]\s]+", " ", s)
    return " ".join(s.split())


def _variants(name: str) -> set[str]:
    """A name's keys: itself and, for two-word names, the words swapped ('kidney left' -> 'left kidney')."""
    key = normalize(name)
    words = key.split()
    out = {key}
    if len(words) == 2:
        out.add(f"{words[1]} {words[0]}")
    return out


@dataclass(frozen=True)
class ClassInfo:
    """One segmentable structure."""

    id: int
    name: str
    kind: str = "organ"
    synonyms: tuple[str, ...] = ()
    laterality: str = "none"
    group: str | None = None
    parent: str | None = None
    region: str = "abdomen"
    single_instance: bool = False
    threshold: float = 0.5
    snomed: tuple[str, str] | None = None  # (SNOMED CT code, meaning) for DICOM-SEG / RTSTRUCT

    @property
    def is_lesion(self) -> bool:
        return self.kind == "lesion"


@dataclass
class Taxonomy:
    """All known classes, looked up by any spelling of their name."""

    classes: list[ClassInfo]
    version: str = "1"
    _index: dict[str, ClassInfo] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {}
        ids: set[int] = set()
        for c in self.classes:
            if c.id in ids:
                raise TaxonomyError(f"class id {c.id} ({c.name!r}) is used twice")
            ids.add(c.id)
            for spelling in (c.name, *c.synonyms):
                for key in _variants(spelling):
                    other = self._index.get(key)
                    if other is not None and other.name != c.name:
                        raise TaxonomyError(
                            f"name {spelling!r} of {c.name!r} is already a name of {other.name!r}"
                        )
                    self._index[key] = c

    # --- lookups -------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def get(self, name: str) -> ClassInfo | None:
        """The class for any spelling of its name, or None."""
        for key in _variants(name):
            if key in self._index:
                return self._index[key]
        return None

    def resolve(self, name: str) -> ClassInfo:
        """The class for `name`; an unknown name raises with the three closest known names."""
        info = self.get(name)
        if info is None:
            close = self.closest(name, 3)
            raise TaxonomyError(
                f"unknown class {name!r}; closest known: {', '.join(repr(c) for c in close)}"
            )
        return info

    def closest(self, name: str, n: int = 3, among: Iterable[str] | None = None) -> list[str]:
        """The `n` canonical names nearest `name` in spelling (synonyms count)."""
        pool = list(among) if among is not None else self.names
        allowed = {normalize(p) for p in pool}
        keys = [k for k, c in self._index.items() if normalize(c.name) in allowed]
        ranked = difflib.get_close_matches(normalize(name), keys, n=len(keys), cutoff=0.0)
        out: list[str] = []
        for k in ranked:
            cname = self._index[k].name
            if cname not in out:
                out.append(cname)
            if len(out) == n:
                break
        return out

    def by_id(self, class_id: int) -> ClassInfo:
        for c in self.classes:
            if c.id == class_id:
                return c
        raise TaxonomyError(f"no class with id {class_id}")

    def group_members(self, group: str) -> dict[str, ClassInfo]:
        """Laterality -> class for a paired organ: group_members('kidney')['left']."""
        g = normalize(group)
        return {c.laterality: c for c in self.classes if c.group and normalize(c.group) == g}

    def is_group(self, name: str) -> bool:
        return bool(self.group_members(name))

    def parent_classes(self, info: ClassInfo | str) -> list[ClassInfo]:
        """Classes whose mask contains this one (a group parent gives both sides)."""
        c = self.resolve(info) if isinstance(info, str) else info
        if not c.parent:
            return []
        members = self.group_members(c.parent)
        if members:
            return [members[k] for k in sorted(members)]
        return [self.resolve(c.parent)]

    def children(self, info: ClassInfo | str) -> list[ClassInfo]:
        """Lesions/vessels whose voxels also count as this class."""
        c = self.resolve(info) if isinstance(info, str) else info
        return [o for o in self.classes if c in self.parent_classes(o)]

    @property
    def regions(self) -> list[str]:
        return sorted({c.region for c in self.classes})

    def extended(self, extra: list[ClassInfo]) -> "Taxonomy":
        """A new registry with `extra` classes added (ids and names must be new)."""
        return Taxonomy(self.classes + list(extra), version=f"{self.version}+{len(extra)}")


def _parse(doc: dict, source: str) -> tuple[list[ClassInfo], str]:
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), list):
        raise TaxonomyError(f"{source}: expected a mapping with a 'classes' list")
    out = []
    for i, raw in enumerate(doc["classes"]):
        if not isinstance(raw, dict) or "id" not in raw or "name" not in raw:
            raise TaxonomyError(f"{source}: class #{i + 1} needs at least 'id' and 'name'")
        raw = dict(raw)
        raw["synonyms"] = tuple(raw.get("synonyms") or ())
        if raw.get("snomed") is not None:
            raw["snomed"] = tuple(str(v) for v in raw["snomed"])
        kind = raw.get("kind", "organ")
        lat = raw.get("laterality", "none")
        if kind not in KINDS:
            raise TaxonomyError(f"{source}: class {raw['name']!r} has kind {kind!r}; use one of {KINDS}")
        if lat not in LATERALITIES:
            raise TaxonomyError(f"{source}: class {raw['name']!r} has laterality {lat!r}")
        if "threshold" in raw:  # a probability cut-off; 0 or 1 would make every mask all or nothing
            t = raw["threshold"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < float(t) < 1.0:
                raise TaxonomyError(f"{source}: class {raw['name']!r} has threshold {t!r}; "
                                    "use a probability strictly between 0 and 1")
            raw["threshold"] = float(t)
        unknown = set(raw) - set(ClassInfo.__dataclass_fields__)
        if unknown:
            raise TaxonomyError(f"{source}: class {raw['name']!r} has unknown fields {sorted(unknown)}")
        out.append(ClassInfo(**raw))
    return out, str(doc.get("version", "1"))


def read_classes_file(path: str | Path) -> list[ClassInfo]:
    """Classes from a user's YAML/JSON file with the same layout as the packaged one."""
    p = Path(path)
    if not p.is_file():
        raise TaxonomyError(f"{p}: taxonomy file not found")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TaxonomyError(f"{p}: not valid YAML/JSON ({str(exc).splitlines()[0]})") from None
    return _parse(doc, str(p))[0]


@lru_cache(maxsize=1)
def _packaged() -> Taxonomy:
    text = resources.files("promptseg.taxonomy").joinpath("classes.yaml").read_text(encoding="utf-8")
    classes, version = _parse(yaml.safe_load(text), "classes.yaml")
    return Taxonomy(classes, version=version)


def load_taxonomy(extra: str | Path | None = None) -> Taxonomy:
    """The packaged registry, plus the classes of a user's file when given."""
    base = _packaged()
    if extra is None:
        return base
    return base.extended(read_classes_file(extra))


def default_taxonomy() -> Taxonomy:
    return _packaged()


def resolve(name: str) -> ClassInfo:
    """Resolve a class name in the packaged registry."""
    return _packaged().resolve(name)


UNIVERSAL_CLASSES: tuple[str, ...] = tuple(c.name for c in _packaged().classes if c.id <= 32)
