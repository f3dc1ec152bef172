"""Real scans split into partially labelled nnU-Net / MSD datasets with different label names.

The two TotalSegmentator scans (same patient, different fields of view) are cut into distinct
z-slabs, and their labels are re-numbered and re-named per dataset:
- Dataset601_AbdomenKidney (nnU-Net v2): one `kidney` label for both kidneys, spleen, liver;
- Dataset602_Vessels (nnU-Net v2): `IVC`, aorta, TotalSegmentator names, an unknown `vertebrae_L1`;
- Task03_Liver (MSD): {"0": "background", "1": "liver", "2": "cancer"} with a tumour planted
  inside the liver;
- Dataset604_TotalSegNames (nnU-Net v2): TotalSegmentator names incl. a lung lobe (low confidence).
`build_real_folders` is imported by the other integration tests of the data package.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from promptseg.data.labels import label_to_targets_with_info
from promptseg.data.manifest import MANIFEST_NAME, DatasetManifest, load_dataset, scan_folder
from promptseg.data.mapping import map_labels
from promptseg.errors import PromptsegError

# original TotalSegmentator values used below
TS = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "liver": 5, "pancreas": 7,
      "adrenal_gland_right": 8, "lung_lower_lobe_left": 11, "vertebrae_L1": 31, "aorta": 52,
      "inferior_vena_cava": 63, "portal_vein_and_splenic_vein": 64, "urinary_bladder": 21}


def _load(shared: Path, name: str):
    img = nib.load(str(shared / name / "image.nii.gz"))
    lab = nib.load(str(shared / name / "labels.nii.gz"))
    return np.asarray(img.dataobj).astype(np.int16), np.asarray(lab.dataobj).astype(np.uint8), img.affine


def _slab(arr, affine, z0, z1):
    """A z-slab keeping the world position (origin shifted by z0 slices)."""
    a = affine.copy()
    a[:3, 3] = affine[:3, 3] + affine[:3, 2] * z0
    return np.ascontiguousarray(arr[:, :, z0:z1]), a


def _remap(label, table: dict[int, int]):
    out = np.zeros_like(label)
    for src, dst in table.items():
        out[label == src] = dst
    return out


def _save(arr, affine, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))


def _nnunet(root: Path, labels: dict[str, int], cases: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]):
    for cid, img, lab, aff in cases:
        _save(img, aff, root / "imagesTr" / f"{cid}_0000.nii.gz")
        _save(lab, aff, root / "labelsTr" / f"{cid}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": labels, "numTraining": len(cases), "file_ending": ".nii.gz"}))
    return root


def _msd(root: Path, name: str, labels: dict[str, str], cases):
    training = []
    for cid, img, lab, aff in cases:
        _save(img, aff, root / "imagesTr" / f"{cid}.nii.gz")
        _save(lab, aff, root / "labelsTr" / f"{cid}.nii.gz")
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": name, "modality": {"0": "CT"}, "labels": labels, "numTraining": len(cases),
        "training": training, "tensorImageSize": "3D"}))
    return root


def plant_tumour(img, lab_liver_mask, radius=4):
    """A darker sphere deep inside the liver (the scans have no tumour of their own)."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(lab_liver_mask, iterations=radius)
    centre = np.argwhere(inner)[len(np.argwhere(inner)) // 2]
    zz = np.indices(lab_liver_mask.shape)
    sphere = ((zz - centre[:, None, None, None]) ** 2).sum(0) <= radius ** 2
    sphere &= lab_liver_mask
    img = img.copy()
    img[sphere] = (img[sphere] - 40).astype(img.dtype)
    return img, sphere


def build_real_folders(shared: Path, root: Path, extra: bool = True) -> dict[str, Path]:
    """Write the datasets described in the module docstring under `root`; returns name -> folder."""
    si, sl, sa = _load(shared, "ct_abdomen_small")
    pi, pl, pa = _load(shared, "ct_abdomen_pelvis")
    out = {}
    kid = {TS["kidney_right"]: 1, TS["kidney_left"]: 1, TS["spleen"]: 2, TS["liver"]: 3}
    p_img, p_aff = _slab(pi, pa, 10, 105)
    p_lab, _ = _slab(pl, pa, 10, 105)
    out["Dataset601_AbdomenKidney"] = _nnunet(
        root / "Dataset601_AbdomenKidney", {"background": 0, "kidney": 1, "spleen": 2, "liver": 3},
        [("abd_000", si, _remap(sl, kid), sa), ("abd_001", p_img, _remap(p_lab, kid), p_aff)])

    ves = {TS["inferior_vena_cava"]: 1, TS["aorta"]: 2, TS["portal_vein_and_splenic_vein"]: 3,
           TS["gallbladder"]: 4, TS["pancreas"]: 5, TS["vertebrae_L1"]: 6}
    cases = []
    for cid, (z0, z1) in (("ves_000", (40, 112)), ("ves_001", (20, 100))):
        img, aff = _slab(pi, pa, z0, z1)
        lab, _ = _slab(pl, pa, z0, z1)
        cases.append((cid, img, _remap(lab, ves), aff))
    out["Dataset602_Vessels"] = _nnunet(
        root / "Dataset602_Vessels",
        {"background": 0, "IVC": 1, "aorta": 2, "portal_vein_and_splenic_vein": 3, "gallbladder": 4,
         "pancreas": 5, "vertebrae_L1": 6}, cases)

    cases = []
    for cid, (z0, z1) in (("liver_0", (60, 112)), ("liver_1", (50, 110))):
        img, aff = _slab(pi, pa, z0, z1)
        lab, _ = _slab(pl, pa, z0, z1)
        liver = lab == TS["liver"]
        img, sphere = plant_tumour(img, liver)
        new = np.zeros_like(lab)
        new[liver] = 1
        new[sphere] = 2
        cases.append((cid, img, new, aff))
    out["Task03_Liver"] = _msd(root / "Task03_Liver", "Liver", {"0": "background", "1": "liver", "2": "cancer"}, cases)

    if extra:
        tsn = {TS["kidney_right"]: 1, TS["kidney_left"]: 2, TS["adrenal_gland_right"]: 3,
               TS["urinary_bladder"]: 4, TS["lung_lower_lobe_left"]: 5, TS["vertebrae_L1"]: 6}
        img, aff = _slab(pi, pa, 5, 105)
        lab, _ = _slab(pl, pa, 5, 105)
        out["Dataset604_TotalSegNames"] = _nnunet(
            root / "Dataset604_TotalSegNames",
            {"background": 0, "kidney_right": 1, "kidney_left": 2, "adrenal_gland_right": 3,
             "urinary_bladder": 4, "lung_lower_lobe_left": 5, "vertebrae_L1": 6},
            [("tsn_000", img, _remap(lab, tsn), aff)])
    return out


@pytest.fixture(scope="module")
def folders(shared_data, tmp_path_factory):
    return build_real_folders(shared_data, tmp_path_factory.mktemp("real_datasets"))


def _targets(m: DatasetManifest) -> dict:
    return {lm.name: (lm.target, lm.source) for lm in m.labels}


def test_every_name_maps_to_the_right_class(folders):
    a = load_dataset(folders["Dataset601_AbdomenKidney"])
    assert a.source_format == "nnunetv2" and a.modality == "CT" and len(a.cases) == 2
    t = _targets(a)
    assert t["kidney"] == ("kidney", "synonym")  # the paired group: split left/right later
    assert t["spleen"][0] == "spleen" and t["liver"][0] == "liver" and t["background"] == (None, "background")
    assert a.annotated_classes == ["spleen", "right kidney", "left kidney", "liver"]

    b = load_dataset(folders["Dataset602_Vessels"])
    t = _targets(b)
    assert t["IVC"] == ("postcava", "synonym")
    assert t["portal_vein_and_splenic_vein"][0] == "portal vein and splenic vein"
    assert t["gallbladder"][0] == "gall bladder" and t["aorta"][0] == "aorta" and t["pancreas"][0] == "pancreas"
    assert t["vertebrae_L1"] == (None, "unmapped")  # not in the taxonomy: reported, ignored
    assert [m.name for m in b.unmapped] == ["vertebrae_L1"]
    assert b.annotated_classes == ["gall bladder", "aorta", "postcava", "portal vein and splenic vein", "pancreas"]

    c = load_dataset(folders["Task03_Liver"])
    assert c.source_format == "msd" and [k.id for k in c.cases] == ["liver_0", "liver_1"]
    t = _targets(c)
    assert t["liver"] == ("liver", "synonym")
    assert t["cancer"][0] == "liver tumor" and t["cancer"][1].startswith("synonym (context: liver cancer")
    assert c.annotated_classes == ["liver", "liver tumor"]


def test_low_confidence_names_wait_for_the_user(folders, tmp_path):
    folder = folders["Dataset604_TotalSegNames"]
    with pytest.raises(PromptsegError, match="lung_lower_lobe_left"):
        load_dataset(folder)
    m = scan_folder(folder)
    t = _targets(m)
    assert t["kidney_right"][0] == "right kidney" and t["adrenal_gland_right"][0] == "right adrenal gland"
    assert t["urinary_bladder"][0] == "bladder" and t["vertebrae_L1"] == (None, "unmapped")
    (p,) = m.pending
    assert p.name == "lung_lower_lobe_left" and p.proposal == "left lung"
    assert "left lung" not in m.annotated_classes
    # the user confirms it in the saved manifest; loading the folder then uses the manifest
    path = m.save(folder / MANIFEST_NAME)
    text = path.read_text().replace("confirm: false", "confirm: true")
    path.write_text(text)
    got = load_dataset(folder)
    assert _targets(got)["lung_lower_lobe_left"] == ("left lung", "user")
    assert got.annotated_classes == ["right kidney", "left kidney", "right adrenal gland", "left lung", "bladder"]
    path.unlink()


def _dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def test_single_kidney_label_is_split_left_right(folders, shared_data):
    from promptseg.io import read_image, read_label

    m = load_dataset(folders["Dataset601_AbdomenKidney"])
    truth = {"abd_000": ("ct_abdomen_small", 0, 30), "abd_001": ("ct_abdomen_pelvis", 10, 105)}
    for case in m.cases:
        img = read_image(case.images[0])
        lab = read_label(case.label, reference=img)
        assert img.orientation == "RAS"
        targets, info = label_to_targets_with_info(lab.array, m.labels, m.annotated_classes, image=img.array)
        src, z0, z1 = truth[case.id]
        true = np.asarray(nib.load(str(shared_data / src / "labels.nii.gz")).dataobj)[:, :, z0:z1]
        cls = m.annotated_classes
        assert _dice(targets[cls.index("right kidney")], true == TS["kidney_right"]) >= 0.95
        assert _dice(targets[cls.index("left kidney")], true == TS["kidney_left"]) >= 0.95
        assert _dice(targets[cls.index("liver")], true == TS["liver"]) == 1.0
        # the split is recorded, and the body midline falls between the kidneys
        rec = info["kidney"]
        assert rec["rule"] == "body centroid" and rec["left_voxels"] > 0 and rec["right_voxels"] > 0
        xs_r = np.argwhere(true == TS["kidney_right"])[:, 0].mean()
        xs_l = np.argwhere(true == TS["kidney_left"])[:, 0].mean()
        assert xs_l < rec["midline"] < xs_r  # RAS: axis 0 grows toward the patient's right
        # without the image the component midpoint gives the same answer
        t2, info2 = label_to_targets_with_info(lab.array, m.labels, cls)
        assert info2["kidney"]["rule"].startswith("midpoint") and np.array_equal(t2, targets)


def test_tumour_counts_as_liver_and_classes_overlap(folders):
    from promptseg.io import read_image, read_label

    m = load_dataset(folders["Task03_Liver"])
    case = m.cases[0]
    img = read_image(case.images[0])
    lab = read_label(case.label, reference=img).array
    t = label_to_targets_with_info(lab, m.labels, m.annotated_classes, image=img.array)[0]
    liver, tumour = t[0], t[1]
    assert tumour.sum() == (lab == 2).sum() > 0
    assert liver.sum() == (lab > 0).sum()                      # organ mask includes its tumour
    assert (liver & tumour).sum() == tumour.sum()             # the two masks overlap there


def test_manifest_round_trip_is_relative(folders, tmp_path):
    m = load_dataset(folders["Task03_Liver"])
    out = m.save(tmp_path / "liver.yaml")
    import yaml

    doc = yaml.safe_load(out.read_text())
    assert not Path(doc["root"]).is_absolute()  # root relative to the manifest, cases to the root
    assert doc["cases"][0]["images"] == ["imagesTr/liver_0.nii.gz"]
    assert doc["annotated_classes"] == ["liver", "liver tumor"]
    back = load_dataset(out)
    assert back.annotated_classes == m.annotated_classes
    assert [c.images for c in back.cases] == [c.images for c in m.cases]
    assert [(l.value, l.target) for l in back.labels] == [(l.value, l.target) for l in m.labels]
    js = m.save(tmp_path / "liver.json")
    assert load_dataset(js).annotated_classes == m.annotated_classes


def test_real_text_encoder_proposals():
    """The shipped MiniLM: a clear synonym-less name is accepted, a vague one waits, junk is unmapped."""
    labels, pending = map_labels({1: "left kidney cyst", 2: "vena cava", 3: "vertebrae L2"})
    got = {m.name: (m.target, m.source) for m in labels}
    assert got["left kidney cyst"][0] == "kidney cyst" and got["left kidney cyst"][1].startswith("embedding 0.")
    assert float(got["left kidney cyst"][1].split()[1]) >= 0.85
    assert got["vertebrae L2"] == (None, "unmapped")
    assert [(p.name, p.proposal) for p in pending] == [("vena cava", "postcava")]
