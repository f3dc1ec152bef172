"""`Record`: everything needed to map between the original grid and the preprocessed one.

It travels with the tensor (and into JSON next to cached cases), so an output made in network
space can always be put back on the input's exact grid, or written in network space itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..io.volume import Volume
from .geometry import Grid, crop_grid

RECORD_VERSION = 1


@dataclass(frozen=True)
class Record:
    """original --reorient(perm, flip)--> oriented --resample--> resampled --crop[lo:hi]--> network."""

    original: Grid
    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    oriented: Grid
    resampled: Grid
    crop_lo: tuple[int, int, int]
    crop_hi: tuple[int, int, int]
    network: Grid
    plan: dict[str, Any] = field(default_factory=dict)
    intensity: dict[str, float] = field(default_factory=dict)
    source: str | None = None

    def cropped(self, lo, hi) -> "Record":
        """This record with one more crop, [lo, hi) of its network grid (e.g. the body's box at
        inference). The crops compose into one, so `invert` and everything reading `crop_lo` undo
        both with no extra bookkeeping."""
        lo = tuple(int(a) + int(b) for a, b in zip(self.crop_lo, lo))
        hi = tuple(int(a) + int(b) for a, b in zip(self.crop_lo, hi))
        return replace(self, crop_lo=lo, crop_hi=hi, network=crop_grid(self.resampled, lo, hi))

    def network_volume(self, array, path=None) -> Volume:
        """A network-space array ([X,Y,Z] or [C,X,Y,Z]) as a Volume on the preprocessed grid."""
        return self.network.volume(array, path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "original": self.original.to_dict(),
            "perm": list(self.perm),
            "flip": list(self.flip),
            "oriented": self.oriented.to_dict(),
            "resampled": self.resampled.to_dict(),
            "crop_lo": list(self.crop_lo),
            "crop_hi": list(self.crop_hi),
            "network": self.network.to_dict(),
            "plan": self.plan,
            "intensity": {k: float(v) for k, v in self.intensity.items()},
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        from ..errors import InputError

        if d.get("version", RECORD_VERSION) != RECORD_VERSION:
            raise InputError(None, f"preprocessing record version {d.get('version')} is not supported "
                                   f"(expected {RECORD_VERSION})")
        return cls(
            original=Grid.from_dict(d["original"]),
            perm=tuple(int(p) for p in d["perm"]),
            flip=tuple(bool(f) for f in d["flip"]),
            oriented=Grid.from_dict(d["oriented"]),
            resampled=Grid.from_dict(d["resampled"]),
            crop_lo=tuple(int(v) for v in d["crop_lo"]),
            crop_hi=tuple(int(v) for v in d["crop_hi"]),
            network=Grid.from_dict(d["network"]),
            plan=dict(d.get("plan") or {}),
            intensity={k: float(v) for k, v in (d.get("intensity") or {}).items()},
            source=d.get("source"),
        )
