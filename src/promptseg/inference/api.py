"""`promptseg.predict(input, model, prompts=None, **options) -> Prediction`: one image in Python.

Why beside the CLI's batch driver: notebooks and pipelines hold images in memory (a `Volume`, a
nibabel image) and want the result back, not files; TotalSegmentator's `totalsegmentator()` takes
the same three kinds of input. Writing files stays optional (`output=`) and goes through the
same case writer as `promptseg predict`, with the same refusal to overwrite an input.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..io import read_image
from ..io.volume import Volume
from .batch import check_output_types, load_model
from .inputs import plan_outputs
from .prediction import Prediction
from .predictor import Predictor
from .writing import write_case


def as_volume(image) -> Volume:
    """A path (file or DICOM folder), a `Volume`, or a nibabel image (anything with `.affine` and
    `.dataobj`) as a Volume; the nibabel affine is RAS, as nibabel writes it."""
    if isinstance(image, Volume):
        return image
    if isinstance(image, (str, Path)):
        return read_image(image)
    if hasattr(image, "affine") and hasattr(image, "dataobj"):
        array = np.asanyarray(image.dataobj)
        if array.ndim != 3:
            raise InputError(None, f"expected a 3D nibabel image, got shape {array.shape}")
        return Volume.from_affine(array, np.asarray(image.affine, dtype=float))
    raise InputError(None, f"cannot predict a {type(image).__name__}: give a path, a promptseg Volume "
                           "or a nibabel image")


def predict_image(image, model, prompts: Sequence[str] | str | None = None, *, output: str | Path | None = None,
                  device: str = "auto", plan=None, inference: Mapping[str, Any] | None = None,
                  modality: str | None = None, fast: bool = False, roi: bool = False,
                  postprocess: bool | None = None, progress: bool = False, write_masks: bool = True,
                  statistics: bool = False, preview: bool = False,
                  output_types: Sequence[str] = ("nifti",)) -> Prediction:
    """See `promptseg.predict`."""
    source = Path(image) if isinstance(image, (str, Path)) else None
    outputs = None
    if output is not None:  # checked before any work, as the CLI does
        types = check_output_types([source] if source else [], output_types)
        folder = (write_masks and "nifti" in types) or statistics or preview or any(t != "nifti" for t in types)
        pseudo = source or Path(getattr(image, "path", None) or "prediction.nii.gz")
        outputs = plan_outputs([pseudo], output, folder, nifti="nifti" in types)[0]
    model = load_model(model)
    settings = dict(inference or {})
    if postprocess is not None:
        settings["postprocess"] = bool(postprocess)
    predictor = Predictor(model, plan=plan, inference=settings, device=device, progress=progress,
                          modality=modality, fast=fast, roi=roi)
    predictor.queries(prompts)  # a bad prompt fails before the image is read
    predictor.use_modality_of(source or getattr(image, "path", None))
    volume = as_volume(image)
    prediction = predictor.predict_volume(volume, prompts)
    if outputs is not None:
        write_case(prediction, outputs, volume, source=source, write_masks=write_masks, statistics=statistics,
                   preview=preview, output_types=types, workers=predictor.threads)
    return prediction
