"""Predictor: one image (or file, or folder) in, label map + per-class masks out, on the input grid.

Flow, and why each step sits where it does:
  read -> preprocess (plan of the checkpoint) -> body crop -> sliding window, stitched slab by
  slab and thresholded as each slab completes (`sliding_window_masks`: float logits exist for a
  slab only; bool masks + uint16 probabilities per class stay) -> post-process in the network
  grid -> per class, its uint16 probability resampled linearly inside its own bounding box,
  thresholded, bit-packed, and merged into the label map on the input grid (`upsample`) -> write.
So nothing float ever exists at the input's full resolution, and the per-class masks of all
classes cost one bit per voxel each until a mask is asked for.

Speed: the prompt-dependent parts are prepared once per volume, the Universal Model's head runs
in chunks, torch uses the cores this process may use, and `precision="bfloat16"` (opt-in: it moves
boundaries of weakly confident classes) runs the windows under bfloat16 autocast. `fast=True` runs the same network on a 3 mm grid
(windows scaled to cover the same millimetres); `roi=True` runs the full-resolution windows only
where the asked classes are (located by a 6 mm pass; see `Predictor.locate`).
"""
from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..io.volume import Volume
from .confidence import mask_confidence
from .merge import label_values
from .postprocess import body_mask_from_image, load_rules, postprocess
from .sliding import resolve_device, set_threads, sliding_window_masks
from .threads import ordered_thread_map
from .upsample import invert_classes

#: Inference settings and their defaults (a checkpoint's `inference:` section overrides them).
DEFAULT_INFERENCE: dict[str, Any] = {
    "window": [96, 96, 96],
    "overlap": 0.5,
    "mode": "gaussian",
    "sw_batch_size": 2,
    "thresholds": {},
    "postprocess": True,
    "crop_body": True,   # run the network only on the body's bounding box (plus body_margin)
    "body_margin": 8,    # voxels of the network grid
    "amp": None,         # float16 autocast on CUDA (legacy switch; `precision` wins when set)
    # autocast dtype of the windows: float32 (default: results equal to the float32 reference) |
    # bfloat16 (2-3x faster network on CPUs with native bf16, but masks can move: Dice 0.8-0.99 on
    # weakly confident classes) | float16 (CUDA) | auto (bfloat16/float16 where native)
    "precision": "float32",
    "head_chunk": 131072,  # class-voxels per chunk of the Universal Model's head (0 = one go)
    "threads": None,      # torch CPU threads; None = the cores this process may use
    "interpolation": "linear",  # class results -> input grid: linear (probabilities) | nearest
    "fast_spacing": [3.0, 3.0, 3.0],  # grid of fast=True (TotalSegmentator's --fast: 3 mm)
    "roi_spacing": [6.0, 6.0, 6.0],   # grid of the pass that locates the asked classes (roi=True)
    "roi_margin_mm": 15.0,            # margin around the located classes
    "rules": None,       # overrides of postprocess_rules.yaml
}

_CASE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_OUT_EXT = {".nii.gz": ".nii.gz", ".nii": ".nii", ".nrrd": ".nrrd", ".nhdr": ".nrrd", ".mha": ".mha", ".mhd": ".mha"}


def case_name(path: str | Path) -> str:
    """File name without its image suffix ('ct.nii.gz' -> 'ct') and without nnU-Net's channel
    suffix ('case_0000.nii.gz' -> 'case', so predictions match labelsTr names); a DICOM folder's
    own name."""
    p = Path(path)
    name = p.name
    if p.is_dir():
        return name
    low = name.lower()
    stem = p.stem
    for ext in _CASE_SUFFIXES:
        if low.endswith(ext):
            stem = name[: -len(ext)]
            break
    return re.sub(r"_\d{4}$", "", stem)


def output_extension(path: str | Path) -> str:
    """Merged-map extension: the input's format family (NIfTI/NRRD/MHA), .nii.gz for DICOM."""
    p = Path(path)
    if p.is_dir():
        return ".nii.gz"
    low = p.name.lower()
    for ext in sorted(_OUT_EXT, key=len, reverse=True):
        if low.endswith(ext):
            return _OUT_EXT[ext]
    return ".nii.gz"


