"""`promptseg demo`: the whole pipeline on embedded phantoms, in minutes on a CPU.

Generates partially labelled phantom datasets, trains the default model, predicts held-out fully
labelled phantoms by text prompts, and scores them with `promptseg evaluate`'s own code
(`evaluation.evaluate_folders`), so the Dice the demo prints is the Dice `promptseg evaluate`
reports on the same folders. Overlays show prediction and ground truth in radiological
orientation with a legend (`inference.preview`).
"""
from __future__ import annotations

import json
import math
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import yaml

from ..checkpoint import open_checkpoint
from ..config import resolve_config
from ..data.phantoms import make_phantom_datasets
from ..evaluation import evaluate_folders
from ..evaluation.evaluate import json_safe
from ..inference.predictor import Predictor
from ..inference.preview import write_preview
from ..io import Volume, read_image, read_label
from ..io.atomic import atomic_write
from ..io.formats import DEFAULT_ENDING, case_id, channel_file
from ..io.labeltable import read_label_json
from ..taxonomy import Taxonomy
from ..train.trainer import train


def gt_in_prediction_values(gt: Volume, gt_labels: dict[str, tuple[int, ...]], names: dict[int, str],
                            taxonomy: Taxonomy) -> Volume:
    """The ground truth recoded to the prediction's label values (class by class, through the
    taxonomy), so both rows of an overlay colour a class alike; classes not predicted drop out."""
    value_of = {taxonomy.resolve(n).name: v for v, n in names.items()}
    src = np.asarray(gt.array)
    out = np.zeros(src.shape, dtype=np.uint16)
    for name, values in gt_labels.items():
        v = value_of.get(taxonomy.resolve(name).name)
        if v is not None:
            out[np.isin(src, values)] = v
    return gt.with_array(out)


def scores_from_evaluation(rows: list[dict], class_wise: list[dict]) -> tuple[dict, dict]:
    """(per case {class: Dice}, {class: mean Dice}) from `evaluate_folders`' rows and class table."""
    per_case: dict[str, dict[str, float]] = {}
    for r in rows:
        if "dice" in r:
            per_case.setdefault(r["case"], {})[r["class"]] = float(r["dice"])
    return per_case, {e["class"]: float(e["dice"]["mean"]) for e in class_wise}


def run_demo(out: Path, steps: int | None = None, device: str = "auto", n_test: int = 4,
             threads: int | None = None) -> dict:
    """Phantoms -> training -> prediction by prompt -> `evaluate_folders`; returns metrics.json's content."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(f"[1/4] phantom datasets -> {out / 'data'}")
    folders = make_phantom_datasets(out / "data", seed=0, n_test=n_test)
    raw = yaml.safe_load(resources.files("promptseg.configs").joinpath("demo.yaml").read_text(encoding="utf-8"))
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
    predictor = Predictor(checkpoint, device=device, progress=False, inference={"threads": threads} if threads else None)
    test_dir = folders["PhantomTest_full"]
    gt_labels = read_label_json(test_dir / "dataset.json")
    prompts = list(checkpoint.model.class_names)
    pred_dir, overlay_dir = out / "predictions", out / "overlays"
    for img_path in sorted((test_dir / "imagesTs").glob(channel_file("*"))):
        case = case_id(img_path)
        written = predictor.predict_file(img_path, pred_dir, prompts=prompts)
        image = read_image(img_path)
        names = written["prediction"].names
        gt = read_label(test_dir / "labelsTs" / f"{case}{DEFAULT_ENDING}", reference=image)
        write_preview(overlay_dir / f"{case}.png", image, read_label(written["label_map"]), names,
                      f"{case}: prediction (top) and ground truth (bottom)",
                      reference=gt_in_prediction_values(gt, gt_labels, names, checkpoint.taxonomy))

    print("[4/4] scoring with `promptseg evaluate` (Dice per class on held-out phantoms)")
    evaluation = evaluate_folders(pred_dir, test_dir / "labelsTs", out / "evaluation", progress=False)
    per_case, summary = scores_from_evaluation(evaluation.rows, evaluation.summary["class_wise"])
    for name, value in summary.items():
        n = sum(1 for s in per_case.values() if math.isfinite(s.get(name, math.nan)))
        print(f"  {name:<16} {value:.3f}  (n={n})")
    result = {
        "per_case": per_case,
        "mean_dice": summary,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.time() - t0, 1),
        "checkpoint": str(ckpt),
        "predictions": str(pred_dir),
        "evaluation": str(out / "evaluation"),
        "overlays": str(overlay_dir),
    }
    atomic_write(out / "metrics.json", json.dumps(json_safe(result), indent=1))
    print(f"done in {result['total_seconds']:.0f} s; predictions, overlays, evaluation report and metrics in {out}")
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
