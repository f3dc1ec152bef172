"""`promptseg predict` speed and memory on a clinical-size CT, against the seed-style reference.

Run (from the repository root):
    .venv/bin/python benchmarks/predict_speed.py --scale small          # minutes: verify
    .venv/bin/python benchmarks/predict_speed.py --scale clinical       # the issue's target
    options: --presets small official_unet segresnet:flare23, --skip-reference, --rows lean,fast,roi,...
    (`lean` brings `lean-torch` along unless --no-check: its masks are compared with PyTorch float32's)

Input: ../shared/data/ct_abdomen_pelvis (3 mm) resampled to a clinical grid -- 512x512x224 at
0.78x0.78x1.5 mm, LPS, int16, air outside the scanned field -- so the content is real
(`--scale small`: 256x256x112 at 1.56x1.56x3 mm with a 3 mm plan and 48^3 windows).
Model: U-Net preset (or `segresnet:PRESET`: the SegResNet backbone) + Universal Model head with the 32 Universal classes, random weights (speed
does not depend on them), saved as a checkpoint; every row loads the same checkpoint.

Rows, each in a fresh subprocess so peak RSS does not mix:
  reference  seed-style: MONAI sliding_window_inference over the plan's grid with the plain
             model (float32), float32 sigmoid probabilities of every class resampled back to the
             input grid (linear), thresholded, written; no post-processing.
  lean-raw   `promptseg predict` path without post-processing (same outputs as the reference:
             per-class Dice against it is printed).
  lean-bf16  lean-raw with --precision bfloat16 (faster; its Dice against the reference shows
             what it costs).
  lean       `promptseg predict` as a user runs it (post-processing on), all classes; the windows run
             in the default CPU runtime (inference.runtime; eager PyTorch unless a checkpoint says otherwise).
  lean-torch / lean-raw-torch   lean / lean-raw with `runtime: torch` and `fused_head: false` (eager
             PyTorch float32 throughout): the masks the compiled runtime and the compiled head must
             equal (Dice printed), and the time before them.
  lean-fused lean with `runtime: torch` and `fused_head: true` (the per-class head compiled by
             torch.compile; Dice against lean-torch printed).
  lean-ov    lean with `runtime: openvino` (Dice against lean-torch printed).
  lean-ort   lean with `runtime: onnxruntime` (needs `pip install onnxruntime`; Dice against lean-torch).
  lean-1 / lean-8   the same with 1 and 8 prompts: peak RSS against the number of classes.
  fast       --fast (3 mm grid, windows scaled).
  roi        --roi with 3 prompts (Dice against `lean` for those classes).
  ov-f32 / ov-bf16 / ort-f32   the reference path with each window batch run by a compiled CPU
             runtime (`promptseg.inference.cpu_runtime.compile_for_cpu`: OpenVINO float32 /
             bfloat16, ONNX Runtime float32); conversion time is its own stage ("compile");
             per-class Dice against the reference.
Printed: wall time (read -> written files, and the whole process), peak RSS (getrusage; VmHWM),
time per stage, windows run, network GFLOP/s achieved vs this machine's matmul GFLOP/s.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ct_abdomen_pelvis" / "image.nii.gz"
SCALES = {
    # input grid (shape, spacing), plan spacing, window
    "clinical": dict(shape=(512, 512, 224), spacing=(0.78125, 0.78125, 1.5), plan=(1.5, 1.5, 1.5), window=96),
    "small": dict(shape=(256, 256, 112), spacing=(1.5625, 1.5625, 3.0), plan=(3.0, 3.0, 3.0), window=48),
}
ROI_PROMPTS = ["liver", "spleen", "right kidney"]
STAGES = ["read", "preprocess", "locate", "compile", "network", "postprocess", "merge", "invert", "write"]


# --- helpers shared by parent and children --------------------------------------------------------
def vm_hwm_mb() -> float:
    """Peak resident set of this process (VmHWM), MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


