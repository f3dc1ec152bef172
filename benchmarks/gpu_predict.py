"""GPU seconds and peak GPU memory per CT, and training steps/s with background workers.

FLARE23 judges a CT by its running time (tolerance 15 s) and GPU memory (4 GB). This measures,
on whatever CUDA device is present, the predict path users run (`Predictor.predict_file`: read,
preprocess, network, post-process, resample to the input grid, write) for:

- the published Universal Model architectures (U-Net, Swin UNETR) with the official key layout
  and seeded random values (`random_official_state_dict`; the network costs the same as with the
  real weights), imported as `promptseg import-checkpoint` does;
- the SegResNet FLARE23 preset and the small U-Net, each with the Universal head for 32 classes
  (random weights, head scaled so masks have organ-like sizes, as in predict_speed.py).

Input: ../shared/data/ct_abdomen_pelvis resampled to 512x512x224 at 0.78x0.78x1.5 mm (the
clinical scale of benchmarks/predict_speed.py). Each model runs twice: the first call includes
CUDA/cuDNN start-up, the second is the figure to quote. Peak memory is torch's
`max_memory_allocated` (what the tensors need) and `max_memory_reserved` (what the caching
allocator held).

Training: SegResNet FLARE23 + Universal head on the phantom datasets, `--train-steps` steps at
batch 2 with 96^3 patches, augmentation on, with 0 and N background loader workers.

Run:  python benchmarks/gpu_predict.py [--models official_unet official_swinunetr segresnet small]
      [--train-steps 40] [--workers 0 4] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import predict_speed  # noqa: E402  (make_input / make_checkpoint: one way to build the inputs)


def official_checkpoint(backbone: str, work: Path) -> Path:
    import torch

    from promptseg.cli import main as cli_main
    from promptseg.models.official import random_official_state_dict

    pth = work / f"official_{backbone}.pth"
    torch.save({"net": random_official_state_dict(backbone)}, pth)
    out = work / f"official_{backbone}"
    if cli_main(["import-checkpoint", str(pth), "-o", str(out)]) != 0:
        raise SystemExit(f"import-checkpoint failed for {pth}")
    return out


DEVICE = "cuda"  # --device cpu only to check this script before spending GPU time on it


def _sync_and_reset() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _peak_gb(kind: str) -> float | None:
    import torch

    if DEVICE != "cuda":
        return None
    fn = torch.cuda.max_memory_allocated if kind == "allocated" else torch.cuda.max_memory_reserved
    return round(fn() / 2**30, 2)


def predict_once(ckpt: Path, image: Path, out: Path, precision: str = "float32") -> dict:
    from promptseg.checkpoint import open_checkpoint
    from promptseg.inference import Predictor

    _sync_and_reset()
    t0 = time.perf_counter()
    checkpoint = open_checkpoint(ckpt, device="cpu")
    predictor = Predictor(checkpoint, inference={"precision": precision}, device=DEVICE, progress=False)
    res = predictor.predict_file(image, out)
    _sync()
    wall = time.perf_counter() - t0
    p = res["prediction"]
    return {"wall_s": round(wall, 2), "stages_s": {k: round(v, 2) for k, v in p.timings.items()},
            "peak_allocated_gb": _peak_gb("allocated"), "peak_reserved_gb": _peak_gb("reserved"),
            "windows": p.stats.get("windows"), "classes": len(p.masks), "precision": p.stats.get("precision"),
            "names": list(p.masks)}


def train_speed(work: Path, steps: int, workers: int) -> dict:
    import torch

    from promptseg.config import resolve_config
    from promptseg.data.phantoms import make_phantom_datasets
    from promptseg.train.trainer import Trainer

    data = work / "phantoms"
    if not data.exists():
        make_phantom_datasets(data, n_train=(4, 4, 4, 2), n_test=1)
    raw = {"output": str(work / f"train_w{workers}"), "cache_dir": str(work / "cache"),
           "datasets": [str(data / n) for n in ("PhantomA_liver", "PhantomB_kidney", "PhantomC_organs",
                                                 "PhantomD_pancreas")],
           "plan": {"name": "universal_ct", "spacing": None},
           "backbone": {"name": "segresnet", "preset": "flare23"},
           "conditioner": {"name": "universal", "head": "mlp", "text_encoder": "onehot"},
           "train": {"steps": steps, "batch_size": 2, "patch_size": [96, 96, 96], "warmup_steps": 2,
                     "checkpoint_every": 10**6, "augment": True, "loader_workers": workers}}
    trainer = Trainer(resolve_config(raw, work), device=DEVICE, progress=False)
    warm = 5
    for _ in range(warm):
        trainer.train_step()
    _sync_and_reset()
    t0 = time.perf_counter()
    for _ in range(steps - warm):
        trainer.train_step()
    _sync()
    dt = time.perf_counter() - t0
    return {"workers": workers, "steps": steps - warm, "steps_per_s": round((steps - warm) / dt, 2),
            "peak_allocated_gb": _peak_gb("allocated")}


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["official_unet", "official_swinunetr", "segresnet", "small"])
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 4])
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--source", default=str(predict_speed.DATA), help="the 3 mm CT resampled to the clinical grid")
    ap.add_argument("--precisions", nargs="+", default=["float32"],
                    help="inference precisions to time per model (float32, bfloat16, float16)")
    ap.add_argument("--scale", choices=sorted(predict_speed.SCALES), default="clinical")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu only checks the script end to end (with --scale small)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark measures GPU time and memory")
    work = Path(args.work or tempfile.mkdtemp(prefix="promptseg_gpu_"))
    name_of_device = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    print(f"device: {name_of_device}; torch {torch.__version__}; work {work}", flush=True)
    predict_speed.DATA = Path(args.source)
    image = predict_speed.make_input(args.scale, work / f"ct_{args.scale}.nii.gz")
    results: dict = {"device": name_of_device, "scale": args.scale, "predict": {}, "train": []}
    for name in args.models:
        if name.startswith("official_"):
            ckpt = official_checkpoint(name.split("_", 1)[1], work)
        else:
            preset = "segresnet:flare23" if name == "segresnet" else name
            ckpt = predict_speed.make_checkpoint(args.scale, preset, work / f"ckpt_{name}", image)
        for precision in args.precisions:
            runs = [predict_once(ckpt, image, work / f"out_{name}_{precision}_{i}", precision) for i in range(2)]
            row = f"{name} {precision}"
            results["predict"][row] = {"cold": runs[0], "warm": runs[1]}
            print(f"{row}: warm {runs[1]['wall_s']} s (cold {runs[0]['wall_s']} s), peak "
                  f"{runs[1]['peak_allocated_gb']} GB allocated / {runs[1]['peak_reserved_gb']} GB reserved, "
                  f"{runs[1]['windows']} windows, stages {runs[1]['stages_s']}", flush=True)
            if precision != args.precisions[0]:
                case = image.name.split(".nii")[0]  # predict writes a case's masks into a folder of its name
                low = round(min(predict_speed.dice_table(work / f"out_{name}_{args.precisions[0]}_1" / case,
                                                         work / f"out_{name}_{precision}_1" / case,
                                                         runs[1]["names"], ref_slug=True).values()), 4)
                results["predict"][row]["min_dice_vs_first"] = low
                print(f"  lowest per-class Dice against {args.precisions[0]}: {low}", flush=True)
    for w in args.workers if args.train_steps > 5 else []:
        r = train_speed(work, args.train_steps, w)
        results["train"].append(r)
        print(f"train segresnet flare23, {w} loader workers: {r['steps_per_s']} steps/s "
              f"(peak {r['peak_allocated_gb']} GB)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
