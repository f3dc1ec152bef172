"""`promptseg demo`: the whole pipeline on embedded phantoms, in minutes on a CPU.

Generates partially labelled phantom datasets, trains the default model, predicts held-out fully
labelled phantoms by text prompts, and writes masks, a PNG overlay and a metrics JSON.
"""
from __future__ import annotations

import json
import os
import time
from importlib import resources
from pathlib import Path

import numpy as np
import yaml


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    from .evaluation.metrics import dice

    return float(dice(pred, gt))


def _overlay_png(image: np.ndarray, label: np.ndarray, path: Path, title: str) -> None:
    """Three orthogonal slices through the image with the merged label map overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centre = [int(np.mean(ix)) if len(ix) else s // 2 for ix, s in zip(np.nonzero(label), label.shape)]
    views = [
        (image[:, :, centre[2]], label[:, :, centre[2]], "axial"),
        (image[:, centre[1], :], label[:, centre[1], :], "coronal"),
        (image[centre[0], :, :], label[centre[0], :, :], "sagittal"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (img, lab, name) in zip(axes, views):
        ax.imshow(np.rot90(img), cmap="gray", vmin=-175, vmax=250)
        masked = np.ma.masked_where(np.rot90(lab) == 0, np.rot90(lab))
        ax.imshow(masked, cmap="tab20", alpha=0.5, interpolation="nearest", vmin=0, vmax=32)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def run_demo(out: Path, steps: int | None = None, device: str = "auto", n_test: int = 4) -> dict:
    from .data.phantoms import make_phantom_datasets
    from .inference.predictor import Predictor
    from .io import read_image, read_label
    from .taxonomy import default_taxonomy
    from .checkpoint import open_checkpoint
    from .config import resolve_config
    from .train.trainer import train

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(f"[1/4] phantom datasets -> {out / 'data'}")
    folders = make_phantom_datasets(out / "data", seed=0, n_test=n_test)
    raw = yaml.safe_load(resources.files("promptseg.configs").joinpath("demo.yaml").read_text())
    if steps is not None:
        raw["train"]["steps"] = steps
    (out / "demo.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    config = resolve_config(raw, out)
    print(f"[2/4] training ({config['train']['steps']} steps on {', '.join(Path(d['path']).name for d in config['datasets'])})")
    t1 = time.time()
    ckpt = train(config, device=device)
    train_s = time.time() - t1

    print("[3/4] predicting held-out phantoms by text prompt")
    checkpoint = open_checkpoint(ckpt, device="cpu")
    model = checkpoint.model
    predictor = Predictor(checkpoint, device=device, progress=False)
    test_dir = folders["PhantomTest_full"]
    spec = json.loads((test_dir / "dataset.json").read_text())
    value_to_name = {int(v): k for k, v in spec["labels"].items() if int(v) != 0}
    tax = default_taxonomy()
    prompts = [n for n in model.class_names]
    pred_dir = out / "predictions"
    per_case: dict[str, dict[str, float]] = {}
    images = sorted((test_dir / "imagesTs").glob("*_0000.nii.gz"))
    for img_path in images:
        case = img_path.name[: -len("_0000.nii.gz")]
        written = predictor.predict_file(img_path, pred_dir, prompts=prompts)
        image = read_image(img_path)
        gt = read_label(test_dir / "labelsTs" / f"{case}.nii.gz", reference=image).array
        merged = read_label(written["label_map"]).array
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
        _overlay_png(image.array, merged, pred_dir / f"{case}_overlay.png", f"{case}: prediction")

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
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out / "metrics.json")
    print(f"done in {result['total_seconds']:.0f} s; masks, overlays and metrics in {out}")
    return result


def _demo(args) -> int:
    run_demo(Path(args.out), steps=args.steps, device=args.device)
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="train on phantoms and segment held-out phantoms by text prompt")
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--steps", type=int, default=None, help="training steps (default from the demo config)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_demo)
