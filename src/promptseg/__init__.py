"""promptseg: universal, prompt-driven 3D medical image segmentation.

The public surface, all importable from here (the heavy ones load on first use, so that
`import promptseg` stays quick for the CLI):

    promptseg.predict(input, model, prompts)   -> Prediction (label map + per-class masks)
    promptseg.load_checkpoint(path)            -> the model; model(x, "liver") -> logits
    promptseg.open_checkpoint(path)            -> Checkpoint(model, config, classes, taxonomy, plans, meta)
    promptseg.evaluate_folders(pred, gt, out)  -> EvaluationResult (what `promptseg evaluate` writes)
    promptseg.read_image(path), promptseg.Volume, promptseg.Prediction
"""
from __future__ import annotations

from importlib import import_module

from ._version import __version__
from .errors import CheckpointError, ConfigError, InputError, PromptsegError, TaxonomyError

__all__ = [
    "__version__",
    "PromptsegError",
    "InputError",
    "TaxonomyError",
    "ConfigError",
    "CheckpointError",
    "load_checkpoint",
    "predict",
    "open_checkpoint",
    "Checkpoint",
    "Prediction",
    "Volume",
    "read_image",
    "evaluate_folders",
]

#: Public names defined elsewhere -> their module, imported when first asked for (PEP 562).
_LAZY = {
    "open_checkpoint": "promptseg.checkpoint",
    "Checkpoint": "promptseg.checkpoint",
    "Prediction": "promptseg.inference.prediction",
    "Volume": "promptseg.io",
    "read_image": "promptseg.io",
    "evaluate_folders": "promptseg.evaluation",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'promptseg' has no attribute {name!r}")


def load_checkpoint(path, device="cpu"):
    """The model of a native promptseg checkpoint or an official Universal Model `.pth` file
    (`promptseg.checkpoint.open_checkpoint` gives it with its config, classes, taxonomy and plans)."""
    from .checkpoint import load_checkpoint as _load

    return _load(path, device=device)


def predict(input, model, prompts=None, **options):
    """Segment one image; returns a `Prediction` (label map and per-class masks on the input grid).

    input:   an image path (NIfTI/NRRD/MHA file or DICOM series folder), a `promptseg.io.Volume`,
             or a nibabel image -- as TotalSegmentator's `totalsegmentator()` takes them.
    model:   a checkpoint path (native folder or official `.pth`) or a loaded model.
    prompts: class names ("liver", "kidney" for both sides, synonyms accepted); None = every
             class the model knows.
    options: output= (folder, or a label map file such as "seg.nii.gz": writes the files as
             `promptseg predict` does; never over the input), device="auto", fast, roi, plan,
             inference={...} (window, overlap, thresholds, threads, precision, ...), modality,
             postprocess, progress=False, write_masks, statistics, preview,
             output_types=("nifti", "dicom-seg", "rtstruct").

        import promptseg
        pred = promptseg.predict("ct.nii.gz", "runs/demo/model", ["liver", "liver tumor"])
        pred.volumes_ml["liver"], pred.label_map.array, pred.masks["liver"].array
    """
    from .inference.api import predict_image

    return predict_image(input, model, prompts, **options)
