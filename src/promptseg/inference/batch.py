"""Batch predict: every input of a file, DICOM folder or folder of images, into one output.

Why checks first and one case at a time: a typo in a path, a bad prompt, `-o` onto an input, or a
DICOM output asked of a NIfTI input fails in one line before the checkpoint is loaded; after that,
a case that cannot be read or predicted is reported and the others go on, and the failures are
listed at the end (`BatchError`, a non-zero exit in the CLI) -- one bad scan no longer costs the
rest of a night's batch.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Sequence

from ..checkpoint import open_checkpoint
from ..errors import ConfigError, InputError, PromptsegError
from ..io.sitk_convert import one_line
from .inputs import OUTPUT_TYPES, case_name, collect_inputs, is_dicom_dir, plan_outputs
from .predictor import Predictor


class BatchError(PromptsegError):
    """Some cases failed; the others were written. `failures`: (case, one-line reason)."""

    def __init__(self, failures: list[tuple[str, str]], results: list[dict[str, Any]]):
        self.failures, self.results = failures, results
        total = len(failures) + len(results)
        listed = "; ".join(f"{case}: {why}" for case, why in failures)
        super().__init__(f"{len(failures)} of {total} case(s) failed ({listed})")


def load_model(model_or_checkpoint, text_model=None, text_weights=None):
    """A loaded model or `Checkpoint` as it is; a checkpoint path opened on the CPU (the predictor
    moves it) as a `Checkpoint`, so its plan, inference settings and modality come along
    (`text_model` / `text_weights`: the text tower a published .pth needs to embed its vocabulary)."""
    if not isinstance(model_or_checkpoint, (str, Path)):
        return model_or_checkpoint
    return open_checkpoint(model_or_checkpoint, device="cpu", text_model=text_model, text_weights=text_weights)


def check_output_types(files: Sequence[Path], output_types: Sequence[str]) -> tuple[str, ...]:
    """The asked output types, checked: known names, and DICOM outputs only from DICOM series."""
    types = tuple(dict.fromkeys(output_types or ("nifti",)))
    bad = [t for t in types if t not in OUTPUT_TYPES]
    if bad:
        raise ConfigError(f"unknown output type(s) {bad}; use {', '.join(OUTPUT_TYPES)}")
    if any(t != "nifti" for t in types):
        for f in files:
            if not is_dicom_dir(f):
                raise InputError(f, f"{'/'.join(t for t in types if t != 'nifti')} output needs a DICOM series "
                                    "input (it references the source series); this input is not one")
    return types


def predict(model_or_checkpoint, inputs, out_dir, prompts: Sequence[str] | None = None, device="auto",
            postprocess: bool | None = None, write_masks: bool = True, progress: bool = True,
            plan=None, inference: Mapping[str, Any] | None = None, on_case: Callable | None = None,
            fast: bool = False, roi: bool = False, statistics: bool = False, preview: bool = False,
            output_types: Sequence[str] = ("nifti",), on_failure: Callable | None = None,
            modality: str | None = None, text_model=None, text_weights=None) -> list[dict[str, Any]]:
    """Predict every input (file, DICOM folder or folder of images) into `out_dir`.

    `model_or_checkpoint`: a model or a checkpoint path. `out_dir`: a folder, or for one input a
    label map file name (`seg.nii.gz`). `on_case(result)` is called after each case (the CLI
    prints its summary there), `on_failure(case, reason)` after each failed case. `fast`: 3 mm
    grid; `roi`: full resolution only where the prompts' classes are (see `Predictor`).
    `statistics` / `preview`: statistics.json / preview.png in each case's folder;
    `output_types`: any of nifti, dicom-seg, rtstruct. `modality`: CT, MR or PET for every input
    (default per input: its DICOM Modality tag, else the checkpoint's only one). `text_model` /
    `text_weights`: the text tower of a .pth that needs one. Returns one result dict per case; raises
    `BatchError` (after all cases ran) when some failed.
    """
    from tqdm import tqdm

    files = collect_inputs(inputs)  # cheap checks first: a typo in a path fails before loading
    types = check_output_types(files, output_types)
    folder = (write_masks and "nifti" in types) or statistics or preview or any(t != "nifti" for t in types)
    plans = plan_outputs(files, out_dir, folder, nifti="nifti" in types)  # never onto an input
    model = load_model(model_or_checkpoint, text_model, text_weights)
    settings = dict(inference or {})
    if postprocess is not None:
        settings["postprocess"] = bool(postprocess)
    predictor = Predictor(model, plan=plan, inference=settings, device=device, progress=progress and len(files) == 1,
                          fast=fast, roi=roi, modality=modality)
    predictor.queries(prompts)  # a bad prompt fails before any work
    results: list[dict[str, Any]] = []
    failures: list[tuple[str, str]] = []
    bar = tqdm(list(zip(files, plans)), desc="predict", unit="case", disable=not progress or len(files) < 2)
    for f, case_plan in bar:
        bar.set_postfix_str(case_name(f))
        try:
            result = predictor.predict_case(f, case_plan, prompts, write_masks=write_masks, statistics=statistics,
                                            preview=preview, output_types=types)
        except (PromptsegError, OSError, RuntimeError, ValueError, MemoryError) as exc:
            if len(files) == 1:
                raise
            why = str(exc) if isinstance(exc, PromptsegError) else one_line(exc, f)
            failures.append((case_name(f), why))
            if on_failure is not None:
                on_failure(case_name(f), why)
            continue
        results.append(result)
        if on_case is not None:
            on_case(result)
    if failures:
        raise BatchError(failures, results)
    return results
