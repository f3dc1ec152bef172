"""`Prediction`: what one predicted image is, on the input's grid (label map, per-class masks
packed one bit per voxel, label names, timings, volumes). Kept apart from the code that makes it
(predictor) and the code that writes it (writing), which both depend on it.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from ..io.volume import Volume


class PackedMasks(Mapping):
    """Per-class masks on the input grid, stored one bit per class per voxel; unpacked on access.

    A mask comes out in Fortran order (x fastest), the layout of NIfTI and of SimpleITK's buffer,
    so writing it copies nothing: each byte of 8 classes is transposed once, on first access
    (writing 32 masks of a 512x512x224 CT: 4 transposes instead of 32, ~10 s less on 2 cores).
    """

    def __init__(self, packed: np.ndarray, names: Sequence[str], like: Volume):
        self._packed = packed  # uint8 [ceil(K/8), X, Y, Z], np.packbits order (first class = MSB)
        self._names = list(names)
        self._like = like
        self._fortran: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _plane(self, j: int) -> np.ndarray:
        """Byte plane j (8 classes) in Fortran order, made once (masks are written from threads)."""
        with self._lock:
            if j not in self._fortran:
                self._fortran[j] = np.ascontiguousarray(self._packed[j].transpose(2, 1, 0)).transpose(2, 1, 0)
            return self._fortran[j]

    def __getitem__(self, name: str) -> Volume:
        if name not in self._names:
            raise KeyError(name)
        k = self._names.index(name)
        bits = (self._plane(k // 8) >> np.uint8(7 - k % 8)) & np.uint8(1)  # keeps the Fortran layout
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
