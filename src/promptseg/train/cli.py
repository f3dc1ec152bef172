"""`promptseg train RUN.yaml`."""
from __future__ import annotations


def _train(args) -> int:
    from ..config import load_config
    from .trainer import train

    config = load_config(args.config, data_root=args.data)
    if args.steps is not None:
        config["train"]["steps"] = args.steps
    if args.threads is not None:
        config["train"]["num_threads"] = args.threads
    if args.output:
        from pathlib import Path

        config["output"] = str(Path(args.output).resolve())
    ckpt = train(config, device=args.device, progress=not args.quiet)
    import os

    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one line from rank 0 only
        print(f"checkpoint: {ckpt}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model from a run YAML (resumes after a kill)")
    p.add_argument("config", help="run YAML file")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument("--output", default=None, help="override the run's output folder")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="folder the run's relative dataset paths resolve in (overrides the YAML's data_root)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (overrides train.num_threads; default: OMP_NUM_THREADS when set, else all cores)")
    p.set_defaults(func=_train)
