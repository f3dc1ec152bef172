"""`promptseg import-checkpoint`: an official Universal Model `.pth` -> a native checkpoint."""
from __future__ import annotations

from pathlib import Path


def _import(args) -> int:
    from ..train.checkpoint import save_checkpoint
    from .official import load_official

    model = load_official(args.file, backbone=args.backbone)
    out = save_checkpoint(
        model, Path(args.output), model.run_config, step=0, extra={"imported_from": str(Path(args.file).resolve())}
    )
    n = sum(p.numel() for p in model.parameters())
    print(f"imported official {model.run_config['official']['backbone']} model ({n / 1e6:.2f}M parameters, "
          f"{len(model.class_names)} classes) -> {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("import-checkpoint", help="convert an official Universal Model .pth into a promptseg checkpoint")
    p.add_argument("file", help="clip_driven_universal_unet.pth or clip_driven_universal_swin_unetr.pth")
    p.add_argument("-o", "--output", required=True, help="output checkpoint folder")
    p.add_argument("--backbone", choices=["unet", "swinunetr"], default=None, help="default: detected from the keys")
    p.set_defaults(func=_import)
