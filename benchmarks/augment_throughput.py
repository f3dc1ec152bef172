"""Patches per second of sampling + augmentation, in the loop and in N background workers.

Run: .venv/bin/python benchmarks/augment_throughput.py [--workers 1 2 4] [--batches 20] [--patch 96 96 96]
Uses the real sarcoma patients (../shared/data/sts_sarcoma, CT/MR/PET, cached once in a temporary
folder with each modality's plan) and data/augment.py's full recipe. Prints one line per worker
count: patches/s (batches x batch size / wall seconds, after one warm-up batch).
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "sts_sarcoma"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--patch", type=int, nargs=3, default=[96, 96, 96])
    ap.add_argument("--cases", type=int, default=4, help="patients per modality")
    args = ap.parse_args()

    import torch

    from promptseg.data.augment import build_augmenter
    from promptseg.data.cache import prepare_datasets
    from promptseg.data.loader import batch_stream
    from promptseg.data.patterns import datasets_from_entry
    from promptseg.data.sampling import PatchSampler

    torch.set_num_threads(1)
    ds = datasets_from_entry({"path": str(args.data), "name": "sts", "image": "{case}/{modality}_image.nii.gz",
                              "label": "{case}/{modality}_mask.nii.gz", "labels": {1: "soft tissue sarcoma"},
                              "modalities": {"CT": "CT", "MR": "MR_T1", "PET": "PET"}})
    for d in ds:
        d.cases = d.cases[: args.cases]
    with tempfile.TemporaryDirectory() as tmp:
        from promptseg.preprocess import modality_plans

        cases = prepare_datasets(ds, modality_plans(), Path(tmp), progress=False)
        print(f"{len(cases)} cases (CT/MR/PET), patch {tuple(args.patch)}, batch {args.batch_size}, full MONAI recipe")
        for w in args.workers:
            sampler = PatchSampler(cases, ["soft tissue sarcoma"], args.patch, batch_size=args.batch_size, seed=0,
                                   augment=build_augmenter(True))
            stream = batch_stream(sampler, workers=w, seed=0)
            next(stream)  # warm-up: worker start, first imports
            t0 = time.perf_counter()
            for _ in itertools.islice(stream, args.batches):
                pass
            dt = time.perf_counter() - t0
            where = "in the loop" if w == 0 else f"{w} worker(s)"
            print(f"{where:>14}: {args.batches * args.batch_size / dt:7.2f} patches/s")
            del stream
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