class RssSampler(threading.Thread):
    """Samples VmRSS every 20 ms: the peak of a run even where VmHWM is not available."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0.0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            try:
                for line in Path("/proc/self/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak = max(self.peak, int(line.split()[1]) / 1024.0)
            except OSError:
                return
            self._halt.wait(0.02)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return self.peak


def matmul_gflops(dtype_name: str = "float32", n: int = 2048, repeats: int = 3) -> float:
    """This machine's dense matmul rate with torch's threads (best of `repeats`)."""
    import torch

    dt = getattr(torch, dtype_name)
    a = torch.randn(n, n).to(dt)
    b = torch.randn(n, n).to(dt)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def window_gflop(ckpt: Path, window: int, k: int) -> float:
    """FLOPs of one window forward (batch 1, all K classes), counted by torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from promptseg.checkpoint import load_checkpoint

    model = load_checkpoint(ckpt, device="cpu").eval()
    pb = model.prompt_batch(model.class_names[:k], batch_size=1)
    x = torch.zeros(1, 1, window, window, window)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(x, pb)
    return fc.get_total_flops() / 1e9


# --- input and model ------------------------------------------------------------------------------
def make_input(scale: str, path: Path) -> Path:
    """The real 3 mm scan resampled (linear) onto the scale's grid, centred; air outside."""
    import numpy as np
    import SimpleITK as sitk

    cfg = SCALES[scale]
    src = sitk.ReadImage(str(DATA), sitk.sitkFloat32)
    size, spacing = cfg["shape"], cfg["spacing"]
    direction = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # LPS array axes, as DICOM-derived files
    centre = np.asarray(src.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in src.GetSize()]))
    d = np.asarray(direction).reshape(3, 3)
    origin = centre - d @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2.0)
    out = sitk.Resample(src, [int(s) for s in size], sitk.Transform(), sitk.sitkLinear, tuple(origin.tolist()),
                        tuple(float(s) for s in spacing), direction, -1024.0, sitk.sitkFloat32)
    out = sitk.Cast(sitk.Round(out), sitk.sitkInt16)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(out, str(path), True)
    return path


def make_checkpoint(scale: str, preset: str, path: Path, image: Path | None = None) -> Path:
    import torch

    from promptseg.models.build import build_model
    from promptseg.taxonomy import default_taxonomy
    from promptseg.checkpoint import save_checkpoint

    cfg = SCALES[scale]
    names = [c.name for c in default_taxonomy().classes if c.id <= 32]
    torch.manual_seed(0)
    config = {"modality": "CT", "backbone": backbone_config(preset),
              "conditioner": {"name": "universal", "head": "mlp"},
              "plan": {"name": "universal_ct", "spacing": list(cfg["plan"])},
              "inference": {"window": [cfg["window"]] * 3, "overlap": 0.5, "mode": "gaussian", "sw_batch_size": 2,
                            # --fast: twice the plan's voxel size (3 mm for the 1.5 mm plan, as
                            # TotalSegmentator); --roi locates the classes at four times it (6 mm)
                            "fast_spacing": [2 * v for v in cfg["plan"]],
                            "roi_spacing": [4 * v for v in cfg["plan"]]}}
    model = build_model(config, names, embeddings=torch.nn.functional.normalize(torch.randn(len(names), 384), dim=1))
    vary_logits(model)
    if image is not None:
        calibrate_coverage(model, image, config["plan"], cfg["window"])
    return save_checkpoint(model.eval(), path, config)


def backbone_config(preset: str) -> dict:
    """'small' -> the U-Net preset; 'segresnet:flare23' (or 'segresnet') -> the SegResNet backbone."""
    if preset.startswith("segresnet"):
        return {"name": "segresnet", "preset": preset.partition(":")[2] or "flare23"}
    return {"name": "unet", "preset": preset}


