"""A fifth method is one conditioner: a toy defined here trains, predicts, extends and transfers
through `promptseg train` / `predict` and the continual-learning code without any edit to
`train/` or `inference/` (only a registry entry, added by this test)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from promptseg.cli import main
from promptseg.models import build
from promptseg.models.conditioners.base import ClassPart, Conditioner, Context, PromptBatch

pytestmark = pytest.mark.usefixtures("one_thread")


class ToyConditioner(Conditioner):
    """Logit of class k = <code_k, final decoder features> + bias_k; one row per class."""

    calls = {"prepare_head": 0, "predict_prepared": 0, "training_queries": 0}

    def __init__(self, class_names=(), scale: float = 0.1):
        super().__init__(class_names)
        self.scale = float(scale)
        self.codes: nn.Parameter | None = None
        self.bias: nn.Parameter | None = None

    def bind(self, backbone: nn.Module) -> None:
        self.codes = nn.Parameter(torch.randn(len(self.class_names), int(backbone.out_channels)) * self.scale)
        self.bias = nn.Parameter(torch.zeros(len(self.class_names)))

    def prepare(self, prompts: PromptBatch, batch_size: int) -> Context:
        ctx = super().prepare(prompts, batch_size)
        ctx["toy.idx"] = torch.tensor(prompts.indices, dtype=torch.long)
        return ctx

    def _logits(self, decoder_out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        idx = idx.to(decoder_out.device)
        codes = self.codes[idx].to(decoder_out.dtype)
        return torch.einsum("kc,bc...->bk...", codes, decoder_out) + self.bias[idx].view(1, -1, 1, 1, 1)

    def predict(self, decoder_out, encoder_feats, ctx):
        return self._logits(decoder_out, ctx["toy.idx"])

    def prepare_head(self, prompts, chunk=0):
        type(self).calls["prepare_head"] += 1
        return torch.tensor(prompts.indices, dtype=torch.long)

    def predict_prepared(self, decoder_out, encoder_feats, ctx, head):
        type(self).calls["predict_prepared"] += 1
        return self._logits(decoder_out, head)

    def training_queries(self, classes, annotated, present, max_queries, rng):
        type(self).calls["training_queries"] += 1
        return super().training_queries(classes, annotated, present, max_queries, rng)

    def class_parameters(self):
        return {n: [ClassPart("codes", slice(i, i + 1)), ClassPart("bias", slice(i, i + 1))]
                for i, n in enumerate(self.class_names)}

    def add_classes(self, names, embeddings=None, datasets=None):
        names = [n for n in names if n not in self.class_names]
        self.class_names.extend(names)
        grow = lambda p, new: nn.Parameter(torch.cat([p.detach(), new.to(p)]))  # noqa: E731
        self.codes = grow(self.codes, torch.randn(len(names), self.codes.shape[1]) * self.scale)
        self.bias = grow(self.bias, torch.zeros(len(names)))


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(build.CONDITIONERS, "toy", ToyConditioner)
    for k in ToyConditioner.calls:
        ToyConditioner.calls[k] = 0
    return {"backbone": {"name": "unet", "preset": "small", "widths": [4, 8, 16]}, "conditioner": {"name": "toy"}}


def test_toy_conditioner_trains_two_steps_and_predicts(toy, tmp_path):
    from promptseg.data.phantoms import make_phantom_datasets
    from promptseg.io import read_image

    data = make_phantom_datasets(tmp_path / "data", seed=0, n_train=(1, 1, 0, 0), n_test=1,
                                 shape=(40, 32, 32), spacing=(8.0, 8.0, 8.0))
    test = data.pop("PhantomTest_full")
    run = {
        "seed": 0, "output": "run", "datasets": [str(p) for p in data.values()],
        "plan": {"name": "universal_ct", "spacing": None}, **toy,
        "train": {"steps": 2, "batch_size": 1, "patch_size": [32, 32, 32], "lr": 0.002, "warmup_steps": 1,
                  "checkpoint_every": 100, "num_threads": 1},
        "inference": {"window": [32, 32, 32], "overlap": 0.0, "sw_batch_size": 2},
    }
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(run, sort_keys=False))
    assert main(["train", str(cfg), "--device", "cpu", "--quiet"]) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
    assert ToyConditioner.calls["training_queries"] == 2  # the trainer asked the conditioner

    image = sorted((test / "imagesTs").glob("*_0000.nii.gz"))[0]
    out = tmp_path / "pred"
    assert main(["predict", "-i", str(image), "-o", str(out), "-m", str(tmp_path / "run"), "--device", "cpu",
                 "--quiet", "--prompt", "liver"]) == 0
    assert ToyConditioner.calls["prepare_head"] >= 1 and ToyConditioner.calls["predict_prepared"] >= 1
    case = image.name[: -len("_0000.nii.gz")]
    assert read_image(out / case / "liver.nii.gz").shape == read_image(image).shape


def test_toy_conditioner_extends_and_transfers_by_its_class_parameters(toy):
    from promptseg.train.continual import add_new_classes, new_class_parameters, transfer_weights

    torch.manual_seed(0)
    src = build.build_model(toy, ["spleen", "liver", "aorta"])
    add_new_classes(src, ["liver tumor"])
    diff = new_class_parameters(src, ["liver tumor"])
    assert diff.grown == {"conditioner.codes": 3, "conditioner.bias": 3} and not diff.new
    dst = build.build_model(toy, ["liver tumor", "liver"])
    info = transfer_weights(src, dst, "all")
    assert info["classes_matched"] == 2
    torch.testing.assert_close(dst.conditioner.codes[0], src.conditioner.codes[3])
    torch.testing.assert_close(dst.conditioner.codes[1], src.conditioner.codes[1])


def test_per_class_parts_are_matched_by_name_not_position():
    """A class at another index in the new model still gets its own head (module keys differ)."""
    from promptseg.train.continual import transfer_weights

    cfg = {"backbone": {"name": "unet", "preset": "small", "widths": [4, 8, 16]},
           "conditioner": {"name": "universal", "hidden": 8, "mlp_hidden": 8}}
    torch.manual_seed(0)
    src = build.build_model(cfg, ["spleen", "liver", "aorta"], embeddings=torch.randn(3, 6))
    dst = build.build_model(cfg, ["liver tumor", "aorta"], embeddings=torch.randn(2, 6))
    assert transfer_weights(src, dst, "all")["classes_matched"] == 1
    s, d = src.state_dict(), dst.state_dict()
    assert torch.equal(d["conditioner.controllers.1.0.weight"], s["conditioner.controllers.2.0.weight"])
    assert torch.equal(d["conditioner.embeddings"][1], s["conditioner.embeddings"][2])
    assert not torch.equal(d["conditioner.controllers.0.0.weight"], s["conditioner.controllers.0.0.weight"])


@pytest.mark.parametrize("method", ["universal", "onehot", "hermes", "uniseg", "sat"])
def test_forward_prepared_equals_forward_and_declares_every_class_part(method):
    """The inference path (prompts prepared once, chunked heads) gives `forward`'s numbers, and
    `class_parameters` names exactly what `add_classes` adds (what continual learning trains)."""
    from promptseg.workflows.bench import conditioner_config
    from promptseg.train.continual import diff_parameters, new_class_parameters

    names = ["spleen", "liver", "aorta"]
    cfg = {"backbone": {"name": "unet", "preset": "small", "widths": [8, 16, 32]},
           "conditioner": conditioner_config(method)}
    cls = build._load(build.CONDITIONERS, "conditioner", method)
    emb = torch.randn(len(names), 384) if cls.needs_text else None
    torch.manual_seed(0)
    model = build.build_model(cfg, names, embeddings=emb).eval()
    image = torch.randn(2, 1, 32, 32, 32)
    prompts = model.prompt_batch(["aorta", "spleen"], modality="CT", batch_size=2)
    with torch.no_grad():
        ref = model(image, prompts)
        prepared = model.prepare(["aorta", "spleen"], modality="CT", head_chunk=4096)
        got = model.forward_prepared(image, prepared)
        again = model.forward_prepared(image, prepared)  # the prepared context is reused as is
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, got)

    before = dict(model.named_parameters())
    new_emb = torch.randn(1, 384) if cls.needs_text else None
    model.conditioner.add_classes(["liver tumor"], new_emb, ["some dataset"])  # one signature for all
    grew = diff_parameters(before, model, method)
    declared = new_class_parameters(model, ["liver tumor"])
    assert set(declared.new) == set(grew.new) and declared.grown == grew.grown
