"""Learning real anatomy from partial labels (issue 3): figures, not a timed test.

Trains on ../shared/data/ct_abdomen_small with its labels split into three partially labelled
datasets -- liver+spleen / both kidneys / pancreas+stomach+aorta+postcava -- at the scan's own
3 mm (plan universal_ct with spacing null), through `promptseg train`; then predicts the same scan
through `promptseg predict`'s code path and prints Dice per class. Bar: Dice >= 0.85 for liver,
spleen and both kidneys. The split and the run YAML are the real-CT suite's of
`promptseg bench compare` (promptseg/workflows/bench.py, configs/bench.yaml): one copy of each.

Run:  .venv/bin/python benchmarks/learn_real_ct.py --out /tmp/learn_real_ct --threads 1
Exit status 0 when the bar is met, 1 when not. tests/integration/test_learn_real_ct.py runs a
shorter version with a lower bar.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

BAR_CLASSES = ["liver", "spleen", "right kidney", "left kidney"]


def main(argv: list[str] | None = None) -> int:
    from promptseg.workflows.bench import json_safe, learn_real_ct, method_names, suite_settings
    from promptseg.io.atomic import atomic_write
    from promptseg.errors import PromptsegError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="learn_real_ct_out", help="work folder (datasets, run, predictions)")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"training steps (default: {suite_settings('real-ct')['train']['steps']})")
    ap.add_argument("--method", default="universal", choices=method_names())
    ap.add_argument("--bar", type=float, default=0.85, help="Dice each of liver, spleen, both kidneys must reach")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--data", default=None, help="folder of the real scans (default: ../shared/data beside the clone)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or int(suite_settings("real-ct")["train"]["steps"])
    t0 = time.time()
    try:
        r = learn_real_ct(args.out, steps=steps, method=args.method, device=args.device, data_dir=args.data,
                          progress=not args.quiet)
    except PromptsegError as exc:
        print(f"learn_real_ct: error: {exc}", file=sys.stderr)
        return 2
    minutes = (time.time() - t0) / 60.0
    load = os.getloadavg()
    ok = all(r.dice.get(c, math.nan) >= args.bar for c in BAR_CLASSES)

    print(f"\nlearn_real_ct: {args.method}, {r.steps} steps, ct_abdomen_small -> the same scan (3 mm)")
    print(f"{'class':<14} {'Dice':>6}  bar")
    for name, d in r.dice.items():
        bar = f">= {args.bar:.2f} {'ok' if d >= args.bar else 'MISSED'}" if name in BAR_CLASSES else ""
        print(f"{name:<14} {d:6.3f}  {bar}")
    print(f"{'mean':<14} {r.mean_dice:6.3f}")
    print(f"minutes: {minutes:.1f} in all, {r.train_minutes:.1f} training ({r.seconds_per_step:.2f} s/step); "
          f"predict {r.seconds_per_volume:.1f} s/volume; params {r.params / 1e6:.2f} M; "
          f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} on {os.cpu_count()} CPUs")
    print("bar met" if ok else "bar NOT met")
    out = Path(args.out).resolve() / "learn_real_ct.json"
    doc = {**asdict(r), "mean_dice": r.mean_dice, "minutes": minutes, "bar": args.bar, "bar_met": ok,
           "load_average": load}
    atomic_write(out, json.dumps(json_safe(doc), indent=1, default=str) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
