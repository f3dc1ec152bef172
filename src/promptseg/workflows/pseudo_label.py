"""`promptseg pseudo-label`: a model + unlabelled scans -> nnU-Net-style dataset(s) of its masks.

Why (universal-model-flare23): FLARE23 trains on partially labelled scans *plus* pseudo-labels of
unlabelled ones. A pseudo-label is only worth training on where the model was sure, so each
class of each case gets a confidence (`inference.confidence`: mean probability inside the final
mask; 1 - peak probability for an absent class) and:
- a class below `class_threshold` is *not annotated* for that case (never taught as background);
- a case whose mean class confidence is below `case_threshold`, or with no class passing, is
  dropped.
promptseg's datasets declare their annotated classes per dataset (dataset.json `labels`), so
kept cases are grouped by the set of classes that passed: one folder per set (`NAME` when all
cases agree, else `NAME_g1`, `NAME_g2`, ...), each a valid nnU-Net v2 dataset to list in a run
YAML's `datasets:` beside the labelled ones. `pseudo_labels.json` records every case's
per-class confidence, what passed, what was dropped and why, and the folders written.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError
from ..inference.merge import merge
from ..inference import Predictor, case_name, collect_inputs
from ..io import read_image, write_image
from ..io.atomic import atomic_directory, atomic_write
from ..io.volume import Volume

REPORT = "pseudo_labels.json"


@dataclass
class CaseResult:
    case: str
    source: str
    confidence: dict[str, float]
    passed: list[str]
    case_confidence: float
    kept: bool
    reason: str = ""
    volumes_ml: dict[str, float] = field(default_factory=dict)


def judge(case: str, source: str, confidence: dict[str, float], class_threshold: float,
          case_threshold: float) -> CaseResult:
    """Which classes pass and whether the case is kept (the rules in the module docstring)."""
    passed = [c for c, v in confidence.items() if v >= class_threshold]
    mean = float(np.mean(list(confidence.values()))) if confidence else 0.0
    reason = ""
    if mean < case_threshold:
        reason = f"case confidence {mean:.3f} < {case_threshold}"
    elif not passed:
        reason = f"no class reached {class_threshold}"
    return CaseResult(case, source, confidence, passed, mean, kept=not reason, reason=reason)


def _check_thresholds(class_threshold: float, case_threshold: float) -> None:
    for name, v in (("class_threshold", class_threshold), ("case_threshold", case_threshold)):
        if not 0.0 <= float(v) <= 1.0:
            raise ConfigError(f"pseudo-label {name} must be in [0, 1], got {v!r}")


def _dataset_json(name: str, classes: Sequence[str], n: int, modality: str, source: str) -> dict[str, Any]:
    return {
        "channel_names": {"0": modality},
        "labels": {"background": 0, **{c: i + 1 for i, c in enumerate(classes)}},
        "numTraining": n,
        "file_ending": ".nii.gz",
        "name": name,
        "description": f"promptseg pseudo-labels of {source} (classes that passed the confidence threshold)",
    }


def _write_group(folder: Path, name: str, classes: list[str], cases: list[tuple[CaseResult, Volume, Volume]],
                 modality: str, source: str) -> Path:
    with atomic_directory(folder) as work:
        (work / "imagesTr").mkdir()
        (work / "labelsTr").mkdir()
        for res, image, label in cases:
            write_image(image, work / "imagesTr" / f"{res.case}_0000.nii.gz")
            write_image(label, work / "labelsTr" / f"{res.case}.nii.gz")
        atomic_write(work / "dataset.json", json.dumps(_dataset_json(name, classes, len(cases), modality, source), indent=1))
    return folder


def pseudo_label(model, inputs: str | Path | Sequence[str | Path], out_dir: str | Path, prompts: Sequence[str] | None = None,
                 class_threshold: float = 0.8, case_threshold: float = 0.0, name: str = "Pseudo",
                 device: str = "auto", inference: dict | None = None, progress: bool = False,
                 on_case: Callable[[CaseResult], None] | None = None, modality: str | None = None) -> dict[str, Any]:
    """Predict every scan, judge its classes, write the dataset folder(s) + `pseudo_labels.json`.

    model: a `Checkpoint` (its plan and inference settings are used) or a model with `inference`
    settings and a plan given through `Predictor`. Returns the report written.
    Scans are held in memory until written (pseudo-labelling sets are tens of scans). Each scan
    is preprocessed by the plan of its modality, chosen as `promptseg predict` chooses it
    (`modality`, else the DICOM tag, else the checkpoint's only modality; a multi-modal
    checkpoint given a file of unknown modality stops and asks for it); cases are grouped by
    modality as well as by passing classes, so each written dataset declares its scans' modality.
    """
    _check_thresholds(class_threshold, case_threshold)
    if not name or not all(ch.isalnum() or ch in "_-" for ch in name):
        raise ConfigError(f"pseudo-label dataset name must be letters, digits, '_' or '-', got {name!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(model, inference=inference, device=device, progress=progress, modality=modality)
    classes = predictor.classes(prompts)
    groups: dict[tuple[str, tuple[str, ...]], list[tuple[CaseResult, Volume, Volume]]] = {}
    results: list[CaseResult] = []
    for path in collect_inputs(inputs):
        modality_of_scan = predictor.use_modality_of(path)
        image = read_image(path)
        pred = predictor.predict_volume(image, classes)
        res = judge(case_name(path), str(path), pred.stats["confidence"], class_threshold, case_threshold)
        res.volumes_ml = {c: round(v, 3) for c, v in pred.volumes_ml.items()}
        results.append(res)
        if on_case is not None:
            on_case(res)
        if not res.kept:
            continue
        key = tuple(c for c in classes if c in res.passed)
        masks = {c: pred.masks[c].array for c in key}
        values = {c: i + 1 for i, c in enumerate(key)}
        label = replace(pred.label_map, array=merge(masks, None, predictor.taxonomy, values), path=None)
        groups.setdefault((modality_of_scan, key), []).append((res, image, label))

    folders = []
    for i, ((scan_modality, key), cases) in enumerate(sorted(groups.items(), key=lambda kv: -len(kv[1]))):
        gname = name if len(groups) == 1 else f"{name}_g{i + 1}"
        _write_group(out_dir / gname, gname, list(key), cases, scan_modality, str(inputs))
        folders.append({"folder": gname, "annotated_classes": list(key), "cases": [r.case for r, _, _ in cases]})
    report = {
        "model_classes": classes,
        "class_threshold": class_threshold,
        "case_threshold": case_threshold,
        "confidence": "mean probability inside the mask; 1 - peak probability for an empty mask",
        "datasets": folders,
        "cases": [res.__dict__ for res in results],
    }
    atomic_write(out_dir / REPORT, json.dumps(report, indent=1))
    return report
