"""`promptseg pseudo-label -m MODEL -i SCANS -o OUT [--prompt NAME ...] [--class-threshold T]`."""
from __future__ import annotations

import sys

from ..inference.modality import MODALITIES


def _run(args) -> int:
    from ..checkpoint import open_checkpoint
    from .pseudo_label import REPORT, pseudo_label

    model = open_checkpoint(args.model, device="cpu")

    def report(res) -> None:
        state = "kept" if res.kept else f"dropped ({res.reason})"
        conf = ", ".join(f"{c} {v:.2f}" for c, v in res.confidence.items())
        print(f"{res.case}: {state}; {len(res.passed)}/{len(res.confidence)} classes passed [{conf}]")

    inference = {"threads": args.threads} if args.threads else None
    out = pseudo_label(model, args.input, args.output, prompts=args.prompt or None, class_threshold=args.class_threshold,
                       case_threshold=args.case_threshold, name=args.name, device=args.device, inference=inference,
                       progress=not args.quiet, on_case=report, modality=args.modality)
    for d in out["datasets"]:
        print(f"{args.output}/{d['folder']}: {len(d['cases'])} case(s), annotated: {', '.join(d['annotated_classes'])}")
    print(f"confidences and decisions in {args.output}/{REPORT}", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("pseudo-label", help="label unlabelled scans with a model -> nnU-Net-style dataset(s)",
                       description=__doc__.splitlines()[0])
    p.add_argument("-i", "--input", required=True, nargs="+", help="unlabelled scans: files, DICOM folders or folders of them")
    p.add_argument("-o", "--output", required=True, help="output folder (dataset folder(s) + pseudo_labels.json)")
    p.add_argument("-m", "--model", required=True, help="checkpoint folder / run folder, or official .pth")
    p.add_argument("--prompt", action="append", default=None, metavar="NAME", help="classes to label (default: all)")
    p.add_argument("--class-threshold", type=float, default=0.8,
                   help="a class counts as annotated in a case only if its confidence reaches this (default 0.8)")
    p.add_argument("--case-threshold", type=float, default=0.0,
                   help="drop a case whose mean class confidence is below this (default 0: keep)")
    p.add_argument("--name", default="Pseudo", help="dataset folder name (default Pseudo)")
    p.add_argument("--modality", default=None, type=str.upper, choices=MODALITIES,
                   help="modality of the scans (CT, MR, PET): default the DICOM tag, else the model's only modality")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)
