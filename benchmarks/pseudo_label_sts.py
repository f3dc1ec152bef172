"""Do pseudo-labels of unlabelled patients help? Sarcoma Dice on held-out patients, before and after.

FLARE23's recipe (universal-model-flare23.txt): train on the labelled scans, label the unlabelled
ones with that model, train again on both. Here, on ../shared/data/sts_sarcoma:
- the multimodal recipe's held-out patients (configs/multimodal.yaml `validation.holdout`) are
  the validation set of both runs and are never labelled, pseudo-labelled or trained on;
- the other patients, sorted, alternate between *labelled* (their masks are used) and
  *unlabelled* (their masks are hidden: only their images are linked into the work folder);
- "before": one Universal Model trained on the labelled patients' CT, MR-T1 and PET;
- `promptseg pseudo-label` with that model labels each modality of the unlabelled patients
  (a class below `--class-threshold` confidence is not annotated for that case);
- "after": the same recipe, from scratch, same steps, on the labelled + pseudo-labelled scans.
The table gives tumour Dice per modality on the held-out patients at each run's *last* step (no
step chosen on the scored patients), from the runs' own validation (network grid, log.jsonl).

Run:  .venv/bin/python benchmarks/pseudo_label_sts.py [--steps 1500] [--work runs/pseudo_sts]
Data: the patients' files are linked (symlinks), never copied; `--data` points at ../shared/data.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "src" / "promptseg" / "configs" / "multimodal.yaml"
FILES = {"CT": "CT", "MR": "MR_T1", "PET": "PET"}


def split_patients(data: Path, holdout: list[str]) -> tuple[list[str], list[str]]:
    """(labelled, unlabelled): the non-held-out patients, alternating in sorted order."""
    rest = sorted(p.name for p in (data / "sts_sarcoma").iterdir() if p.is_dir() and p.name not in holdout)
    return rest[0::2], rest[1::2]


def link_labelled(data: Path, work: Path, patients: list[str]) -> Path:
    """work/labelled/STS_xxx -> the patient's folder (images and masks)."""
    folder = work / "labelled"
    folder.mkdir(parents=True, exist_ok=True)
    for p in patients:
        link = folder / p
        if not link.exists():
            link.symlink_to((data / "sts_sarcoma" / p).resolve(), target_is_directory=True)
    return folder


def link_unlabelled(data: Path, work: Path, patients: list[str]) -> dict[str, Path]:
    """work/unlabelled/MODALITY/STS_xxx.nii.gz -> the image alone (the mask stays hidden)."""
    out = {}
    for mod, stem in FILES.items():
        folder = work / "unlabelled" / mod
        folder.mkdir(parents=True, exist_ok=True)
        for p in patients:
            src = data / "sts_sarcoma" / p / f"{stem}_image.nii.gz"
            link = folder / f"{p}.nii.gz"
            if src.is_file() and not link.exists():
                link.symlink_to(src.resolve())
        out[mod] = folder
    return out


def run_yaml(base: dict, work: Path, name: str, datasets: list, steps: int) -> Path:
    """The multimodal recipe, narrowed to sarcoma: `datasets`, `steps`, output work/NAME."""
    cfg = {k: v for k, v in base.items() if k not in ("data_root", "datasets")}
    cfg.update(name=name, output=str(work / name), datasets=datasets, cache_dir=str(work / "cache"))
    cfg["train"] = {**base["train"], "steps": steps, "checkpoint_every": steps}
    cfg["validation"] = {**base["validation"], "every": steps}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train(yaml_path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "promptseg", "train", str(yaml_path)], check=True)
    return Path(yaml.safe_load(yaml_path.read_text())["output"])


def last_validation(run: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"validation"' in line]
    if not rows:
        sys.exit(f"{run}/log.jsonl: no validation record")
    return rows[-1]["validation"]["dice"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "pseudo_sts")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--class-threshold", type=float, default=0.8)
    args = ap.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)

    base = yaml.safe_load(RECIPE.read_text())
    holdout = list(base["validation"]["holdout"])
    labelled, unlabelled = split_patients(args.data, holdout)
    print(f"held out {len(holdout)}: {' '.join(holdout)}\nlabelled {len(labelled)}: {' '.join(labelled)}\n"
          f"unlabelled {len(unlabelled)}: {' '.join(unlabelled)}")
    sts = next(d for d in base["datasets"] if d.get("name") == "sts")
    labelled_entry = {**sts, "path": str(link_labelled(args.data, work, labelled + holdout))}

    before = train(run_yaml(base, work, "before", [labelled_entry], args.steps))
    pseudo = []
    for mod, folder in link_unlabelled(args.data, work, unlabelled).items():
        out = work / "pseudo" / mod
        subprocess.run([sys.executable, "-m", "promptseg", "pseudo-label", "-m", str(before / "last"), "-i", str(folder),
                        "-o", str(out), "--modality", mod, "--name", f"Pseudo{mod}", "--quiet",
                        "--class-threshold", str(args.class_threshold)], check=True)
        report = json.loads((out / "pseudo_labels.json").read_text())
        kept = sum(len(d["cases"]) for d in report["datasets"])
        print(f"pseudo-labels {mod}: {kept}/{len(report['cases'])} cases kept")
        pseudo += [str(out / d["folder"]) for d in report["datasets"]]
    after = train(run_yaml(base, work, "after", [labelled_entry, *pseudo], args.steps))

    b, a = last_validation(before), last_validation(after)
    print(f"\nTumour Dice on the {len(holdout)} held-out patients, last step ({args.steps} steps each):")
    print(f"{'modality/class':36s} {'before':>8s} {'after':>8s}")
    for key in sorted(set(b) | set(a)):
        print(f"{key:36s} {b.get(key, float('nan')):8.3f} {a.get(key, float('nan')):8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
