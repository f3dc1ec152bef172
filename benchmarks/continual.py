"""Tumour-extension benchmark in miniature (Universal Model journal §5, Tables 10-11).

Step 1 trains a Universal Model (small U-Net, text-driven per-class MLP heads) on organs only
(PhantomC_organs: spleen, kidneys, liver, aorta, pancreas; no tumours). Step 2 extends it with a
liver-tumour dataset only (PhantomA_liver: liver + liver tumour), never reading PhantomC again,
once per strategy: pseudo-label (journal), freeze-backbone (Hermes), lora (MedUniSeg*), and a
naive fine-tune (the forgetting baseline). Every model is scored on the held-out, fully labelled
PhantomTest_full through the real predictor + evaluator: organ Dice before and after step 2
(forgetting) and liver-tumour Dice after.

Run:  .venv/bin/python benchmarks/continual.py --out /tmp/continual_bench
      (about 10-15 min on 2 busy CPU cores with the defaults; --device cuda on a GPU)
Prints one table; writes OUT/results.json and OUT/table.md. Re-running with the same --out reuses
finished runs (the trainer resumes them at their last step) and only re-scores.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ORGANS = ["spleen", "right kidney", "left kidney", "liver", "aorta", "pancreas"]
NEW = "liver tumor"
STRATEGIES = ["naive", "pseudo-label", "freeze-backbone", "lora"]


def mean(values) -> float:
    vals = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def fmt(v: float) -> str:
    return "  -  " if not math.isfinite(v) else f"{v:.3f}"


def training_seconds(run_dir: Path, fallback: float) -> float:
    """Training time from the run's log (so a re-run that finds finished checkpoints, which the
    trainer resumes at their last step, reports the original time)."""
    log = run_dir / "log.jsonl"
    try:
        return float(json.loads(log.read_text().strip().splitlines()[-1])["seconds"])
    except (OSError, ValueError, KeyError, IndexError):
        return fallback


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="continual_bench", help="work folder (data, runs, results)")
    ap.add_argument("--steps-old", type=int, default=300, help="step 1 (organs) training steps")
    ap.add_argument("--steps-new", type=int, default=500, help="step 2 (extension) training steps per strategy")
    ap.add_argument("--lr-old", type=float, default=3e-3)
    ap.add_argument("--lr-new", type=float, default=2e-3)
    ap.add_argument("--n-train", type=int, default=8, help="cases per training dataset")
    ap.add_argument("--n-test", type=int, default=4, help="held-out fully labelled cases")
    ap.add_argument("--patch", type=int, nargs=3, default=[32, 32, 32])
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    ap.add_argument("--pseudo-labels", default="hard", choices=["hard", "soft"])
    # rank 32 (the default for full-size networks) would exceed most widths (8-64) of this miniature
    # U-Net -- not low-rank, and 4x the cost of the convs it adapts; same alpha/rank ratio (2).
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared box)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from promptseg.data.phantoms import make_phantom_datasets
    from promptseg.checkpoint import open_checkpoint
    from promptseg.config import resolve_config
    from promptseg.train.continual import extend
    from promptseg.train.forgetting import score_classes
    from promptseg.train.trainer import train

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    data = make_phantom_datasets(out / "data", seed=args.seed, n_train=(args.n_train, 0, args.n_train, 0),
                                 n_test=args.n_test)
    test = data["PhantomTest_full"]
    train_common = {"batch_size": 2, "patch_size": list(args.patch), "weight_decay": 1e-5,
                    "checkpoint_every": 10**6, "num_threads": args.threads}
    inference = {"window": list(args.patch), "overlap": 0.25, "sw_batch_size": 4, "threads": args.threads}

    # -- step 1: organs only ---------------------------------------------------------------------
    old_cfg = resolve_config({
        "name": "organs", "output": str(out / "step1_organs"), "seed": args.seed,
        "datasets": [str(data["PhantomC_organs"])], "plan": {"name": "universal_ct", "spacing": None},
        "backbone": {"name": "unet", "preset": "small", "widths": list(args.widths)},
        "conditioner": {"name": "universal", "head": "mlp"},
        "train": {**train_common, "steps": args.steps_old, "lr": args.lr_old, "warmup_steps": 20},
        "inference": inference,
    }, out)
    print(f"[step 1] organs only on PhantomC_organs, {args.steps_old} steps")
    t0 = time.time()
    old_ckpt = train(old_cfg, device=args.device, progress=True)
    t_old = training_seconds(out / "step1_organs", time.time() - t0)
    old_model = open_checkpoint(old_ckpt)
    before = score_classes(old_model, test, ORGANS, device=args.device)["classes"]
    print("  organ Dice: " + ", ".join(f"{c} {fmt(before.get(c, math.nan))}" for c in ORGANS))

    # -- step 2: + liver tumour, from the checkpoint alone ---------------------------------------------
    results = {"before": before, "step1_seconds": round(t_old, 1), "args": vars(args), "runs": {}}
    for strategy in args.strategies:
        print(f"[step 2] {strategy}: + liver tumour from PhantomA_liver only, {args.steps_new} steps")
        run = {
            "name": f"extend-{strategy}", "output": str(out / f"step2_{strategy}"), "seed": args.seed,
            "datasets": [str(data["PhantomA_liver"])],
            "train": {**train_common, "steps": args.steps_new, "lr": args.lr_new, "warmup_steps": 10},
            "extend": {"strategy": strategy, "pseudo_labels": args.pseudo_labels,
                       "lora": {"rank": args.lora_rank, "alpha": args.lora_alpha}},
        }
        t0 = time.time()
        ckpt = extend(old_ckpt, run, device=args.device, progress=True, report=False)
        seconds = time.time() - t0
        seconds = training_seconds(out / f"step2_{strategy}", seconds)
        model = open_checkpoint(ckpt)
        # organs asked alone (as before step 1's score: the change is forgetting, nothing else);
        # the tumour asked with the organs, as a user would (it is post-processed inside the liver)
        after = score_classes(model, test, ORGANS, device=args.device)["classes"]
        after[NEW] = score_classes(model, test, ORGANS + [NEW], device=args.device)["classes"][NEW]
        results["runs"][strategy] = {"after": after, "seconds": round(seconds, 1)}
        print("  after: " + ", ".join(f"{c} {fmt(after.get(c, math.nan))}" for c in ORGANS + [NEW]))

    # -- table ---------------------------------------------------------------------------------------
    unseen = [c for c in ORGANS if c != "liver"]  # organs the new dataset does not annotate
    head = ("| strategy | organs before | organs after | change | unseen organs before | unseen organs after "
            "| liver tumour after | step-2 s |")
    lines = [head, "|" + "---|" * 8]
    for strategy, r in results["runs"].items():
        a = r["after"]
        ob, oa = mean([before.get(c, math.nan) for c in ORGANS]), mean([a.get(c, math.nan) for c in ORGANS])
        ub, ua = mean([before.get(c, math.nan) for c in unseen]), mean([a.get(c, math.nan) for c in unseen])
        r.update(organs_before=ob, organs_after=oa, unseen_before=ub, unseen_after=ua, tumour_after=a.get(NEW, math.nan))
        lines.append(f"| {strategy} | {fmt(ob)} | {fmt(oa)} | {oa - ob:+.3f} | {fmt(ub)} | {fmt(ua)} | "
                     f"{fmt(a.get(NEW, math.nan))} | {r['seconds']:.0f} |")
    per_organ = ["", "| organ | before | " + " | ".join(results["runs"]) + " |",
                 "|" + "---|" * (2 + len(results["runs"]))]
    for c in ORGANS + [NEW]:
        per_organ.append(f"| {c} | {fmt(before.get(c, math.nan))} | "
                         + " | ".join(fmt(r['after'].get(c, math.nan)) for r in results["runs"].values()) + " |")
    table = "\n".join(lines + per_organ)
    results["total_seconds"] = round(time.time() - t_all, 1)
    note = (f"Dice on {args.n_test} held-out PhantomTest_full cases; step 1 {args.steps_old} steps "
            f"({t_old:.0f} s), step 2 {args.steps_new} steps per strategy; this invocation took {results['total_seconds']:.0f} s (finished runs are reused).")
    print("\n" + table + "\n" + note)
    for name, text in (("results.json", json.dumps(results, indent=1, default=lambda o: None)),
                       ("table.md", table + "\n\n" + note + "\n")):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
