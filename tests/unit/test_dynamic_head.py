"""The per-class dynamic head's two forms: batched matmuls (eager) and the elementwise form that
torch.compile fuses into one loop (models/conditioners/dynamic_head.py)."""
from __future__ import annotations

import pytest
import torch

from promptseg.models.conditioners.dynamic_head import batched_head, chunked_head, pointwise_head
from promptseg.models.conditioners.universal import dynamic_param_sizes


@pytest.mark.parametrize("channels,layers", [(8, 3), (4, 2), (6, 4)])
def test_the_elementwise_head_equals_the_batched_one(channels, layers):
    """Same parameter layout (w per layer out-major, then biases), same numbers, any head size."""
    torch.manual_seed(channels * layers)
    wn, bn = dynamic_param_sizes(channels, layers)
    feats = torch.randn(2, channels, 300)
    params = torch.randn(2, 5, sum(wn) + sum(bn))
    ref = batched_head(feats, params, wn, bn, channels)
    for i in range(2):
        got = pointwise_head(feats[i:i + 1], params[i:i + 1], wn, bn, channels)
        assert got.shape == (1, 5, 300)
        torch.testing.assert_close(got, ref[i:i + 1], atol=1e-5, rtol=1e-5)


def test_chunks_give_the_one_go_values():
    torch.manual_seed(0)
    wn, bn = dynamic_param_sizes(8, 3)
    feats, params = torch.randn(2, 8, 1000), torch.randn(2, 3, 153)
    torch.testing.assert_close(chunked_head(feats, params, wn, bn, 8, 128), batched_head(feats, params, wn, bn, 8))


def test_the_compiled_head_writes_each_sample_into_its_own_view():
    """Compiled, the head stores straight into the batch's logits (`per_sample` hands it a view
    per sample): every sample's values equal the batched head's, and none spills into another's."""
    import torch._inductor.config as inductor_config

    from promptseg.models.conditioners.dynamic_head import compiled_head, per_sample

    torch.manual_seed(3)
    wn, bn = dynamic_param_sizes(8, 3)
    feats, params = torch.randn(3, 8, 700), torch.randn(3, 4, 153) * 0.3
    with torch.inference_mode(), inductor_config.patch(compile_threads=1):
        got = per_sample(compiled_head(wn, bn, 8), feats, params)
    torch.testing.assert_close(got, batched_head(feats, params, wn, bn, 8), atol=1e-5, rtol=1e-5)
    assert not torch.equal(got[0], got[1])


def test_where_torch_compile_gives_up_the_compiled_head_runs_in_chunks():
    """Past dynamo's recompile limit (many window sizes or class counts in one process) the
    compiled function runs as Python: it must then take the chunked matmuls, never the
    elementwise form (which would hold ~136 [K, V] tensors at once)."""
    import torch._dynamo

    from promptseg.models.conditioners import dynamic_head

    torch.manual_seed(1)
    wn, bn = dynamic_param_sizes(8, 3)
    x, params = torch.randn(1, 8, 777), torch.randn(1, 4, 153)
    calls = []
    real = dynamic_head.chunked_head

    def spy(*args, **kwargs):
        calls.append(args[-1])
        return real(*args, **kwargs)

    head = dynamic_head.compiled_head(wn, bn, 8)
    with torch._dynamo.config.patch(recompile_limit=0), pytest.MonkeyPatch.context() as mp:
        mp.setattr(dynamic_head, "chunked_head", spy)
        out = torch.full((1, 4, 777), float("nan"))
        head(x, params, out)
    assert calls and torch.equal(out, batched_head(x, params, wn, bn, 8))


def test_inductor_is_imported_under_a_utf8_locale_and_the_locale_is_restored():
    """A C library that set the C locale made torch._inductor's templates fail to decode (ASCII)
    in the full test session; `_utf8_text` gives the import a UTF-8 LC_CTYPE and puts back the
    caller's."""
    import locale

    from promptseg.models.conditioners.dynamic_head import _utf8_text

    before = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, "C")
        with _utf8_text():
            inside = locale.getpreferredencoding(False)
        assert inside.lower().replace("-", "") == "utf8" or __import__("sys").flags.utf8_mode
        assert locale.setlocale(locale.LC_CTYPE) == "C"
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
