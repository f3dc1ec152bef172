"""Seconds per CT with the published Universal Model architectures through `promptseg predict`.

The published files are never downloaded here, so each backbone gets a file with the official
key layout and seeded random values (`models.official.random_official_state_dict`): the network
costs the same as with the real weights; post-processing and writing depend a little on what
the masks contain. Each backbone runs as a user would run it, in a fresh process:

    promptseg import-checkpoint official_<backbone>.pth -o <backbone>_model
    promptseg predict -m <backbone>_model -i ../shared/data/ct_abdomen_pelvis/image.nii.gz -o OUT

with the official settings the import records (RAS, 1.5 mm, 96^3 windows, overlap 0.5, Gaussian).
Printed per backbone: wall seconds of the predict process (model load included), its peak RSS
and the per-stage seconds (from `promptseg predict`'s own summary line).

Run:  .venv/bin/python benchmarks/official_predict.py [--backbones unet swinunetr] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT.parent / "shared" / "data" / "ct_abdomen_pelvis" / "image.nii.gz"


def promptseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "promptseg", *args]


def run_timed(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB of this child alone, its stdout). `os.wait4` gives the child's
    own rusage; RUSAGE_CHILDREN would be the maximum over every child so far."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err.read()[-2000:]}")
        return wall, usage.ru_maxrss / 1024.0, out.read()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=["unet", "swinunetr"], choices=["unet", "swinunetr"])
    ap.add_argument("--image", default=str(IMAGE))
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runtime", default=None, choices=["auto", "openvino", "onnxruntime", "torch"],
                    help="engine of the CPU windows (default: predict's, auto = OpenVINO when installed)")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args(argv)

    import torch

    from promptseg.models.official import random_official_state_dict

    work = Path(args.work or tempfile.mkdtemp(prefix="official_predict_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for bb in args.backbones:
        model_dir = work / f"{bb}_model"
        if not (model_dir / "checkpoint.json").exists():  # a --work folder of an earlier run keeps its import
            src = work / f"official_{bb}.pth"
            torch.save({"net": random_official_state_dict(bb, seed=0), "epoch": 0}, src)
            run_timed(promptseg("import-checkpoint", str(src), "-o", str(model_dir)))
        cmd = promptseg("predict", "-m", str(model_dir), "-i", args.image, "-o", str(work / f"{bb}_out"),
                        "--device", args.device, "--quiet")
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.runtime:
            cmd += ["--runtime", args.runtime]
        wall, rss, out = run_timed(cmd)
        summary = next((line for line in out.splitlines() if "[" in line and "network" in line), "")
        stages = dict(re.findall(r"(\w+) ([\d.]+)s", summary.split("[", 1)[-1]))
        rows.append((bb, wall, rss, stages))
        print(f"{bb}: {wall:.1f} s, peak RSS {rss:.0f} MB | {summary.split('[', 1)[-1].rstrip(']')}", flush=True)

    dev = torch.cuda.get_device_name(0) if args.device != "cpu" and torch.cuda.is_available() else \
        f"CPU, {os.cpu_count()} cores"
    print(f"\nimage: {args.image}\ndevice: {dev}; runtime {args.runtime or 'auto'}; load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| backbone | predict process s | peak RSS MB | compile s | network s | read+preprocess s | post+invert+write s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for bb, wall, rss, st in rows:
        f = {k: float(v) for k, v in st.items()}
        pre = f.get("read", 0) + f.get("preprocess", 0) + f.get("locate", 0)
        post = sum(v for k, v in f.items() if k in ("postprocess", "merge", "invert", "write"))
        print(f"| {bb} | {wall:.1f} | {rss:.0f} | {f.get('compile', 0.0):.1f} | {f.get('network', float('nan')):.1f} "
              f"| {pre:.1f} | {post:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
