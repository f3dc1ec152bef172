import pytest

from promptseg.errors import TaxonomyError
from promptseg.taxonomy import UNIVERSAL_CLASSES, default_taxonomy, load_taxonomy, resolve


def test_the_32_universal_classes_in_spec_order():
    assert len(UNIVERSAL_CLASSES) == 32
    assert UNIVERSAL_CLASSES[0] == "spleen"
    assert UNIVERSAL_CLASSES[5] == "liver"
    assert UNIVERSAL_CLASSES[8] == "postcava"
    assert UNIVERSAL_CLASSES[26] == "liver tumor"
    assert UNIVERSAL_CLASSES[31] == "kidney cyst"
    assert [c.id for c in default_taxonomy().classes[:32]] == list(range(1, 33))


@pytest.mark.parametrize(
    "spelling, canonical",
    [
        ("IVC", "postcava"),
        ("inferior vena cava", "postcava"),
        ("inferior_vena_cava", "postcava"),
        ("gallbladder", "gall bladder"),
        ("Gall_Bladder", "gall bladder"),
        ("hepatic tumor", "liver tumor"),
        ("small bowel", "intestine"),
        ("small_bowel", "intestine"),
        ("kidney_left", "left kidney"),
        ("left kidney", "left kidney"),
        ("kidney, left", "left kidney"),
        ("Kidney Right", "right kidney"),
        ("LIVER", "liver"),
        ("  liver  ", "liver"),
    ],
)
def test_resolve_is_case_space_underscore_insensitive(spelling, canonical):
    assert resolve(spelling).name == canonical


def test_unknown_name_lists_three_closest():
    with pytest.raises(TaxonomyError) as err:
        resolve("livr tumour")
    msg = str(err.value)
    assert "'liver tumor'" in msg and "\n" not in msg
    assert msg.count("'") >= 2 * 3 + 2  # the unknown name and three suggestions


def test_anatomy_facts():
    tax = default_taxonomy()
    lt = tax.resolve("liver tumor")
    assert lt.kind == "lesion" and lt.parent == "liver"
    assert [c.name for c in tax.parent_classes(lt)] == ["liver"]
    kt = tax.resolve("kidney tumor")
    assert {c.name for c in tax.parent_classes(kt)} == {"left kidney", "right kidney"}
    members = tax.group_members("kidney")
    assert members["left"].name == "left kidney" and members["right"].name == "right kidney"
    assert tax.resolve("liver").single_instance
    assert tax.resolve("aorta").kind == "vessel"
    assert "liver tumor" in [c.name for c in tax.children("liver")]
    assert set(tax.regions) >= {"abdomen", "thorax", "pelvis"}


def test_user_classes_from_own_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text(
        "classes:\n"
        "  - {id: 1001, name: pituitary adenoma, synonyms: [pituitary tumor], kind: lesion, region: head_neck}\n"
    )
    tax = load_taxonomy(f)
    assert tax.resolve("pituitary tumor").name == "pituitary adenoma"
    assert tax.resolve("liver").id == 6
    with pytest.raises(TaxonomyError):
        default_taxonomy().resolve("pituitary tumor")


def test_user_file_cannot_steal_a_name(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("classes:\n  - {id: 2000, name: ivc}\n")
    with pytest.raises(TaxonomyError, match="already a name of 'postcava'"):
        load_taxonomy(f)


@pytest.mark.parametrize("threshold", ["0", "1", "1.5", "-0.2", "high", "true"])
def test_a_class_threshold_outside_0_1_is_refused_naming_file_and_class(tmp_path, threshold):
    f = tmp_path / "cut.yaml"
    f.write_text(f"classes:\n  - {{id: 3000, name: pineal cyst, threshold: {threshold}}}\n")
    with pytest.raises(TaxonomyError, match=r"cut\.yaml: class 'pineal cyst' has threshold .*between 0 and 1"):
        load_taxonomy(f)


def test_a_class_threshold_inside_0_1_is_kept(tmp_path):
    f = tmp_path / "cut.yaml"
    f.write_text("classes:\n  - {id: 3000, name: pineal cyst, threshold: 0.3}\n")
    assert load_taxonomy(f).resolve("pineal cyst").threshold == 0.3
