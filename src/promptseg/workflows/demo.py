"""`promptseg demo`: the whole pipeline on embedded phantoms, in minutes on a CPU.

Generates partially labelled phantom datasets, trains the default model, predicts held-out fully
labelled phantoms by text prompts, and writes masks, a PNG overlay and a metrics JSON.
"""
from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import yaml

from ..io.atomic import atomic_write
from ..io.formats import DEFAULT_ENDING, case_id, channel_file
from ..io.labeltable import read_label_json


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    from ..evaluation.metrics import dice

    return float(dice(pred, gt))


def run_demo(out: Path, steps: int | None = None, device: str = "auto", n_test: int = 4,
             threads: int | None = None) -> dict:
    from ..data.phantoms import make_phantom_datasets
    from ..inference.predictor import Predictor
    from ..inference.preview import write_preview
    from ..io import read_image, read_label
    from ..taxonomy import default_taxonomy
    from ..checkpoint import open_checkpoint
    from ..config import resolve_config
    from ..train.trainer import train

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(f"[1/4] phantom datasets -> {out / 'data'}")
    folders = make_phantom_datasets(out / "data", seed=0, n_test=n_test)
    raw = yaml.safe_load(resources.files("promptseg.configs").joinpath("demo.yaml").read_text())
    if steps is not None:
        raw["train"]["steps"] = steps
    atomic_write(out / "demo.yaml", yaml.safe_dump(raw, sort_keys=False))
    config = resolve_config(raw, out)
    print(f"[2/4] training ({config['train']['steps']} steps on {', '.join(Path(d['path']).name for d in config['datasets'])})")
    t1 = time.time()
    ckpt = train(config, device=device)
    train_s = time.time() - t1

    print("[3/4] predicting held-out phantoms by text prompt")
    checkpoint = open_checkpoint(ckpt, device="cpu")
    model = checkpoint.model
    predictor = Predictor(checkpoint, device=device, progress=False, inference={"threads": threads} if threads else None)
    test_dir = folders["PhantomTest_full"]
    value_to_name = {v: k for k, vals in read_label_json(test_dir / "dataset.json").items() for v in vals}
    tax = default_taxonomy()
    prompts = [n for n in model.class_names]
    pred_dir = out / "predictions"
    per_case: dict[str, dict[str, float]] = {}
    images = sorted((test_dir / "imagesTs").glob(channel_file("*")))
    for img_path in images:
        case = case_id(img_path)
        written = predictor.predict_file(img_path, pred_dir, prompts=prompts)
        image = read_image(img_path)
        gt = read_label(test_dir / "labelsTs" / f"{case}{DEFAULT_ENDING}", reference=image).array
        merged = read_label(written["label_map"])
        scores = {}
        for name in prompts:
            info = tax.resolve(name)
            values = [v for v, n in value_to_name.items() if tax.resolve(n).name == name
                      or info in tax.parent_classes(tax.resolve(n))]
            gt_mask = np.isin(gt, values)
            mask_path = written["masks"].get(name)
            pred_mask = read_label(mask_path).array > 0 if mask_path else np.zeros_like(gt_mask)
            scores[name] = _dice(pred_mask, gt_mask) if gt_mask.any() or pred_mask.any() else float("nan")
        per_case[case] = scores
        write_preview(pred_dir / f"{case}_overlay.png", image, merged, written["prediction"].names, f"{case}: prediction")

    print("[4/4] Dice per class on held-out phantoms")
    summary = {}
    for name in prompts:
        vals = [s[name] for s in per_case.values() if not np.isnan(s[name])]
        summary[name] = float(np.mean(vals)) if vals else float("nan")
        print(f"  {name:<16} {summary[name]:.3f}  (n={len(vals)})")
    result = {
        "per_case": per_case,
        "mean_dice": summary,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.time() - t0, 1),
        "checkpoint": str(ckpt),
        "predictions": str(pred_dir),
    }
    atomic_write(out / "metrics.json", json.dumps(result, indent=1))
    print(f"done in {result['total_seconds']:.0f} s; masks, overlays and metrics in {out}")
    return result


def _demo(args) -> int:
    if args.threads is not None:
        torch.set_num_threads(int(args.threads))  # training too, not only prediction
    run_demo(Path(args.out), steps=args.steps, device=args.device, threads=args.threads)
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="train on phantoms and segment held-out phantoms by text prompt")
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--steps", type=int, default=None, help="training steps (default from the demo config)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: OMP_NUM_THREADS when set, else the cores this process may use)")
    p.set_defaults(func=_demo)
