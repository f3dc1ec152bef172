"""`promptseg predict` with a compiled CPU runtime, or the compiled per-class head, gives PyTorch's
float32 masks on a real CT.

The windows of the lean path run through OpenVINO or ONNX Runtime after the prompts are prepared
once (the first batch of a volume in PyTorch: it checks the compiled graph); the masks must equal those of eager PyTorch
(lowest per-class Dice >= 0.999). Random weights whose heads vary with the image (as in
test_lean_vs_reference.py): the check is numerical, not anatomical.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from promptseg.errors import ConfigError
from promptseg.inference import Predictor
from promptseg.inference.cpu_runtime import available
from promptseg.io import read_image

CLASSES = ["spleen", "right kidney", "left kidney", "liver", "stomach", "aorta", "pancreas", "liver tumor"]
PLAN = {"name": "universal_ct", "spacing": [4.5, 4.5, 6.0]}
INFERENCE = {"window": [32, 32, 16], "overlap": 0.5, "mode": "gaussian", "sw_batch_size": 2, "threads": 1}


def dice(a, b) -> float:
    a, b = np.asarray(getattr(a, "array", a)) > 0, np.asarray(getattr(b, "array", b)) > 0
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


@pytest.fixture(scope="module")
def volume(shared_data):
    return read_image(shared_data / "ct_abdomen_small" / "image.nii.gz")


@pytest.fixture(scope="module")
def model(varied_random_model):
    return varied_random_model({"name": "segresnet", "preset": "flare23"}, CLASSES, seed=5)


def predict(model, volume, **kw):
    p = Predictor(model, plan=PLAN, inference={**INFERENCE, **kw}, device="cpu", progress=False)
    return p, p.predict_volume(volume)


@pytest.fixture(scope="module")
def torch_masks(model, volume):
    _, pred = predict(model, volume, runtime="torch", fused_head=False)
    assert pred.stats["runtime"] == "torch" and not pred.stats["fused_head"]
    return pred


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_compiled_runtime_gives_the_float32_masks(model, volume, torch_masks, runtime):
    if not available(runtime):
        pytest.skip(f"{runtime} is not installed")
    predictor, pred = predict(model, volume, runtime=runtime)
    # the first batch is eager (the reference the graph is checked against), the others compiled
    assert pred.stats["runtime"] == f"{runtime}+torch" and predictor._compiled
    d = {c: dice(torch_masks.masks[c], pred.masks[c]) for c in CLASSES}
    assert sum(int(np.asarray(torch_masks.masks[c].array).astype(bool).sum()) for c in CLASSES) > 0  # something to compare
    print(f"{runtime} vs torch: lowest per-class Dice {min(d.values()):.5f}")
    assert min(d.values()) >= 0.999, d
    # a second volume reuses the compiled graphs (no new entries for the same prompts and shapes)
    n = len(predictor._compiled)
    again = predictor.predict_volume(volume)
    assert len(predictor._compiled) == n and again.stats["runtime"] == runtime  # checked once: all compiled


def test_default_runtime_is_eager_pytorch_and_auto_is_opt_in(model, volume):
    """Measured on the clinical CT, OpenVINO cost more memory and time than it saved and moved
    masks (config.py's comment): PyTorch is the default, `auto` an explicit choice."""
    p = Predictor(model, plan=PLAN, inference={k: v for k, v in INFERENCE.items() if k != "runtime"},
                  device="cpu", progress=False)
    assert p.settings["runtime"] == "torch"
    p = Predictor(model, plan=PLAN, inference={**INFERENCE, "runtime": "auto"}, device="cpu", progress=False)
    assert p.settings["runtime"] == "auto"


def test_unknown_runtime_is_a_one_line_config_error(model):
    with pytest.raises(ConfigError, match="inference.runtime must be one of"):
        Predictor(model, plan=PLAN, inference={"runtime": "tensorrt"}, device="cpu", progress=False)


def test_auto_compiles_only_where_it_pays(model, monkeypatch):
    """runtime 'auto': a volume of few, fast windows stays in PyTorch (compiling would cost more);
    once the eager estimate reaches AUTO_COMPILE_S the graph is compiled and reused."""
    if not available("openvino"):
        pytest.skip("openvino is not installed")
    from promptseg.inference.windows import WindowRunner

    pb = model.prompt_batch(CLASSES[:2], batch_size=1)
    x = torch.rand(2, 1, 32, 32, 32)
    few = WindowRunner(model, pb, runtime="auto", batches=1)
    ref = few(x)
    few(x)
    assert few.ran == {"torch"} and few.compile_s == 0.0
    monkeypatch.setattr(WindowRunner, "AUTO_COMPILE_S", 0.0)
    many = WindowRunner(model, pb, runtime="auto", batches=10)
    assert torch.equal(many(x), ref)  # the timed first batch is eager
    out = many(x)
    assert many.ran == {"torch", "openvino"} and many.compile_s > 0
    assert (out - ref).abs().max().item() < 1e-4


def test_a_graph_that_disagrees_with_pytorch_is_dropped(model, monkeypatch):
    """The compiled graph is checked against the first (eager) batch; one that disagrees is not
    used: a warning, and the volume's windows run in PyTorch."""
    if not available("openvino"):
        pytest.skip("openvino is not installed")
    from promptseg.inference import windows
    from promptseg.inference.cpu_runtime import RuntimeMismatch

    def disagree(*args, **kwargs):
        raise RuntimeMismatch("openvino float32 logits differ from PyTorch's by 3")

    monkeypatch.setattr(windows, "compile_for_cpu", disagree)
    runner = windows.WindowRunner(model, model.prompt_batch(CLASSES[:2], batch_size=1), runtime="openvino", batches=3)
    x = torch.rand(2, 1, 32, 32, 32)
    ref = runner(x)
    with pytest.warns(UserWarning, match="differ from PyTorch.*run in PyTorch"):
        out = runner(x)
    assert runner.ran == {"torch"} and torch.equal(out, ref) and runner(x).shape == ref.shape


# -- the compiled per-class head (inference.fused_head) --------------------------------------------
def test_the_compiled_head_gives_the_eager_masks(model, volume, torch_masks):
    """torch.compile's fused head (models/conditioners/dynamic_head.py) in eager PyTorch's windows:
    the same masks as the eager head (its logits agree to ~1e-6)."""
    _, pred = predict(model, volume, runtime="torch", fused_head=True)
    assert pred.stats["fused_head"] and pred.stats["compile_s"] > 0
    d = {c: dice(torch_masks.masks[c], pred.masks[c]) for c in CLASSES}
    print(f"compiled head vs eager: lowest per-class Dice {min(d.values()):.5f}")
    assert min(d.values()) >= 0.999, d


def test_auto_compiles_the_head_only_for_volumes_of_many_windows(model):
    from promptseg.inference.windows import WindowRunner

    pb = model.prompt_batch(CLASSES[:2], batch_size=1)
    assert WindowRunner(model, pb, batches=3, fused_head="auto").fused is None
    assert WindowRunner(model, pb, batches=WindowRunner.AUTO_FUSE_BATCHES, fused_head="auto").fused is not None
    assert WindowRunner(model, pb, batches=100, fused_head=False).fused is None
    # a compiled runtime replaces the eager windows (and their head) anyway
    assert WindowRunner(model, pb, batches=100, fused_head=True, runtime="openvino").fused is None or \
        not available("openvino")


@pytest.fixture
def no_compiler(monkeypatch):
    """A machine without a C++ compiler: the compiled head fails on its first call."""
    from promptseg.models.conditioners import universal

    def broken(*args, **kwargs):
        def head(x, params, out):
            raise RuntimeError("InductorError: CppCompileError: no C++ compiler found")
        return head

    monkeypatch.setattr(universal, "compiled_head", broken)


def test_a_head_that_does_not_compile_falls_back_to_the_eager_head(model, no_compiler):
    """No C++ compiler, say: one warning, the eager head's logits, and later volumes of the same
    predictor (its `cache`) do not try again."""
    from promptseg.inference.windows import WindowRunner

    pb = model.prompt_batch(CLASSES[:2], batch_size=1)
    x = torch.rand(2, 1, 32, 32, 32)
    ref = WindowRunner(model, pb, fused_head=False)(x)
    cache: dict = {}
    runner = WindowRunner(model, pb, fused_head=True, cache=cache)
    with pytest.warns(UserWarning, match="compiled per-class head is not used: it did not compile .*CppCompileError"):
        first = runner(x)
    assert torch.equal(first, ref) and torch.equal(runner(x), ref) and not runner.fused_used
    assert WindowRunner(model, pb, fused_head=True, cache=cache).fused is None


def test_torch_compile_failing_at_once_leaves_the_eager_head(model, monkeypatch):
    from promptseg.inference.windows import WindowRunner
    from promptseg.models.conditioners import universal

    def unusable(*args, **kwargs):
        raise UnicodeDecodeError("ascii", b"\xe2", 0, 1, "ordinal not in range(128)")

    monkeypatch.setattr(universal, "compiled_head", unusable)
    pb = model.prompt_batch(CLASSES[:2], batch_size=1)
    with pytest.warns(UserWarning, match="torch.compile is not usable .*UnicodeDecodeError"):
        runner = WindowRunner(model, pb, fused_head=True)
    x = torch.rand(2, 1, 32, 32, 32)
    assert runner.fused is None and torch.equal(runner(x), WindowRunner(model, pb, fused_head=False)(x))


def test_a_compiled_head_whose_logits_differ_is_dropped(model, monkeypatch):
    from promptseg.inference.windows import WindowRunner
    from promptseg.models.conditioners import universal

    def wrong(*args, **kwargs):
        return lambda x, params, out: out.zero_()

    monkeypatch.setattr(universal, "compiled_head", wrong)
    pb = model.prompt_batch(CLASSES[:2], batch_size=1)
    x = torch.rand(2, 1, 32, 32, 32)
    ref = WindowRunner(model, pb, fused_head=False)(x)
    for setting in (True, "auto"):  # a compiler giving other numbers is reported even under auto
        runner = WindowRunner(model, pb, fused_head=setting, batches=WindowRunner.AUTO_FUSE_BATCHES)
        with pytest.warns(UserWarning, match="compiled per-class head is not used: its logits differ"):
            assert torch.equal(runner(x), ref)
    assert torch.equal(runner(x), ref) and not runner.fused_used


def test_the_head_compiles_before_the_windows_keep_their_heap(model, volume, monkeypatch):
    """The batch that compiles the head runs before `runtime.kept_heap` starts (inside it, the
    compiler's long-lived allocations among the windows' freed blocks raised the SegResNet
    clinical CT's peak from 3.8 to 4.7 GB, config.py); every later batch runs inside it."""
    import contextlib

    from promptseg.inference import lean_masks, windows

    events = []

    @contextlib.contextmanager
    def heap(enabled=True):
        events.append("heap")
        yield False

    real = windows.WindowRunner._check_fused

    def check(self, features, reference):
        events.append("compile")
        return real(self, features, reference)

    monkeypatch.setattr(lean_masks, "kept_heap", heap)
    monkeypatch.setattr(windows.WindowRunner, "_check_fused", check)
    _, pred = predict(model, volume, runtime="torch", fused_head=True)
    assert pred.stats["fused_head"] and events == ["compile", "heap"]
    events.clear()
    predict(model, volume, runtime="torch", fused_head=False)
    assert events == ["heap"]


def test_auto_falls_back_without_a_warning(model, no_compiler):
    """The default ('auto') on a machine where the head does not compile: the eager head, silently
    (a warning only where the compiled head was asked for)."""
    import warnings

    from promptseg.inference.windows import WindowRunner

    pb = model.prompt_batch(CLASSES[:2], batch_size=1)
    x = torch.rand(2, 1, 32, 32, 32)
    ref = WindowRunner(model, pb, fused_head=False)(x)
    runner = WindowRunner(model, pb, batches=WindowRunner.AUTO_FUSE_BATCHES, fused_head="auto")
    assert runner.fused is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(runner(x), ref)
    assert not runner.fused_used


def test_bad_fused_head_setting_is_a_one_line_config_error(model):
    assert Predictor(model, plan=PLAN, device="cpu", progress=False).settings["fused_head"] == "auto"
    with pytest.raises(ConfigError, match="inference.fused_head must be true, false or auto"):
        Predictor(model, plan=PLAN, inference={"fused_head": "sometimes"}, device="cpu", progress=False)
