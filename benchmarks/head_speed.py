"""The Universal Model's per-class head on one window batch: eager batched matmuls in chunks (what
`predict` runs by default below `inference.fused_head`'s threshold) against the compiled
elementwise head (models/conditioners/dynamic_head.py), same inputs.

Run:  .venv/bin/python benchmarks/head_speed.py [--window 96] [--classes 32] [--batch 2] [--repeats 3]
Printed: compile seconds (first call; ~4 s once inductor's disk cache holds the kernel), seconds
per window batch for each form, and the largest |difference| of their logits.
"""
from __future__ import annotations

import argparse
import time

import torch

from promptseg.models.conditioners.dynamic_head import chunk_voxels, chunked_head, compiled_head, per_sample
from promptseg.models.conditioners.universal import dynamic_param_sizes
from promptseg.runtime import kept_heap


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=int, default=96)
    ap.add_argument("--classes", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--chunk", type=int, default=131072, help="class-voxels per eager chunk (inference.head_chunk)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    wn, bn = dynamic_param_sizes(8, 3)
    v = args.window ** 3
    feats = torch.randn(args.batch, 8, v)
    params = torch.randn(args.batch, args.classes, sum(wn) + sum(bn)) * 0.3
    chunk = chunk_voxels(args.chunk, args.classes)
    head = compiled_head(wn, bn, 8)

    def eager():
        return chunked_head(feats, params, wn, bn, 8, chunk)

    def fused():
        return per_sample(head, feats, params)

    print(f"window {args.window}^3, batch {args.batch}, {args.classes} classes, {torch.get_num_threads()} threads")
    with torch.inference_mode(), kept_heap():
        t0 = time.perf_counter()
        got = fused()
        print(f"compile + first call: {time.perf_counter() - t0:.1f} s")
        ref = eager()
        print(f"max |compiled - eager| = {(got - ref).abs().max().item():.2e}")
        for name, fn in (("eager (chunked baddbmm)", eager), ("compiled (fused)", fused)):
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            print(f"{name:26s} " + " ".join(f"{t:.3f}" for t in times) + f"  s per window batch (best {min(times):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
