"""promptseg.io.formats, io.labeltable and io.atomic.atomic_path: the file-name, label-table and
write facts each stage shares."""
from __future__ import annotations

import pytest

from promptseg.errors import InputError
from promptseg.io import formats
from promptseg.io.atomic import atomic_path
from promptseg.io.labeltable import label_entries, read_label_json


@pytest.mark.parametrize("name, ending", [("ct.nii.gz", ".nii.gz"), ("CT.NII.GZ", ".NII.GZ"), ("a.nii", ".nii"),
                                          ("b.nhdr", ".nhdr"), ("c.mhd", ".mhd"), ("d.png", ""), (".nii.gz", "")])
def test_image_ending(name, ending):
    assert formats.image_ending(name) == ending


@pytest.mark.parametrize("name, case", [("liver_7_0000.nii.gz", "liver_7"), ("liver_7_0003.mha", "liver_7"),
                                        ("ct.nii.gz", "ct"), ("ct_000.nrrd", "ct_000"), ("notes.txt", "notes")])
def test_case_id_drops_ending_and_channel(name, case):
    assert formats.case_id(name) == case


def test_channel_file_and_output_ending(tmp_path):
    assert formats.channel_file("liver_7") == "liver_7_0000.nii.gz"
    assert formats.channel_file("x", 2, ".mha") == "x_0002.mha"
    assert formats.split_channel("x_0002") == ("x", 2) and formats.split_channel("x") == ("x", None)
    assert [formats.output_ending(n) for n in ("a.nhdr", "a.mhd", "a.nii", "a.nrrd")] == [".nrrd", ".mha", ".nii", ".nrrd"]
    assert formats.output_ending(tmp_path) == ".nii.gz"  # a DICOM folder


def test_label_table_shapes_and_errors(tmp_path):
    src = tmp_path / "t.json"
    assert label_entries({"0": "background", "1": "liver"}, src) == [("background", (0,)), ("liver", (1,))]
    assert label_entries({"labels": {"background": 0, "kidney": [1, 2]}}, src) == [("background", (0,)), ("kidney", (1, 2))]
    (tmp_path / "l.yaml").write_text("background: 0\nliver: 1\n")
    assert read_label_json(tmp_path / "l.yaml") == {"liver": (1,)}
    src.write_text("{not json")
    with pytest.raises(InputError) as info:
        read_label_json(src)
    assert "t.json: not valid JSON" in str(info.value)
    with pytest.raises(InputError, match="lists no values"):
        label_entries({"kidney": []}, src)


def test_atomic_path_keeps_the_ending_and_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "sub" / "pred.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".nii.gz") and tmp.name.startswith(".")
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"x" and sorted(p.name for p in target.parent.iterdir()) == ["pred.nii.gz"]
