"""Which modality an input is, so the predictor preprocesses it with that modality's plan.

Order: `--modality` when given; else the DICOM Modality tag of a series (PT -> PET); else the
checkpoint's only trained modality. A model trained on several modalities given a file that says
nothing (NIfTI, NRRD) stops with one line asking for `--modality`: guessing CT for an MR would
clip its intensities to a HU window and give confident nonsense.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import ConfigError, InputError
from ..io.dicom import read_series_headers
from .inputs import is_dicom_dir

#: DICOM Modality (0008,0060) values -> promptseg's modality names.
DICOM_MODALITIES = {"CT": "CT", "MR": "MR", "PT": "PET", "PET": "PET"}
#: What `--modality` accepts (the modalities promptseg has plans for).
MODALITIES = tuple(dict.fromkeys(DICOM_MODALITIES.values()))


def dicom_modality(path: str | Path | None) -> str | None:
    """The modality a DICOM series folder states (None: not a series, or no known tag)."""
    if path is None or not is_dicom_dir(Path(path)):
        return None
    headers = read_series_headers(path)
    tag = str(getattr(headers[0], "Modality", "") or "").upper() if headers else ""
    return DICOM_MODALITIES.get(tag)


def check_modality(modality: str, known: Sequence[str]) -> str:
    """`modality` upper-cased, or a one-line error when the model has no plan for it."""
    m = str(modality).upper()
    if m not in known:
        raise ConfigError(f"modality {modality!r}: this model has no plan for it (it has {', '.join(known)})")
    return m


def choose_modality(given: str | None, path: str | Path | None, known: Sequence[str],
                    trained: Sequence[str]) -> str:
    """The modality to preprocess `path` with: `given`, the DICOM tag, or the only `trained` one.
    `known`: modalities the checkpoint has plans for."""
    if given:
        return check_modality(given, known)
    tagged = dicom_modality(path)
    if tagged is not None and tagged in known:
        return tagged
    if len(trained) == 1:  # a tag the model has no plan for: as before, the model's own modality
        return check_modality(trained[0], known)
    why = f"DICOM Modality {tagged} has no plan in this model" if tagged else "no DICOM Modality tag"
    raise InputError(path, f"modality unknown ({why}) and this model was trained on {', '.join(trained)}: "
                           f"give --modality {'|'.join(trained)}")
