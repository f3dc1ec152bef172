"""Mixed precision, channels-last and compile options (CPU): what each setting resolves to, the fp16
gradient scaler's skip/unscale/clip logic, and bf16 / fp16 training steps through the trainer."""
from __future__ import annotations

import json
from unittest import mock

import pytest
import torch
import yaml

from promptseg.errors import ConfigError
from promptseg import runtime
from promptseg.train import amp


@pytest.mark.parametrize("asked, device, expected", [
    ("auto", "cpu", "fp32"), (None, "cpu", "fp32"), ("fp32", "cuda", "fp32"), ("bf16", "cpu", "bf16"),
    ("fp16", "cpu", "fp16"), ("bfloat16", "cpu", "bf16"), ("half", "cuda", "fp16"),
])
def test_resolve_precision(asked, device, expected):
    assert amp.resolve_precision(asked, device) == expected


def test_auto_is_bf16_on_cuda_and_fp16_without_bf16_support():
    with mock.patch.object(runtime, "cuda_bf16", return_value=True):
        assert amp.resolve_precision("auto", "cuda") == "bf16"
    with mock.patch.object(runtime, "cuda_bf16", return_value=False):
        assert amp.resolve_precision("auto", "cuda:1") == "fp16"


@pytest.mark.parametrize("bad", [{"precision": "fp8"}, {"channels_last": "yes"}, {"compile": 3},
                                 {"compile": {"backend": "eager", "speed": 1}}])
def test_bad_options_raise_one_line_config_errors(bad):
    with pytest.raises(ConfigError) as info:
        amp.check_train_options(bad, "cpu")
    assert "\n" not in str(info.value) and "train." in str(info.value)


def test_fp32_is_a_transparent_no_op():
    mp = amp.MixedPrecision("auto", "cpu")
    assert mp.precision == "fp32" and not mp.enabled and not mp.scaler.is_enabled()
    lin = torch.nn.Linear(4, 2)
    with mp.autocast():
        y = lin(torch.randn(3, 4))
    assert y.dtype == torch.float32
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    before = lin.weight.detach().clone()
    mp.backward(y.sum())
    grad = lin.weight.grad.clone()
    assert mp.step(opt) is True
    assert torch.allclose(lin.weight, before - 0.5 * grad)
    assert mp.state_dict() == {"precision": "fp32", "scaler": None}


def test_bf16_autocast_runs_convolutions_in_bf16_on_cpu():
    mp = amp.MixedPrecision("bf16", "cpu")
    conv = torch.nn.Conv3d(1, 2, 3, padding=1)
    with mp.autocast():
        y = conv(torch.randn(1, 1, 6, 6, 6))
    assert y.dtype == torch.bfloat16
    assert conv.weight.dtype == torch.float32  # master weights stay fp32


def _fp16_setup(init_scale=2.0 ** 10):
    mp = amp.MixedPrecision("fp16", "cpu")
    mp.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1)
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    return mp, p, torch.optim.SGD([p], lr=0.1)


def test_fp16_scaler_unscales_gradients_before_the_step():
    mp, p, opt = _fp16_setup()
    mp.backward((p * torch.tensor([1.0, 2.0, 3.0])).sum())
    assert torch.equal(p.grad, torch.tensor([1.0, 2.0, 3.0]) * 2.0 ** 10)  # scaled on the way back
    assert mp.step(opt) is True
    assert torch.allclose(p.detach(), torch.tensor([0.9, -2.2, 2.7]))  # the true gradient was used
    assert mp.scale() == 2.0 ** 11  # no overflow: the scale grows (growth_interval=1)


def test_fp16_scaler_skips_an_overflowing_step_and_halves_the_scale():
    mp, p, opt = _fp16_setup()
    mp.backward((p * torch.tensor([float("inf"), 1.0, 1.0])).sum())
    assert mp.step(opt, clip=1.0) is False
    assert torch.equal(p.detach(), torch.tensor([1.0, -2.0, 3.0]))
    assert mp.scale() == 2.0 ** 9


