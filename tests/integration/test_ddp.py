"""DDP under torchrun on CPU (Gloo): 2 processes == 1 process with the doubled batch, rank-0-only
writes, 2 -> 1 process resume, and exact zero gradients for per-class parameters a step leaves out.

The same file is the worker torchrun starts (`python test_ddp.py train|grads ...`), so nothing but
this file is needed. Every launch has its own time-out; a hang fails the test instead of blocking.

Why the equivalence is exact: the trainer scales each rank's pair-averaged masked loss by its share
of the global batch's annotated pairs (`distributed.pair_weight`), so DDP's gradient average is the
pair average over both ranks -- here the datasets annotate 2, 3 and 6 classes, so the ranks' pair
counts differ and a plain average of per-rank means would not match.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
STEPS, BATCH, SEED = 3, 2, 7
TRAIN = {"steps": STEPS, "batch_size": BATCH, "patch_size": [32, 32, 32], "lr": 1e-3, "warmup_steps": 1,
         "checkpoint_every": 2, "num_threads": 1, "rot90_prob": 0.5, "precision": "fp32",
         "head_lr_scale": 30}  # said, not inherited: no lr-override warning on rank 1; two optimiser groups under DDP
LAUNCH_TIMEOUT = 150
ORGANS = ["spleen", "right kidney", "left kidney", "liver", "aorta", "pancreas"]


# ---------------------------------------------------------------------------------------------
# helpers shared by the test and the worker
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha1(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _torchrun(args: list[str], out: Path, timeout: float = LAUNCH_TIMEOUT) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 THIS_FILE args` on localhost; kills the whole group on time-out."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [str(TORCHRUN), "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           __file__, *args]
    proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        stdout, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s (hang?):\n{stdout[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, "")


def _sampler_for(trainer, batch_size: int, seed: int):
    from promptseg.data.sampling import PatchSampler

    t = trainer.config["train"]
    return PatchSampler(trainer.cases, trainer.classes, t["patch_size"], batch_size=batch_size,
                        dataset_sampling=t["dataset_sampling"], fg_ratio=float(t["fg_ratio"]),
                        rot90_prob=float(t["rot90_prob"]), intensity_shift_prob=float(t["intensity_shift_prob"]),
                        seed=seed)


def _in_float64(trainer_cls, patch=setattr):
    """Train in float64 through the trainer's own hooks (model and batch cast; loss, optimiser,
    DDP unchanged). Why: AdamW divides each gradient by its own running magnitude, so gradients
    that are float32 rounding noise -- e.g. conv biases ahead of InstanceNorm, whose true
    gradient is 0 -- become steps of about lr in either run, in different directions. float64
    shrinks that noise far below Adam's eps, so what remains is DDP's own exactness."""
    build, prepare = trainer_cls.build_model, trainer_cls.prepare_batch

    def build_model(self, in_channels):
        return build(self, in_channels).double()

    def prepare_batch(self, batch):
        batch = prepare(self, batch)
        batch.image = batch.image.double()
        return batch

    patch(trainer_cls, "build_model", build_model)
    patch(trainer_cls, "prepare_batch", prepare_batch)


class _Concat:
    """One batch = rank 0's batch followed by rank 1's (what DDP's two ranks draw), for the reference."""

    def __init__(self, samplers):
        self.samplers = samplers
        self.rng = samplers[0].rng
        self.seen: list[list[str]] = []

    def sample(self):
        from promptseg.data.sampling import Batch

        parts = [s.sample() for s in self.samplers]
        batch = Batch(image=torch.cat([p.image for p in parts]), targets=torch.cat([p.targets for p in parts]),
                      annotated=torch.cat([p.annotated for p in parts]),
                      modality=sum((p.modality for p in parts), []), datasets=sum((p.datasets for p in parts), []),
                      case_ids=sum((p.case_ids for p in parts), []))
        self.seen.append([_digest(x) for x in batch.image])
        return batch


# ---------------------------------------------------------------------------------------------
# worker side (run by torchrun)
def _worker_train(run_yaml: str, dump: str) -> int:
    """`promptseg train RUN.yaml` as a user runs it, with spies that record what each rank does."""
    import promptseg.train.trainer as T
    from promptseg.cli import main

    rank = int(os.environ["RANK"])
    dump_dir = Path(dump)
    real_save, real_run, real_step = T.save_checkpoint, T.Trainer.run, T.Trainer.train_step
    seen: list[list[str]] = []

    def save_spy(model, directory, *a, **k):
        with open(dump_dir / f"saves-rank{rank}.txt", "a") as f:
            f.write(f"{directory}\n")
        return real_save(model, directory, *a, **k)

    def step_spy(self):
        sample = self.sampler.sample

        def record():
            batch = sample()
            seen.append([_digest(x) for x in batch.image])
            return batch

        self.sampler.sample = record
        try:
            return real_step(self)
        finally:
            del self.sampler.sample

    def run_spy(self, *a, **k):
        out = real_run(self, *a, **k)
        torch.save({n: v.detach().cpu().clone() for n, v in self.model.state_dict().items()},
                   dump_dir / f"weights-rank{rank}.pt")
        (dump_dir / f"samples-rank{rank}.json").write_text(json.dumps(seen))
        return out

    T.save_checkpoint, T.Trainer.run, T.Trainer.train_step = save_spy, run_spy, step_spy
    if os.environ.get("DDP_TEST_FLOAT64") == "1":
        _in_float64(T.Trainer)
    err = open(dump_dir / f"stderr-rank{rank}.txt", "w")
    sys.stderr = err  # tqdm writes here: only rank 0 may draw a progress bar
    try:
        return main(["train", run_yaml, "--device", "cpu"])
    finally:
        sys.stderr = sys.__stderr__
        err.close()


def _grad_models():
    """(name, model, per-class parameter accessor) for the three conditioners with per-class weights."""
    from promptseg.models.build import build_model

    backbone = {"name": "unet", "preset": "small", "widths": [8, 16, 32, 32]}
    specs = [
        ("universal", {"name": "universal", "head": "mlp"}, torch.randn(len(ORGANS), 16)),
        ("hermes", {"name": "hermes", "context": "prompted", "head_dim": 8, "tokens_per_modality": 2}, None),
        ("uniseg", {"name": "uniseg", "prompt_channels": 8, "modal_length": 16}, None),
    ]
    for name, cond, emb in specs:
        torch.manual_seed(0)
        yield name, build_model({"backbone": backbone, "conditioner": cond}, ORGANS, embeddings=emb)


def _worker_grads(dump: str) -> int:
    """One DDP step per conditioner in which each rank asks a different class subset; dump grads.

    rank 0 asks classes 0, 1, 2; rank 1 asks 1, 2, 3; class 2 is asked but annotated nowhere;
    classes 4 and 5 are asked by no rank. A second step follows so an unfinished reduction
    (DDP's failure mode for unused parameters) would raise.
    """
    from promptseg.train import distributed
    from promptseg.train.losses import masked_bce_dice

    torch.set_num_threads(1)
    state = distributed.setup("cpu")
    rank = state.rank
    asked = [[0, 1, 2], [1, 2, 3]][rank]
    out = {}
    for name, model in _grad_models():
        net = distributed.wrap(model, state)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        gen = torch.Generator().manual_seed(100 + rank)
        x = torch.randn(1, 1, 32, 32, 32, generator=gen)
        pb = model.prompt_batch([ORGANS[i] for i in asked], modality="CT", batch_size=1)
        targets = (torch.rand(1, 3, 32, 32, 32, generator=gen) > 0.7).float()
        annotated = torch.tensor([[i != 2 for i in asked]])
        for step in range(2):
            logits, ctx = net(x, pb, return_context=True)
            loss, parts = masked_bce_dice(logits, targets, annotated)
            loss = loss * distributed.pair_weight(parts["pairs"], state)
            aux = model.conditioner.auxiliary_loss(ctx)
            if aux is not None:
                loss = loss + aux
            loss.backward()
            if step == 0:
                out[name] = {n: (None if p.grad is None else p.grad.detach().clone())
                             for n, p in model.conditioner.named_parameters()}
            opt.step()
            opt.zero_grad(set_to_none=True)
    torch.save(out, Path(dump) / f"grads-rank{rank}.pt")
    distributed.cleanup(state)
    return 0


# ---------------------------------------------------------------------------------------------
# tests
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from promptseg.data.phantoms import make_phantom_datasets

    root = tmp_path_factory.mktemp("ddp")
    data = make_phantom_datasets(root / "data", seed=0, n_train=(2, 2, 2, 0), n_test=0, shape=(40, 40, 40))
    run = {
        "seed": SEED, "output": "ddp_run", "cache_dir": str(root / "cache"),
        "datasets": [str(data[n]) for n in ("PhantomA_liver", "PhantomB_kidney", "PhantomC_organs")],
        "plan": {"name": "universal_ct", "spacing": None},
        "backbone": {"name": "unet", "preset": "small", "widths": [8, 16, 32]},
        "conditioner": {"name": "universal", "head": "mlp"},
        "train": TRAIN,
    }
    (root / "run.yaml").write_text(yaml.safe_dump(run))
    return root


def test_two_ranks_match_one_process_with_the_doubled_batch_and_resume_in_one(world, monkeypatch):
    from promptseg.train import distributed
    from promptseg.checkpoint import META, load_training_state
    from promptseg.config import load_config
    from promptseg.train.trainer import Trainer

    # reference first: one process, batch 2B = rank 0's samples then rank 1's (also fills the
    # data and text-embedding caches the ranks then read)
    n_threads = torch.get_num_threads()
    cfg = load_config(world / "run.yaml")
    cfg["output"] = str(world / "reference")
    cfg["train"]["batch_size"] = 2 * BATCH
    monkeypatch.setenv("DDP_TEST_FLOAT64", "1")
    _in_float64(Trainer, monkeypatch.setattr)
    ref = Trainer(cfg, device="cpu", progress=False)
    ref.sampler = _Concat([_sampler_for(ref, BATCH, distributed.rank_seed(SEED, r)) for r in (0, 1)])
    ref.run()
    torch.set_num_threads(n_threads)
    assert ref.step == STEPS

    dump = world / "dump"
    dump.mkdir()
    t0 = time.perf_counter()
    proc = _torchrun(["train", str(world / "run.yaml"), str(dump)], world)
    seconds = time.perf_counter() - t0
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(dump.glob("stderr-rank*.txt")))
    assert proc.returncode == 0, proc.stdout[-4000:] + logs
    print(f"2-rank torchrun run: {seconds:.1f} s")

    # every rank drew different samples; the reference drew exactly rank 0's then rank 1's
    seen = [json.loads((dump / f"samples-rank{r}.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == STEPS
    assert all(a != b for a, b in zip(*seen)), "ranks drew the same batch"  # (an all-air patch may repeat)
    assert ref.sampler.seen == [a + b for a, b in zip(*seen)]

    # identical weights on both ranks, equal to the single process with the doubled batch
    w0, w1 = (torch.load(dump / f"weights-rank{r}.pt") for r in (0, 1))
    wref = ref.model.state_dict()
    assert set(w0) == set(w1) == set(wref)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks differ at {k}"
    diff = max(float((w0[k] - wref[k].detach()).abs().max()) for k in w0)
    print(f"max |DDP - single process| over all weights after {STEPS} steps: {diff:.3g}")
    assert diff <= 1e-5, diff

    # only rank 0 wrote: checkpoints, the log (one line per step), the progress bar
    assert (dump / "saves-rank0.txt").is_file() and not (dump / "saves-rank1.txt").exists()
    saves = (dump / "saves-rank0.txt").read_text().split()
    assert [Path(s).name for s in saves] == ["last", "last", "model"]  # step 2, final last + model
    run_dir = world / "ddp_run"
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert "train" in (dump / "stderr-rank0.txt").read_text()
    assert "train" not in (dump / "stderr-rank1.txt").read_text()
    state = load_training_state(run_dir / "last")
    assert state["world_size"] == 2 and set(state["sampler_rng"]) == {0, 1} and state["step"] == STEPS

    # logged figures are those of the global batch: the reference logs the same loss
    ref_log = [json.loads(line) for line in (world / "reference" / "log.jsonl").read_text().splitlines()]
    for a, b in zip(log, ref_log):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)

    # 2 -> 1 process: the plain CLI (float32 again) resumes the 2-rank checkpoint and trains on;
    # log lines a killed run wrote after its last checkpoint (here a fake one, and one cut short)
    # are dropped, as those steps are redone
    monkeypatch.undo()
    with open(run_dir / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": STEPS + 1, "loss": -1.0}) + '\n{"step": ')
    from promptseg.cli import main

    assert main(["train", str(world / "run.yaml"), "--device", "cpu", "--steps", str(STEPS + 2), "--quiet"]) == 0
    torch.set_num_threads(n_threads)
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5] and log[3]["loss"] > 0
    meta = json.loads((run_dir / "model" / META).read_text())
    assert meta["step"] == STEPS + 2
    state = load_training_state(run_dir / "last")
    assert state["world_size"] == 1 and state["step"] == STEPS + 2
    from safetensors.torch import load_file

    w5 = load_file(str(run_dir / "model" / "model.safetensors"))
    assert max(float((w5[k] - w0[k]).abs().max()) for k in w0) > 0, "resumed training did not move"


def test_unused_per_class_parameters_get_exact_zero_gradient_under_ddp(tmp_path):
    t0 = time.perf_counter()
    proc = _torchrun(["grads", str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:]
    print(f"2-rank gradient run: {time.perf_counter() - t0:.1f} s")
    g0, g1 = (torch.load(tmp_path / f"grads-rank{r}.pt") for r in (0, 1))

    for model in ("universal", "hermes", "uniseg"):  # the all-reduce leaves identical gradients
        for name, a in g0[model].items():
            b = g1[model][name]
            assert (a is None) == (b is None), name
            assert a is None or torch.equal(a, b), f"{model} {name} differs between ranks"

    def total(grads, prefix):
        return sum(float(v.abs().sum()) for k, v in grads.items() if k.startswith(prefix) and v is not None)

    u = g0["universal"]
    for c in (4, 5):  # asked by no rank: outside the graph everywhere -> no gradient at all
        assert all(v is None for k, v in u.items() if k.startswith(f"controllers.{c}.")), c
    # asked but annotated nowhere: in the graph, masked out of the loss -> exactly zero
    assert all(v is not None and not v.any() for k, v in u.items() if k.startswith("controllers.2."))
    for c in (0, 1, 3):  # asked and annotated on at least one rank
        assert total(u, f"controllers.{c}.") > 0, c

    h = g0["hermes"]
    priors = [v for k, v in h.items() if k.endswith("task_prior")]
    assert priors and all(v is not None for v in priors)
    for v in priors:
        assert not v[4:].any(), "task tokens of classes no rank asked must get zero gradient"
        assert all(v[c].abs().sum() > 0 for c in (0, 1, 3))

    s = g0["uniseg"]
    for key in ("task_channels.weight", "task_channels.norm_weight", "task_channels.norm_bias"):
        v = s[key]
        assert not v[[2, 4, 5]].any(), key
        assert all(v[c].abs().sum() > 0 for c in (0, 1, 3)), key


if __name__ == "__main__":  # the torchrun worker
    mode, *rest = sys.argv[1:]
    sys.exit(_worker_train(*rest) if mode == "train" else _worker_grads(*rest))
