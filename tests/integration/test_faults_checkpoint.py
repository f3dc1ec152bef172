"""Checkpoint and resume faults (issue 16): nothing lost, nothing silently wrong.

A tiny phantom run (a U-Net of widths 4-8-16 on 16^3 patches, one thread) is trained, corrupted,
half-rotated and killed with SIGKILL at random instants; every case must end in a one-line error
or in the exact weights of an uninterrupted run, with each log step written once.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from promptseg.checkpoint import META, STATE, WEIGHTS, latest, open_checkpoint, read_meta
from promptseg.cli import main
from promptseg.config import load_config
from promptseg.errors import CheckpointError
from promptseg.train.trainer import Trainer, train

SRC = Path(__file__).resolve().parents[2] / "src"
EVERY = 4
TOTAL = 80


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two small phantom datasets, a run YAML writer and the weights of an uninterrupted run."""
    from promptseg.data.phantoms import make_phantom_datasets

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("faults")
    data = make_phantom_datasets(root / "data", seed=0, n_train=(1, 0, 1, 0), n_test=0, shape=(32, 32, 24))

    def run_yaml(name: str, **train_over) -> Path:
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "output": name, "cache_dir": str(root / "cache"),
            "datasets": [str(data["PhantomA_liver"]), str(data["PhantomC_organs"])],
            "plan": {"name": "universal_ct", "spacing": None},
            "backbone": {"name": "unet", "preset": "small", "widths": [4, 8, 16]},
            "conditioner": {"name": "onehot"},
            "train": {"steps": TOTAL, "batch_size": 1, "patch_size": [16, 16, 16], "lr": 0.003, "warmup_steps": 2,
                      "checkpoint_every": EVERY, "num_threads": 1, **train_over},
        }))
        return path

    ref = train(load_config(run_yaml("reference")), device="cpu", progress=False)
    yield {"root": root, "run_yaml": run_yaml, "reference": load_file(str(ref / WEIGHTS))}
    torch.set_num_threads(n)


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _partial(world, name: str, steps: int) -> tuple[Path, Path]:
    """A run stopped after `steps` steps (its `last/` holds step `steps`)."""
    yml = world["run_yaml"](name)
    train(load_config(yml), device="cpu", progress=False, max_steps=steps)
    return yml, yml.parent / name


def test_resume_is_bit_exact(world):
    """40 steps, stop, resume to 80 == 80 uninterrupted steps: weights equal, log steps 1..80 once."""
    yml, run = _partial(world, "exact", 40)
    assert read_meta(run / "last")["step"] == 40
    out = train(load_config(yml), device="cpu", progress=False)
    assert _same_weights(load_file(str(out / WEIGHTS)), world["reference"])
    assert _steps(run) == list(range(1, TOTAL + 1))


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _drop_hash(folder: Path, key: str) -> None:
    meta = json.loads((folder / META).read_text())
    meta.pop(key)
    (folder / META).write_text(json.dumps(meta))


