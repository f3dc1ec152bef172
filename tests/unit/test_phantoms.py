"""Phantom CT cases and the partially labelled nnU-Net folders built from them."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from promptseg.errors import ConfigError, InputError, TaxonomyError
from promptseg.data.phantoms import (
    PHANTOM_LABELS,
    _relabel,
    make_phantom_case,
    make_phantom_datasets,
)
from promptseg.taxonomy import default_taxonomy

ALL_TUMOURS = {"liver tumor": 1, "kidney tumor": 1, "pancreas tumor": 1}
ORGAN_HU = {  # plausible contrast-enhanced ranges (means include blur and noise)
    "liver": (85, 120), "spleen": (90, 135), "left kidney": (120, 180), "right kidney": (120, 180),
    "pancreas": (70, 105), "aorta": (180, 300),
}
TUMOUR_HOSTS = {"liver tumor": {"liver"}, "kidney tumor": {"left kidney", "right kidney"},
                "pancreas tumor": {"pancreas"}}


@pytest.fixture(scope="module")
def case():
    return make_phantom_case(7, tumours=ALL_TUMOURS)


def _centroid_lps(volume, mask) -> np.ndarray:
    idx = np.argwhere(mask).mean(0)
    return (volume.affine_lps @ np.append(idx, 1.0))[:3]


def test_same_seed_gives_identical_arrays_and_other_seeds_differ(case):
    image, label, table = case
    image2, label2, table2 = make_phantom_case(7, tumours=ALL_TUMOURS)
    assert image.array.tobytes() == image2.array.tobytes()
    assert label.array.tobytes() == label2.array.tobytes()
    assert table == table2
    other, _, _ = make_phantom_case(8, tumours=ALL_TUMOURS)
    assert other.array.tobytes() != image.array.tobytes()


def test_types_geometry_and_names(case):
    image, label, table = case
    assert image.array.dtype == np.int16 and label.array.dtype == np.uint8
    assert image.shape == (80, 64, 48) and image.spacing == (4.0, 4.0, 4.0)
    assert image.same_grid(label)
    assert image.orientation == "RAS"
    assert np.abs(image.origin).min() > 1.0  # a real, non-zero origin
    assert table["background"] == 0 and len(set(table.values())) == len(table)
    tax = default_taxonomy()
    for name in table:
        if name != "background":
            assert tax.resolve(name).name == name  # canonical taxonomy names
    assert image.array.min() >= -1024 and (image.array == -1000).mean() < 0.5  # air outside only


def test_every_structure_present_with_plausible_hu(case):
    image, label, table = case
    hu = image.array.astype(float)
    for organ, (lo, hi) in ORGAN_HU.items():
        mask = label.array == table[organ]
        assert mask.sum() > 200, organ
        assert lo < hu[mask].mean() < hi, (organ, hu[mask].mean())
    for tumour, hosts in TUMOUR_HOSTS.items():
        mask = label.array == table[tumour]
        assert mask.sum() >= 10, tumour
        host_hu = max(hu[label.array == table[h]].mean() for h in hosts)
        assert hu[mask].mean() < host_hu - 25, tumour  # hypodense
    body = hu > -500
    assert body.mean() > 0.3
    assert (hu[~body] < -800).all()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tumours_lie_inside_their_organ(seed):
    _, label, table = make_phantom_case(seed, tumours={"liver tumor": 2, "kidney tumor": 1, "pancreas tumor": 1})
    lab = label.array
    for tumour, hosts in TUMOUR_HOSTS.items():
        mask = lab == table[tumour]
        assert mask.any(), tumour
        comps, n = ndimage.label(mask)
        for c in range(1, n + 1):
            comp = comps == c
            ring = set(np.unique(lab[ndimage.binary_dilation(comp, np.ones((3, 3, 3))) & ~comp]).tolist())
            ring.discard(table[tumour])
            # every neighbour of a tumour voxel is tumour or one single host organ
            assert len(ring) == 1 and ring <= {table[h] for h in hosts}, (tumour, ring)


def test_left_kidney_is_on_the_patients_left_in_world_coordinates(case):
    image, label, table = case
    lab = label.array
    left = _centroid_lps(label, lab == table["left kidney"])
    right = _centroid_lps(label, lab == table["right kidney"])
    liver = _centroid_lps(label, lab == table["liver"])
    spleen = _centroid_lps(label, lab == table["spleen"])
    body = _centroid_lps(image, image.array > -500)
    # LPS: +x is the patient's left, +y posterior, +z superior.
    assert left[0] > body[0] + 30 > body[0] - 30 > right[0]
    assert liver[0] < body[0] < spleen[0]
    assert left[1] > body[1] and right[1] > body[1]  # kidneys are posterior
    assert liver[2] > 0.5 * (left[2] + right[2])  # liver above the kidneys


def test_tumour_argument_is_validated():
    with pytest.raises(TaxonomyError, match="lung tumor"):
        make_phantom_case(0, tumours={"lung tumor": 1})
    with pytest.raises(ConfigError):
        make_phantom_case(0, tumours={"liver tumor": -1})
    with pytest.raises(ConfigError):
        make_phantom_case(0, shape=(80, 64))
    _, label, table = make_phantom_case(0, tumours={"liver tumour": 1})  # a synonym
    assert (label.array == table["liver tumor"]).any()
    _, label, table = make_phantom_case(0)
    assert not np.isin(label.array, [table[t] for t in TUMOUR_HOSTS]).any()


def test_unannotated_tumour_counts_as_its_organ():
    _, label, table = make_phantom_case(3, tumours={"liver tumor": 1, "kidney tumor": 1})
    lab = label.array
    out, t = _relabel(lab, ("liver", "left kidney", "right kidney"))
    assert t == {"background": 0, "liver": 1, "left kidney": 2, "right kidney": 3}
    assert (out[lab == table["liver tumor"]] == 1).all()
    kidney_tumour = lab == table["kidney tumor"]
    assert np.isin(out[kidney_tumour], [2, 3]).all()
    assert (out[lab == table["spleen"]] == 0).all()


# --- dataset folders ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    return make_phantom_datasets(root, seed=0, n_train=(2, 2, 2, 1), n_test=2)


EXPECTED = {
    "PhantomA_liver": {"liver", "liver tumor"},
    "PhantomB_kidney": {"left kidney", "right kidney", "kidney tumor"},
    "PhantomC_organs": {"liver", "spleen", "left kidney", "right kidney", "pancreas", "aorta"},
    "PhantomD_pancreas": {"pancreas", "pancreas tumor"},
    "PhantomTest_full": set(PHANTOM_LABELS) - {"background"},
}


def _cases(folder, meta):
    key = "test" if "test" in meta else "training"
    return [(folder / e["image"], folder / e["label"]) for e in meta[key]]


def test_datasets_are_valid_nnunet_v2_folders(datasets):
    assert set(datasets) == set(EXPECTED)
    for name, folder in datasets.items():
        meta = json.loads((folder / "dataset.json").read_text())
        assert meta["channel_names"] == {"0": "CT"}
        assert meta["file_ending"] == ".nii.gz"
        assert meta["name"] == name and meta["description"].startswith("promptseg phantom")
        labels = meta["labels"]
        assert labels["background"] == 0
        assert sorted(labels.values()) == list(range(len(labels)))
        test = name == "PhantomTest_full"
        img_dir, lab_dir = ("imagesTs", "labelsTs") if test else ("imagesTr", "labelsTr")
        images = sorted((folder / img_dir).glob("*.nii.gz"))
        assert len(images) == (2 if test else (1 if name.startswith("PhantomD") else 2))
        assert meta["numTraining"] == (0 if test else len(images))
        if test:
            assert meta["numTest"] == len(images)
        for img_path, lab_path in _cases(folder, meta):
            assert img_path.is_file() and lab_path.is_file()
            assert img_path.name.endswith("_0000.nii.gz")
            assert lab_path.name == img_path.name.replace("_0000.nii.gz", ".nii.gz")
    assert not [p for p in datasets["PhantomA_liver"].parent.iterdir() if p.name.startswith(".")]


def test_partial_datasets_annotate_exactly_the_advertised_classes(datasets):
    seen_images = set()
    for name, folder in datasets.items():
        meta = json.loads((folder / "dataset.json").read_text())
        assert set(meta["labels"]) - {"background"} == EXPECTED[name]
        union = set()
        for img_path, lab_path in _cases(folder, meta):
            img, lab = nib.load(img_path), nib.load(lab_path)
            assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
            assert np.allclose(img.affine, lab.affine) and nib.aff2axcodes(img.affine) == ("R", "A", "S")
            arr = np.asarray(lab.dataobj)
            values = set(np.unique(arr).tolist())
            assert values <= set(meta["labels"].values())
            union |= values
            pixels = np.asarray(img.dataobj).tobytes()
            assert pixels not in seen_images  # no case repeats across datasets
            seen_images.add(pixels)
            inv = {v: k for k, v in meta["labels"].items()}
            present = {inv[v] for v in values}
            if name == "PhantomA_liver":
                assert "liver tumor" in present
            if name == "PhantomB_kidney":
                assert "kidney tumor" in present
            if name == "PhantomD_pancreas":
                assert "pancreas tumor" in present
            if name == "PhantomTest_full":
                assert present == EXPECTED[name] | {"background"}
        assert union == set(meta["labels"].values()), name  # every advertised class occurs


def test_written_files_keep_left_kidney_on_the_left(datasets):
    folder = datasets["PhantomTest_full"]
    meta = json.loads((folder / "dataset.json").read_text())
    _, lab_path = _cases(folder, meta)[0]
    lab = nib.load(lab_path)
    arr = np.asarray(lab.dataobj)

    def ras_x(name):
        idx = np.argwhere(arr == meta["labels"][name]).mean(0)
        return (lab.affine @ np.append(idx, 1.0))[0]

    # RAS: +x is the patient's RIGHT.
    assert ras_x("left kidney") < ras_x("right kidney")
    assert ras_x("spleen") < ras_x("liver")


def _darkest_liver_spot(img_path, lab_path, liver_value) -> float:
    """Lowest smoothed HU inside the liver outline (holes filled, so a tumour would count)."""
    arr = np.asarray(nib.load(lab_path).dataobj)
    hu = ndimage.gaussian_filter(np.asarray(nib.load(img_path).dataobj).astype(float), 1.0)
    liver = ndimage.binary_erosion(ndimage.binary_fill_holes(arr == liver_value), iterations=2)
    return float(hu[liver].min())


def test_organ_dataset_images_are_tumour_free(datasets):
    meta_c = json.loads((datasets["PhantomC_organs"] / "dataset.json").read_text())
    for img_path, lab_path in _cases(datasets["PhantomC_organs"], meta_c):
        assert _darkest_liver_spot(img_path, lab_path, meta_c["labels"]["liver"]) > 58
    # the same check does see the tumours of the liver dataset
    meta_a = json.loads((datasets["PhantomA_liver"] / "dataset.json").read_text())
    for img_path, lab_path in _cases(datasets["PhantomA_liver"], meta_a):
        assert _darkest_liver_spot(img_path, lab_path, meta_a["labels"]["liver"]) < 58


def test_rewrite_replaces_phantoms_but_never_foreign_folders(tmp_path):
    out = make_phantom_datasets(tmp_path, seed=1, n_train=(1, 0, 0), n_test=0)
    assert set(out) == {"PhantomA_liver"}
    out2 = make_phantom_datasets(tmp_path, seed=1, n_train=(1, 0, 0), n_test=0)
    assert out2 == out
    assert len(list((out["PhantomA_liver"] / "imagesTr").iterdir())) == 1
    foreign = tmp_path / "PhantomA_liver"
    (foreign / "dataset.json").write_text(json.dumps({"description": "my real data"}))
    with pytest.raises(InputError, match="not a promptseg phantom"):
        make_phantom_datasets(tmp_path, seed=1, n_train=(1, 0, 0), n_test=0)
    with pytest.raises(ConfigError):
        make_phantom_datasets(tmp_path, n_train=(1, 2))
