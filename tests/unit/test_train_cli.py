"""`promptseg train --threads N` sets train.num_threads (issue 18 item 5: train and demo take --threads)."""
from __future__ import annotations

import promptseg.train.trainer as trainer
from promptseg.cli import main


def test_train_threads_flag_reaches_the_config(tmp_path, monkeypatch):
    seen = {}

    def fake_train(config, device="auto", progress=True):
        seen.update(config)
        return tmp_path / "run" / "model"

    monkeypatch.setattr(trainer, "train", fake_train)
    run = tmp_path / "run.yaml"
    run.write_text("output: run\ntrain: {steps: 3}\n")
    assert main(["train", str(run), "--threads", "2", "--quiet"]) == 0
    assert seen["train"]["num_threads"] == 2 and seen["train"]["steps"] == 3
    assert main(["train", str(run), "--quiet"]) == 0
    assert seen["train"]["num_threads"] is None
