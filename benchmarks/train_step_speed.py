"""Seconds per training step of each backbone with the Universal head, on phantom patches (CPU).

One step = forward + masked BCE/Dice + backward + AdamW on a batch of phantom CT patches with
their organ labels (the trainer's inner loop without data loading). Prints median s/step over
`--steps` after 2 warm-up steps, and the machine load (other processes share the cores).

    PYTHONPATH=src python benchmarks/train_step_speed.py --steps 8 --threads 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from promptseg.data.phantoms import make_phantom_datasets
from promptseg.io import read_image, read_label
from promptseg.models.build import build_model
from promptseg.train.losses import masked_bce_dice

BACKBONES = {
    "unet-small": {"name": "unet", "preset": "small"},
    "segresnet-small": {"name": "segresnet", "preset": "small"},
    "segresnet-flare23": {"name": "segresnet", "preset": "flare23"},
}
CLASSES = ["liver", "spleen", "left kidney", "right kidney", "pancreas", "aorta"]


def phantom_batch(folder: Path, batch: int, patch: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` patches centred in the first phantom cases, CT scaled to [0, 1], one-hot organ labels."""
    images, targets = [], []
    for img in sorted((folder / "imagesTr").glob("*_0000.nii.gz"))[:batch]:
        vol = read_image(img)
        lab = read_label(folder / "labelsTr" / img.name.replace("_0000", ""), reference=vol).array
        arr = np.clip((vol.array.astype(np.float32) + 175) / 425, 0, 1)
        lo = [max(0, (s - p) // 2) for s, p in zip(arr.shape, patch)]
        sl = tuple(slice(a, a + p) for a, p in zip(lo, patch))
        images.append(torch.from_numpy(np.ascontiguousarray(arr[sl]))[None])
        targets.append(torch.stack([torch.from_numpy(lab[sl] == v) for v in range(1, len(CLASSES) + 1)]).float())
    return torch.stack(images), torch.stack(targets)


def step_times(backbone: dict, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[float]:
    torch.manual_seed(0)
    model = build_model({"backbone": backbone, "conditioner": {"name": "universal", "head": "mlp"}}, CLASSES,
                        embeddings=torch.randn(len(CLASSES), 384)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    annotated = torch.ones(y.shape[:2], dtype=torch.bool)
    times = []
    for _ in range(steps + 2):
        t = time.perf_counter()
        loss, _ = masked_bce_dice(model(x, CLASSES), y, annotated)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return times[2:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--patch", type=int, nargs=3, default=(64, 64, 48))
    ap.add_argument("--rows", nargs="*", default=list(BACKBONES), choices=list(BACKBONES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_phantom_datasets(Path(tmp), seed=0, n_train=(0, 0, args.batch, 0), n_test=1)
        x, y = phantom_batch(data["PhantomC_organs"], args.batch, tuple(args.patch))
    print(f"batch {tuple(x.shape)}, {args.threads} threads, load before {os.getloadavg()[0]:.2f} (1-min avg, shared machine)")
    for name in args.rows:
        t = step_times(BACKBONES[name], x, y, args.steps)
        print(f"{name:<18} {statistics.median(t):.3f} s/step (median of {len(t)}; min {min(t):.3f}, max {max(t):.3f})"
              f"  load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
