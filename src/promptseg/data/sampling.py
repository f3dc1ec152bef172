"""Training patches from many partially labelled datasets.

Two levels of sampling, as the papers do it:
- which dataset: uniform over datasets (Universal Model) or, as SAT does, every scan weighted
  1/sqrt(N) where N is its dataset's case count, so a dataset is drawn ∝ sqrt(N): a big dataset
  counts for more than a one-scan one without drowning it;
- where in the case: a foreground patch with probability `fg_ratio` (2:1 in the Universal Model),
  centred on a voxel of one annotated class chosen with extra weight on small classes (SAT's
  class balancing), otherwise anywhere.
Augmentation keeps left/right distinguishable: rot90 in the axial plane and an intensity shift,
then (when the run asks for it) data/augment.py's MONAI recipe, which never mirrors the
left-right axis. Every sample carries its modality (Batch.modality), so a batch may mix CT, MR
and PET and conditioners see each sample's own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..io.volume import patient_axis


MAX_FG_POINTS = 20000


@dataclass
class Batch:
    image: torch.Tensor          # [B, C, *patch]
    targets: torch.Tensor        # [B, K, *patch] float 0/1, K = len(classes)
    annotated: torch.Tensor      # bool [B, K]
    modality: list[str]
    datasets: list[str]
    case_ids: list[str]


def dataset_weights(case_counts: Sequence[int], mode: str = "uniform") -> np.ndarray:
    """Probability of drawing each dataset: 'uniform', 'sqrt' or 'proportional' (∝ N cases).

    'sqrt' is SAT's rule: each of a dataset's N scans weighs 1/sqrt(N), so the dataset as a whole
    is drawn ∝ N/sqrt(N) = sqrt(N) (between uniform and proportional).
    """
    counts = np.asarray(case_counts, dtype=np.float64)
    if mode == "uniform":
        w = np.ones_like(counts)
    elif mode == "sqrt":
        w = np.sqrt(np.maximum(counts, 1))
    elif mode == "proportional":
        w = counts.copy()
    else:
        raise ValueError(f"unknown dataset sampling {mode!r}; use uniform, sqrt or proportional")
    return w / w.sum()


class _CaseIndex:
    """Foreground voxel coordinates per class of one case, drawn once (subsampled)."""

    def __init__(self, case, rng: np.random.Generator):
        self.case = case
        self.points: list[np.ndarray] = []
        self.sizes: list[int] = []
        for k in range(case.targets.shape[0]):
            pts = np.argwhere(np.asarray(case.targets[k]) > 0)
            self.sizes.append(len(pts))
            if len(pts) > MAX_FG_POINTS:
                pts = pts[rng.choice(len(pts), MAX_FG_POINTS, replace=False)]
            self.points.append(pts)


class PatchSampler:
    """Draws batches of patches with targets and the annotated-class mask for the masked loss."""

    def __init__(
        self,
        cases: Sequence,
        classes: Sequence[str],
        patch_size: Sequence[int],
        batch_size: int = 2,
        dataset_sampling: str = "uniform",
        fg_ratio: float = 2 / 3,
        rot90_prob: float = 0.1,
        intensity_shift_prob: float = 0.2,
        intensity_shift: float = 0.1,
        seed: int = 0,
        augment=None,
    ):
        if not cases:
            raise ValueError("no training cases")
        self.classes = list(classes)
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        self.patch = tuple(int(p) for p in patch_size)
        self.batch_size = batch_size
        self.fg_ratio = fg_ratio
        self.rot90_prob = rot90_prob
        self.intensity_shift_prob = intensity_shift_prob
        self.intensity_shift = intensity_shift
        self.rng = np.random.default_rng(seed)
        self.seed = int(seed)
        self._position = {id(c): i for i, c in enumerate(cases)}
        self.augment = augment  # data.augment.Augmenter or None
        by_ds: dict[str, list] = {}
        for c in cases:
            by_ds.setdefault(c.dataset, []).append(c)
        self.dataset_names = sorted(by_ds)
        self.by_dataset = [by_ds[d] for d in self.dataset_names]
        self.weights = dataset_weights([len(v) for v in self.by_dataset], dataset_sampling)
        self._index: dict[int, _CaseIndex] = {}

    def _case_index(self, case) -> _CaseIndex:
        key = id(case)
        if key not in self._index:
            # its own stream per case: the index is the same whenever it is built (resume is exact)
            self._index[key] = _CaseIndex(case, np.random.default_rng([self.seed, self._position.get(key, 0)]))
        return self._index[key]

    def _centre(self, case) -> np.ndarray:
        shape = np.array(case.image.shape[1:])
        if self.rng.random() < self.fg_ratio:
            idx = self._case_index(case)
            present = [k for k, p in enumerate(idx.points) if len(p)]
            if present:
                # small classes drawn more often: weight ∝ 1/sqrt(voxels)
                w = np.array([1.0 / math.sqrt(idx.sizes[k]) for k in present])
                k = present[self.rng.choice(len(present), p=w / w.sum())]
                pts = idx.points[k]
                return pts[self.rng.integers(len(pts))]
        return np.array([self.rng.integers(0, s) for s in shape])

    def _crop(self, arr: np.ndarray, centre: np.ndarray, fill: float) -> np.ndarray:
        """[C, *shape] -> [C, *patch] around centre, padded with `fill` outside the volume."""
        out = np.full((arr.shape[0],) + self.patch, fill, dtype=arr.dtype)
        src, dst = [], []
        for ax, (c, p, n) in enumerate(zip(centre, self.patch, arr.shape[1:])):
            start = int(c) - p // 2
            start = min(max(start, min(0, n - p)), max(n - p, 0)) if n >= p else start
            lo, hi = max(start, 0), min(start + p, n)
            src.append(slice(lo, hi))
            dst.append(slice(lo - start, hi - start))
        out[(slice(None), *dst)] = arr[(slice(None), *src)]
        return out

    def reseed(self, seed: int) -> None:
        """A fresh random stream (one per background worker; see data/loader.py)."""
        self.rng = np.random.default_rng(seed)

    def sample_case(self):
        d = self.rng.choice(len(self.by_dataset), p=self.weights)
        pool = self.by_dataset[d]
        return pool[self.rng.integers(len(pool))]

    def sample(self) -> Batch:
        images, targets, annotated, mods, dss, ids = [], [], [], [], [], []
        for _ in range(self.batch_size):
            case = self.sample_case()
            centre = self._centre(case)
            img = self._crop(np.asarray(case.image, dtype=np.float32), centre, float(np.min(case.image)))
            tgt_case = self._crop(np.asarray(case.targets, dtype=np.uint8), centre, 0)
            tgt = np.zeros((len(self.classes),) + self.patch, dtype=np.float32)
            ann = np.zeros(len(self.classes), dtype=bool)
            for j, name in enumerate(case.classes):
                k = self.class_index.get(name)
                if k is not None:
                    tgt[k] = tgt_case[j]
                    ann[k] = True
            img, tgt = self._augment(img, tgt)
            if self.augment is not None:
                self.augment.reseed(int(self.rng.integers(2**31)))
                record = getattr(case, "record", None)
                img, tgt = self.augment(img, tgt, patient_axis(record["network"]["direction"], "right")[0] if record else 0)
            images.append(img)
            targets.append(tgt)
            annotated.append(ann)
            mods.append(case.modality)
            dss.append(case.dataset)
            ids.append(case.id)
        return Batch(
            image=torch.from_numpy(np.stack(images)),
            targets=torch.from_numpy(np.stack(targets)),
            annotated=torch.from_numpy(np.stack(annotated)),
            modality=mods,
            datasets=dss,
            case_ids=ids,
        )

    def _augment(self, img: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.rng.random() < self.rot90_prob and self.patch[0] == self.patch[1]:
            k = int(self.rng.integers(1, 4))
            img = np.ascontiguousarray(np.rot90(img, k, axes=(1, 2)))
            tgt = np.ascontiguousarray(np.rot90(tgt, k, axes=(1, 2)))
        if self.rng.random() < self.intensity_shift_prob:
            img = img + np.float32(self.rng.uniform(-self.intensity_shift, self.intensity_shift) * (img.std() + 1e-6))
        return img, tgt
