"""`promptseg import-checkpoint` (official `.pth` -> native folder) and `promptseg info MODEL`.

A SAT-Nano / SAT-Pro file is imported with its text tower: the vocabulary's embeddings are computed
once and saved with the weights, so the imported folder predicts with no text tower at all.

`info` answers "what does this model know?" from the checkpoint alone: classes with the label value
each gets in a merged map, modalities and their plans, backbone, conditioner, parameter count,
training datasets and steps -- for native folders and official `.pth` files alike.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint, open_checkpoint, save_checkpoint
from .inference.merge import label_values
from .models.official_sat import save_sat_model


def _import(args) -> int:
    ckpt = open_checkpoint(args.file, backbone=args.backbone, text_model=args.text_model,
                           text_weights=args.text_weights, modalities=tuple(args.modalities))
    n = sum(p.numel() for p in ckpt.model.parameters())
    if ckpt.meta.get("sat"):
        out = save_sat_model(ckpt.model, Path(args.output))
        print(f"imported SAT-{ckpt.meta['sat']} ({n / 1e6:.1f}M parameters, {len(ckpt.classes)} terms x "
              f"{len(ckpt.plans)} modalities: {', '.join(ckpt.plans)}) -> {out}")
        return 0
    out = save_checkpoint(ckpt.model, Path(args.output), ckpt.config, step=0,
                          extra={"imported_from": str(Path(args.file).resolve())})
    print(f"imported official {ckpt.config['official']['backbone']} model ({n / 1e6:.2f}M parameters, "
          f"{len(ckpt.classes)} classes) -> {out}")
    return 0


def _kind(ckpt: Checkpoint) -> str:
    if ckpt.meta.get("sat"):
        return f"official SAT-{ckpt.meta['sat']}"
    official = ckpt.config.get("official") or {}
    if official.get("kind") == "uniseg":
        return "official UniSeg (11 tasks)"
    return "official Universal Model" if ckpt.meta.get("official") or official else "promptseg"


def model_info(ckpt: Checkpoint) -> dict[str, Any]:
    """What `promptseg info` shows, as a JSON-able mapping."""
    cfg = ckpt.config
    values = label_values(ckpt.classes, ckpt.taxonomy)
    datasets = ckpt.meta.get("datasets") or [Path(d["path"]).name for d in cfg.get("datasets") or []]
    return {
        "checkpoint": str(ckpt.path),
        "kind": _kind(ckpt),
        "classes": [{"name": c, "label": values[c]} for c in ckpt.classes],
        "modalities": list(ckpt.plans),
        "plans": ckpt.plans,
        "backbone": cfg.get("backbone"),
        "conditioner": cfg.get("conditioner"),
        "parameters": int(sum(p.numel() for p in ckpt.model.parameters())),
        "datasets": datasets,
        "steps": ckpt.step,
        "planned_steps": (cfg.get("train") or {}).get("steps") if not ckpt.meta.get("official") else None,
        "extensions": len((cfg.get("extension") or {}).get("history") or []),
        "taxonomy": (ckpt.meta.get("taxonomy") or {}).get("version"),
    }


def _spec(section: Any) -> str:
    if not isinstance(section, dict):
        return str(section)
    rest = ", ".join(f"{k}={v}" for k, v in section.items() if k != "name")
    return f"{section.get('name')}" + (f" ({rest})" if rest else "")


def format_info(info: dict[str, Any]) -> str:
    lines = [
        f"model       {info['checkpoint']} ({info['kind']})",
        f"backbone    {_spec(info['backbone'])}",
        f"conditioner {_spec(info['conditioner'])}",
        f"parameters  {info['parameters']:,} ({info['parameters'] / 1e6:.2f}M)",
        f"modalities  {', '.join(info['modalities'])}",
    ]
    lines += [f"plan {m:<6} {_spec(p)}" for m, p in info["plans"].items()]
    steps = "n/a (official weights)" if info["steps"] is None else f"{info['steps']}"
    if info.get("planned_steps"):
        steps += f" of {info['planned_steps']}"
    lines += [f"datasets    {', '.join(info['datasets']) or 'n/a'}", f"steps       {steps}",
              f"classes     {len(info['classes'])} (label value: name)"]
    lines += [f"  {c['label']:>4}: {c['name']}" for c in info["classes"]]
    return "\n".join(lines)


def _info(args) -> int:
    info = model_info(open_checkpoint(args.model))
    print(json.dumps(info, indent=1, default=str) if args.json else format_info(info))
    return 0


def register(sub) -> None:
    p = sub.add_parser("import-checkpoint",
                       help="convert an official Universal Model or SAT-Nano / SAT-Pro .pth into a promptseg model")
    p.add_argument("file", help="clip_driven_universal_unet.pth, clip_driven_universal_swin_unetr.pth, "
                                "SAT_Nano.pth or SAT_Pro.pth")
    p.add_argument("-o", "--output", required=True, help="output checkpoint folder")
    p.add_argument("--backbone", choices=["unet", "swinunetr"], default=None,
                   help="Universal Model: default detected from the keys")
    p.add_argument("--text-model", default=None,
                   help="SAT: local folder of the BioLORD-2023-C text model (tokenizer + config + weights)")
    p.add_argument("--text-weights", default=None, help="SAT: the authors' text-encoder .pth (fine-tuned tower)")
    p.add_argument("--modalities", nargs="+", default=["ct", "mri", "pet"],
                   help="SAT: modalities to embed the vocabulary for (default ct mri pet)")
    p.set_defaults(func=_import)
    q = sub.add_parser("info", help="what a model knows: classes, modalities, plans, architecture, training")
    q.add_argument("model", help="checkpoint folder, run folder or official .pth file")
    q.add_argument("--json", action="store_true", help="print JSON instead of text")
    q.set_defaults(func=_info)