def slug(name: str) -> str:
    """File-name form of a class name: lower case, spaces and '/' -> '_'."""
    s = re.sub(r"[\s/\\]+", "_", name.strip().lower())
    return re.sub(r"[^a-z0-9_.+-]", "", s) or "class"


def inference_settings(inference: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults + the given settings, checked (one-line ConfigError on a bad value)."""
    cfg = {**DEFAULT_INFERENCE, **dict(inference or {})}
    w = cfg["window"]
    w = [int(w)] * 3 if isinstance(w, (int, float)) else [int(v) for v in w]
    if len(w) != 3 or min(w) < 1:
        raise ConfigError(f"inference.window must be 3 positive integers, got {cfg['window']!r}")
    cfg["window"] = w
    if not 0 <= float(cfg["overlap"]) < 1:
        raise ConfigError(f"inference.overlap must be in [0, 1), got {cfg['overlap']!r}")
    if cfg["mode"] not in ("gaussian", "constant"):
        raise ConfigError(f"inference.mode must be gaussian or constant, got {cfg['mode']!r}")
    if int(cfg["sw_batch_size"]) < 1:
        raise ConfigError(f"inference.sw_batch_size must be >= 1, got {cfg['sw_batch_size']!r}")
    for k, t in (cfg["thresholds"] or {}).items():
        if not 0 < float(t) < 1:
            raise ConfigError(f"inference.thresholds[{k!r}] must be in (0, 1), got {t!r}")
    if str(cfg["precision"]).lower() not in ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"):
        raise ConfigError(f"inference.precision must be auto, float32, bfloat16 or float16, got {cfg['precision']!r}")
    if cfg["interpolation"] not in ("linear", "nearest"):
        raise ConfigError(f"inference.interpolation must be linear or nearest, got {cfg['interpolation']!r}")
    if cfg["threads"] is not None and int(cfg["threads"]) < 1:
        raise ConfigError(f"inference.threads must be >= 1, got {cfg['threads']!r}")
    for key in ("fast_spacing", "roi_spacing"):
        v = cfg[key]
        v = [float(v)] * 3 if isinstance(v, (int, float)) else [float(x) for x in v]
        if len(v) != 3 or min(v) <= 0:
            raise ConfigError(f"inference.{key} must be 3 positive numbers (mm), got {cfg[key]!r}")
        cfg[key] = v
    return cfg


# --- outputs ----------------------------------------------------------------------------------
class PackedMasks(Mapping):
    """Per-class masks on the input grid, stored one bit per class per voxel; unpacked on access."""

    def __init__(self, packed: np.ndarray, names: Sequence[str], like: Volume):
        self._packed = packed  # uint8 [ceil(K/8), X, Y, Z], np.packbits order (first class = MSB)
        self._names = list(names)
        self._like = like

    def __getitem__(self, name: str) -> Volume:
        if name not in self._names:
            raise KeyError(name)
        k = self._names.index(name)
        bits = (self._packed[k // 8] >> (7 - k % 8)) & 1
        return self._like.with_array(bits.astype(np.uint8, copy=False))

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def voxel_count(self, name: str) -> int:
        k = self._names.index(name)
        return int(np.count_nonzero(self._packed[k // 8] & np.uint8(1 << (7 - k % 8))))


@dataclass
class Prediction:
    """A prediction on the input's grid. `masks` may overlap; `label_map` is their merge."""

    label_map: Volume
    masks: Mapping[str, Volume]
    names: dict[int, str]
    timings: dict[str, float] = field(default_factory=dict)
    volumes_ml: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)  # windows run, network grid, precision

    def summary(self, case: str = "") -> str:
        """One line: classes found with volumes, then the time per stage."""
        found = [f"{n} {v:.1f} ml" for n, v in self.volumes_ml.items() if v > 0]
        t = ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items())
        head = f"{case}: " if case else ""
        what = f"{len(found)}/{len(self.volumes_ml)} classes found ({'; '.join(found)})" if found else \
            f"0/{len(self.volumes_ml)} classes found"
        return f"{head}{what} in {sum(self.timings.values()):.2f}s [{t}]"


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


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    out = []
    for a in range(3):
        nz = np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a)))
        out.append(slice(max(0, int(nz[0]) - margin), min(mask.shape[a], int(nz[-1]) + margin + 1)))
    return tuple(out)  # type: ignore[return-value]