def test_fp16_clipping_sees_true_gradients_and_scaler_state_round_trips():
    mp, p, opt = _fp16_setup()
    mp.backward((p * torch.tensor([30.0, 0.0, 40.0])).sum())  # true gradient norm 50
    mp.step(opt, [p], clip=5.0)
    assert torch.allclose(p.detach(), torch.tensor([1.0 - 0.1 * 3.0, -2.0, 3.0 - 0.1 * 4.0]))
    state = mp.state_dict()
    fresh = amp.MixedPrecision("fp16", "cpu")
    fresh.load_state_dict(state)
    assert fresh.scale() == mp.scale()
    amp.MixedPrecision("fp32", "cpu").load_state_dict(state)  # an fp32 resume ignores it


def test_channels_last_is_auto_on_cuda_only_and_keeps_results():
    assert amp.want_channels_last("auto", "cuda") and not amp.want_channels_last("auto", "cpu")
    assert amp.want_channels_last(True, "cpu") and not amp.want_channels_last(False, "cuda")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.InstanceNorm3d(4, affine=True))
    x = torch.randn(1, 2, 6, 6, 6)
    ref = net(x)
    amp.to_channels_last(net)
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    xi = amp.input_to(x, torch.device("cpu"), True)
    assert xi.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(net(xi), ref, atol=1e-5)
    assert amp.input_to(torch.zeros(2, 3), torch.device("cpu"), True).shape == (2, 3)  # not 5D: as is


def test_compile_option_compiles_in_place_and_keeps_state_dict_keys():
    assert amp.compile_options(False) is None and amp.compile_options(None) is None
    assert amp.compile_options(True) == {} and amp.compile_options("max-autotune") == {"mode": "max-autotune"}
    lin = torch.nn.Linear(3, 2)
    keys = list(lin.state_dict())
    with mock.patch.object(torch.nn.Linear, "compile") as compile_:
        assert amp.maybe_compile(lin, {"backend": "eager", "dynamic": True}) is lin
    compile_.assert_called_once_with(backend="eager", dynamic=True)
    assert amp.maybe_compile(lin, {"backend": "eager"}) is lin
    assert list(lin.state_dict()) == keys  # no `_orig_mod.` prefix: checkpoints load as before
    with mock.patch.object(torch.nn.Linear, "compile") as compile_:
        amp.maybe_compile(lin, False)
    compile_.assert_not_called()


# -- through the trainer --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from promptseg.data.phantoms import make_phantom_datasets

    root = tmp_path_factory.mktemp("amp")
    data = make_phantom_datasets(root / "data", seed=0, n_train=(0, 0, 1, 0), n_test=0, shape=(36, 36, 36))
    return root, {
        "output": "run", "datasets": [str(data["PhantomC_organs"])],
        "plan": {"name": "universal_ct", "spacing": None},
        "backbone": {"name": "unet", "preset": "small", "widths": [4, 8]},
        "conditioner": {"name": "onehot", "head": "shared", "hidden": 16},
        "train": {"steps": 2, "batch_size": 1, "patch_size": [32, 32, 32], "lr": 1e-3, "warmup_steps": 1,
                  "checkpoint_every": 100, "num_threads": 1},
    }


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_trainer_steps_in_reduced_precision_on_cpu(tiny_run, precision):
    from promptseg.checkpoint import load_training_state
    from promptseg.config import resolve_config
    from promptseg.train.trainer import train

    root, raw = tiny_run
    raw = {**raw, "output": f"run-{precision}", "train": {**raw["train"], "precision": precision}}
    n = torch.get_num_threads()
    seen = []
    real = amp.MixedPrecision.autocast

    def spy(self):
        seen.append(self.dtype)
        return real(self)

    with mock.patch.object(amp.MixedPrecision, "autocast", spy):
        out = train(resolve_config(raw, root), device="cpu", progress=False)
    torch.set_num_threads(n)
    assert seen == [{"bf16": torch.bfloat16, "fp16": torch.float16}[precision]] * 2
    log = [json.loads(line) for line in (root / f"run-{precision}" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    assert ("loss_scale" in log[0]) == (precision == "fp16")
    state = load_training_state(out.parent / "last")
    assert state["amp"]["precision"] == precision
    assert (state["amp"]["scaler"] is not None) == (precision == "fp16")
    cfg = json.loads((out / "checkpoint.json").read_text())["config"]
    assert cfg["train"]["precision"] == precision and yaml.safe_dump(cfg)  # recorded in the run config
