import numpy as np
import torch

from promptseg.data.sampling import Batch
from promptseg.train.trainer import training_classes


def _batch(annotated, present):
    ann = torch.tensor(annotated)
    tg = torch.zeros(ann.shape + (2, 2, 2))
    for b, row in enumerate(present):
        for k, p in enumerate(row):
            if p:
                tg[b, k, 0, 0, 0] = 1
    return Batch(torch.zeros(len(annotated), 1, 2, 2, 2), tg, ann, ["CT"] * len(annotated), ["d"] * len(annotated), ["c"] * len(annotated))


def test_only_classes_some_sample_annotates_are_asked():
    classes = ["a", "b", "c", "d"]
    b = _batch([[True, False, False, False], [False, False, True, False]], [[1, 0, 0, 0], [0, 0, 0, 0]])
    assert training_classes(classes, b, 32, np.random.default_rng(0)) == ["a", "c"]


def test_cap_keeps_positives_first():
    classes = [f"c{i}" for i in range(10)]
    ann = [[True] * 10]
    present = [[1, 1, 0, 0, 0, 0, 0, 0, 0, 0]]
    got = training_classes(classes, _batch(ann, present), 3, np.random.default_rng(0))
    assert len(got) <= 3 and {"c0", "c1"} <= set(got)
