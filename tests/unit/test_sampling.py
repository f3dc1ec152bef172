from dataclasses import dataclass

import numpy as np
import pytest

from promptseg.data.sampling import PatchSampler, dataset_weights


@dataclass
class FakeCase:
    id: str
    dataset: str
    modality: str
    image: np.ndarray
    targets: np.ndarray
    classes: list
    spacing: tuple = (1.0, 1.0, 1.0)


def make_case(ds, cid, classes, shape=(40, 40, 30), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(1,) + shape).astype(np.float32)
    tg = np.zeros((len(classes),) + shape, np.uint8)
    for k in range(len(classes)):
        c = rng.integers(5, 25, 3)
        tg[k, c[0]:c[0] + 4, c[1]:c[1] + 4, c[2]:c[2] + 3] = 1
    return FakeCase(cid, ds, "CT", img, tg, classes)


def test_dataset_weights():
    assert np.allclose(dataset_weights([1, 100], "uniform"), [0.5, 0.5])
    # SAT: each scan weighs 1/sqrt(N), so the 100-scan dataset is drawn 100/sqrt(100) = 10x as often
    w = dataset_weights([1, 100], "sqrt")
    assert np.isclose(w[1] / w[0], 10.0)
    assert np.allclose(dataset_weights([1, 3], "proportional"), [0.25, 0.75])
    with pytest.raises(ValueError):
        dataset_weights([1], "bogus")


def test_batch_targets_and_annotated_mask_follow_the_dataset():
    cases = [make_case("A", f"a{i}", ["liver", "liver tumor"], seed=i) for i in range(3)]
    cases += [make_case("B", f"b{i}", ["left kidney"], seed=10 + i) for i in range(30)]
    classes = ["left kidney", "liver", "liver tumor", "spleen"]
    s = PatchSampler(cases, classes, (16, 16, 16), batch_size=64, seed=1)
    b = s.sample()
    assert b.image.shape == (64, 1, 16, 16, 16) and b.targets.shape == (64, 4, 16, 16, 16)
    for i, ds in enumerate(b.datasets):
        expect = [False, True, True, False] if ds == "A" else [True, False, False, False]
        assert b.annotated[i].tolist() == expect
        assert b.targets[i][~b.annotated[i]].sum() == 0
    # uniform over datasets although B has 10x the cases
    frac_a = np.mean([d == "A" for d in b.datasets])
    assert 0.3 < frac_a < 0.7


def test_foreground_ratio():
    cases = [make_case("A", f"a{i}", ["liver"], shape=(60, 60, 60), seed=i) for i in range(4)]
    s = PatchSampler(cases, ["liver"], (8, 8, 8), batch_size=300, fg_ratio=1.0, rot90_prob=0, seed=0)
    assert (s.sample().targets.flatten(1).amax(1) > 0).float().mean() == 1.0
    s = PatchSampler(cases, ["liver"], (8, 8, 8), batch_size=300, fg_ratio=0.0, rot90_prob=0, seed=0)
    assert (s.sample().targets.flatten(1).amax(1) > 0).float().mean() < 0.3


def test_patch_larger_than_volume_is_padded():
    cases = [make_case("A", "a", ["liver"], shape=(10, 12, 6))]
    b = PatchSampler(cases, ["liver"], (16, 16, 8), batch_size=2, seed=0).sample()
    assert b.image.shape == (2, 1, 16, 16, 8)


def test_seeded_and_rank_distinct():
    cases = [make_case("A", f"a{i}", ["liver"], seed=i) for i in range(5)]
    a = PatchSampler(cases, ["liver"], (8, 8, 8), batch_size=4, seed=3).sample()
    b = PatchSampler(cases, ["liver"], (8, 8, 8), batch_size=4, seed=3).sample()
    c = PatchSampler(cases, ["liver"], (8, 8, 8), batch_size=4, seed=4).sample()
    assert np.array_equal(a.image.numpy(), b.image.numpy())
    assert not np.array_equal(a.image.numpy(), c.image.numpy())
