"""The small records a dataset manifest is made of (a case, a label value's meaning, a proposal).

Why a module of their own: `manifest`, `mapping` and `labels` all need them; keeping them here,
importing nothing of the package, lets those three import each other in one direction only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Case:
    """One training case: one image file per channel (or one 4D file) and its label map."""

    id: str
    images: list[Path]
    label: Path | None = None


@dataclass
class LabelMapping:
    """A dataset label value and the taxonomy class it means.

    `target` is a canonical class name, a paired-organ group name ("kidney": split into left and
    right by the midline), or None (ignored: voxels count as background for every class).
    `source` says why: "synonym", "synonym (context: liver cancer)", "embedding 0.83", "user",
    "unmapped", "background", "ignore". `values` lists all label values of an nnU-Net region
    (several values forming one class); for a plain label it is empty and `value` is the value.
    """

    value: int
    name: str
    target: str | None
    source: str
    values: list[int] = field(default_factory=list)

    @property
    def all_values(self) -> list[int]:
        return list(self.values) if self.values else [int(self.value)]


@dataclass
class PendingMapping:
    """A low-confidence proposal the user must confirm (or edit) before the dataset is used."""

    value: int
    name: str
    proposal: str | None
    candidates: list[tuple[str, float]] = field(default_factory=list)
    reason: str = ""
    values: list[int] = field(default_factory=list)
    confirm: bool = False

    @property
    def all_values(self) -> list[int]:
        return list(self.values) if self.values else [int(self.value)]

    def describe(self) -> str:
        cands = ", ".join(f"{c} {s:.2f}" for c, s in self.candidates[:3])
        prop = "ignore" if self.proposal is None else repr(self.proposal)
        return f"value {self.value} {self.name!r} -> {prop}? ({self.reason}; candidates: {cands})"