def _logit(t: float) -> float:
    return math.log(t / (1.0 - t))


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
    nz = [np.flatnonzero(union.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    out = tuple(slice(max(0, min(region[a].start, int(nz[a][0]) - margin[a])),
                      min(shape[a], max(region[a].stop, int(nz[a][-1]) + 1 + margin[a]))) for a in range(3))
    if out == tuple(region):  # cannot grow further: touching the crop border only
        return None
    return out


def _min_window(window, model) -> list[int]:
    """At least two bottleneck voxels per axis (instance norm needs more than one)."""
    from .sliding import size_multiple

    return [max(int(w), 2 * m) for w, m in zip(window, size_multiple(model))]


def scaled_plan(plan, window, spacing, name: str):
    """(plan on `spacing` mm, window scaled to cover the same millimetres) for fast/roi passes.

    A network trained at the plan's spacing sees anatomy at another scale here: an approximation
    (TotalSegmentator ships a separately trained 3 mm model for --fast). Windows shrink with the
    grid so that instance-norm statistics and context cover the same body region.
    """
    from ..preprocess import get_plan

    if plan.spacing is None:
        raise ConfigError(f"{name}: the plan {plan.name!r} keeps the input spacing; a coarse pass needs a plan spacing")
    new = get_plan(plan, spacing=[float(v) for v in spacing], name=f"{plan.name}_{name}")
    win = [max(8, int(round(w * float(s0) / float(s1)))) for w, s0, s1 in zip(window, plan.spacing, spacing)]
    return new, win


class Predictor:
    """Runs a `UniversalSegmenter` on whole images.

    `plan` / `inference` default to the checkpoint's (`model.run_config`); `device="auto"` picks
    CUDA when present. `progress` shows MONAI's window bar (per image) and a case bar in `predict`.
    """

    def __init__(self, model, plan=None, inference: Mapping[str, Any] | None = None, device="auto",
                 progress: bool = True, modality: str | None = None, fast: bool = False, roi: bool = False):
        from ..preprocess import get_plan

        run_config = getattr(model, "run_config", None) or {}
        if plan is None:
            plan = run_config.get("plan")
            if plan is None:
                raise ConfigError("no preprocessing plan: the model has no run_config['plan']; pass plan=")
        self.plan = get_plan(plan)
        merged = {**(run_config.get("inference") or {}), **(inference or {})}
        self.settings = inference_settings(merged)
        self.fast = bool(fast)
        if self.fast:
            self.plan, win = scaled_plan(self.plan, self.settings["window"], self.settings["fast_spacing"], "fast")
            self.settings["window"] = _min_window(win, model)
        self.roi = bool(roi)
        self.rules = load_rules(self.settings.get("rules"))
        self.device = resolve_device(device)
        self.threads = set_threads(self.settings["threads"]) if self.device.type == "cpu" else torch.get_num_threads()
        self.model = model.to(self.device).eval()
        self.modality = modality or getattr(model, "modality", None) or self.plan.modality
        self.progress = progress
        self.taxonomy = model.taxonomy
        import monai.inferers  # noqa: F401  -- slow first import belongs to set-up, not to "network" time

    def expand(self, prompts: Sequence[str] | None) -> list[str] | None:
        """Prompts with a paired-organ group name ('kidney', 'lung') replaced by both sides."""
        if prompts is None:
            return None
        if isinstance(prompts, str):
            prompts = [prompts]
        out: list[str] = []
        for p in prompts:
            members = self.taxonomy.group_members(p) if self.taxonomy.get(p) is None else {}
            if members:
                out.extend(members[side].name for side in ("right", "left") if side in members)
            else:
                out.append(p)
        return list(dict.fromkeys(out))  # a side asked twice counts once

    # -- prompts ---------------------------------------------------------------------------------
    def classes(self, prompts: Sequence[str] | None = None) -> list[str]:
        """Canonical class names for the prompts (all the model knows when None).

        A group name ('kidney') gives both sides; an unknown prompt raises the model's one-line
        PromptError naming the closest known classes.
        """
        prompts = self.expand(prompts)
        return list(dict.fromkeys(self.model.prompt_batch(prompts or None, modality=self.modality).classes))

    def thresholds(self, classes: Sequence[str]) -> list[float]:
        """Per-class cut-off: inference.thresholds (any spelling) > taxonomy threshold > 0.5."""
        given = {}
        for k, t in (self.settings["thresholds"] or {}).items():
            info = self.taxonomy.get(k)
            given[info.name if info else k] = float(t)
        out = []
        for c in classes:
            info = self.taxonomy.get(c)
            out.append(given.get(c, info.threshold if info is not None else 0.5))
        return out

    # -- one volume ------------------------------------------------------------------------------
    def predict_volume(self, volume: Volume, prompts: Sequence[str] | None = None) -> Prediction:
        from ..preprocess import preprocess_image

        timings: dict[str, float] = {}
        notes: list[str] = []
        stats: dict[str, Any] = {"threads": self.threads}
        s = self.settings
        pb = self.model.prompt_batch(self.expand(prompts) or None, modality=self.modality, batch_size=1)
        classes = list(dict.fromkeys(pb.classes))
        if len(classes) != len(pb.classes):  # two spellings of one class: predict it once
            pb = self.model.prompt_batch(classes, modality=self.modality, batch_size=1)
        if not classes:
            raise ConfigError("nothing to segment: no prompts given and the model lists no classes")
        values = label_values(classes, self.taxonomy)
        thresholds = self.thresholds(classes)

        with _Timer(timings, "preprocess"):
            pre = preprocess_image(volume, self.plan)
            image = pre.array
            body = body_mask_from_image(image)
            box = _bbox(body, int(s["body_margin"])) if s["crop_body"] and body.any() else (slice(None),) * 3
            box = tuple(slice(b.start or 0, image.shape[a] if b.stop is None else b.stop) for a, b in enumerate(box))
            tensor = torch.from_numpy(np.ascontiguousarray(image[box]))[None, None]
        stats["network_grid"] = tuple(int(v) for v in tensor.shape[2:])

        region = None
        if self.roi and prompts is not None:
            with _Timer(timings, "locate"):
                region = self.locate(volume, classes, pre.record, box, notes)
        with _Timer(timings, "network", self.device):
            raw, probs = self._network(tensor, pb, thresholds, region, stats, notes)
            del tensor

        masks = {c: raw[k] for k, c in enumerate(classes)}
        if s["postprocess"]:
            with _Timer(timings, "postprocess"):
                masks = postprocess(
                    masks, None, self.taxonomy, pre.record.network.spacing, body_mask=body[box],
                    direction=np.asarray(pre.record.network.direction, dtype=float).reshape(3, 3),
                    rules=self.rules, notes=notes, workers=self.threads,
                )
        stats["confidence"] = dict(zip(classes, mask_confidence(probs, [masks[c] for c in classes])))
        part: dict[str, float] = {}
        with _Timer(timings, "invert"):
            label_vol, packed = invert_classes(classes, raw, probs, masks, thresholds, pre.record, box, values,
                                               self.taxonomy, interpolation=s["interpolation"], timings=part,
                                               workers=self.threads)
            del raw, probs, masks
        timings["invert"] -= part["merge"]  # reported apart: the merge runs class by class inside
        timings["merge"] = part["merge"]
        masks_out = PackedMasks(packed, classes, label_vol)
        voxel_ml = float(np.prod(label_vol.spacing)) / 1000.0
        volumes = {c: masks_out.voxel_count(c) * voxel_ml for c in classes}
        return Prediction(label_vol, masks_out, {values[c]: c for c in classes}, timings, volumes, notes, stats)

    def _network(self, tensor: torch.Tensor, pb, thresholds, region, stats, notes):
        """Masks + uint16 probabilities of the crop; with a region, grown until no mask touches its
        inner faces (so a class the locating pass under-estimated is still complete)."""
        s = self.settings
        kw = dict(window=s["window"], overlap=s["overlap"], mode=s["mode"], sw_batch_size=int(s["sw_batch_size"]),
                  device=self.device, precision=self._precision(), head_chunk=s["head_chunk"], progress=self.progress)
        shape = tuple(tensor.shape[2:])
        run = tries = 0
        while True:
            st: dict[str, Any] = {}
            raw, probs = sliding_window_masks(self.model, tensor, pb, thresholds, region=region, stats=st, **kw)
            run += st["windows"]
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

    def locate(self, volume: Volume, classes: list[str], record, box, notes: list[str]):
        """Region of the network crop that the asked classes need (TotalSegmentator's roi_subset).

        The same network runs on a coarse grid (`roi_spacing`, windows scaled to the same mm),
        its post-processed masks of the asked classes give a box in mm, mapped to the crop and
        grown by `roi_margin_mm`. Inside the region the full-resolution logits are exactly those of
        a full run (every window covering it is run); `_network` grows it if a mask reaches its
        edge. None (= everything) when the coarse pass finds none of the classes.
        """
        s = self.settings
        coarse_plan, coarse_window = scaled_plan(self.plan, s["window"], s["roi_spacing"], "roi")
        coarse_window = _min_window(coarse_window, self.model)
        from ..preprocess import preprocess_image

        pre = preprocess_image(volume, coarse_plan)
        body = body_mask_from_image(pre.array)
        cbox = _bbox(body, int(s["body_margin"])) if s["crop_body"] and body.any() else tuple(slice(0, n) for n in pre.array.shape)
        tensor = torch.from_numpy(np.ascontiguousarray(pre.array[cbox]))[None, None]
        pb = self.model.prompt_batch(classes, modality=self.modality, batch_size=1)
        raw, _ = sliding_window_masks(self.model, tensor, pb, self.thresholds(classes), window=coarse_window,
                                      overlap=s["overlap"], mode=s["mode"], sw_batch_size=int(s["sw_batch_size"]),
                                      device=self.device, precision=self._precision(), head_chunk=s["head_chunk"])
        masks = {c: raw[k] for k, c in enumerate(classes)}
        if s["postprocess"]:
            masks = postprocess(masks, None, self.taxonomy, pre.record.network.spacing, body_mask=body[cbox],
                                direction=np.asarray(pre.record.network.direction, dtype=float).reshape(3, 3),
                                rules=self.rules)
        union = np.zeros(raw.shape[1:], bool)
        for m in masks.values():
            union |= m
        if not union.any():
            notes.append("roi: the locating pass found none of the asked classes; running everywhere")
            return None
        nz = [np.flatnonzero(union.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
        lo = [int(n[0]) - 0.5 + int(c.start) for n, c in zip(nz, cbox)]
        hi = [int(n[-1]) + 0.5 + int(c.start) for n, c in zip(nz, cbox)]
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        world = pre.record.network.world(corners)  # LPS mm
        fine = record.network
        idx = np.linalg.solve(fine.matrix * np.asarray(fine.spacing), (world - np.asarray(fine.origin)).T).T
        margin = self._margin_vox(s["roi_margin_mm"])
        region = []
        for a in range(3):
            start = int(math.floor(idx[:, a].min())) - margin[a] - int(box[a].start)
            stop = int(math.ceil(idx[:, a].max())) + 1 + margin[a] - int(box[a].start)
            n = int(box[a].stop) - int(box[a].start)
            region.append(slice(max(0, start), min(n, stop)))
        if any(r.stop <= r.start for r in region):
            notes.append("roi: the located classes lie outside the body crop; running everywhere")
            return None
        return tuple(region)

    # -- files -----------------------------------------------------------------------------------
    def predict_file(self, path: str | Path, out_dir: str | Path, prompts: Sequence[str] | None = None,
                     write_masks: bool = True) -> dict[str, Any]:
        """Predict one image file / DICOM folder; write OUT/<case>.<ext>, OUT/<case>/<class>.nii.gz
        and OUT/labels.json. Returns the paths written plus the Prediction ('prediction')."""
        from ..io import read_image, write_image

        path = Path(path)
        out_dir = Path(out_dir)
        self.classes(prompts)  # fail on a bad prompt before reading a large image
        t0 = time.perf_counter()
        volume = read_image(path)
        read_s = time.perf_counter() - t0
        pred = self.predict_volume(volume, prompts)
        del volume
        pred.timings = {"read": read_s, **pred.timings}
        case = case_name(path)
        t0 = time.perf_counter()
        out: dict[str, Any] = {"case": case}
        out["label_map"] = write_image(pred.label_map, out_dir / f"{case}{output_extension(path)}")
        out["labels"] = write_labels_json(out_dir / "labels.json", pred.names)
        mask_paths: dict[str, Path] = {}
        if write_masks:
            def write_mask(name: str) -> Path:  # gzip is most of the writing time
                return write_image(pred.masks[name], out_dir / case / f"{slug(name)}.nii.gz")

            names = list(pred.masks)
            mask_paths = dict(zip(names, ordered_thread_map(write_mask, names, int(self.threads))))
        out["masks"] = mask_paths
        pred.timings["write"] = time.perf_counter() - t0
        out["prediction"] = pred
        return out


def write_labels_json(path: Path, names: Mapping[int, str]) -> Path:
    """value -> class name, merged with an existing file (this run's names win); atomic."""
    table: dict[str, str] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if isinstance(old, dict):
                table.update({str(k): str(v) for k, v in old.items()})
        except (OSError, json.JSONDecodeError):
            pass  # a broken old table is replaced
    table.update({str(int(k)): v for k, v in names.items()})
    table = dict(sorted(table.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 1 << 30))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        tmp.write_text(json.dumps(table, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(path, f"cannot write label table ({exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# --- many inputs --------------------------------------------------------------------------------
def _is_dicom_dir(p: Path) -> bool:
    import SimpleITK as sitk

    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p)))
    except RuntimeError:
        return False


def collect_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files / DICOM series folders to predict: a file, a series folder, or a folder of them."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if not p.exists():
            raise InputError(p, "input not found")
        if p.is_file() or _is_dicom_dir(p):
            out.append(p)
            continue
        found = []
        for child in sorted(p.iterdir()):
            if child.name.startswith("."):
                continue
            if child.is_file() and child.name.lower().endswith(_CASE_SUFFIXES):
                found.append(child)
            elif child.is_dir() and _is_dicom_dir(child):
                found.append(child)
        if not found:
            raise InputError(p, "no images here (NIfTI, NRRD, MHA files or DICOM series folders)")
        out.extend(found)
    cases = [case_name(p) for p in out]
    dup = sorted({c for c in cases if cases.count(c) > 1})
    if dup:
        raise InputError(None, f"several inputs have the same case name {dup}: outputs would overwrite each other")
    return out


def predict(model_or_checkpoint, inputs, out_dir, prompts: Sequence[str] | None = None, device="auto",
            postprocess: bool | None = None, write_masks: bool = True, progress: bool = True,
            plan=None, inference: Mapping[str, Any] | None = None, on_case=None, fast: bool = False,
            roi: bool = False) -> list[dict[str, Any]]:
    """Predict every input (file, DICOM folder or folder of images) into `out_dir`.

    `model_or_checkpoint`: a model or a checkpoint path. `on_case(result)` is called after each
    case (the CLI prints its summary there). `fast`: 3 mm grid; `roi`: full resolution only
    where the prompts' classes are (see `Predictor`). Returns one result dict per case.
    """
    from tqdm import tqdm

    files = collect_inputs(inputs)  # cheap checks first: a typo in a path fails before loading
    if isinstance(model_or_checkpoint, (str, Path)):
        from ..train.checkpoint import load_checkpoint

        model = load_checkpoint(model_or_checkpoint, device="cpu")
    else:
        model = model_or_checkpoint
    settings = dict(inference or {})
    if postprocess is not None:
        settings["postprocess"] = bool(postprocess)
    predictor = Predictor(model, plan=plan, inference=settings, device=device, progress=progress and len(files) == 1,
                          fast=fast, roi=roi)
    predictor.classes(prompts)  # a bad prompt fails before any work
    results = []
    bar = tqdm(files, desc="predict", unit="case", disable=not progress or len(files) < 2)
    for f in bar:
        bar.set_postfix_str(case_name(f))
        result = predictor.predict_file(f, out_dir, prompts, write_masks=write_masks)
        results.append(result)
        if on_case is not None:
            on_case(result)
    return results
