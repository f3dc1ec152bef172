"""Image file endings and nnU-Net's file-naming rule, in one place.

Why one module: readers, writers, dataset scanners, the predictor and the evaluator all have to
agree on what counts as an image file and which case a file belongs to; a second table drifts.
nnU-Net names a case's channel files `{case}_{XXXX}{ending}` (`_0000` = channel 0) and its label
`{case}{ending}`.
"""
from __future__ import annotations

import re
from pathlib import Path

#: ending -> format family, in the order they are tried (compound '.nii.gz' before '.nii').
FORMATS = {
    ".nii.gz": "NIfTI",
    ".nii": "NIfTI",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
}
IMAGE_ENDINGS = tuple(FORMATS)
#: endings a `Volume` is written to, and whether each is compressed.
WRITABLE = (".nii.gz", ".nii", ".nrrd", ".mha")
COMPRESSED = {".nii.gz": True, ".nii": False, ".nrrd": True, ".mha": True}
#: the single-file ending of the same family, for outputs of a detached-header input.
_SINGLE_FILE = {".nhdr": ".nrrd", ".mhd": ".mha"}
DEFAULT_ENDING = ".nii.gz"

_CHANNEL = re.compile(r"_(\d{4})$")


def image_ending(name: str | Path) -> str:
    """The ending of an image file name as spelled there ('CT.NII.GZ' -> '.NII.GZ'); '' when none."""
    name = Path(name).name
    low = name.lower()
    for e in IMAGE_ENDINGS:
        if low.endswith(e) and len(name) > len(e):
            return name[len(name) - len(e):]
    return ""


def split_ending(name: str | Path) -> tuple[str, str] | None:
    """(stem, ending) of an image file name, None when it has no image ending."""
    name = Path(name).name
    end = image_ending(name)
    return (name[: -len(end)], end) if end else None


def output_ending(path: str | Path) -> str:
    """Label-map ending for an input: the input's format family, `DEFAULT_ENDING` for DICOM/others."""
    p = Path(path)
    end = "" if p.is_dir() else image_ending(p).lower()
    return _SINGLE_FILE.get(end, end) or DEFAULT_ENDING


def channel_file(case: str, channel: int = 0, ending: str = DEFAULT_ENDING) -> str:
    """nnU-Net image file name of one channel: ('liver_3', 0) -> 'liver_3_0000.nii.gz'."""
    return f"{case}_{int(channel):04d}{ending}"


def split_channel(stem: str) -> tuple[str, int | None]:
    """('case_0001') -> ('case', 1); a stem without nnU-Net's channel suffix -> (stem, None)."""
    m = _CHANNEL.search(stem)
    return (stem[: m.start()], int(m.group(1))) if m else (stem, None)


def case_id(path: str | Path) -> str:
    """Case name of an image file or DICOM folder: ending and nnU-Net channel suffix dropped
    ('case_0000.nii.gz' -> 'case', so predictions match labelsTr names); a folder keeps its name."""
    p = Path(path)
    if p.is_dir():
        return p.name
    parts = split_ending(p.name)
    return split_channel(parts[0] if parts else p.stem)[0]
