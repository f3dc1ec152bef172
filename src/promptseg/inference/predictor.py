"""Predictor: one image (or file, or folder) in, label map + per-class masks out, on the input grid.

Flow, and why each step sits where it does:
  read -> preprocess (plan of the checkpoint) -> body crop -> sliding window (device) ->
  threshold on the device (logits > logit(t): no float probability map leaves it; probabilities
  are kept as uint8 only for overlap ties) -> post-process + merge in the network grid ->
  invert label map and bit-packed masks with nearest (exact, integer only) -> write.
So nothing float ever exists at the input's full resolution, and the per-class masks of all
classes cost one bit per voxel each until a mask is asked for.
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
from .merge import label_values, merge
from .postprocess import body_mask_from_image, load_rules, postprocess
from .sliding import resolve_device, sliding_window_logits

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
    "amp": None,         # float16 autocast; None = on for CUDA
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


class Predictor:
    """Runs a `UniversalSegmenter` on whole images.

    `plan` / `inference` default to the checkpoint's (`model.run_config`); `device="auto"` picks
    CUDA when present. `progress` shows MONAI's window bar (per image) and a case bar in `predict`.
    """

    def __init__(self, model, plan=None, inference: Mapping[str, Any] | None = None, device="auto",
                 progress: bool = True, modality: str | None = None):
        from ..preprocess import get_plan

        run_config = getattr(model, "run_config", None) or {}
        if plan is None:
            plan = run_config.get("plan")
            if plan is None:
                raise ConfigError("no preprocessing plan: the model has no run_config['plan']; pass plan=")
        self.plan = get_plan(plan)
        merged = {**(run_config.get("inference") or {}), **(inference or {})}
        self.settings = inference_settings(merged)
        self.rules = load_rules(self.settings.get("rules"))
        self.device = resolve_device(device)
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
        from ..preprocess import invert, preprocess_image

        timings: dict[str, float] = {}
        notes: list[str] = []
        s = self.settings
        pb = self.model.prompt_batch(self.expand(prompts) or None, modality=self.modality, batch_size=1)
        classes = list(dict.fromkeys(pb.classes))
        if len(classes) != len(pb.classes):  # two spellings of one class: predict it once
            pb = self.model.prompt_batch(classes, modality=self.modality, batch_size=1)
        if not classes:
            raise ConfigError("nothing to segment: no prompts given and the model lists no classes")
        values = label_values(classes, self.taxonomy)

        with _Timer(timings, "preprocess"):
            pre = preprocess_image(volume, self.plan)
            image = pre.array
            body = body_mask_from_image(image)
            box = _bbox(body, int(s["body_margin"])) if s["crop_body"] and body.any() else (slice(None),) * 3
            tensor = torch.from_numpy(np.ascontiguousarray(image[box]))[None, None]

        with _Timer(timings, "network", self.device):
            logits = sliding_window_logits(
                self.model, tensor, pb, window=s["window"], overlap=s["overlap"], mode=s["mode"],
                sw_batch_size=int(s["sw_batch_size"]), device=self.device,
                out_device=self._stitch_device(len(classes), tensor.shape[2:]),
                progress=self.progress, amp=s["amp"],
            )
            del tensor

        with _Timer(timings, "threshold", self.device):
            masks_np, probs_np = self._threshold(logits[0], classes)
            del logits

        if s["postprocess"]:
            with _Timer(timings, "postprocess"):
                masks_np = postprocess(
                    masks_np, probs_np, self.taxonomy, pre.record.network.spacing, body_mask=body[box],
                    direction=np.asarray(pre.record.network.direction, dtype=float).reshape(3, 3),
                    rules=self.rules, notes=notes,
                )
        with _Timer(timings, "merge"):
            label_crop = merge(masks_np, probs_np, self.taxonomy, values)
            del probs_np
            net_shape = tuple(image.shape)
            label_net = np.zeros(net_shape, dtype=label_crop.dtype)
            label_net[box] = label_crop
            stack = np.stack([masks_np[c] for c in classes])  # bool [K, crop]
            del masks_np
            packed_crop = np.packbits(stack, axis=0)
            del stack
            packed_net = np.zeros((packed_crop.shape[0],) + net_shape, dtype=np.uint8)
            packed_net[(slice(None),) + box] = packed_crop
            del packed_crop

        with _Timer(timings, "invert"):
            label_vol = invert(label_net, pre.record, interpolation="nearest")
            packed = invert(packed_net, pre.record, interpolation="nearest").array
        masks = PackedMasks(packed, classes, label_vol)
        voxel_ml = float(np.prod(label_vol.spacing)) / 1000.0
        volumes = {c: masks.voxel_count(c) * voxel_ml for c in classes}
        return Prediction(label_vol, masks, {values[c]: c for c in classes}, timings, volumes, notes)

    def _stitch_device(self, n_classes: int, shape) -> torch.device:
        """Keep the stitched logits on the GPU when they take under a third of its free memory."""
        if self.device.type != "cuda":
            return self.device
        need = 2 * 4 * n_classes * int(np.prod(shape))  # logits + one temporary
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.device if need < free / 3 else torch.device("cpu")

    def _threshold(self, logits: torch.Tensor, classes: list[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """bool masks (logit > logit(t), same as sigmoid > t) and uint8 probabilities, per class."""
        masks: dict[str, np.ndarray] = {}
        probs: dict[str, np.ndarray] = {}
        with torch.inference_mode():
            for k, (c, t) in enumerate(zip(classes, self.thresholds(classes))):
                z = logits[k]
                masks[c] = (z > _logit(t)).cpu().numpy()
                probs[c] = torch.sigmoid(z).mul_(255.0).round_().to(torch.uint8).cpu().numpy()
        return masks, probs

    # -- files -----------------------------------------------------------------------------------
    def predict_file(self, path: str | Path, out_dir: str | Path, prompts: Sequence[str] | None = None,
                     write_masks: bool = True) -> dict[str, Any]:
        """Predict one image file / DICOM folder; write OUT/<case>.<ext>, OUT/<case>/<class>.nii.gz
        and OUT/labels.json. Returns the paths written plus the Prediction ('prediction')."""
        from ..io import read_image, write_image

        path = Path(path)
        out_dir = Path(out_dir)
        self.classes(prompts)  # fail on a bad prompt before reading a large image
        volume = read_image(path)
        pred = self.predict_volume(volume, prompts)
        case = case_name(path)
        t0 = time.perf_counter()
        out: dict[str, Any] = {"case": case}
        out["label_map"] = write_image(pred.label_map, out_dir / f"{case}{output_extension(path)}")
        out["labels"] = write_labels_json(out_dir / "labels.json", pred.names)
        mask_paths: dict[str, Path] = {}
        if write_masks:
            for name in pred.masks:
                mask_paths[name] = write_image(pred.masks[name], out_dir / case / f"{slug(name)}.nii.gz")
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
            plan=None, inference: Mapping[str, Any] | None = None, on_case=None) -> list[dict[str, Any]]:
    """Predict every input (file, DICOM folder or folder of images) into `out_dir`.

    `model_or_checkpoint`: a model or a checkpoint path. `on_case(result)` is called after each
    case (the CLI prints its summary there). Returns one result dict per case.
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
    predictor = Predictor(model, plan=plan, inference=settings, device=device, progress=progress and len(files) == 1)
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
