"""Compare every conditioner on one suite: the same datasets, backbone, seed, step budget and run
YAML (only `conditioner:` differs); one table of per-class Dice, parameters, s/step, s/volume.

A thin wrapper over `promptseg bench compare` (promptseg/workflows/bench.py), kept beside the other
benchmarks. Suites and per-method settings: src/promptseg/configs/bench.yaml.

Run:  .venv/bin/python benchmarks/compare_methods.py --suite phantom --out /tmp/bench --threads 1
      .venv/bin/python benchmarks/compare_methods.py --suite real-ct --out /tmp/bench --threads 1
Prints the table; writes OUT/<suite>/table.md and OUT/<suite>/results.json.
"""
from __future__ import annotations

import argparse
import sys

from promptseg.workflows.bench import add_compare_arguments, run_compare_args
from promptseg.errors import PromptsegError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_compare_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return run_compare_args(args)
    except PromptsegError as exc:
        print(f"compare_methods: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
