"""The README is part of the product: its run-YAML table is the one generated from config.py's
defaults (every key, nested train/inference/extend/finetune keys too), and it never asks for a
file outside the clone."""
from __future__ import annotations

import re
from pathlib import Path

from promptseg import config
from promptseg.config_doc import readme_section, reference_markdown

README = Path(__file__).resolve().parents[2] / "README.md"
REGENERATE = "run `python -m promptseg.config_doc README.md`"


def _keys(defaults: dict, prefix: str = "") -> list[str]:
    return [f"{prefix}{k}" for k in defaults]


def test_run_yaml_table_is_the_generated_one():
    section = readme_section(README.read_text(encoding="utf-8"))
    assert section, f"README.md lacks the run-YAML reference markers; {REGENERATE}"
    assert section == reference_markdown(), f"README.md's run-YAML table is out of date; {REGENERATE}"


def test_every_default_key_appears_in_the_readme():
    text = README.read_text(encoding="utf-8")
    keys = (_keys(config.DEFAULTS) + _keys(config.DEFAULT_TRAIN, "train.") + _keys(config.DEFAULT_INFERENCE, "inference.")
            + _keys(config.EXTEND_DEFAULTS, "extend.") + _keys(config.FINETUNE_DEFAULTS, "finetune."))
    missing = [k for k in keys if f"`{k}`" not in text]
    assert not missing, f"keys without a README row: {missing}; {REGENERATE}"


def test_no_required_file_outside_the_clone():
    """`../shared/...` may be named only as the optional test-data folder, never DESIGN/SPEC etc."""
    text = README.read_text(encoding="utf-8")
    outside = {p for p in re.findall(r"\.\./[\w./-]+", text) if not p.startswith("../shared/data/")}
    assert not outside, outside
