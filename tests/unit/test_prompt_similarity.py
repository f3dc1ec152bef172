"""The bench's closest-prompt pairs: MiniLM finds left/right kidney nearly alike (issue 17)."""
from __future__ import annotations

import pytest
import torch

from promptseg.text.similarity import closest_pairs
from promptseg.workflows.bench import prompt_similarity
from promptseg.workflows.bench_report import similarity_lines


def test_closest_pairs_orders_by_cosine():
    e = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    pairs = closest_pairs(["a", "b", "c"], e, top=2)
    assert [(a, b) for a, b, _ in pairs] == [("a", "b"), ("b", "c")]
    assert pairs[0][2] == pytest.approx(0.9 / (0.81 + 0.01) ** 0.5)
    with pytest.raises(ValueError, match="3 names but 2"):
        closest_pairs(["a", "b", "c"], e[:2])


def test_minilm_left_and_right_kidney_are_the_closest_pair():
    classes = ["liver", "spleen", "left kidney", "right kidney", "pancreas tumor"]
    pairs = prompt_similarity(classes, top=3)
    assert {pairs[0][0], pairs[0][1]} == {"left kidney", "right kidney"} and pairs[0][2] > 0.9
    assert pairs[0][2] > pairs[1][2] >= pairs[2][2]
    text = "\n".join(similarity_lines(pairs, "minilm"))
    assert "left kidney / right kidney" in text or "right kidney / left kidney" in text
    assert prompt_similarity(["liver"]) == []
