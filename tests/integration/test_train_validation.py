"""Training on real sarcoma PET: held-out patients are never trained on, Dice per modality/class
lands in log.jsonl, the best step is kept in best/ beside last/ (the weight average when the
recipe has an EMA), and train.dice_weight reaches the masked loss."""
from __future__ import annotations

import json

import torch

from promptseg.checkpoint import open_checkpoint
from promptseg.config import resolve_config
from promptseg.train.trainer import Trainer

HELD = ["STS_002", "STS_008"]


def pet_run(tmp_path, train: dict, validation: dict | None = None) -> dict:
    """A small universal run on the real sarcoma PET (6 mm grid, 32^3 patches, 2 steps)."""
    raw = {"output": str(tmp_path / "run"), "modality": "PET",
           "datasets": [{"path": "sts_sarcoma", "name": "sts_PET", "image": "{case}/PET_image.nii.gz",
                         "label": "{case}/PET_mask.nii.gz", "labels": {1: "soft tissue sarcoma"}, "modality": "PET"}],
           "plan": {"name": "universal_pet", "spacing": [6.0, 6.0, 6.0]},
           "conditioner": {"name": "universal", "text_encoder": "onehot"},
           "train": {"steps": 2, "patch_size": [32, 32, 32], "warmup_steps": 0, **train}}
    if validation is not None:
        raw["validation"] = {"holdout": HELD, "window": [32, 32, 32], **validation}
    return raw


def test_validation_logs_dice_and_keeps_best(shared_data, tmp_path):
    raw = pet_run(tmp_path, {"checkpoint_every": 1}, {"every": 1})
    config = resolve_config(raw, tmp_path, data_root=shared_data)
    trainer = Trainer(config, device="cpu", progress=False)
    assert sorted({c.id for c in trainer.val_cases}) == HELD
    assert not {c.id for c in trainer.cases} & set(HELD) and len(trainer.cases) == 33
    assert not {c.id for group in trainer.sampler.by_dataset for c in group} & set(HELD)
    trainer.run()
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    vals = [x for x in lines if "validation" in x]
    assert [v["step"] for v in vals] == [1, 2]
    for v in vals:
        assert set(v["validation"]["dice"]) == {"PET/soft tissue sarcoma"} and v["validation"]["cases"] == 2
        assert 0.0 <= v["validation"]["dice"]["PET/soft tissue sarcoma"] <= 1.0
    best = open_checkpoint(tmp_path / "run" / "best")
    assert best.meta["validation"]["mean"] == max(v["validation"]["mean"] for v in vals)
    assert best.modalities == ["PET"] and (tmp_path / "run" / "last").is_dir()


def test_with_ema_validation_scores_and_keeps_the_weight_average(shared_data, tmp_path):
    """model/ is the EMA of the weights, so best/ must be chosen on, and hold, that average — not
    the raw weights that only resume a run (last/)."""
    from promptseg.checkpoint.store import read_meta, read_weights

    raw = pet_run(tmp_path, {"checkpoint_every": 2, "ema": 0.5}, {"every": 2})
    Trainer(resolve_config(raw, tmp_path, data_root=shared_data), device="cpu", progress=False).run()
    weights = {}
    for name in ("best", "model", "last"):
        folder = tmp_path / "run" / name
        weights[name] = read_weights(folder, read_meta(folder))
    assert read_meta(tmp_path / "run" / "best")["step"] == 2
    assert weights["best"].keys() == weights["model"].keys()
    assert all(torch.equal(weights["best"][k], weights["model"][k]) for k in weights["model"])
    assert any(not torch.equal(weights["model"][k], weights["last"][k]) for k in weights["model"])


def test_dice_weight_reaches_the_masked_loss(shared_data, tmp_path):
    raw = pet_run(tmp_path, {"dice_weight": 0.25})
    Trainer(resolve_config(raw, tmp_path, data_root=shared_data), device="cpu", progress=False).run()
    logs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(logs) == 2 and all(x["dice"] > 0.01 for x in logs)
    for x in logs:
        assert abs(x["loss"] - (x["bce"] + 0.25 * x["dice"])) < 1e-5
