"""Predictor: one image in, label map + per-class masks out, on the input grid.

Flow, and why each step sits where it does:
  prompts -> queries (resolved once: class, index, label value, threshold, merge layer) ->
  preprocess (plan of the checkpoint) -> body crop (a step of the preprocessing record) ->
  sliding window, stitched slab by slab and thresholded as each slab completes
  (`sliding_window_masks`: float logits exist for a slab only; bool masks + uint16 probabilities
  per class stay) -> post-process in the network grid -> per class, its uint16 probability
  resampled linearly inside its own bounding box, thresholded, bit-packed, and merged into the
  label map on the input grid (`upsample`).
So nothing float ever exists at the input's full resolution, and the per-class masks of all
classes cost one bit per voxel each until a mask is asked for. Reading inputs and writing outputs
live in `inputs`, `writing` and `batch`.

Speed: the prompt-dependent parts are prepared once per volume, the conditioner's class head runs
in chunks, torch uses the cores this process may use, and `precision="bfloat16"` (opt-in: it moves
boundaries of weakly confident classes) runs the windows under bfloat16 autocast. `fast=True` runs
the same network on a 3 mm grid (windows scaled to cover the same millimetres); `roi=True` runs the
full-resolution windows only where the asked classes are (located by a 6 mm pass; see `Predictor.locate`).
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..errors import ConfigError, InputError
from ..io import read_image
from ..io.volume import Volume, patient_axis
from ..preprocess import get_plan, preprocess_image
from ..taxonomy.query import Query, resolve_queries
from ..masks import bbox, body_mask
from ..runtime import resolve_device, set_threads
from .confidence import mask_confidence
from .inputs import plan_outputs
from .modality import check_modality, choose_modality
from .postprocess import load_rules, postprocess
from .prediction import PackedMasks, Prediction
from .settings import check_coarse, inference_settings, min_window, scaled_plan
from .lean_masks import sliding_window_masks
from .windows import size_multiple
from .upsample import invert_classes
from .writing import write_case


class _Timer:
    def __init__(self, timings: dict[str, float], stage: str, device: torch.device | None = None):
        self.timings, self.stage, self.device = timings, stage, device

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[self.stage] = self.timings.get(self.stage, 0.0) + time.perf_counter() - self.t0


def _grow_region(raw: np.ndarray, region, shape, margin) -> tuple[slice, ...] | None:
    """A larger region when some mask touches a face of `region` that is not the image's edge."""
    union = raw.any(axis=0)
    if not union.any():
        return None
    touch = False
    for a in range(3):
        r = region[a]
        idx = [slice(None)] * 3
        for face, edge in ((r.start, 0), (r.stop - 1, shape[a] - 1)):
            if face != edge:
                idx[a] = face
                touch |= bool(union[tuple(idx)].any())
    if not touch:
        return None
    box = bbox(union, margin)
    out = tuple(slice(min(region[a].start, box[a].start), max(region[a].stop, box[a].stop)) for a in range(3))
    if out == tuple(region):  # cannot grow further: touching the crop border only
        return None
    return out


def mirror_axes(record) -> tuple[int, ...]:
    """Test-time mirroring axes of the network grid: every axis but the patient's left-right one,
    as training mirrors (data/augment.py), so no flip turns a left kidney into a right one."""
    lr = patient_axis(record.network.direction, "right")[0]
    return tuple(a for a in range(3) if a != lr)


