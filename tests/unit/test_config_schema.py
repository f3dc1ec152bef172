"""The run-config schema (promptseg.config): defaults and one-line errors at every level."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from promptseg.config import DEFAULT_INFERENCE, DEFAULTS, inference_settings, load_config, resolve_config
from promptseg.errors import ConfigError
from promptseg.models.official import official_run_config


@pytest.mark.parametrize("raw, words", [
    ({"train": {"checkpoint_evry": 5}}, ["train.checkpoint_evry", "checkpoint_every"]),
    ({"inference": {"overlapp": 0.2}}, ["inference.overlapp", "overlap"]),
    ({"datasets": [{"path": "a", "weigth": 2}]}, ["datasets[].weigth", "path"]),
    ({"trian": {}}, ["trian", "train"]),
    ({"train": {"steps": 0}}, ["train.steps", "positive integer"]),
    ({"train": {"batch_size": True}}, ["train.batch_size"]),
    ({"train": {"fg_ratio": 2}}, ["train.fg_ratio", "probability"]),
    ({"train": {"dice_weight": -0.5}}, ["train.dice_weight", ">= 0"]),
    ({"train": [1, 2]}, ["'train' must be a mapping"]),
    ({"inference": {"overlap": 1.5}}, ["inference.overlap"]),
    ({"backbone": {"preset": "small"}}, ["'backbone'", "'name'"]),
    ({"classes": "liver"}, ["'classes'"]),
    ({"seed": "zero"}, ["'seed'"]),
])
def test_bad_values_are_one_line_errors_naming_the_key(raw, words):
    with pytest.raises(ConfigError) as err:
        resolve_config(raw)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_yaml_file_errors_name_the_file(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({"train": {"checkpoint_evry": 5}}))
    with pytest.raises(ConfigError, match=r"run\.yaml: unknown key train\.checkpoint_evry; known: .*checkpoint_every"):
        load_config(p)


def test_defaults_fill_every_section_and_paths_are_relative_to_the_yaml(tmp_path):
    p = tmp_path / "sub" / "run.yaml"
    p.parent.mkdir()
    p.write_text(yaml.safe_dump({"datasets": ["data/A"], "train": {"steps": 3}, "taxonomy": "mine.yaml"}))
    cfg = load_config(p)
    assert set(cfg) == set(DEFAULTS)
    assert cfg["train"]["steps"] == 3 and cfg["train"]["checkpoint_every"] == DEFAULTS["train"]["checkpoint_every"]
    assert cfg["inference"] == inference_settings(None) and set(cfg["inference"]) == set(DEFAULT_INFERENCE)
    assert cfg["datasets"] == [{"path": str(p.parent / "data" / "A")}]
    assert cfg["taxonomy"] == str(p.parent / "mine.yaml")


def test_official_run_config_is_a_valid_resolved_config():
    cfg = official_run_config("unet")
    assert cfg["inference"]["sw_batch_size"] == 4 and cfg["official"]["backbone"] == "unet"


def test_default_inference_lives_in_one_place():
    """No other module of the package defines DEFAULT_INFERENCE or a `window` default table."""
    src = Path(__file__).resolve().parents[2] / "src" / "promptseg"
    owners = []
    for f in src.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
            if any(isinstance(t, ast.Name) and t.id == "DEFAULT_INFERENCE" for t in targets):
                owners.append(f.relative_to(src).as_posix())
    assert owners == ["config.py"]


def test_extend_and_finetune_sections_share_the_schema_checks():
    from promptseg.config import EXTEND_DEFAULTS, section

    raw = {"extend": {"lora": {"rnak": 4}}}
    with pytest.raises(ConfigError, match=r"^new\.yaml: unknown key extend\.lora\.rnak; known: alpha, rank, targets$"):
        section(raw, "extend", EXTEND_DEFAULTS, "new.yaml")
    assert section({"extend": {"lora": {"rank": 4}}}, "extend", EXTEND_DEFAULTS, "x")["lora"] == {
        **EXTEND_DEFAULTS["lora"], "rank": 4}
