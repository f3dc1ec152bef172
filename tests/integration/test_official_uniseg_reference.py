"""Our UniSeg network against numbers the authors' own network code produced (stored in
tests/data/uniseg_authors_small.json; how they were made is written in the file): a small network
of the published design, seeded random weights in the authors' layout, a raw window of a real CT.
The published size was compared the same way outside the repository (max |d| 0 for all 11 tasks)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from promptseg.models.official_uniseg import build_official_uniseg, name_map, random_uniseg_state_dict

REFERENCE = Path(__file__).parents[1] / "data" / "uniseg_authors_small.json"


def test_forward_equals_the_authors_on_a_real_ct_window(shared_data):
    ref = json.loads(REFERENCE.read_text())
    net = build_official_uniseg(patch=(16, 64, 64), base_features=4, max_features=8).eval()
    names = name_map(net)
    layout = {k: tuple(net.state_dict()[v].shape) for k, v in names.items()}
    sd = random_uniseg_state_dict(seed=ref["seed"], layout=layout)
    net.load_state_dict({names[k]: v for k, v in sd.items()}, strict=True)
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / "ct_abdomen_small" / "image.nii.gz"), sitk.sitkFloat32))
    w = ref["window"]
    win = image[slice(*w["z"]), slice(*w["y"]), slice(*w["x"])]
    x = torch.from_numpy(np.ascontiguousarray((np.clip(win, -325, 325) + 325) / 650.0))[None, None]
    with torch.no_grad():
        for task, want in ref["tasks"].items():
            y = net(x, int(task))[0]
            got = torch.stack([y[:, z, r, c] for z, r, c in ref["points"]])
            assert torch.allclose(got, torch.tensor(want["at_points"]), atol=1e-4), task
            assert abs(float(y.mean()) - want["mean"]) < 1e-4 and abs(float(y.std()) - want["std"]) < 1e-4, task
