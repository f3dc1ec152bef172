"""promptseg.runtime: one device / threads / precision answer for training and inference."""
from __future__ import annotations

from unittest import mock

import pytest
import torch

from promptseg import runtime
from promptseg.errors import ConfigError


@pytest.mark.parametrize("asked, name", [(None, "auto"), ("AUTO", "auto"), ("float32", "fp32"), ("fp32", "fp32"),
                                         ("bfloat16", "bf16"), ("half", "fp16"), ("float16", "fp16")])
def test_every_alias_has_one_canonical_name(asked, name):
    assert runtime.precision_name(asked) == name


def test_unknown_precision_is_a_one_line_error_naming_the_setting():
    with pytest.raises(ConfigError) as info:
        runtime.precision_name("fp8", "inference.precision")
    assert "\n" not in str(info.value) and "inference.precision" in str(info.value) and "fp8" in str(info.value)


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_cpu_inference_follows_native_bf16_training_stays_fp32(native):
    with mock.patch.object(runtime, "cpu_has_bf16", return_value=native):
        assert runtime.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
        assert runtime.autocast_dtype("auto", "cpu") == (torch.bfloat16 if native else None)
        assert runtime.resolve_precision("auto", "cpu", training=True) == "fp32"


@pytest.mark.parametrize("has_bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_is_the_same_for_training_and_inference(has_bf16, expected):
    with mock.patch.object(runtime, "cuda_bf16", return_value=has_bf16):
        assert runtime.resolve_precision("auto", "cuda") == expected
        assert runtime.resolve_precision("auto", "cuda:0", training=True) == expected


def test_fp16_on_cpu_refused_for_inference_allowed_for_training():
    with pytest.raises(ConfigError):
        runtime.resolve_precision("fp16", "cpu")
    assert runtime.resolve_precision("fp16", "cpu", training=True) == "fp16"


def test_device_auto_and_missing_cuda():
    assert runtime.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError):
        runtime.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError) as info:
            runtime.resolve_device("cuda")
        assert "no CUDA" in str(info.value)


def test_set_threads_sets_and_reports():
    before = torch.get_num_threads()
    try:
        assert runtime.set_threads(1) == 1 and torch.get_num_threads() == 1
        assert runtime.set_threads(None) == runtime.machine_threads()
        with pytest.raises(ValueError):
            runtime.set_threads(-2)
    finally:
        torch.set_num_threads(before)


def test_kept_heap_is_set_by_the_outermost_block_and_undone_when_it_ends(monkeypatch):
    """Validation inside training opens a second block: only the outer one sets and resets."""
    calls = []
    monkeypatch.setattr(runtime, "_glibc", lambda: (lambda p, v: calls.append(("opt", p, v)) or 1,
                                                    lambda pad: calls.append(("trim", pad)) or 1))
    with pytest.raises(RuntimeError):
        with runtime.kept_heap() as outer:
            assert outer is True
            assert calls == [("opt", p, v) for p, v in runtime._KEPT.items()]
            with runtime.kept_heap() as inner:
                assert inner is True
            assert len(calls) == len(runtime._KEPT)  # the inner block changed nothing
            raise RuntimeError("a failed batch")    # the settings are undone all the same
    assert calls[len(runtime._KEPT):] == [("opt", p, v) for p, v in runtime._AFTER.items()] + [("trim", 0)]
    calls.clear()
    with runtime.kept_heap(enabled=False) as on:
        assert on is False
    assert calls == []


def test_glibc_takes_the_kept_heap_settings():
    """On glibc (this machine, CI) the thresholds are accepted; what they save is measured by
    benchmarks/predict_speed.py (page faults and network seconds per row), not asserted here."""
    if runtime._glibc() is None:
        pytest.skip("not glibc")
    with runtime.kept_heap() as kept:
        assert kept is True
    with runtime.kept_heap(enabled=False) as kept:
        assert kept is False
