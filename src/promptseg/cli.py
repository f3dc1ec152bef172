"""`promptseg <verb>`: a thin layer over the Python API.

Each stage package that has verbs provides `cli.register(subparsers)`; this file only collects
them, parses, and turns a `PromptsegError` into a one-line message and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import PromptsegError

# (module providing register(subparsers)); a module that is absent is skipped.
VERB_MODULES = [
    "promptseg.train.cli",
    "promptseg.inference.cli",
    "promptseg.evaluation.cli",
    "promptseg.data.cli",
    "promptseg.checkpoint_cli",
    "promptseg.train.extend_cli",
    "promptseg.workflows.bench",
    "promptseg.workflows.demo",
    "promptseg.workflows.pseudo_label_cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptseg", description="Universal prompt-driven 3D medical image segmentation")
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"promptseg {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except PromptsegError as exc:
        print(f"promptseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("promptseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
