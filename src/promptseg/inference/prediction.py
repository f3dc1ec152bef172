"""`Prediction`: what one predicted image is, on the input's grid (label map, per-class masks
packed one bit per voxel, label names, timings, volumes). Kept apart from the code that makes it
(predictor) and the code that writes it (writing), which both depend on it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from ..io.volume import Volume


class PackedMasks(Mapping):
    """Per-class masks on the input grid, stored one bit per class per voxel; unpacked on access."""

    def __init__(self, packed: np.ndarray, names: Sequence[str], like: Volume):
        self._packed = packed  # uint8 [ceil(K/8), X, Y, Z], np.packbits order (first class = MSB)
        self._names = list(names)
        self._like = like

    def __getitem__(self, name: str) -> Volume:
        if name not in self._names:
            raise KeyError(name)
        k = self._names.index(name)
        bits = (self._packed[k // 8] >> (7 - k % 8)) & 1
        return self._like.with_array(bits.astype(np.uint8, copy=False))

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def voxel_count(self, name: str) -> int:
        k = self._names.index(name)
        return int(np.count_nonzero(self._packed[k // 8] & np.uint8(1 << (7 - k % 8))))


@dataclass
class Prediction:
    """A prediction on the input's grid. `masks` may overlap; `label_map` is their merge."""

    label_map: Volume
    masks: Mapping[str, Volume]
    names: dict[int, str]
    timings: dict[str, float] = field(default_factory=dict)
    volumes_ml: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)  # windows run, network grid, precision
    queries: list = field(default_factory=list)  # the resolved prompts (taxonomy.query.Query), in order

    def summary(self, case: str = "") -> str:
        """One line: classes found with volumes, then the time per stage."""
        found = [f"{n} {v:.1f} ml" for n, v in self.volumes_ml.items() if v > 0]
        t = ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items())
        head = f"{case}: " if case else ""
        what = f"{len(found)}/{len(self.volumes_ml)} classes found ({'; '.join(found)})" if found else \
            f"0/{len(self.volumes_ml)} classes found"
        return f"{head}{what} in {sum(self.timings.values()):.2f}s [{t}]"
