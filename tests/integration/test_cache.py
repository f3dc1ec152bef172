"""The preprocessing cache on real scans: done once, redone only for what changed, resumable."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

import promptseg.preprocess as preprocess
from promptseg.data import cache
from promptseg.data.cache import prepare_datasets
from promptseg.data.manifest import load_dataset
from promptseg.errors import PromptsegError

_spec = importlib.util.spec_from_file_location("_real_folders", Path(__file__).with_name("test_datasets_real.py"))
_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_real)

PLAN = {"name": "universal_ct", "spacing": [3.0, 3.0, 3.0]}  # native spacing of the scans: fast


@pytest.fixture(scope="module")
def folders(shared_data, tmp_path_factory):
    return _real.build_real_folders(shared_data, tmp_path_factory.mktemp("cache_datasets"), extra=False)


@pytest.fixture
def calls(monkeypatch):
    """Count real preprocessing work (calls of preprocess_image)."""
    n = {"calls": 0}
    real = preprocess.preprocess_image

    def counting(volume, plan):
        n["calls"] += 1
        return real(volume, plan)

    monkeypatch.setattr(preprocess, "preprocess_image", counting)
    return n


def _datasets(folders, names=("Dataset601_AbdomenKidney", "Dataset602_Vessels", "Task03_Liver")):
    return [load_dataset(folders[n]) for n in names]


def _dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def test_prepare_once_then_reuse_and_redo_only_what_changed(folders, tmp_path, calls, shared_data, monkeypatch):
    ds = _datasets(folders)
    cases = prepare_datasets(ds, PLAN, tmp_path, progress=False)
    assert calls["calls"] == 6 and len(cases) == 6
    by_id = {c.id: c for c in cases}
    c = by_id["abd_000"]
    assert c.dataset == "Dataset601_AbdomenKidney" and c.modality == "CT" and c.spacing == (3.0, 3.0, 3.0)
    assert c.classes == ["spleen", "right kidney", "left kidney", "liver"]
    assert c.image.dtype == np.float32 and c.image.ndim == 4 and c.image.shape[0] == 1
    assert c.targets.shape == (4,) + c.image.shape[1:] and isinstance(c.image, np.memmap)
    assert 0.0 <= float(c.image.min()) and float(c.image.max()) <= 1.0  # HU [-175, 250] -> [0, 1]
    assert by_id["liver_0"].classes == ["liver", "liver tumor"]

    # the one "kidney" label became left and right kidney in plan space (truth: the original labels)
    from promptseg.io import read_label
    from promptseg.preprocess import Record, apply_to_label

    rec = Record.from_dict(c.record)
    true = apply_to_label(read_label(shared_data / "ct_abdomen_small" / "labels.nii.gz"), rec)
    assert _dice(c.targets[1], true == 2) >= 0.95 and _dice(c.targets[2], true == 3) >= 0.95
    assert c.split["kidney"]["rule"] == "body centroid"
    tumour = by_id["liver_0"].targets
    assert tumour[1].any() and np.all(tumour[0][tumour[1] > 0])  # the tumour lies inside the liver mask

    # second preparation: no preprocessing at all, and no source file is even read (stat only)
    before = dict(cache.COUNTS)
    hashed = []
    real_fp = cache.file_fingerprint
    monkeypatch.setattr(cache, "file_fingerprint", lambda p: hashed.append(p) or real_fp(p))
    again = prepare_datasets(_datasets(folders), PLAN, tmp_path, progress=False)
    assert calls["calls"] == 6 and hashed == []
    assert cache.COUNTS["reused"] - before.get("reused", 0) == 6
    assert all(np.array_equal(a.targets, b.targets) for a, b in zip(cases, again))

    # touching one source file redoes that case only
    touched = ds[2].cases[1].label
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    prepare_datasets(_datasets(folders), PLAN, tmp_path, progress=False)
    assert calls["calls"] == 7 and hashed == [touched]
    index = json.loads((tmp_path / "Task03_Liver").glob("*/index.json").__next__().read_text())
    assert index["cases"]["liver_1"]["sources"]["label"]["mtime_ns"] == touched.stat().st_mtime_ns

    # editing the mapping recomputes targets from the cached label, without preprocessing
    liver = load_dataset(folders["Task03_Liver"])
    for m in liver.labels:  # the user sets `target: null` (ignore) for the tumour label
        if m.name == "cancer":
            m.target, m.source = None, "user"
    before = dict(cache.COUNTS)
    (only_liver, _) = prepare_datasets([liver], PLAN, tmp_path, progress=False)[:2]
    assert calls["calls"] == 7 and cache.COUNTS["retargeted"] - before.get("retargeted", 0) == 2
    assert only_liver.classes == ["liver"] and only_liver.targets.shape[0] == 1
    full = by_id["liver_0"].targets  # liver + tumour before; now the ignored tumour is not liver
    assert np.array_equal(only_liver.targets[0], (full[0] > 0) & ~(full[1] > 0))

    # another plan gets its own folder and is preprocessed once more
    prepare_datasets([_datasets(folders)[2]], {**PLAN, "spacing": [4.0, 4.0, 4.0]}, tmp_path, progress=False)
    assert calls["calls"] == 9
    assert len(list((tmp_path / "Task03_Liver").iterdir())) == 2


def test_interrupted_run_resumes(folders, tmp_path, monkeypatch, calls):
    real = preprocess.preprocess_image
    state = {"n": 0}

    def crash_on_third(volume, plan):
        state["n"] += 1
        if state["n"] == 3:
            raise KeyboardInterrupt
        return real(volume, plan)

    ds = _datasets(folders, ("Dataset602_Vessels", "Task03_Liver"))
    monkeypatch.setattr(preprocess, "preprocess_image", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare_datasets(ds, PLAN, tmp_path, progress=False)
    monkeypatch.setattr(preprocess, "preprocess_image", real)
    done = sorted(p.stem for p in tmp_path.glob("*/*/*.json") if p.name != "index.json")
    assert done == ["ves_000", "ves_001"]
    assert not list(tmp_path.glob("*/*/.*.tmp"))  # no half-written files left behind
    counted = {"n": 0}

    def counting(volume, plan):
        counted["n"] += 1
        return real(volume, plan)

    monkeypatch.setattr(preprocess, "preprocess_image", counting)
    cases = prepare_datasets(_datasets(folders, ("Dataset602_Vessels", "Task03_Liver")), PLAN, tmp_path,
                             progress=False)
    assert counted["n"] == 2 and len(cases) == 4  # only the two liver cases were left


def test_parallel_workers_match_serial(folders, tmp_path):
    ds = _datasets(folders, ("Task03_Liver",))
    serial = prepare_datasets(ds, PLAN, tmp_path / "a", workers=1, progress=False)
    parallel = prepare_datasets(ds, PLAN, tmp_path / "b", workers=2, progress=True)
    assert [c.id for c in serial] == [c.id for c in parallel]
    for s, p in zip(serial, parallel):
        assert np.array_equal(s.image, p.image) and np.array_equal(s.targets, p.targets)


def test_bad_case_names_itself(folders, tmp_path):
    ds = _datasets(folders, ("Task03_Liver",))
    ds[0].cases[0].label = ds[0].root / "labelsTr" / "nope.nii.gz"
    with pytest.raises(PromptsegError, match="liver_0"):
        prepare_datasets(ds, PLAN, tmp_path, progress=False)
