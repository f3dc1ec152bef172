"""`promptseg sat-import` and `promptseg sat-predict`: SAT-Nano / SAT-Pro published weights, by file.

Why separate verbs for now: SAT's model is not a `UniversalSegmenter` (fixed 288x288x96 windows,
its own vocabulary), so it runs through inference/sat_predict.py rather than the predictor.
"""
from __future__ import annotations

from pathlib import Path

from .errors import ConfigError
from .io.readers import read_image
from .io.writers import write_image
from .models.official_sat import is_sat_file, load_official_sat, load_sat_model, save_sat_model
from .workflows.sat_predict import predict_sat
from .text.sat_text import attach_vocabulary


def _import(args) -> int:
    if not is_sat_file(args.file):
        raise ConfigError(f"{args.file}: not a SAT-Nano / SAT-Pro checkpoint")
    model = load_official_sat(args.file)
    attach_vocabulary(model, args.text_model, args.text_weights, modalities=tuple(args.modalities))
    out = save_sat_model(model, args.output)
    print(f"imported SAT-{model.variant} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{len(model.vocabulary)} terms x {len(model.modalities)} modalities) -> {out}")
    return 0


def _predict(args) -> int:
    model = load_sat_model(args.model) if Path(args.model).is_dir() else None
    if model is None:
        raise ConfigError(f"{args.model}: run `promptseg sat-import` first (a SAT .pth needs its text tower)")
    volume = read_image(args.input)
    masks = predict_sat(model, volume, args.prompt, args.modality, args.device)
    out = Path(args.output)
    for name, mask in masks.items():
        path = write_image(mask, out / f"{name.replace('/', '_').replace(' ', '_')}.nii.gz")
        print(f"{name}: {int(mask.array.sum())} voxels -> {path}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("sat-import", help="SAT-Nano / SAT-Pro .pth + its text tower -> a model that needs no text tower")
    p.add_argument("file", help="SAT_Nano.pth or SAT_Pro.pth (the authors' files)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--text-model", required=True, help="local folder of the BioLORD-2023-C model (tokenizer + config)")
    p.add_argument("--text-weights", default=None, help="the authors' text-encoder .pth")
    p.add_argument("--modalities", nargs="+", default=["ct", "mri", "pet"])
    p.set_defaults(func=_import)
    q = sub.add_parser("sat-predict", help="segment a scan with an imported SAT model")
    q.add_argument("-m", "--model", required=True)
    q.add_argument("-i", "--input", required=True)
    q.add_argument("-o", "--output", required=True, help="output folder, one mask per prompt")
    q.add_argument("--prompt", nargs="+", required=True)
    q.add_argument("--modality", default="CT")
    q.add_argument("--device", default="cpu")
    q.set_defaults(func=_predict)
