"""How long the text side costs: model load, encoding the 32 Universal classes, cache hits.

Run: .venv/bin/python benchmarks/text_speed.py [--repeats 5]
Prints seconds; the target is encoding the 32 classes well under 1 s once the model is loaded.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    t0 = time.perf_counter()
    import torch

    from promptseg.taxonomy import UNIVERSAL_CLASSES
    from promptseg.text import DEFAULT_TEMPLATE, MiniLMEncoder, embed_classes

    t_import = time.perf_counter() - t0
    names = list(UNIVERSAL_CLASSES)
    texts = [DEFAULT_TEMPLATE.replace("{}", n) for n in names]

    t0 = time.perf_counter()
    enc = MiniLMEncoder().load()
    t_load = time.perf_counter() - t0

    t0 = time.perf_counter()
    enc.encode(texts)
    t_first = time.perf_counter() - t0
    runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        emb = enc.encode(texts)
        runs.append(time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        embed_classes(names, cache_dir=d)
        t_miss = time.perf_counter() - t0
        hits = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            embed_classes(names, cache_dir=d)
            hits.append(time.perf_counter() - t0)

    print(f"torch threads                      : {torch.get_num_threads()}")
    print(f"import promptseg.text (+torch)     : {t_import:7.3f} s")
    print(f"load MiniLM (transformers + 90 MB) : {t_load:7.3f} s")
    print(f"encode 32 classes, first call      : {t_first:7.3f} s")
    print(f"encode 32 classes, median of {args.repeats}     : {statistics.median(runs):7.3f} s  "
          f"(min {min(runs):.3f})  -> {tuple(emb.shape)}")
    print(f"embed_classes, cache miss          : {t_miss:7.3f} s (encode + identity hash + write)")
    print(f"embed_classes, cache hit (median)  : {statistics.median(hits) * 1000:7.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
