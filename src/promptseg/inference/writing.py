"""Writing one case: the label map, per-class masks, labels.json, statistics.json, preview.png and
DICOM-SEG / RTSTRUCT, so that a case's outputs appear all at once.

Why this order: everything but the label map is built in a hidden sibling folder that is renamed
into place whole (`io.atomic.atomic_directory`); the label map is renamed in last. A killed predict
therefore leaves either a finished case or no label map at all (a stale one is removed first), never
a label map beside half of its masks.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, InputError
from ..io import write_image
from ..io.atomic import atomic_directory, atomic_write
from ..io.volume import Volume
from ..runtime import kept_heap
from .inputs import CaseOutputs, slug
from .prediction import Prediction
from .preview import class_color, write_preview
from .statistics import write_statistics
from .threads import ordered_thread_map


def write_labels_json(path: Path, names: Mapping[int, str]) -> Path:
    """value -> class name, merged with an existing file (this run's names win); atomic."""
    table: dict[str, str] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(old, dict):
                table.update({str(k): str(v) for k, v in old.items()})
        except (OSError, json.JSONDecodeError):
            pass  # a broken old table is replaced
    table.update({str(int(k)): v for k, v in names.items()})
    table = dict(sorted(table.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 1 << 30))
    try:
        return atomic_write(path, json.dumps(table, indent=1) + "\n")
    except OSError as exc:
        raise InputError(path, f"cannot write label table ({exc})") from None


def segments(prediction: Prediction) -> list[dict[str, Any]]:
    """The DICOM writers' segment list: name, label value, colour, and the taxonomy's kind and
    SNOMED CT code where it has them (the writers fall back to a generic code of the kind)."""
    out = []
    for q in prediction.queries:
        seg: dict[str, Any] = {"name": q.name, "label_value": q.label_value, "color": class_color(q.label_value)}
        if q.info is not None:
            seg["kind"] = q.info.kind
            if q.info.snomed:
                seg["snomed"] = q.info.snomed
        out.append(seg)
    return out


def _write_dicom(kind: str, prediction: Prediction, source: Path, out_path: Path) -> None:
    """DICOM-SEG / RTSTRUCT through the io writers (imported here: optional, heavy dependencies)."""
    if kind == "dicom-seg":
        try:
            from ..io.dicom_seg import write_dicom_seg as writer
        except ImportError as exc:
            raise ConfigError(f"--output-type dicom-seg is not available in this installation ({exc})") from None
    else:
        try:
            from ..io.rtstruct import write_rtstruct as writer
        except ImportError as exc:
            raise ConfigError(f"--output-type rtstruct is not available in this installation ({exc})") from None
    writer(prediction.label_map, segments(prediction), source, out_path)


def write_case(prediction: Prediction, outputs: CaseOutputs, image: Volume | None, source: Path | None = None,
               write_masks: bool = True, statistics: bool = False, preview: bool = False,
               output_types: Sequence[str] = ("nifti",), workers: int = 1) -> dict[str, Any]:
    """Write one case as `outputs` says; returns {"label_map", "labels", "masks", "folder", ...}."""
    written: dict[str, Any] = {"case": outputs.case, "masks": {}}
    if outputs.label_map is not None and outputs.label_map.exists():
        outputs.label_map.unlink()  # a stale map would pair with half-written new masks
    if outputs.folder is not None:
        outputs.folder.parent.mkdir(parents=True, exist_ok=True)
        with atomic_directory(outputs.folder) as work:
            if write_masks and "nifti" in output_types:
                def write_mask(name: str) -> Path:  # gzip is most of the writing time
                    write_image(prediction.masks[name], work / f"{slug(name)}.nii.gz")
                    return outputs.folder / f"{slug(name)}.nii.gz"

                names = list(prediction.masks)
                # each mask and its SimpleITK copy are fresh 58-MB buffers (a 512^2 CT); kept memory
                # is reused instead of faulted in again (32 masks: 3.1 -> 2.7 s on 2 cores)
                with kept_heap():
                    prepare = getattr(prediction.masks, "prepare", None)  # PackedMasks: planes side by side
                    if prepare is not None:
                        prepare(int(workers))
                    written["masks"] = dict(zip(names, ordered_thread_map(write_mask, names, int(workers))))
            if statistics:
                write_statistics(work / "statistics.json", prediction, image)
                written["statistics"] = outputs.folder / "statistics.json"
            if preview:
                write_preview(work / "preview.png", image, prediction.label_map, prediction.names, outputs.case)
                written["preview"] = outputs.folder / "preview.png"
            for kind, fname in (("dicom-seg", "seg.dcm"), ("rtstruct", "rtstruct.dcm")):
                if kind in output_types:
                    _write_dicom(kind, prediction, source, work / fname)
                    written[kind] = outputs.folder / fname
        written["folder"] = outputs.folder
    if outputs.labels is not None:
        written["labels"] = write_labels_json(outputs.labels, prediction.names)
    if outputs.label_map is not None:
        written["label_map"] = write_image(prediction.label_map, outputs.label_map)  # last: the case is done
    return written
