"""The Python surface a user meets first: `promptseg.<name>` resolves, says what it does, and
`model(x, "liver")` takes one class name as well as a list (issue 18 item 6)."""
from __future__ import annotations

import inspect

import pytest
import torch

import promptseg


@pytest.mark.parametrize("name", [n for n in promptseg.__all__ if n != "__version__"])
def test_public_names_resolve_and_have_docstrings(name):
    obj = getattr(promptseg, name)
    assert inspect.getdoc(obj), f"promptseg.{name} has no docstring"


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError):
        promptseg.no_such_name  # noqa: B018


def test_model_takes_one_string_prompt():
    from promptseg.models.build import build_model

    torch.manual_seed(0)
    model = build_model({"backbone": {"name": "unet", "preset": "small"}, "conditioner": {"name": "universal"}},
                        ["liver", "spleen"], embeddings=torch.randn(2, 384)).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        one, listed, synonym, both = model(x, "liver"), model(x, ["liver"]), model(x, "Hepar"), model(x, ["spleen", "liver"])
    assert one.shape == (1, 1, 32, 32, 32)
    assert torch.equal(one, listed) and torch.equal(one, synonym)
    torch.testing.assert_close(both[:, 1:], one, rtol=1e-5, atol=1e-5)  # one grouped conv for both classes
