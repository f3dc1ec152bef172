"""`promptseg predict -i IMAGE_OR_DIR -o OUT -m CHECKPOINT [--prompt NAME ...]`."""
from __future__ import annotations

import sys
import time

import torch

from ..errors import ConfigError
from ..runtime import CPU_RUNTIMES
from .batch import BatchError, predict
from .inputs import OUTPUT_TYPES
from .modality import MODALITIES


def _predict(args) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked, but no CUDA device is available (use --device cpu or auto)")
    inference = {}
    if args.sw_batch_size is not None:
        inference["sw_batch_size"] = args.sw_batch_size
    if args.overlap is not None:
        inference["overlap"] = args.overlap
    if args.threads is not None:
        inference["threads"] = args.threads
    if args.precision is not None:
        inference["precision"] = args.precision
    if args.runtime is not None:
        inference["runtime"] = args.runtime
    if args.mirror:
        inference["mirror"] = True
    if args.fused_head is not None:
        inference["fused_head"] = {"true": True, "false": False}.get(args.fused_head, args.fused_head)
    if args.roi and not args.prompt:
        raise ConfigError("--roi computes only what --prompt asks: give at least one --prompt")

    def report(result) -> None:
        pred = result["prediction"]
        print(pred.summary(result["case"]))
        for note in pred.notes:
            print(f"  note: {note}")

    def failed(case: str, why: str) -> None:
        print(f"{case}: FAILED: {why}", file=sys.stderr)

    t0 = time.perf_counter()
    try:
        results = predict(
            args.model, args.input, args.output, prompts=args.prompt or None, device=args.device,
            postprocess=False if args.no_postprocess else None, write_masks=not args.no_masks,
            progress=not args.quiet, inference=inference, on_case=report, fast=args.fast, roi=args.roi,
            statistics=args.statistics, preview=args.preview, output_types=args.output_type or ["nifti"],
            on_failure=failed, modality=args.modality, text_model=args.text_model, text_weights=args.text_weights,
        )
    except BatchError as exc:
        print(f"{len(exc.results)} case(s) written to {args.output}; {len(exc.failures)} failed:", file=sys.stderr)
        for case, why in exc.failures:
            print(f"  {case}: {why}", file=sys.stderr)
        return 1
    print(f"{len(results)} case(s) written to {args.output} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "predict", help="segment images with a checkpoint (label map + per-class masks on the input grid)"
    )
    p.add_argument("-i", "--input", required=True, nargs="+",
                   help="image file(s) (NIfTI/NRRD/MHA), DICOM series folder(s), or folder(s) of them")
    p.add_argument("-o", "--output", required=True,
                   help="output folder (OUT/<case>.nii.gz, OUT/<case>/<class>.nii.gz, OUT/labels.json), or for "
                        "one input a label map file name such as seg.nii.gz; never an input")
    p.add_argument("-m", "--model", required=True, help="checkpoint folder / run folder, or official .pth")
    p.add_argument("--prompt", action="extend", nargs="+", default=None, metavar="NAME",
                   help="class(es) to segment: --prompt liver spleen, or repeat the flag; quote names with spaces "
                        "(\"liver tumor\"); default: every class the checkpoint knows")
    p.add_argument("--modality", default=None, type=str.upper, choices=MODALITIES,
                   help="what the inputs are, so each is preprocessed with that modality's plan (default: the "
                        "DICOM Modality tag, else the checkpoint's only modality; a multi-modal model needs it "
                        "for NIfTI/NRRD inputs)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-postprocess", action="store_true", help="skip the anatomical post-processing")
    p.add_argument("--no-masks", action="store_true", help="write only the merged label map")
    p.add_argument("--statistics", action="store_true",
                   help="write <case>/statistics.json: per class volume (ml), voxel count, mean and std intensity")
    p.add_argument("--preview", action="store_true",
                   help="write <case>/preview.png: axial, coronal, sagittal planes (radiological) with a legend")
    p.add_argument("--output-type", action="extend", nargs="+", default=None, choices=list(OUTPUT_TYPES),
                   help="nifti (default), dicom-seg, rtstruct; several allowed; DICOM outputs need a DICOM series input")
    p.add_argument("--sw-batch-size", type=int, default=None, help="windows per forward pass (default: checkpoint's)")
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default: checkpoint's)")
    p.add_argument("--mirror", action="store_true",
                   help="test-time mirroring (nnU-Net's): average over flips along the axes that do not swap "
                        "left and right; 4x the network time")
    p.add_argument("--fast", action="store_true",
                   help="run on a 3 mm grid (about 8x fewer voxels); an approximation for a model trained at 1.5 mm")
    p.add_argument("--roi", action="store_true",
                   help="full resolution only where the --prompt classes are (located by a 6 mm pass), "
                        "as TotalSegmentator's roi_subset")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: OMP_NUM_THREADS when set, else the cores this process may use)")
    p.add_argument("--precision", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                   help="autocast dtype of the network (default float32 = the reference's results; bfloat16 is "
                        "2-3x faster on CPUs with native bf16 but moves weakly confident boundaries; "
                        "auto = bfloat16/float16 where native)")
    p.add_argument("--runtime", default=None, choices=list(CPU_RUNTIMES),
                   help="engine of the windows on a CPU (default: the checkpoint's inference.runtime, torch unless "
                        "it says otherwise; openvino / auto compile the windows' graph; GPUs always run PyTorch)")
    p.add_argument("--fused-head", nargs="?", const="true", default=None, choices=["auto", "true", "false"],
                   help="CPU: the per-class head compiled into one loop by torch.compile (same masks, ~10 s less "
                        "on a 32-class clinical CT; compiling takes 5-8 s, ~20 s the first time on a machine). "
                        "Default: the checkpoint's inference.fused_head, auto = volumes of at least 24 window batches")
    p.add_argument("--text-model", default=None,
                   help="a .pth (-m) that needs its text tower: local folder of the text model (tokenizer, config, "
                        "weights); not needed for a folder written by `promptseg import-checkpoint`")
    p.add_argument("--text-weights", default=None, help="the fine-tuned text-encoder .pth that goes with --text-model")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_predict)
