"""promptseg.workflows.bench without training: the partial split of a labelled scan, the run YAMLs (only
`conditioner:` differs) and the table."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from promptseg.evaluation.prompt_diagnostics import ClassDiagnostics

from promptseg.workflows import bench, bench_diagnostics
from promptseg.errors import ConfigError, InputError
from promptseg.io import read_image, read_label, write_image
from promptseg.io.volume import Volume

# TotalSegmentator spellings, as in ../shared/data/*/labels.json
NAMES = {"1": "spleen", "2": "kidney_right", "3": "kidney_left", "5": "liver", "52": "aorta", "63": "inferior_vena_cava",
         "30": "vertebrae_L2"}


@pytest.fixture()
def scan(tmp_path) -> Path:
    d = tmp_path / "scan_x"
    d.mkdir()
    rng = np.random.default_rng(0)
    lab = np.zeros((12, 10, 6), np.uint8)
    for i, v in enumerate(int(v) for v in NAMES):
        lab[i, :, :3] = v  # one slab per class
    geo = dict(spacing=(3.0, 2.5, 4.0), origin=(10.0, -20.0, 5.0), direction=np.diag([-1.0, -1.0, 1.0]))
    write_image(Volume(rng.integers(-1000, 400, lab.shape).astype(np.int16), **geo), d / "image.nii.gz")
    write_image(Volume(lab, **geo), d / "labels.nii.gz")
    (d / "labels.json").write_text(json.dumps(NAMES))
    return d


SPLITS = {"A_liver_spleen": ["liver", "spleen"], "B_kidneys": ["right kidney", "kidney_left"],
          "C_vessels": ["aorta", "IVC"]}


def test_split_keeps_only_each_datasets_classes(scan, tmp_path):
    from promptseg.data.manifest import load_dataset

    out = bench.split_partial_datasets(scan, tmp_path / "splits", SPLITS)
    assert list(out) == list(SPLITS)
    src_lab = read_label(scan / "labels.nii.gz").array
    expect = {"A_liver_spleen": {"liver": 5, "spleen": 1}, "B_kidneys": {"right kidney": 2, "left kidney": 3},
              "C_vessels": {"aorta": 52, "postcava": 63}}
    for name, folder in out.items():
        spec = json.loads((folder / "dataset.json").read_text())
        assert spec["description"].startswith(bench.SPLIT_TAG)
        table = {k: v for k, v in spec["labels"].items() if k != "background"}
        assert set(table) == set(expect[name])  # canonical taxonomy names
        img = folder / "imagesTr" / "scan_x_0000.nii.gz"
        assert img.read_bytes() == (scan / "image.nii.gz").read_bytes()  # the image untouched
        lab = read_label(folder / "labelsTr" / "scan_x.nii.gz", reference=read_image(img))
        assert set(np.unique(lab.array)) == {0, *table.values()}
        for cls, v in table.items():
            assert np.array_equal(lab.array == v, src_lab == expect[name][cls])
        assert sorted(load_dataset(folder).annotated_classes) == sorted(expect[name])


def test_split_errors_are_one_line(scan, tmp_path):
    with pytest.raises(InputError, match="no label for 'pancreas'"):
        bench.split_partial_datasets(scan, tmp_path / "s", {"P": ["pancreas"]})
    with pytest.raises(ConfigError, match="not a taxonomy class"):
        bench.split_partial_datasets(scan, tmp_path / "s", {"P": ["flux capacitor"]})
    foreign = tmp_path / "s2" / "A_liver_spleen"
    foreign.mkdir(parents=True)
    (foreign / "dataset.json").write_text(json.dumps({"description": "somebody's data"}))
    with pytest.raises(InputError, match="refusing to overwrite"):
        bench.split_partial_datasets(scan, tmp_path / "s2", SPLITS)
    # an earlier split of ours is replaced
    bench.split_partial_datasets(scan, tmp_path / "s3", SPLITS)
    bench.split_partial_datasets(scan, tmp_path / "s3", SPLITS)


def test_run_yamls_differ_only_in_conditioner(scan, tmp_path):
    suite = bench.Suite("t", "title", "note", [scan], [], {
        "seed": 0, "plan": {"name": "universal_ct", "spacing": None}, "backbone": {"name": "unet"},
        "train": {"steps": 10, "patch_size": [32, 32, 32]}, "inference": {"window": [32, 32, 32]}})
    docs = {}
    for m in bench.method_names():
        p = bench.write_run_yaml(suite, m, tmp_path / m, steps=3, train={"lr": 0.01})
        docs[m] = yaml.safe_load(p.read_text())
    conds = {m: d.pop("conditioner") for m, d in docs.items()}
    assert all(d == docs["universal"] for d in docs.values())  # name, output, datasets, train, ... alike
    assert docs["universal"]["train"] == {"steps": 3, "patch_size": [32, 32, 32], "lr": 0.01}
    assert suite.run["train"]["steps"] == 10  # the suite itself is not modified
    assert {m: c["name"] for m, c in conds.items()} == {m: m for m in bench.method_names()}
    with pytest.raises(ConfigError, match="unknown method"):
        bench.conditioner_config("nnunet")


def test_table_has_every_class_and_the_note():
    suite = bench.Suite("t", "my suite", "same patient: not generalisation", [], [], {})
    rows = [
        bench.MethodResult("universal", 2_930_000, 300, 0.93, 1.2, 4.6, {"liver": 0.9, "spleen": 0.8}),
        bench.MethodResult("sat", 1_830_000, 300, 0.51, 1.0, 2.5, {"liver": 0.7, "spleen": math.nan}),
    ]
    text = bench.format_table(suite, rows, command="promptseg bench compare --suite t")
    lines = text.splitlines()
    assert "not generalisation" in text and "`promptseg bench compare --suite t`" in text
    header = next(line for line in lines if line.startswith("| method"))
    assert [c.strip() for c in header.strip("|").split("|")] == \
        ["method", "params (M)", "s/step", "s/volume", "liver", "spleen", "mean Dice", "flags"]
    uni = next(line for line in lines if line.startswith("| universal"))
    assert [c.strip() for c in uni.strip("|").split("|")] == ["universal", "2.93", "0.93", "1.20", "0.900", "0.800", "0.850", "-"]
    sat = next(line for line in lines if line.startswith("| sat"))
    assert sat.split("|")[-4].strip() == "-" and sat.split("|")[-3].strip() == "0.700"  # NaN skipped in the mean


def test_resume_reuses_a_finished_method_only_for_the_same_yaml(scan, tmp_path, monkeypatch):
    suite = bench.Suite("t", "title", "note", [scan], [], {"train": {"steps": 10}})
    calls = []

    def fake_train(yml, device="auto", progress=True):
        calls.append(yml)
        return bench.TrainResult(Path("ckpt"), 10, 6.0, 0.5)

    monkeypatch.setattr(bench, "train_run", fake_train)
    monkeypatch.setattr(bench, "score_checkpoint", lambda *a, **k: bench.ScoreResult(
        {"liver": 0.9, "spleen": math.nan}, {"c1": {"liver": 0.9, "spleen": math.nan}}, 1.5, 1000))
    monkeypatch.setattr(bench, "checkpoint_diagnostics", lambda *a, **k: {
        "liver": ClassDiagnostics(0.4, 2.0), "spleen": ClassDiagnostics(0.01, -3.0, ["blind", "dead"])})
    first = bench.train_and_score(suite, "onehot", tmp_path / "onehot", reuse=True)
    again = bench.train_and_score(suite, "onehot", tmp_path / "onehot", reuse=True)
    assert len(calls) == 1
    assert again.dice["liver"] == 0.9 and math.isnan(again.dice["spleen"]) and again.params == 1000
    assert again.mean_dice == first.mean_dice == 0.9
    assert again.diagnostics["spleen"]["flags"] == ["blind", "dead"] == first.diagnostics["spleen"]["flags"]
    bench.train_and_score(suite, "onehot", tmp_path / "onehot", steps=5, reuse=True)  # another YAML
    bench.train_and_score(suite, "onehot", tmp_path / "onehot", steps=5, reuse=False)  # not asked to reuse
    assert len(calls) == 3


def test_a_class_post_processing_removed_is_flagged_pruned(scan, tmp_path, monkeypatch):
    """The network found the class (raw Dice 0.81) but the written masks score 0: flagged, never a
    silent 0 (Hermes' postcava on the real-CT suite, session 11: the largest-component rule kept a
    pelvic false positive bigger than the true vena cava)."""
    suite = bench.Suite("t", "title", "note", [scan], [], {"train": {"steps": 10}})
    monkeypatch.setattr(bench, "train_run", lambda yml, **k: bench.TrainResult(Path("ckpt"), 10, 6.0, 0.5))
    monkeypatch.setattr(bench, "score_checkpoint", lambda *a, **k: bench.ScoreResult(
        {"liver": 0.9, "postcava": 0.0, "spleen": 0.3}, {}, 1.5, 1000))
    # the checkpoint's logits are stubbed below the real checkpoint_diagnostics, which flags
    monkeypatch.setattr(bench_diagnostics, "open_checkpoint", lambda *a, **k: SimpleNamespace(
        model=SimpleNamespace(class_names=["liver", "postcava", "spleen"])))
    monkeypatch.setattr(bench_diagnostics, "case_logits", lambda *a, **k: None)
    monkeypatch.setattr(bench_diagnostics, "class_thresholds", lambda ckpt, classes: [0.5] * len(classes))
    monkeypatch.setattr(bench_diagnostics, "diagnose", lambda *a, **k: {
        "liver": ClassDiagnostics(0.4, 2.0, raw_dice=0.95), "postcava": ClassDiagnostics(0.5, 6.4, raw_dice=0.81),
        "spleen": ClassDiagnostics(0.5, -1.0, ["dead"], raw_dice=0.4)})
    r = bench.train_and_score(suite, "hermes", tmp_path / "hermes")
    assert {c: d["flags"] for c, d in r.diagnostics.items()} == {"liver": [], "postcava": ["pruned"], "spleen": ["dead"]}
    assert "0.000 (pruned)" in bench.format_table(suite, [r])
    assert "under 0.5 x the network's raw Dice" in bench.format_table(suite, [r])
    assert "under 0.25 x the network's raw Dice" in bench.format_table(suite, [r], pruned_ratio=0.25)


def test_seeds_give_mean_and_sd_and_flags_are_marked():
    suite = bench.Suite("t", "my suite", "note", [], [], {})
    diag = {"liver": {"prompt_share": 0.5, "positive_logit": 3.0, "raw_dice": 0.9, "flags": []},
            "spleen": {"prompt_share": 0.01, "positive_logit": -9.0, "flags": ["blind", "dead"]}}
    rows = [bench.MethodResult("sat", 10**6, 5, 0.5, 1.0, 1.0, {"liver": d, "spleen": 0.0}, seed=i,
                               diagnostics=diag if i else {**diag, "spleen": {**diag["spleen"], "flags": ["dead"]}})
            for i, d in enumerate((0.8, 0.9))]
    text = bench.format_table(suite, rows)
    sat = next(line for line in text.splitlines() if line.startswith("| sat"))
    cells = [c.strip() for c in sat.strip("|").split("|")]
    assert cells[4] == "0.850 ± 0.071"
    assert cells[5] == "0.000 ± 0.000 (dead, blind 1/2)"  # a 0 Dice never stands unexplained
    assert "spleen: dead, blind 1/2" in cells[-1]
    assert "| sat | 0.50 / 3.0 / 0.90 | 0.01 / -9.0 / - |" in text  # the diagnostics table


def test_learn_real_ct_trains_with_the_suites_learn_recipe(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(bench, "real_ct_suite", lambda *a, **k: "suite")
    monkeypatch.setattr(bench, "train_and_score", lambda suite, method, run_dir, **k: seen.update(k["train"]))
    bench.learn_real_ct(tmp_path)
    assert seen == {"recipe": bench.suite_settings("real-ct")["learn_recipe"]}
    bench.learn_real_ct(tmp_path, train={"recipe": "universal", "lr": 0.1})
    assert seen == {"recipe": "universal", "lr": 0.1}


def test_validation_split_scores_other_phantoms_after_the_same_training(tmp_path, monkeypatch, capsys):
    """`--split validation`: the same training datasets, scored on phantoms of another generator
    seed (never the reported test phantoms); a seed equal to the training one and the real-CT suite
    (one scored scan) are refused."""
    small = {**bench.suite_settings("phantom"),
             "phantoms": {"seed": 0, "n_train": [1, 1, 1, 1], "n_test": 1, "shape": [40, 32, 24], "spacing": [8.0, 8.0, 8.0]},
             "validation": {"seed": 7, "n_test": 1}}
    monkeypatch.setattr(bench, "suite_settings", lambda name: small)
    test = bench.phantom_suite(tmp_path / "t")
    assert "phantoms" in capsys.readouterr().err  # a progress bar, unless --quiet:
    val = bench.phantom_suite(tmp_path / "v", "validation", progress=False)
    assert "phantoms" not in capsys.readouterr().err
    assert [p.name for p in test.datasets] == [p.name for p in val.datasets]
    for a, b in zip(test.datasets, val.datasets):  # identical training data
        img = sorted((a / "imagesTr").iterdir())[0]
        assert np.array_equal(read_image(img).array, read_image(b / "imagesTr" / img.name).array)
    t_img, v_img = read_image(test.test_cases[0].image).array, read_image(val.test_cases[0].image).array
    assert not np.array_equal(t_img, v_img) and "validation" in str(val.test_cases[0].image)
    assert "VALIDATION" in val.title and "seed 7" in val.note
    small["validation"] = {"seed": 0}
    with pytest.raises(ConfigError, match="must differ"):
        bench.phantom_suite(tmp_path / "w", "validation")
    with pytest.raises(ConfigError, match="no validation split"):
        bench.build_suite("real-ct", tmp_path / "r", split="validation")


def test_scoring_keeps_the_thread_count_the_bench_was_given(scan, tmp_path):
    """`bench --threads 1`: predict's default (every core) must not replace it while scoring -- it
    would carry over to the next method's training, two benches side by side then oversubscribe."""
    import torch

    from promptseg.checkpoint import save_checkpoint
    from promptseg.models.build import build_model
    from promptseg.runtime import machine_threads

    classes = ["liver", "spleen"]
    torch.manual_seed(0)
    cfg = {"backbone": {"name": "unet", "preset": "small", "widths": [4, 8]}, "conditioner": {"name": "universal"}}
    ckpt = save_checkpoint(build_model(cfg, classes, embeddings=torch.randn(2, 384)), tmp_path / "model",
                           {**cfg, "modality": "CT", "plan": {"name": "universal_ct", "spacing": None},
                            "inference": {"window": [16, 16, 8], "sw_batch_size": 1}})
    case = bench.TestCase("x", scan / "image.nii.gz", scan / "labels.nii.gz", {"liver": (5,), "spleen": (1,)})
    before = torch.get_num_threads()
    target = 1 if machine_threads() > 1 else 2
    try:
        torch.set_num_threads(target)
        result = bench.score_checkpoint(ckpt, [case], tmp_path / "pred", device="cpu")
        assert torch.get_num_threads() == target
    finally:
        torch.set_num_threads(before)
    assert set(result.dice) == set(classes)


def test_default_data_dir_is_the_shared_folder_beside_the_clone(monkeypatch):
    """`bench compare --suite real-ct` without --data finds ../shared/data next to the repository."""
    monkeypatch.delenv("PROMPTSEG_SHARED_DATA", raising=False)
    assert bench.default_data_dir() == Path(__file__).resolve().parents[2].parent / "shared" / "data"
    monkeypatch.setenv("PROMPTSEG_SHARED_DATA", "/elsewhere")
    assert bench.default_data_dir() == Path("/elsewhere")
