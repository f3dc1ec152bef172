"""`promptseg extend CHECKPOINT NEW_RUN.yaml` and `promptseg finetune CHECKPOINT RUN.yaml`."""
from __future__ import annotations


def _extend(args) -> int:
    from .continual import extend

    ckpt = extend(
        args.checkpoint, args.config, device=args.device, progress=not args.quiet, report=not args.no_report,
        overrides={"steps": args.steps, "output": args.output, "strategy": args.strategy,
                   "pseudo_labels": args.pseudo_labels, "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha,
                   "eval_old": args.eval_old, "eval_new": args.eval_new},
    )
    print(f"checkpoint: {ckpt}")
    return 0


def _finetune(args) -> int:
    from .continual import finetune

    ckpt = finetune(
        args.checkpoint, args.config, device=args.device, progress=not args.quiet,
        overrides={"steps": args.steps, "output": args.output, "init": args.init, "freeze": args.freeze},
    )
    print(f"checkpoint: {ckpt}")
    return 0


def _common(p) -> None:
    p.add_argument("checkpoint", help="trained model: a checkpoint folder or a run folder")
    p.add_argument("config", help="run YAML: the new datasets, train settings and output")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument("--output", default=None, help="override the run's output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub) -> None:
    from .continual import STRATEGIES

    p = sub.add_parser(
        "extend",
        help="add classes to a trained model from new datasets only (continual learning)",
        description="Add the classes the new datasets annotate to a trained model, without its old data. "
        "The YAML's `extend:` section picks the strategy (pseudo-label, freeze-backbone, lora, naive).",
    )
    _common(p)
    p.add_argument("--strategy", default=None, choices=list(STRATEGIES), help="override extend.strategy")
    p.add_argument("--pseudo-labels", default=None, choices=["hard", "soft"], help="override extend.pseudo_labels")
    p.add_argument("--lora-rank", type=int, default=None, help="override extend.lora.rank")
    p.add_argument("--lora-alpha", type=float, default=None, help="override extend.lora.alpha")
    p.add_argument("--eval-old", default=None, help="held-out set of the old task (forgetting report)")
    p.add_argument("--eval-new", default=None, help="held-out set of the new task (forgetting report)")
    p.add_argument("--no-report", action="store_true", help="skip the forgetting report")
    p.set_defaults(func=_extend)

    q = sub.add_parser(
        "finetune",
        help="fine-tune a trained model to a new dataset with its own classes",
        description="Start from a trained model (finetune.init: all, backbone or encoder) and train on the "
        "run's datasets; finetune.freeze: none, encoder or backbone.",
    )
    _common(q)
    q.add_argument("--init", default=None, choices=["all", "backbone", "encoder"], help="override finetune.init")
    q.add_argument("--freeze", default=None, choices=["none", "encoder", "backbone"], help="override finetune.freeze")
    q.set_defaults(func=_finetune)