def calibrate_coverage(model, image: Path, plan, window: int, coverage: float = 0.02) -> None:
    """Shift each class's output bias so that it covers ~`coverage` of a central window: organ-
    sized masks, as a trained model gives (a random head marks half the body for many classes,
    which would make per-class work -- post-processing, resampling, writing -- unrealistically
    large). Changes no speed of the network itself."""
    import numpy as np
    import torch

    from promptseg.io import read_image
    from promptseg.preprocess import get_plan, preprocess_image

    arr = preprocess_image(read_image(image), get_plan(plan)).array
    c = [max(0, (n - window) // 2) for n in arr.shape]
    win = np.zeros((window,) * 3, np.float32)
    sub = arr[c[0]:c[0] + window, c[1]:c[1] + window, c[2]:c[2] + window]
    win[:sub.shape[0], :sub.shape[1], :sub.shape[2]] = sub
    pb = model.prompt_batch(model.class_names, batch_size=1)
    with torch.inference_mode():
        z = model.eval()(torch.from_numpy(win)[None, None], pb)[0].flatten(1)
    q = torch.quantile(z[:, :: max(1, z.shape[1] // 200000)], 1.0 - coverage, dim=1)
    with torch.no_grad():
        for k, mlp in enumerate(model.conditioner.controllers):
            mlp[-1].bias[-1] -= q[k]  # the last dynamic bias adds straight to the class logit


def vary_logits(model, gain: float = 20.0) -> None:
    """An untrained Universal head gives near-constant logits (std ~0.001 over a scan), so every
    class would be all or nothing; scaling the controllers' last layer makes them vary (std ~1-3)
    with the image, so masks have real boundaries (the speed is the same)."""
    import torch

    with torch.no_grad():
        for mlp in getattr(model.conditioner, "controllers", []):
            mlp[-1].weight.mul_(gain)


# --- children -------------------------------------------------------------------------------------
def child_reference(args) -> dict:
    """The seed's way: MONAI over the plan grid, float32 probabilities of all classes to the input grid."""
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from promptseg.inference.windows import fit_window, size_multiple
    from promptseg.runtime import set_threads
    from promptseg.io import read_image, write_image
    from promptseg.preprocess import get_plan, invert, preprocess_image
    from promptseg.checkpoint import open_checkpoint

    set_threads(args.threads)
    ckpt = open_checkpoint(args.ckpt, device="cpu")
    model, cfg = ckpt.model, ckpt.config
    plan = get_plan(cfg["plan"])
    inf = cfg["inference"]
    classes = list(model.class_names)
    pb = model.prompt_batch(classes, modality="CT", batch_size=1)
    t: dict[str, float] = {}
    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    vol = read_image(args.input)
    t["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pre = preprocess_image(vol, plan)
    x = torch.from_numpy(pre.array)[None, None]
    t["preprocess"] = time.perf_counter() - t0
    roi = fit_window(inf["window"], x.shape[2:], size_multiple(model))
    calls = [0]
    forward = lambda w: model(w, model.prompt_batch(classes, modality=["CT"] * w.shape[0]))  # noqa: E731
    precision = "float32"
    args.runtime = args.runtime or "torch"
    if args.runtime != "torch":
        from promptseg.inference.cpu_runtime import FixedPrompts, compile_for_cpu

        precision = args.precision or "float32"
        t0 = time.perf_counter()
        forward = compile_for_cpu(FixedPrompts(model, classes, modality="CT"),
                                  torch.zeros(inf["sw_batch_size"], 1, *roi), precision=precision,
                                  runtime=args.runtime, threads=torch.get_num_threads())
        t["compile"] = time.perf_counter() - t0

    def run(w):
        calls[0] += w.shape[0]
        return forward(w)

    t0 = time.perf_counter()
    with torch.inference_mode():
        logits = sliding_window_inference(x, roi, inf["sw_batch_size"], run, overlap=inf["overlap"], mode="gaussian",
                                          padding_mode="constant", cval=float(x.min()))
        probs = torch.sigmoid(logits[0])
    del logits
    t["network"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = invert(probs, pre.record, interpolation="linear").array  # float32 [K, *input grid]
    del probs
    t["invert"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = Path(args.out)
    for k, c in enumerate(classes):
        mask = (full[k] > 0.5).astype(np.uint8)
        write_image(vol.with_array(mask), out / f"{c.replace(' ', '_').replace('/', '_')}.nii.gz")
    t["write"] = time.perf_counter() - t0
    return {"timings": t, "windows": calls[0], "sampled_peak_mb": sampler.stop(), "classes": len(classes),
            "network_grid": list(pre.array.shape), "precision": precision, "runtime": args.runtime}


def child_lean(args) -> dict:
    from promptseg.inference.predictor import Predictor
    from promptseg.checkpoint import open_checkpoint

    model = open_checkpoint(args.ckpt, device="cpu")
    prompts = args.prompts.split(",") if args.prompts else None
    inference = {"postprocess": not args.no_postprocess}
    if args.threads:
        inference["threads"] = args.threads
    if args.precision:
        inference["precision"] = args.precision
    if args.runtime:
        inference["runtime"] = args.runtime
    if args.fused_head is not None:
        inference["fused_head"] = {"true": True, "false": False}.get(args.fused_head, args.fused_head)
    pred = Predictor(model, inference=inference, device="cpu", progress=False, fast=args.fast, roi=args.roi)
    sampler = RssSampler()
    sampler.start()
    res = pred.predict_file(args.input, args.out, prompts)
    p = res["prediction"]
    return {"timings": p.timings, "windows": p.stats.get("windows"), "windows_full": p.stats.get("windows_full"),
            "sampled_peak_mb": sampler.stop(), "classes": len(p.masks), "network_grid": list(p.stats["network_grid"]),
            "precision": p.stats.get("precision"), "runtime": p.stats.get("runtime"), "threads": p.stats.get("threads"), "notes": p.notes,
            "window": list(p.stats.get("window") or [])}


def run_child(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompts", default="")
    ap.add_argument("--no-postprocess", action="store_true")
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--roi", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", default=None)
    ap.add_argument("--runtime", default=None,
                    help="reference child: torch (default) | openvino | onnxruntime; lean child: the inference "
                         "setting (default: the checkpoint's, auto)")
    ap.add_argument("--fused-head", default=None, help="lean child: inference.fused_head (true | false | auto)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    result = child_reference(args) if args.child == "reference" else child_lean(args)
    result["pipeline_s"] = sum(result["timings"].values())
    result["process_s"] = time.perf_counter() - START
    result["in_child_s"] = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024.0
    result["page_faults"] = usage.ru_minflt  # fresh memory touched (runtime.kept_heap keeps it low)
    result["vm_hwm_mb"] = vm_hwm_mb()
    return result


# --- parent ---------------------------------------------------------------------------------------
def spawn(name: str, common: list[str], extra: list[str], log) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *common, *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"[{name}] failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return {"failed": True}
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    r = json.loads(line[len("RESULT "):])
    r["wall_outside_s"] = wall
    print(f"  {name:<22} done: read->written {r['pipeline_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, "
          f"{r['page_faults'] / 1e6:.1f}M page faults", flush=True)
    log.write(json.dumps({"row": name, **r}) + "\n")
    return r


def dice_table(ref_dir: Path, test_dir: Path, names: list[str], ref_slug: bool = False) -> dict[str, float]:
    """Per-class Dice of the masks written in two folders (reference names, or `slug` names)."""
    import nibabel as nib
    import numpy as np

    from promptseg.inference.inputs import slug

    out = {}
    for n in names:
        ref_name = slug(n) if ref_slug else n.replace(" ", "_").replace("/", "_")
        a = np.asarray(nib.load(str(ref_dir / f"{ref_name}.nii.gz")).dataobj) > 0
        cand = test_dir / f"{slug(n)}.nii.gz"
        b = np.asarray(nib.load(str(cand)).dataobj) > 0
        s = int(a.sum()) + int(b.sum())
        out[n] = 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="promptseg predict: speed and memory vs the seed-style reference")
    ap.add_argument("--scale", choices=sorted(SCALES), default="small")
    ap.add_argument("--presets", nargs="+", default=["small", "official_unet"])
    ap.add_argument("--rows", default="reference,lean-raw,lean-bf16,lean,lean-1,lean-8,fast,roi",
                    help="rows for the first preset; further presets run reference,lean-raw,lean,fast")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--no-check", action="store_true",
                    help="run `lean` without the `lean-torch` row (PyTorch float32) its masks are compared with")
    ap.add_argument("--other-rows", default="reference,lean-raw,lean,fast", help="rows for further presets")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    if not DATA.is_file():
        print(f"{DATA} not found (../shared/data lives beside the clone)", file=sys.stderr)
        return 2

    import torch

    from promptseg.runtime import cpu_has_bf16, machine_threads, set_threads

    threads = set_threads(args.threads)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="predict_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = SCALES[args.scale]
    print(f"== promptseg predict benchmark, scale {args.scale}: input {cfg['shape']} at {cfg['spacing']} mm, "
          f"plan {cfg['plan']} mm, window {cfg['window']}^3, overlap 0.5, gaussian")
    print(f"machine: {machine_threads()} cores usable, torch {torch.__version__}, {threads} threads, "
          f"native bf16: {cpu_has_bf16()}, load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}")
    mm32 = matmul_gflops("float32")
    mm16 = matmul_gflops("bfloat16")
    print(f"matmul 2048^2: float32 {mm32:.0f} GFLOP/s, bfloat16 {mm16:.0f} GFLOP/s")
    image = make_input(args.scale, work / "ct_clinical.nii.gz")
    print(f"input: {image} ({image.stat().st_size / 1e6:.0f} MB on disk)")
    log = open(work / "results.jsonl", "a", buffering=1)

    all_rows = []
    for pi, preset in enumerate(args.presets):
        ckpt = make_checkpoint(args.scale, preset, work / f"ckpt_{preset}", image)
        wanted = (args.rows if pi == 0 else args.other_rows).split(",")
        if args.skip_reference:
            wanted = [w for w in wanted if w != "reference"]
        gflop = {k: window_gflop(ckpt, cfg["window"], k) for k in (1, 32)}
        per_class = (gflop[32] - gflop[1]) / 31  # the head is linear in the classes; backbone fixed
        gflop_of = lambda k: gflop[1] + (k - 1) * per_class
        print(f"-- preset {preset}: {gflop[32]:.1f} GFLOP per {cfg['window']}^3 window with 32 classes "
              f"({gflop[1] - per_class:.1f} backbone + {per_class:.2f} per class): at least "
              f"{gflop[32] / mm32:.2f} s per window at this machine's float32 matmul rate")
        common = lambda name: ["--ckpt", str(ckpt), "--input", str(image), "--out", str(work / f"out_{preset}_{name}")] + \
            (["--threads", str(args.threads)] if args.threads else [])
        from promptseg.taxonomy import default_taxonomy

        names = [c.name for c in default_taxonomy().classes if c.id <= 32]
        specs = {
            "reference": ["reference"],
            "lean-raw": ["lean", "--no-postprocess"],
            "lean-bf16": ["lean", "--no-postprocess", "--precision", "bfloat16"],
            "lean": ["lean"],
            "lean-torch": ["lean", "--runtime", "torch", "--fused-head", "false"],
            "lean-fused": ["lean", "--runtime", "torch", "--fused-head", "true"],
            "lean-ov": ["lean", "--runtime", "openvino"],
            "lean-ort": ["lean", "--runtime", "onnxruntime"],
            "lean-raw-torch": ["lean", "--no-postprocess", "--runtime", "torch", "--fused-head", "false"],
            "lean-1": ["lean", "--prompts", names[5]],
            "lean-8": ["lean", "--prompts", ",".join(names[:8])],
            "fast": ["lean", "--fast"],
            "roi": ["lean", "--roi", "--prompts", ",".join(ROI_PROMPTS)],
            "ov-f32": ["reference", "--runtime", "openvino"],
            "ov-bf16": ["reference", "--runtime", "openvino", "--precision", "bfloat16"],
            "ort-f32": ["reference", "--runtime", "onnxruntime"],
        }
        if "lean" in wanted and "lean-torch" not in wanted and not args.no_check:
            wanted.insert(wanted.index("lean"), "lean-torch")  # the float32 PyTorch masks `lean` must equal
        results = {}
        for name in wanted:
            kind, *extra = specs[name]
            results[name] = spawn(f"{preset}/{name}", [kind] + common(name), extra, log)
            if not results[name].get("failed"):
                results[name]["gflop_window"] = gflop_of(results[name]["classes"])
        for row in ("lean-raw", "lean-bf16"):
            ref_dir = work / f"out_{preset}_reference"  # this run's, or a previous run's in --work
            if row in results and not results[row].get("failed") and ref_dir.is_dir() \
                    and not results.get("reference", {}).get("failed"):
                d = dice_table(ref_dir, work / f"out_{preset}_{row}" / "ct_clinical", names)
                results[row]["dice_min"] = min(d.values())
                worst = sorted(d.items(), key=lambda kv: kv[1])[:3]
                print(f"   per-class Dice {row} vs reference: min {min(d.values()):.4f}, mean "
                      f"{sum(d.values()) / len(d):.4f}; lowest {', '.join(f'{n} {v:.4f}' for n, v in worst)}")
        for row in ("ov-f32", "ov-bf16", "ort-f32"):  # the reference path, so the same file layout
            ref_dir = work / f"out_{preset}_reference"  # this run's, or a previous run's in --work
            if row in results and not results[row].get("failed") and ref_dir.is_dir() \
                    and not results.get("reference", {}).get("failed"):
                d = dice_table(ref_dir, work / f"out_{preset}_{row}", names)
                results[row]["dice_min"] = min(d.values())
                print(f"   per-class Dice {row} vs reference: min {min(d.values()):.4f}, mean {sum(d.values()) / len(d):.4f}")
        for row, ref in (("lean", "lean-torch"), ("lean-ov", "lean-torch"), ("lean-ort", "lean-torch"),
                         ("lean-fused", "lean-torch"), ("lean-raw", "lean-raw-torch")):
            if row in results and ref in results and not results[row].get("failed") \
                    and not results[ref].get("failed"):
                d = dice_table(work / f"out_{preset}_{ref}" / "ct_clinical", work / f"out_{preset}_{row}" / "ct_clinical",
                               names, ref_slug=True)
                results[row]["dice_min"] = min([*d.values(), results[row].get("dice_min", 1.0)])
                print(f"   per-class Dice {row} ({results[row].get('runtime')}) vs {ref}: min {min(d.values()):.4f}, "
                      f"mean {sum(d.values()) / len(d):.4f}")
        if "roi" in results and "lean" in results and not results["roi"].get("failed"):
            d = dice_table(work / f"out_{preset}_lean" / "ct_clinical", work / f"out_{preset}_roi" / "ct_clinical",
                           ROI_PROMPTS, ref_slug=True)
            results["roi"]["dice_min"] = min(d.values())
            print(f"   roi vs lean (same prompts): Dice {', '.join(f'{n} {v:.4f}' for n, v in d.items())}")
        for name, r in results.items():
            all_rows.append((preset, name, r))

    # --- tables
    print()
    print(f"Table 1: read -> written files, scale {args.scale} (seconds; RSS in MB; load avg now "
          f"{os.getloadavg()[0]:.2f})")
    head = f"{'preset':<18}{'row':<10}{'cls':>4}{'wall':>8}{'process':>9}{'peakRSS':>9}{'windows':>9}" \
           f"{'prec':>9}{'runtime':>9}{'GFLOP/s':>9}{'%mm':>6}{'floor':>7}{'Dice>=':>8}"
    print(head)
    print("-" * len(head))
    for preset, name, r in all_rows:
        if r.get("failed"):
            print(f"{preset:<18}{name:<10} FAILED")
            continue
        net = r["timings"].get("network", float("nan"))
        wins = r.get("windows") or 0
        # windows of a scaled grid cost (w'/w)^3 of a full window
        scale_w = 1.0
        if r.get("window"):
            scale_w = (r["window"][0] * r["window"][1] * r["window"][2]) / cfg["window"] ** 3
        work_gflop = r["gflop_window"] * scale_w * wins
        gfs = work_gflop / net if net and wins else float("nan")
        ref_mm = mm16 if r.get("precision") == "bfloat16" else mm32
        floor = work_gflop / ref_mm if wins else float("nan")
        dmin = r.get("dice_min")
        print(f"{preset:<18}{name:<10}{r['classes']:>4}{r['pipeline_s']:>8.1f}{r['process_s']:>9.1f}"
              f"{r['peak_rss_mb']:>9.0f}{wins:>9}{str(r.get('precision') or '')[:8]:>9}{str(r.get('runtime') or '')[:8]:>9}"
              f"{gfs:>9.1f}"
              f"{100 * gfs / ref_mm:>5.0f}%{floor:>7.1f}{'' if dmin is None else f'{dmin:.4f}':>8}")
    print()
    print("Table 2: seconds per stage")
    head = f"{'preset':<18}{'row':<10}" + "".join(f"{s:>12}" for s in STAGES)
    print(head)
    print("-" * len(head))
    for preset, name, r in all_rows:
        if r.get("failed"):
            continue
        print(f"{preset:<18}{name:<10}" + "".join(f"{r['timings'].get(s, float('nan')):>12.2f}" for s in STAGES))
    print()
    print("wall = read -> written files (issue 20's target for `lean`: <= 30 s and <= 4096 MB on 2 cores, the "
          "stages after the network <= 10 s); process = python "
          "start, imports and checkpoint load included; windows = windows evaluated; GFLOP/s = counted window "
          "FLOPs x windows / network seconds; %mm = of this machine's matmul rate in the row's precision; "
          "floor = seconds those FLOPs need at that matmul rate (no runtime's network can be faster); "
          "Dice>= = lowest per-class Dice against the reference (lean-raw; and lean-raw-torch), against lean-torch "
          "(lean: the same path in eager PyTorch float32) or against `lean` (roi).")
    print(f"results: {work / 'results.jsonl'}")
    return 0


START = time.perf_counter()
if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        res = run_child(sys.argv[1:])
        print("RESULT " + json.dumps(res, default=str))
        sys.exit(0)
    sys.exit(main())
