"""Seconds and peak memory of one SAT-Nano / SAT-Pro window (288x288x96, the authors' crop) with the
published layout and seeded random weights, on a real CT window: `python benchmarks/sat_official_window.py
[--device cuda] [--queries 8] [--variants nano pro]`. Prints one line per variant."""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from promptseg.models.official_sat import OfficialSAT, random_sat_state_dict, sat_to_native

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct_abdomen_pelvis" / "image.nii.gz"


def ct_window(path: Path, crop=(288, 288, 96)) -> torch.Tensor:
    """The scan clipped and z-scored as the authors do, zero-padded at the high end to the crop."""
    img = np.clip(nib.load(str(path)).get_fdata(), -500, 1000)
    img = (img - img.mean()) / img.std()
    out = np.zeros(crop, np.float32)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(img.shape, crop))
    out[sl] = img[sl]
    return torch.from_numpy(out)[None, None]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--variants", nargs="+", default=["nano", "pro"])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device(args.device)
    if args.data.is_file():
        image = ct_window(args.data).to(dev)
    else:  # timing does not depend on content; say which input was used
        print(f"{args.data} not found: timing a seeded random window instead")
        image = torch.randn(1, 1, 288, 288, 96, generator=torch.Generator().manual_seed(0)).to(dev)
    queries = torch.randn(args.queries, 768, generator=torch.Generator().manual_seed(0)).to(dev)
    for variant in args.variants:
        model = OfficialSAT(variant)
        model.load_state_dict(sat_to_native(random_sat_state_dict(variant), model), strict=False)
        model = model.to(dev).eval()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        with torch.inference_mode():
            for _ in range(args.repeat):
                t = time.perf_counter()
                out = model.forward_embeddings(image, queries)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
        mem = (torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
        print(f"SAT-{variant} {args.device}: window {list(image.shape[2:])}, {args.queries} queries, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, best {min(times):.3f} s "
              f"(first {times[0]:.3f} s), peak {'GPU' if dev.type == 'cuda' else 'RSS'} {mem:.2f} GiB, "
              f"logit std {out.float().std().item():.3f}")
        del model


if __name__ == "__main__":
    main()
