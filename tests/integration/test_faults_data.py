"""Issue 16, data side: label values that the dataset's label list does not declare.

A real CT (ct_abdomen_small) whose labels.json leaves out values that its label file holds
(liver 5, aorta 52): training on it would silently treat those organs as background. `data add`
refuses it, `train` (the cache) refuses it, and `data check` names the file and the values --
each one line, nothing written.
"""
from __future__ import annotations

import json
import shutil

import pytest

from promptseg.cli import main
from promptseg.data.cache import prepare_datasets
from promptseg.data.manifest import MANIFEST_NAME, load_dataset
from promptseg.errors import InputError, PromptsegError

HIDDEN = (5, 52)  # liver, aorta: present in labels.nii.gz, left out of labels.json


@pytest.fixture
def undeclared(shared_data, tmp_path):
    src = shared_data / "ct_abdomen_small"
    folder = tmp_path / "abdomen"
    folder.mkdir()
    for name in ("image.nii.gz", "labels.nii.gz"):
        shutil.copy(src / name, folder / name)
    labels = {k: v for k, v in json.loads((src / "labels.json").read_text()).items() if int(k) not in HIDDEN}
    (folder / "labels.json").write_text(json.dumps(labels))
    return folder


def test_data_add_refuses_undeclared_values(undeclared, capsys):
    code = main(["data", "add", str(undeclared), "--modality", "CT", "--yes"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err
    assert "labels.nii.gz" in err and "[5, 52]" in err and "not in the dataset's label list" in err
    assert not (undeclared / MANIFEST_NAME).exists()  # nothing written


def test_train_cache_refuses_undeclared_values(undeclared, tmp_path):
    m = load_dataset(undeclared, require_confirmed=False)
    m.confirm()
    with pytest.raises(PromptsegError) as err:
        prepare_datasets([m], {"name": "universal_ct", "spacing": [3.0, 3.0, 3.0]}, tmp_path / "cache", progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "labels.nii.gz" in msg and "[5, 52]" in msg and m.name in msg


def test_data_check_names_file_and_values(undeclared, capsys):
    assert main(["data", "check", str(undeclared), "--no-progress"]) == 1
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if "label-values" in l)
    assert "labels.nii.gz" in line and "5 (" in line and "52 (" in line


def test_declared_values_pass(shared_data, tmp_path, capsys):
    folder = tmp_path / "abdomen_ok"
    shutil.copytree(shared_data / "ct_abdomen_small", folder)
    assert main(["data", "add", str(folder), "--modality", "CT", "--yes"]) == 0
    assert (folder / MANIFEST_NAME).is_file()