CORRUPTIONS = {
    # name: (damage to last/, words the one-line error must contain)
    "weights byte": (lambda d: _flip(d / WEIGHTS, -100), "content hash"),
    "weights truncated": (lambda d: (d / WEIGHTS).write_bytes((d / WEIGHTS).read_bytes()[:1000]), "content hash"),
    "safetensors header, no hash": (lambda d: (_flip(d / WEIGHTS, 12), _drop_hash(d, "sha256")), "unreadable weights"),
    "training state byte": (lambda d: _flip(d / STATE, 200), "content hash"),
    "training state truncated, no hash": (
        lambda d: ((d / STATE).write_bytes((d / STATE).read_bytes()[:500]), _drop_hash(d, "state_sha256")),
        "unreadable training state"),
    "training state missing": (lambda d: (d / STATE).unlink(), "training state missing"),
    "checkpoint.json garbage": (lambda d: (d / META).write_text("{not json"), "unreadable"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_checkpoint_is_a_one_line_error_on_resume(world, case, capsys):
    damage, words = CORRUPTIONS[case]
    yml, run = _partial(world, f"corrupt{list(CORRUPTIONS).index(case)}", 8)
    damage(run / "last")
    before = {p.name: p.read_bytes() for p in (run / "last").iterdir()}
    log_before = (run / "log.jsonl").read_text()
    capsys.readouterr()
    assert main(["train", str(yml), "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "last" in err, err
    # nothing resumed, re-signed or trained: the damaged folder and the log are as they were
    assert {p.name: p.read_bytes() for p in (run / "last").iterdir()} == before
    assert (run / "log.jsonl").read_text() == log_before
    assert not (run / "model").exists()


def test_corrupt_final_model_is_refused_by_open_checkpoint(world):
    out = train(load_config(world["run_yaml"]("final", steps=4)), device="cpu", progress=False)
    _flip(out / WEIGHTS, -10)
    with pytest.raises(CheckpointError, match="content hash"):
        open_checkpoint(out)


def test_resume_finds_the_newest_complete_checkpoint_whatever_its_folder(world):
    """Kill states of the rotation: `last` gone with `last.old` left; a finished temporary folder
    newer than `last`; an unfinished temporary folder (no checkpoint.json) is ignored."""
    yml, run = _partial(world, "rotation", 8)
    shutil.copytree(run / "last", world["root"] / "step8")
    train(load_config(yml), device="cpu", progress=False, max_steps=4)  # last = step 12
    os.replace(run / "last", run / ".last.tmp-finished")
    shutil.copytree(world["root"] / "step8", run / "last")
    shutil.copytree(world["root"] / "step8", run / ".last.tmp-unfinished")
    (run / ".last.tmp-unfinished" / META).unlink()
    assert latest(run / "last") == run / ".last.tmp-finished"
    assert Trainer(load_config(yml), device="cpu", progress=False).step == 12
    # the kill between `last -> last.old` and `tmp -> last`: only last.old and a temporary remain
    shutil.rmtree(run / "last")
    shutil.copytree(world["root"] / "step8", run / "last.old")
    assert Trainer(load_config(yml), device="cpu", progress=False).step == 12
    shutil.rmtree(run / ".last.tmp-finished")
    trainer = Trainer(load_config(yml), device="cpu", progress=False)
    assert trainer.step == 8 and _steps(run) == list(range(1, 9)), "log lines after the resumed step dropped"
    trainer.run(max_steps=4)
    left = sorted(p.name for p in run.iterdir() if "last" in p.name)
    assert left == ["last"], f"stale rotation folders left behind: {left}"
    assert read_meta(run / "last")["step"] == 12 and _steps(run) == list(range(1, 13))


def test_kill_9_at_random_instants_loses_at_most_checkpoint_every_steps(world):
    """>= 10 SIGKILLs of a real `promptseg train` at random instants (start-up, steps, saves): each
    restart resumes at most `checkpoint_every` steps back, no log step is ever written twice, and
    the finished run's weights equal the uninterrupted run's."""
    yml = world["run_yaml"]("killed")
    run = yml.parent / "killed"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "promptseg", "train", str(yml), "--device", "cpu", "--quiet"]
    rng = random.Random(16)
    kills, mid_rotation = 0, 0
    while kills < 10:
        start = _newest_complete(run)
        kept = _lines(run)[:start]  # what the restart must resume after, untouched
        proc = subprocess.Popen(cmd, cwd=yml.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        if kills % 4 == 3:  # now and then during start-up (imports, cache check, resume)
            time.sleep(rng.uniform(0.0, 2.0))
        else:  # mostly once it is training: any instant of a step, a log write or a save
            while time.time() < deadline and proc.poll() is None:
                if (run / "log.jsonl").is_file() and max(_steps_tolerant(run), default=0) > start:
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.8))
        if proc.poll() is not None:
            pytest.fail(f"train ended before the kill (exit {proc.returncode}): {proc.stderr.read().decode()[-500:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        logged = _steps_tolerant(run)
        assert len(logged) == len(set(logged)), f"kill {kills}: a log step written twice: {logged}"
        assert _lines(run)[:start] == kept, f"kill {kills}: the restart did not resume at step {start}"
        mid_rotation += any(p.name != "last" for p in run.iterdir() if "last" in p.name)
        saved = _newest_complete(run)
        assert max(logged, default=0) - saved <= EVERY, f"kill {kills}: logged {max(logged)}, newest checkpoint {saved}"
    print(f"{kills} kills, {mid_rotation} of them with a rotation under way")
    done = subprocess.run(cmd, cwd=yml.parent, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1000:]
    assert _steps(run) == list(range(1, TOTAL + 1))
    assert _same_weights(load_file(str(run / "model" / WEIGHTS)), world["reference"])
    assert sorted(p.name for p in run.iterdir() if "last" in p.name or "model" in p.name) == ["last", "model"]


def _newest_complete(run: Path) -> int:
    """Step of the newest folder with a checkpoint.json among all rotation folders (found here
    independently of `latest`)."""
    steps = [json.loads((d / META).read_text())["step"] for d in run.glob("*last*") if (d / META).is_file()]
    steps += [json.loads((d / META).read_text())["step"] for d in run.glob(".last*") if (d / META).is_file()]
    return max(steps, default=0)


def _lines(run: Path) -> list[str]:
    return (run / "log.jsonl").read_text().splitlines(keepends=True) if (run / "log.jsonl").is_file() else []


def _steps_tolerant(run: Path) -> list[int]:
    """Logged steps, ignoring a last line a kill cut short (the resume drops it)."""
    if not (run / "log.jsonl").is_file():
        return []
    out = []
    for line in (run / "log.jsonl").read_text().splitlines(keepends=True):
        try:
            if line.endswith("\n"):
                out.append(json.loads(line)["step"])
        except ValueError:
            pass
    return out