class Predictor:
    """Runs a segmenter (backbone + conditioner) on whole images.

    `model` is a `Checkpoint` (plan, inference settings and modality default to its own) or a bare
    model (then `plan` is needed); `device="auto"` picks
    CUDA when present. `progress` shows MONAI's window bar (per image) and a case bar in `predict`.
    """

    def __init__(self, model, plan=None, inference: Mapping[str, Any] | None = None, device="auto",
                 progress: bool = True, modality: str | None = None, fast: bool = False, roi: bool = False):
        from ..preprocess import get_plan

        ckpt = model if isinstance(model, Checkpoint) else None
        model = ckpt.model if ckpt is not None else model
        run_config = ckpt.config if ckpt is not None else {}
        if plan is None and run_config.get("plan") is None:
            raise ConfigError("no preprocessing plan: a bare model has none; pass plan= or a Checkpoint")
        given_plan = plan is not None
        if plan is None:
            plan = run_config.get("plan")
        plan = get_plan(plan)
        # modality -> plan: the checkpoint's own (one per modality it keeps); `plan=` replaces its modality's
        self.plans = {m: get_plan(p) for m, p in ckpt.plans.items()} if ckpt is not None and ckpt.plans else {}
        if given_plan or plan.modality not in self.plans:
            self.plans[plan.modality] = plan
        # modalities to assume for an input that does not say (a given plan: its own)
        self.trained = ckpt.modalities if ckpt is not None and not given_plan else [plan.modality]
        self.given_modality = modality
        merged = {**(run_config.get("inference") or {}), **(inference or {})}
        self.settings = inference_settings(merged)
        self.fast = bool(fast)
        self.roi = bool(roi)
        if (fast or roi) and getattr(model, "fixed_scale", False):  # e.g. a position code fixed to one crop
            raise ConfigError(f"--{'fast' if fast else 'roi'} cannot run with this model: it segments only at its "
                              "own spacing and window; predict without it")
        self.model = model
        self._model_window = list(self.settings["window"])
        first = modality or (self.trained[0] if len(self.trained) == 1 else None) or plan.modality
        self.use_modality(check_modality(first, list(self.plans)))
        self.rules = load_rules(self.settings.get("rules"))
        self.device = resolve_device(device)
        self.threads = set_threads(self.settings["threads"]) if self.device.type == "cpu" else torch.get_num_threads()
        self.model = model.to(self.device).eval()
        self._compiled: dict = {}  # compiled window graphs (CPU runtime), reused across volumes
        self.progress = progress
        self.taxonomy = model.taxonomy
        import monai.inferers  # noqa: F401  -- slow first import belongs to set-up, not to "network" time

    def use_modality(self, modality: str) -> None:
        """Preprocess (and prompt) as `modality`: its plan, scaled for fast mode."""
        self.modality = modality
        self.plan = self.plans[modality]
        if self.roi:
            check_coarse(self.plan, "roi")  # before any image is read
        if self.fast:
            self.plan, win = scaled_plan(self.plan, self._model_window, self.settings["fast_spacing"], "fast")
            self.settings["window"] = min_window(win, self.model)

    def use_modality_of(self, path: str | Path | None) -> str:
        """Set the modality of the input at `path` (`--modality`, DICOM tag, the only trained one)."""
        self.use_modality(choose_modality(self.given_modality, path, list(self.plans), self.trained))
        return self.modality

    # -- prompts ---------------------------------------------------------------------------------
    def queries(self, prompts: Sequence[str] | str | None = None) -> list[Query]:
        """The prompts resolved once (every class the model knows when None): canonical class,
        index in the model, label value, threshold (inference.thresholds > taxonomy > 0.5) and
        merge layer. An unknown prompt raises the model's one-line PromptError naming the closest
        known classes; a group name ('kidney') gives both sides; two spellings give one query."""
        queries = resolve_queries(prompts, self.taxonomy, self.model.class_names, self.model.canonical,
                                  self.settings["thresholds"])
        if not queries:
            raise ConfigError("nothing to segment: no prompts given and the model lists no classes")
        return queries

    def classes(self, prompts: Sequence[str] | None = None) -> list[str]:
        """Canonical class names for the prompts (all the model knows when None)."""
        return [q.name for q in self.queries(prompts)]

    def thresholds(self, classes: Sequence[str]) -> list[float]:
        """Per-class cut-off: inference.thresholds (any spelling) > taxonomy threshold > 0.5."""
        return [q.threshold for q in self.queries(list(classes))]

    def _prompt_batch(self, queries: Sequence[Query]):
        return self.model.prompt_batch([q.name for q in queries], modality=self.modality, batch_size=1)

    # -- one volume ------------------------------------------------------------------------------
    def _crop_to_body(self, pre):
        """(preprocessed image cut to the body's box + margin, body mask of the cut): the network
        runs only where the patient is; the cut is recorded in the preprocessing record."""
        s = self.settings
        body = body_mask(pre.array)
        if s["crop_body"] and body.any():
            box = bbox(body, int(s["body_margin"]))
            return pre.crop(box), body[box]
        return pre, body

    def _check_size(self, volume: Volume, shape) -> None:
        """A 3D image needs two voxels along each axis after preprocessing (one slice is a 2D image,
        which these networks do not segment): a one-line error instead of a torch traceback."""
        if any(int(n) < 2 for n in shape):
            raise InputError(volume.path, f"image of {tuple(volume.shape)} voxels gives a network grid of "
                                          f"{tuple(int(n) for n in shape)}: at least 2 voxels per axis are needed")

    def _masks(self, tensor: torch.Tensor, pb, thresholds, window, **kw):
        """`sliding_window_masks` on `tensor`, padded first (with its minimum, as MONAI pads) when
        every axis fits in one bottleneck voxel: the window would then leave a single voxel at the
        bottleneck, where instance norm fails. The padding is cut off the results. Any larger image
        runs exactly as MONAI would run it (padded to the window only)."""
        shape = tuple(int(n) for n in tensor.shape[2:])
        mult = size_multiple(self.model)
        tiny = all(n <= m for n, m in zip(shape, mult))
        pad = [2 * m - n if tiny else 0 for n, m in zip(shape, mult)]
        if any(pad):
            flat = [v for p in reversed(pad) for v in (0, p)]  # F.pad lists the last axis first
            tensor = torch.nn.functional.pad(tensor, flat, value=float(tensor.min()))
        s = self.settings
        raw, probs = sliding_window_masks(self.model, tensor, pb, thresholds, window=window, overlap=s["overlap"],
                                          mode=s["mode"], sw_batch_size=int(s["sw_batch_size"]), device=self.device,
                                          precision=self._precision(), head_chunk=s["head_chunk"],
                                          runtime=s["runtime"], compiled=self._compiled, blend=s["blend"],
                                          fused_head=s["fused_head"], **kw)
        if any(pad):
            cut = (slice(None),) + tuple(slice(0, n) for n in shape)
            raw, probs = np.ascontiguousarray(raw[cut]), np.ascontiguousarray(probs[cut])
        return raw, probs

    def predict_volume(self, volume: Volume, prompts: Sequence[str] | None = None) -> Prediction:
        timings: dict[str, float] = {}
        notes: list[str] = []
        stats: dict[str, Any] = {"threads": self.threads}
        s = self.settings
        queries = self.queries(prompts)
        pb = self._prompt_batch(queries)
        thresholds = [q.threshold for q in queries]

        with _Timer(timings, "preprocess"):
            pre, body = self._crop_to_body(preprocess_image(volume, self.plan))
            self._check_size(volume, pre.array.shape)
            tensor = torch.from_numpy(pre.array)[None, None]
        stats["network_grid"] = tuple(int(v) for v in tensor.shape[2:])

        region = None
        if self.roi and prompts is not None:
            with _Timer(timings, "locate"):
                region = self.locate(volume, queries, pre.record, notes)
        mirror = mirror_axes(pre.record) if s["mirror"] else ()
        stats["mirror_axes"] = list(mirror)
        with _Timer(timings, "network", self.device):
            raw, probs = self._network(tensor, pb, thresholds, region, stats, notes, mirror)
            del tensor
        if stats["compile_s"]:  # reported apart: compiling the windows' graph is not network time
            timings["network"] -= stats["compile_s"]
            timings["compile"] = stats["compile_s"]

        masks = {q.name: raw[k] for k, q in enumerate(queries)}
        if s["postprocess"]:
            with _Timer(timings, "postprocess"):
                masks = postprocess(
                    masks, None, self.taxonomy, pre.record.network.spacing, body_mask=body,
                    direction=np.asarray(pre.record.network.direction, dtype=float).reshape(3, 3),
                    rules=self.rules, notes=notes, workers=self.threads, classes={q.name: q.info for q in queries},
                )
        names = [q.name for q in queries]
        stats["confidence"] = dict(zip(names, mask_confidence(probs, [masks[c] for c in names])))
        part: dict[str, float] = {}
        with _Timer(timings, "invert"):
            label_vol, packed = invert_classes(queries, raw, probs, masks, pre.record,
                                               interpolation=s["interpolation"], timings=part, workers=self.threads)
            del raw, probs, masks
        timings["invert"] -= part["merge"]  # reported apart: the merge runs class by class inside
        timings["merge"] = part["merge"]
        classes = [q.name for q in queries]
        masks_out = PackedMasks(packed, classes, label_vol)
        voxel_ml = float(np.prod(label_vol.spacing)) / 1000.0
        volumes = {c: masks_out.voxel_count(c) * voxel_ml for c in classes}
        names = {q.label_value: q.name for q in queries}
        return Prediction(label_vol, masks_out, names, timings, volumes, notes, stats, list(queries))

    def _network(self, tensor: torch.Tensor, pb, thresholds, region, stats, notes, mirror: Sequence[int] = ()):
        """Masks + uint16 probabilities of the crop; with a region, grown until no mask touches its
        inner faces (so a class the locating pass under-estimated is still complete). `mirror`:
        the test-time mirroring axes of the network grid."""
        s = self.settings
        shape = tuple(tensor.shape[2:])
        run = tries = 0
        compile_s = 0.0
        while True:
            st: dict[str, Any] = {}
            raw, probs = self._masks(tensor, pb, thresholds, s["window"], region=region, stats=st,
                                     progress=self.progress, mirror_axes=mirror)
            run += st["windows"]
            compile_s += st["compile_s"]
            if region is None:
                break
            grown = _grow_region(raw, region, shape, self._margin_vox(s["roi_margin_mm"]))
            if grown is None:
                break
            tries += 1
            if tries > 1:  # the locating pass was far off: stop guessing, run everywhere
                notes.append("roi: classes kept reaching the edge of the located region; ran everywhere")
                region = None
            else:
                notes.append("roi: a class reached the edge of the located region; region grown and run again")
                region = grown
        stats.update(windows=run, windows_full=st["windows_full"], window=st["window"], precision=st["precision"],
                     runtime=st["runtime"], compile_s=compile_s, fused_head=st.get("fused_head", False),
                     region=None if region is None else tuple((r.start, r.stop) for r in region))
        return raw, probs

    def _precision(self) -> str:
        """The `precision` setting; the legacy `amp: true` asks for float16 on CUDA."""
        p = self.settings["precision"]
        if self.settings["amp"] and self.device.type == "cuda" and str(p).lower() in ("float32", "fp32"):
            return "float16"
        return p

    def _margin_vox(self, mm: float) -> list[int]:
        sp = self.plan.spacing or (1.0, 1.0, 1.0)
        return [int(math.ceil(mm / float(v))) for v in sp]

    def locate(self, volume: Volume, queries: Sequence[Query], record, notes: list[str]):
        """Region of the network crop that the asked classes need (TotalSegmentator's roi_subset).

        The same network runs on a coarse grid (`roi_spacing`, windows scaled to the same mm),
        its post-processed masks of the asked classes give a box in mm, mapped to the crop
        (`record.network`) and grown by `roi_margin_mm`. Inside the region the full-resolution
        logits are exactly those of a full run (every window covering it is run); `_network` grows
        it if a mask reaches its edge. None (= everything) when the coarse pass finds none of them.
        """
        s = self.settings
        coarse_plan, coarse_window = scaled_plan(self.plan, s["window"], s["roi_spacing"], "roi")
        coarse_window = min_window(coarse_window, self.model)
        pre, body = self._crop_to_body(preprocess_image(volume, coarse_plan))
        tensor = torch.from_numpy(pre.array)[None, None]
        raw, _ = self._masks(tensor, self._prompt_batch(queries), [q.threshold for q in queries], coarse_window)
        masks = {q.name: raw[k] for k, q in enumerate(queries)}
        if s["postprocess"]:
            masks = postprocess(masks, None, self.taxonomy, pre.record.network.spacing, body_mask=body,
                                direction=np.asarray(pre.record.network.direction, dtype=float).reshape(3, 3),
                                rules=self.rules, classes={q.name: q.info for q in queries})
        union = np.zeros(raw.shape[1:], bool)
        for m in masks.values():
            union |= m
        if not union.any():
            notes.append("roi: the locating pass found none of the asked classes; running everywhere")
            return None
        found = bbox(union)
        lo = [f.start - 0.5 for f in found]
        hi = [f.stop - 0.5 for f in found]
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        world = pre.record.network.world(corners)  # LPS mm
        fine = record.network
        idx = np.linalg.solve(fine.matrix * np.asarray(fine.spacing), (world - np.asarray(fine.origin)).T).T
        margin = self._margin_vox(s["roi_margin_mm"])
        region = []
        for a in range(3):
            start = int(math.floor(idx[:, a].min())) - margin[a]
            stop = int(math.ceil(idx[:, a].max())) + 1 + margin[a]
            region.append(slice(max(0, start), min(fine.shape[a], stop)))
        if any(r.stop <= r.start for r in region):
            notes.append("roi: the located classes lie outside the body crop; running everywhere")
            return None
        return tuple(region)

    # -- files -----------------------------------------------------------------------------------
    def predict_file(self, path: str | Path, out_dir: str | Path, prompts: Sequence[str] | None = None,
                     write_masks: bool = True, **outputs) -> dict[str, Any]:
        """Predict one image file / DICOM folder; write OUT/<case>.<ext>, OUT/<case>/<class>.nii.gz
        and OUT/labels.json (`outputs`: statistics, preview, output_types; see `writing.write_case`).
        Returns the paths written plus the Prediction ('prediction')."""
        path = Path(path)
        types = tuple(outputs.get("output_types") or ("nifti",))
        folder = (write_masks and "nifti" in types) or bool(outputs.get("statistics") or outputs.get("preview")) \
            or any(t != "nifti" for t in types)
        plan = plan_outputs([path], out_dir, folder, nifti="nifti" in types)[0]
        return self.predict_case(path, plan, prompts, write_masks=write_masks, **outputs)

    def predict_case(self, path: Path, plan, prompts: Sequence[str] | None = None, write_masks: bool = True,
                     statistics: bool = False, preview: bool = False,
                     output_types: Sequence[str] = ("nifti",)) -> dict[str, Any]:
        """Read, predict and write one case to the paths of `plan` (an `inputs.CaseOutputs`)."""
        self.queries(prompts)  # fail on a bad prompt before reading a large image
        self.use_modality_of(path)
        t0 = time.perf_counter()
        volume = read_image(path)
        read_s = time.perf_counter() - t0
        pred = self.predict_volume(volume, prompts)
        pred.timings = {"read": read_s, **pred.timings}
        t0 = time.perf_counter()
        out = write_case(pred, plan, volume, source=Path(path), write_masks=write_masks, statistics=statistics,
                         preview=preview, output_types=output_types, workers=int(self.threads))
        del volume
        pred.timings["write"] = time.perf_counter() - t0
        out["prediction"] = pred
        return out
