"""data/augment.py and data/loader.py: left stays left, seeds make streams reproducible."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from promptseg.data.augment import AUGMENT_DEFAULTS, augment_params, build_augmenter
from promptseg.data.cache import PreparedCase
from promptseg.data.loader import batch_stream
from promptseg.data.sampling import PatchSampler
from promptseg.errors import ConfigError

OFF = {k: 0.0 for k in AUGMENT_DEFAULTS if k.endswith("_prob")}


def _cases():
    rng = np.random.default_rng(0)
    out = []
    for i, mod in enumerate(("CT", "MR", "PET")):
        img = rng.normal(size=(1, 24, 24, 24)).astype(np.float32)
        tgt = np.zeros((1, 24, 24, 24), np.uint8)
        tgt[0, 2:8, 4:12, 6:20] = 1
        out.append(PreparedCase(f"c{i}", f"ds_{mod}", mod, img, tgt, ["liver"], (1.0, 1.0, 1.0)))
    return out


def test_mirroring_never_swaps_left_and_right():
    aug = build_augmenter({**OFF, "mirror_prob": 1.0})
    img = np.arange(16 ** 3, dtype=np.float32).reshape(1, 16, 16, 16)
    tgt = np.zeros((1, 16, 16, 16), np.float32)
    tgt[0, :4, :4, :4] = 1  # at low indices of every axis
    for lr in (0, 1, 2):
        aug.reseed(1)
        _, out = aug(img, tgt, lr_axis=lr)
        idx = np.argwhere(out[0] > 0)
        for ax in range(3):
            assert (idx[:, ax].max() < 4) == (ax == lr), (lr, ax)  # only the left-right axis is kept


def test_full_recipe_keeps_shapes_binary_targets_and_is_seeded():
    aug = build_augmenter({k: (1.0 if k.endswith("_prob") else v) for k, v in AUGMENT_DEFAULTS.items()})
    case = _cases()[0]
    img, tgt = case.image, case.targets.astype(np.float32)
    aug.reseed(7)
    a = aug(img, tgt)
    aug.reseed(7)
    b = aug(img, tgt)
    assert a[0].shape == img.shape and a[1].shape == tgt.shape
    assert set(np.unique(a[1])) <= {0.0, 1.0} and not np.array_equal(a[0], img)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_bad_augment_keys_are_config_errors():
    assert augment_params(False) is None and augment_params(True) == AUGMENT_DEFAULTS
    for bad in ({"gamma_prob": 2}, {"rotate": 3}, {"gamma": [2, 1]}, "yes"):
        with pytest.raises(ConfigError):
            augment_params(bad)


def test_worker_streams_are_reproducible_and_carry_modality():
    def run(workers):
        sampler = PatchSampler(_cases(), ["liver"], (16, 16, 16), batch_size=3, seed=5,
                               augment=build_augmenter(True))
        stream = batch_stream(sampler, workers=workers, seed=11)
        return [next(stream) for _ in range(4)]

    a, b = run(2), run(2)
    for x, y in zip(a, b):
        assert torch.equal(x.image, y.image) and x.case_ids == y.case_ids and x.modality == y.modality
    mods = {m for x in a for m in x.modality}
    assert mods <= {"CT", "MR", "PET"} and len(mods) > 1
    assert all(m == d.split("_")[1] for x in a for m, d in zip(x.modality, x.datasets))


def test_a_worker_leaves_through_os_exit_after_flushing_so_no_static_destructor_runs(monkeypatch):
    """The loader's worker hook (see `_exit_worker_quietly`) registers an exit handler that flushes
    what the worker printed, then ends the process with os._exit(0): exit handlers registered
    before it and C++ static destructors never run. Checked in this process with atexit and
    os._exit intercepted (a test that really exits a child process from here crashed the whole
    suite with SIGSEGV, in pytest's own process, on this machine)."""
    from promptseg.data import loader

    registered, events = [], []

    class Stream:
        def __init__(self, name):
            self.name = name

        def flush(self):
            events.append(f"flush {self.name}")

    monkeypatch.setattr(loader.atexit, "register", lambda fn, *a: registered.append(fn))
    monkeypatch.setattr(loader.os, "_exit", lambda code: events.append(f"_exit {code}"))
    monkeypatch.setattr(loader.sys, "stdout", Stream("stdout"))
    monkeypatch.setattr(loader.sys, "stderr", Stream("stderr"))
    loader._exit_worker_quietly(0)
    assert len(registered) == 1 and events == []  # nothing happens before the worker exits
    registered[0]()
    assert events == ["flush stdout", "flush stderr", "_exit 0"]
