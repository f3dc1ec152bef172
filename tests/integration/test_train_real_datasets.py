"""`promptseg train` on a run YAML that lists real nnU-Net / MSD dataset folders (issue 4).

The folders are the ones `test_datasets_real.build_real_folders` cuts from the two real CTs (one
`kidney` label to split, `IVC`, an MSD `cancer`, an unknown `vertebrae_L1`). The user's path is
followed: `promptseg data add` per folder, then `promptseg train RUN.yaml`. A spy on the masked
loss checks that, for every sample of every step, the classes the loss trusts are exactly the
ones its dataset's manifest annotates.
"""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from promptseg.cli import main
from promptseg.data.manifest import load_dataset
from promptseg.train import trainer as trainer_module

from test_datasets_real import build_real_folders  # this folder is on sys.path (pytest prepend mode)


@pytest.mark.parametrize("negative_ratio", [None, 0.0])
def test_train_reads_the_manifests_annotated_sets(shared_data, tmp_path, monkeypatch, negative_ratio):
    """negative_ratio None (the Universal recipe's "all"): the loss trusts every annotated pair;
    0.0 (SAT's rule with no negatives): only the pairs whose class is in the sample's crop."""
    folders = build_real_folders(shared_data, tmp_path / "raw", extra=False)
    for folder in folders.values():
        assert main(["data", "add", str(folder)]) == 0, folder
    manifests = {m.name: m for m in (load_dataset(f) for f in folders.values())}
    annotated = {name: set(m.annotated_classes) for name, m in manifests.items()}
    # the names the folders use reach the taxonomy: one kidney label became two sides, IVC the postcava
    assert {"right kidney", "left kidney", "spleen", "liver"} <= annotated["Dataset601_AbdomenKidney"]
    assert {"postcava", "aorta", "pancreas"} <= annotated["Dataset602_Vessels"]
    assert annotated["Task03_Liver"] == {"liver", "liver tumor"}

    run = {
        "name": "real_folders", "output": "run", "seed": 0, "modality": "CT",
        "datasets": [str(f) for f in folders.values()],
        "plan": {"name": "universal_ct", "spacing": [3.0, 3.0, 3.0]},
        "backbone": {"name": "unet", "preset": "small"},
        "conditioner": {"name": "universal", "head": "mlp", "text_encoder": "minilm"},
        "train": {"steps": 4, "batch_size": 2, "patch_size": [32, 32, 16], "lr": 0.002, "warmup_steps": 1,
                  "checkpoint_every": 100, "num_threads": 1, "max_queries": 32, "negative_ratio": negative_ratio},
        "inference": {"window": [32, 32, 16], "overlap": 0.0},
    }
    yml = tmp_path / "run.yaml"
    yml.write_text(yaml.safe_dump(run, sort_keys=False))

    steps = []  # (datasets of the batch, prompts of the step, annotated mask the loss got)
    real_classes, real_loss = trainer_module.training_classes, trainer_module.masked_bce_dice

    def spy_classes(classes, batch, max_queries, rng, conditioner=None):
        names = real_classes(classes, batch, max_queries, rng, conditioner)
        present = batch.targets[:, [classes.index(n) for n in names]].flatten(2).amax(-1) > 0
        steps.append([list(batch.datasets), names, None, present])
        return names

    def spy_loss(logits, targets, mask, **weights):
        steps[-1][2] = mask.detach().cpu().clone()
        return real_loss(logits, targets, mask, **weights)

    monkeypatch.setattr(trainer_module, "training_classes", spy_classes)
    monkeypatch.setattr(trainer_module, "masked_bce_dice", spy_loss)
    n = torch.get_num_threads()
    try:
        assert main(["train", str(yml), "--device", "cpu", "--quiet"]) == 0
    finally:
        torch.set_num_threads(n)

    assert len(steps) == 4
    for datasets, names, mask, present in steps:
        assert mask.shape == (2, len(names))
        for b, ds in enumerate(datasets):
            trusted = {name for k, name in enumerate(names) if bool(mask[b, k])}
            if negative_ratio is None:
                assert trusted == annotated[ds] & set(names), (ds, names, mask[b])
            else:
                here = {name for k, name in enumerate(names) if bool(present[b, k])} & annotated[ds]
                assert trusted == here if here else trusted <= annotated[ds], (ds, names, mask[b], here)
        # a step asks only for classes some sample of it annotates
        assert set(names) <= set().union(*(annotated[ds] for ds in datasets))

    meta = json.loads((tmp_path / "run" / "model" / "checkpoint.json").read_text())
    union = set().union(*annotated.values())
    assert set(meta["class_names"]) == union  # the model learns every class some dataset annotates
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
