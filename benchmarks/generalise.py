"""Does a model segment patients it never saw? Dice per modality and class on held-out sarcoma patients.

Predicts each held-out patient's CT, MR-T1 and PET of ../shared/data/sts_sarcoma (the patients of
the checkpoint's `validation.test`, else its `validation.holdout`, or `--patients`) through the predictor (input grid, the
modality's own plan, post-processing as `promptseg predict`) and prints a table: Dice of the
tumour per modality, mean and min over patients. Several checkpoints (`--model NAME=PATH`, e.g.
one per conditioner) give one column each; `--per-patient` adds each patient's Dice and
predicted / true tumour volume (over 1: drawn too large), where one hard patient shows itself.

Run:  .venv/bin/python benchmarks/generalise.py --model universal=runs/multimodal/best
      .venv/bin/python benchmarks/generalise.py --model universal=runs/u/best --model hermes=runs/h/best
      .venv/bin/python benchmarks/generalise.py --model universal=runs/multimodal/best --mirror
      .venv/bin/python benchmarks/generalise.py --model universal=runs/multimodal/model --per-patient
A figure printed as "-" means the model does not know that class.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

MODALITY_FILES = {"CT": "CT", "MR": "MR_T1", "PET": "PET"}
CLASS = "soft tissue sarcoma"


def held_out(ckpt, given: list[str] | None) -> list[str]:
    """Patients to score: `--patients`, else the run's test patients (never trained or validated
    on), else its patient-wise validation hold-out (then they also chose the best checkpoint)."""
    if given:
        return given
    v = ckpt.config.get("validation") or {}
    patients = v.get("test") or v.get("holdout") or []
    if not patients:
        sys.exit(f"{ckpt.path}: the run held out no patients by id; give --patients STS_xxx ...")
    return list(patients)


def score(ckpt, data: Path, patients: list[str], threads: int,
          mirror: bool = False) -> dict[str, list[tuple[str, float, float]]]:
    """Modality -> (patient, tumour Dice, predicted / true volume) of each held-out patient that
    has that modality (`mirror`: test-time mirroring, `inference.mirror`)."""
    from promptseg.evaluation.metrics import dice
    from promptseg.inference.api import predict_image
    from promptseg.io.readers import read_image, read_label

    out: dict[str, list[tuple[str, float, float]]] = {m: [] for m in MODALITY_FILES}
    if CLASS not in ckpt.classes:
        return out
    for p in patients:
        for mod, stem in MODALITY_FILES.items():
            image, mask = data / p / f"{stem}_image.nii.gz", data / p / f"{stem}_mask.nii.gz"
            if not image.is_file():
                continue
            pred = predict_image(str(image), ckpt, [CLASS], modality=mod,
                                 inference={"threads": threads, "mirror": mirror})
            gt = read_label(mask, reference=read_image(image)).array > 0
            drawn = pred.masks[CLASS].array > 0
            ratio = float(drawn.sum() / gt.sum()) if gt.any() else math.nan
            out[mod].append((p, dice(drawn, gt, empty_score=math.nan), ratio))
    return out


def main(argv: list[str] | None = None) -> int:
    from promptseg.checkpoint import open_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                    help="checkpoint (folder or run folder); repeat for one column per model / conditioner")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                    help="folder holding sts_sarcoma (default: ../shared/data beside the clone)")
    ap.add_argument("--patients", nargs="+", default=None, help="patients to score (default: the run's hold-out)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--per-patient", action="store_true",
                    help="also print each patient's Dice and predicted / true tumour volume")
    ap.add_argument("--mirror", action="store_true",
                    help="also score each model with test-time mirroring (inference.mirror): a NAME+mirror column")
    args = ap.parse_args(argv)
    data = Path(args.data) / "sts_sarcoma"
    if not data.is_dir():
        sys.exit(f"{data}: not found (give --data DIR holding sts_sarcoma)")
    columns = {}
    for spec in args.model:
        name, _, path = spec.rpartition("=")
        ckpt = open_checkpoint(path)
        name = name or ckpt.config.get("conditioner", {}).get("name", path)
        patients = held_out(ckpt, args.patients)
        columns[name] = (score(ckpt, data, patients, args.threads), patients, ckpt.step)
        if args.mirror:
            columns[f"{name}+mirror"] = (score(ckpt, data, patients, args.threads, mirror=True), patients, ckpt.step)
    print(f"\ngeneralise: '{CLASS}' Dice on held-out sarcoma patients (input grid, predictor path)")
    for name, (_, patients, step) in columns.items():
        print(f"  {name}: step {step}, patients {', '.join(patients)}")
    width = {n: max(16, len(n) + 7) for n in columns}
    head = f"{'modality':<9}{'class':<22}" + "".join(f"{n + ' mean':>{width[n]}}{'min':>7}{'n':>4}" for n in columns)
    print(head + "\n" + "-" * len(head))
    for mod in MODALITY_FILES:
        row = f"{mod:<9}{CLASS:<22}"
        for name, (scores, _, _) in columns.items():
            v = [d for _, d, _ in scores[mod] if not math.isnan(d)]
            w = width[name]
            row += f"{np.mean(v):>{w}.3f}{min(v):>7.3f}{len(v):>4}" if v else f"{'-':>{w}}{'-':>7}{0:>4}"
        print(row)
    if args.per_patient:
        print_per_patient(columns)
    return 0


def print_per_patient(columns: dict) -> None:
    """One row per patient and modality: each model's Dice and predicted / true volume."""
    width = {n: max(12, len(n) + 6) for n in columns}
    head = f"{'patient':<10}{'modality':<9}" + "".join(f"{n + ' Dice':>{width[n]}}{'vol':>7}" for n in columns)
    print("\n" + head + "\n" + "-" * len(head))
    cells: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    for name, (scores, _, _) in columns.items():
        for mod, rows in scores.items():
            for patient, d, ratio in rows:
                cells.setdefault((patient, mod), {})[name] = (d, ratio)
    for (patient, mod), by_model in sorted(cells.items()):
        row = f"{patient:<10}{mod:<9}"
        for name in columns:
            d, ratio = by_model.get(name, (math.nan, math.nan))
            row += f"{d:>{width[name]}.3f}{ratio:>6.2f}x"
        print(row)


if __name__ == "__main__":
    sys.exit(main())
