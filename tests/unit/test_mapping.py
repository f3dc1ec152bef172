"""Label-name mapping and manifests: synonyms, dataset context, embedding thresholds, confirmation."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from promptseg.data.manifest import (MANIFEST_NAME, DatasetManifest, load_dataset, read_labels_file,
                                     scan_folder)
from promptseg.data.mapping import (MappingConfig, SpellingScorer, dataset_context, map_labels,
                                    resolve_name)
from promptseg.errors import PromptsegError, TaxonomyError
from promptseg.taxonomy import default_taxonomy

TX = default_taxonomy()


class FakeScorer:
    """Deterministic similarities, so the thresholds are tested without a language model."""

    kind = "embedding"
    auto = True

    def __init__(self, table):
        self.table = table
        self.asked = []

    def __call__(self, names):
        self.asked += names
        return [sorted(self.table[n].items(), key=lambda kv: -kv[1]) for n in names]


def _by_name(labels):
    return {m.name: (m.target, m.source) for m in labels}


def test_synonyms_groups_and_plurals():
    assert resolve_name("IVC", TX) == "postcava"
    assert resolve_name("kidney_right", TX) == "right kidney"
    assert resolve_name("Kidney", TX) == "kidney" and resolve_name("kidneys", TX) == "kidney"
    assert resolve_name("lungs", TX) == "lung"
    assert resolve_name("hepatic vessels", TX) == "hepatic vessel"
    assert resolve_name("spinal cord", TX) is None


def test_side_markers_abbreviations_and_typos():
    # WORD: "Head_of_femur_L" / "kidney_R": a side marker + a paired organ -> that side
    assert resolve_name("Head_of_femur_L", TX) == "left head of femur"
    assert resolve_name("adrenal_gland_L", TX) == "left adrenal gland"
    assert resolve_name("L spleen", TX) is None  # not a paired organ: no side to pick
    assert resolve_name("lung R", TX) == "right lung"
    # BTCV abbreviations and WORD's one "adrenal" label for both glands: proposals, never applied
    scorer = FakeScorer({"arota": {"kidney": 0.34, "aorta": 0.30}})
    labels, pending = map_labels({1: "rkid", 2: "lkid", 3: "eso", 4: "adrenal", 5: "arota"}, scorer=scorer)
    assert [(p.name, p.proposal) for p in pending] == [
        ("rkid", "right kidney"), ("lkid", "left kidney"), ("eso", "esophagus"), ("adrenal", "adrenal gland"),
        ("arota", "aorta")]
    assert pending[0].reason.startswith("abbreviation") and pending[4].reason.startswith("spelling")
    assert [c for c, _ in pending[4].candidates] == ["aorta", "kidney"]
    assert scorer.asked == ["arota"]  # abbreviations never reach the embeddings
    # a far spelling stays unmapped: 'heart' is not 'hepar'
    labels, pending = map_labels({1: "heart"}, scorer=FakeScorer({"heart": {"aorta": 0.5}}))
    assert _by_name(labels)["heart"] == (None, "unmapped") and not pending


def test_msd_style_labels_use_the_dataset_context():
    scorer = FakeScorer({})
    labels, pending = map_labels({0: "background", 1: "liver", 2: "cancer"}, context=dataset_context(["Task03_Liver"]),
                                 scorer=scorer)
    got = _by_name(labels)
    assert got["background"] == (None, "background") and got["liver"] == ("liver", "synonym")
    assert got["cancer"] == ("liver tumor", "synonym (context: liver cancer)")
    assert not pending and scorer.asked == []  # decided without embeddings

    # the name gives the context even when no other label does (MSD Task06 / Task08)
    labels, _ = map_labels({1: "cancer"}, context=dataset_context(["Task06_Lung"]), scorer=scorer)
    assert _by_name(labels)["cancer"][0] == "lung tumor"
    labels, _ = map_labels({1: "Vessel", 2: "Tumour"}, context=dataset_context(["Task08_HepaticVessel"]), scorer=scorer)
    assert _by_name(labels)["Vessel"][0] == "hepatic vessel" and _by_name(labels)["Tumour"][0] == "hepatic vessel tumor"
    # KiTS: no organ in the name, the other label (a paired group) gives it
    labels, _ = map_labels({1: "kidney", 2: "tumor", 3: "cyst"}, context=dataset_context(["KiTS23"]), scorer=scorer)
    assert _by_name(labels)["tumor"][0] == "kidney tumor" and _by_name(labels)["cyst"][0] == "kidney cyst"


def test_ambiguous_context_is_not_applied():
    labels, pending = map_labels({1: "liver", 2: "pancreas", 3: "tumor"}, context=dataset_context(["Dataset9_Abd"]),
                                 scorer=FakeScorer({}))
    (p,) = pending
    assert p.name == "tumor" and p.proposal is None
    assert {c for c, _ in p.candidates} == {"liver tumor", "pancreas tumor"}
    assert "tumor" not in _by_name(labels)


def test_dataset_context_words():
    ctx = dataset_context(["Task08_HepaticVessel", "Dataset003_Liver"])
    assert "hepatic vessel" in ctx and "hepatic" in ctx and "liver" in ctx
    assert not {"task", "dataset", "08"} & set(ctx)


def test_embedding_thresholds_accept_pending_unmapped():
    scorer = FakeScorer({
        "big kidney stone": {"left kidney": 0.90, "right kidney": 0.86},       # high but no margin
        "renal sinus fat": {"kidney cyst": 0.91, "left kidney": 0.70},        # accepted
        "vena cava": {"postcava": 0.83, "aorta": 0.40},                       # below accept
        "vertebra L1": {"left lung": 0.39, "celiac trunk": 0.37},             # below floor
    })
    labels, pending = map_labels({1: "big kidney stone", 2: "renal sinus fat", 3: "vena cava", 4: "vertebra L1"},
                                 scorer=scorer)
    got = _by_name(labels)
    assert got["renal sinus fat"] == ("kidney cyst", "embedding 0.91")
    assert got["vertebra L1"] == (None, "unmapped")
    assert [(p.name, p.proposal) for p in pending] == [("big kidney stone", "left kidney"), ("vena cava", "postcava")]
    assert "runner-up right kidney" in pending[0].reason
    # thresholds are configuration
    labels, pending = map_labels({3: "vena cava"}, scorer=scorer, config=MappingConfig(accept=0.8))
    assert _by_name(labels)["vena cava"] == ("postcava", "embedding 0.83") and not pending


def test_spelling_fallback_never_applies_silently():
    labels, pending = map_labels({1: "gallblader"}, scorer=SpellingScorer(TX))
    assert pending[0].proposal == "gall bladder" and pending[0].reason.startswith("spelling")
    assert "gallblader" not in _by_name(labels)


def test_overrides_ignore_and_errors():
    labels, pending = map_labels({1: "blob", 2: "ignore", 3: "cancer"},
                                 overrides={"blob": "IVC", "3": None}, scorer=FakeScorer({}))
    got = _by_name(labels)
    assert got["blob"] == ("postcava", "user") and got["ignore"] == (None, "ignore")
    assert got["cancer"] == (None, "user") and not pending
    with pytest.raises(TaxonomyError, match="unknown class 'splen'"):
        map_labels({1: "x"}, overrides={"x": "splen"})
    with pytest.raises(PromptsegError, match="named twice"):
        map_labels([(1, "liver"), (1, "spleen")])


# --- manifests and folders --------------------------------------------------------------------------
def _nii(path, arr, spacing=2.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([spacing, spacing, spacing, 1.0])), str(path))


def _tiny_nnunet(root, labels):
    img = np.full((8, 8, 4), -1000, np.int16)
    lab = np.zeros((8, 8, 4), np.uint8)
    lab[1:3] = 1
    for cid in ("a_001", "a_002"):
        _nii(root / "imagesTr" / f"{cid}_0000.nii.gz", img)
        _nii(root / "labelsTr" / f"{cid}.nii.gz", lab)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels,
                                                   "numTraining": 2, "file_ending": ".nii.gz"}))
    return root


def test_nnunet_regions_and_manifest_confirmation(tmp_path):
    root = _tiny_nnunet(tmp_path / "Dataset777_Kid", {"background": 0, "kidney": [1, 2], "kidney tumour": 2,
                                                     "blob": 3})
    scorer = FakeScorer({"blob": {"spleen": 0.7, "liver": 0.5}})
    m = scan_folder(root, scorer=scorer)
    assert m.source_format == "nnunetv2" and [c.id for c in m.cases] == ["a_001", "a_002"]
    assert m.cases[0].images[0].name == "a_001_0000.nii.gz"
    kid = next(l for l in m.labels if l.name == "kidney")
    assert kid.target == "kidney" and kid.all_values == [1, 2]
    assert m.label_values == {0, 1, 2, 3}
    assert m.annotated_classes == ["right kidney", "left kidney", "kidney tumor"]
    with pytest.raises(PromptsegError, match="'blob' -> 'spleen'"):
        m.require_confirmed()

    path = m.save(root / MANIFEST_NAME)
    with pytest.raises(PromptsegError, match="need confirmation"):
        load_dataset(root)  # the saved manifest still has the pending entry
    text = path.read_text().replace("proposal: spleen", "proposal: lien").replace("confirm: false", "confirm: true")
    path.write_text(text)
    got = load_dataset(root)
    assert ("blob", "spleen", "user") in {(l.name, l.target, l.source) for l in got.labels}
    assert got.annotated_classes[0] == "spleen" and got.pending == []

    # a manifest naming an unknown class fails in one line naming the file
    path.write_text(path.read_text().replace("target: kidney tumor", "target: kidny tumour"))
    with pytest.raises(TaxonomyError, match=f"{MANIFEST_NAME}: label 2: unknown class 'kidny tumour'"):
        load_dataset(path)


def test_confirm_api_and_yes(tmp_path):
    root = _tiny_nnunet(tmp_path / "D1", {"background": 0, "blob": 1})
    m = scan_folder(root, scorer=FakeScorer({"blob": {"spleen": 0.7, "liver": 0.5}}))
    m.confirm()
    assert _by_name(m.labels)["blob"] == ("spleen", "embedding 0.70 (confirmed)")
    m = scan_folder(root, scorer=FakeScorer({"blob": {"spleen": 0.7, "liver": 0.5}}))
    m.confirm(1, target="IVC")
    assert _by_name(m.labels)["blob"] == ("postcava", "user")


def test_plain_folders(tmp_path):
    img = np.full((6, 6, 3), -1000, np.int16)
    lab = np.zeros((6, 6, 3), np.uint8)
    # one case in the folder itself, like ../shared/data/<scan>/
    one = tmp_path / "scan"
    _nii(one / "image.nii.gz", img)
    _nii(one / "labels.nii.gz", lab)
    (one / "labels.json").write_text(json.dumps({"1": "spleen", "2": "inferior_vena_cava"}))
    m = scan_folder(one, scorer=FakeScorer({}))
    assert m.source_format == "plain" and [c.id for c in m.cases] == ["scan"] and m.modality == "CT"
    assert _by_name(m.labels)["inferior_vena_cava"][0] == "postcava"
    # a pairs file + a name -> value labels file
    many = tmp_path / "many"
    for i in range(3):
        _nii(many / "img" / f"c{i}.nii.gz", img)
        _nii(many / "seg" / f"c{i}.nii.gz", lab)
    (many / "pairs.csv").write_text("image,label\n" + "".join(f"img/c{i}.nii.gz,seg/c{i}.nii.gz\n" for i in range(3)))
    (many / "labels.yaml").write_text("background: 0\nliver: 1\n")
    m = scan_folder(many, modality="CT", scorer=FakeScorer({}))
    assert [c.id for c in m.cases] == ["c0", "c1", "c2"] and m.annotated_classes == ["liver"]
    assert read_labels_file(many / "labels.yaml") == [(0, "background", []), (1, "liver", [])]
    # nothing usable: one line naming the folder
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PromptsegError, match="empty: no dataset.json and no labels file"):
        scan_folder(empty)


def test_msd_folder_and_cli_add(tmp_path, capsys):
    from promptseg.cli import main

    root = tmp_path / "Task07_Pancreas"
    img = np.full((6, 6, 3), -1000, np.int16)
    _nii(root / "imagesTr" / "pancreas_001.nii.gz", img)
    _nii(root / "labelsTr" / "pancreas_001.nii.gz", np.zeros((6, 6, 3), np.uint8))
    (root / "dataset.json").write_text(json.dumps({
        "name": "Pancreas", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
        "numTraining": 1, "training": [{"image": "./imagesTr/pancreas_001.nii.gz",
                                        "label": "./labelsTr/pancreas_001.nii.gz"}]}))
    assert main(["data", "add", str(root)]) == 0
    out = capsys.readouterr().out
    assert "pancreas tumor" in out and "synonym (context: pancreas cancer)" in out
    m = DatasetManifest.load(root / MANIFEST_NAME)
    assert m.source_format == "msd" and m.file_ending == ".nii.gz" and m.cases[0].id == "pancreas_001"
    assert m.annotated_classes == ["pancreas", "pancreas tumor"]
    # bad dataset.json: one line
    (root / "dataset.json").write_text("{not json")
    assert main(["data", "add", str(root), "-o", str(tmp_path / "x.yaml")]) == 2
    assert "dataset.json: not valid JSON" in capsys.readouterr().err


def test_held_out_folder_uses_labelled_test_cases(tmp_path):
    root = _tiny_nnunet(tmp_path / "DatasetTest", {"background": 0, "liver": 1})
    (root / "imagesTr").rename(root / "imagesTs")
    (root / "labelsTr").rename(root / "labelsTs")
    m = scan_folder(root, scorer=FakeScorer({}))
    assert [c.id for c in m.cases] == ["a_001", "a_002"] and m.cases[0].label.parent.name == "labelsTs"
    assert any("imagesTs" in n for n in m.notes) and not any("numTraining" in n for n in m.notes)
