"""Synthetic abdominal CT phantoms and partially labelled nnU-Net folders built from them.

Why: the demo and the fast tests need CT-like data that ships with the code, trains a small model
in minutes on a CPU, and reproduces the problem promptseg exists for -- several datasets that each
annotate only some classes of one shared class space. Everything is seeded and deterministic.

Anatomy is drawn in patient coordinates (LPS mm relative to the body centre: +x patient left,
+y posterior, +z superior) and rendered on the voxel grid through the grid's geometry, so the left
kidney lands on the patient's left whatever the file orientation.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import ConfigError, TaxonomyError
from ..io.atomic import atomic_directory, atomic_write, refuse_foreign
from ..io.formats import channel_file
from ..io.volume import Volume
from ..masks import erode_cube

# The phantom's own label table (every class name is a taxonomy name; tumour overrides organ).
PHANTOM_LABELS: dict[str, int] = {
    "background": 0,
    "spleen": 1,
    "right kidney": 2,
    "left kidney": 3,
    "liver": 4,
    "aorta": 5,
    "pancreas": 6,
    "kidney tumor": 7,
    "liver tumor": 8,
    "pancreas tumor": 9,
}
# tumour -> (host organs, radius range in mm, HU range)
_TUMOURS = {
    "liver tumor": (("liver",), (12.0, 18.0), (35.0, 50.0)),
    "kidney tumor": (("left kidney", "right kidney"), (10.0, 16.0), (50.0, 70.0)),
    "pancreas tumor": (("pancreas",), (8.0, 12.0), (35.0, 50.0)),
}

DEFAULT_SHAPE = (80, 64, 48)
DEFAULT_SPACING = (4.0, 4.0, 4.0)
# RAS-oriented grid (i -> patient right, j -> anterior, k -> superior): the NIfTI affine has a
# positive diagonal; in ITK/LPS terms the direction is diag(-1, -1, 1).
_DIRECTION = np.diag([-1.0, -1.0, 1.0])
_GRID_CENTRE_LPS = np.array([0.0, 0.0, -200.0])  # arbitrary table position: a non-zero origin

# (name, classes annotated, tumour counts per case as (low, high) inclusive, seed stream)
_DATASETS = (
    ("PhantomA_liver", ("liver", "liver tumor"), {"liver tumor": (1, 2)}, 1),
    ("PhantomB_kidney", ("left kidney", "right kidney", "kidney tumor"), {"kidney tumor": (1, 1)}, 2),
    ("PhantomC_organs", ("liver", "spleen", "left kidney", "right kidney", "pancreas", "aorta"), {}, 3),
    ("PhantomD_pancreas", ("pancreas", "pancreas tumor"), {"pancreas tumor": (1, 1)}, 4),
)
_TEST_DATASET = ("PhantomTest_full", tuple(n for n in PHANTOM_LABELS if n != "background"),
                 {"liver tumor": (1, 1), "kidney tumor": (1, 1), "pancreas tumor": (1, 1)}, 5)


# --- geometry helpers --------------------------------------------------------------------------
def _rotation(rng: np.random.Generator, max_deg=(10.0, 10.0, 10.0), base_deg=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Rotation matrix from z-y-x Euler angles: base + uniform jitter (degrees)."""
    from scipy.spatial.transform import Rotation

    ang = np.asarray(base_deg) + rng.uniform(-1, 1, 3) * np.asarray(max_deg)
    return Rotation.from_euler("zyx", ang, degrees=True).as_matrix()


class _Space:
    """Patient coordinates (mm) of every voxel centre, with a smooth random deformation.

    The grid direction is axis-aligned (diagonal), so each patient axis varies along one array
    axis only; shapes are evaluated inside their bounding box for speed.
    """

    _MARGIN = 12.0  # mm: bounds the deformation, so bounding boxes can be taken in raw coordinates

    def __init__(self, shape, spacing, origin, direction, centre, rng: np.random.Generator):
        if not np.allclose(np.abs(direction), np.eye(3)):
            raise ValueError("phantom grids are axis-aligned")
        self.shape = tuple(shape)
        self.axes = [
            (np.float32(origin[a] - centre[a]) + np.float32(direction[a, a] * spacing[a])
             * np.arange(shape[a], dtype=np.float32)) for a in range(3)
        ]
        self.raw = tuple(v.reshape([-1 if a == b else 1 for b in range(3)]) for a, v in enumerate(self.axes))
        # Low-frequency deformation: a few random plane waves per axis, 100-250 mm wavelength and
        # at most 9 mm in all, so gradients stay well below 1 and the map is one-to-one.
        self.p = []
        for w in range(3):
            d = np.zeros(self.shape, np.float32)
            for _ in range(3):
                k = rng.normal(size=3)
                k *= 2 * np.pi / rng.uniform(100.0, 250.0) / np.linalg.norm(k)
                d += self._wave(k, rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 3.0))
            self.p.append(self.raw[w] + d)

    def _wave(self, k, phase, amp) -> np.ndarray:
        """amp * cos(k . x + phase) on the grid, built separably (cheap: three 1D exponentials)."""
        e = [np.exp(1j * (k[a] * self.axes[a].astype(np.float64))).astype(np.complex64) for a in range(3)]
        out = (amp * np.exp(1j * phase)) * e[0][:, None, None] * e[1][None, :, None] * e[2][None, None, :]
        return out.real.astype(np.float32)

    def box(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Array slices covering the raw-coordinate box [lo, hi] (+ the deformation margin)."""
        out = []
        for a in range(3):
            idx = np.nonzero((self.axes[a] >= lo[a] - self._MARGIN) & (self.axes[a] <= hi[a] + self._MARGIN))[0]
            if idx.size == 0:
                return None
            out.append(slice(int(idx[0]), int(idx[-1]) + 1))
        return tuple(out)

    def ellipsoid(self, centre, radii, rot=None, raw=False) -> np.ndarray:
        """Normalised radius field (full grid): <= 1 inside the ellipsoid, inf far outside."""
        rot = np.eye(3) if rot is None else rot
        ext = np.sqrt(((rot * np.asarray(radii, float)) ** 2).sum(1))  # half-extent per axis
        out = np.full(self.shape, np.inf, np.float32)
        box = self.box(np.asarray(centre) - ext, np.asarray(centre) + ext)
        if box is None:
            return out
        src = self.raw if raw else self.p
        d = [np.broadcast_to(src[a], self.shape)[box] - np.float32(centre[a]) for a in range(3)]
        f = 0.0
        for a in range(3):
            q = rot[0, a] * d[0] + rot[1, a] * d[1] + rot[2, a] * d[2]  # q = R^T d
            f = f + (q / np.float32(radii[a])) ** 2
        out[box] = f
        return out

    def tube(self, points: np.ndarray, radii: np.ndarray) -> np.ndarray:
        """Union of spheres along a densely sampled centre line (a smooth tube)."""
        out = np.zeros(self.shape, bool)
        rmax = float(np.max(radii))
        box = self.box(points.min(0) - rmax, points.max(0) + rmax)
        if box is None:
            return out
        x, y, z = (self.p[a][box] for a in range(3))
        sub = np.zeros(x.shape, bool)
        for (px, py, pz), r in zip(points, radii):
            sub |= (x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2 <= r * r
        out[box] = sub
        return out

    def smooth_field(self, rng: np.random.Generator, amplitude: float, wavelength=(30.0, 90.0)) -> np.ndarray:
        """Random smooth texture, roughly within [-amplitude, amplitude]."""
        n = 4
        f = np.zeros(self.shape, np.float32)
        for _ in range(n):
            k = rng.normal(size=3)
            k *= 2 * np.pi / rng.uniform(*wavelength) / np.linalg.norm(k)
            f += self._wave(k, rng.uniform(0, 2 * np.pi), 1.0)
        return f * np.float32(amplitude / np.sqrt(n / 2))


def _spline(ctrl: np.ndarray, n: int) -> np.ndarray:
    """n points on a smooth (natural cubic spline) curve through the control points."""
    t = np.linspace(0, 1, len(ctrl))
    ts = np.linspace(0, 1, n)
    from scipy.interpolate import CubicSpline

    return CubicSpline(t, ctrl, axis=0, bc_type="natural")(ts)


def _grid_geometry(shape, spacing) -> tuple[tuple[float, float, float], np.ndarray]:
    shape = np.asarray(shape, float)
    spacing = np.asarray(spacing, float)
    origin = _GRID_CENTRE_LPS - _DIRECTION @ (spacing * (shape - 1) / 2)
    return tuple(float(v) for v in origin), _DIRECTION.copy()


def _check_grid(shape, spacing) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    try:
        shape = tuple(int(s) for s in shape)
        spacing = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ConfigError(f"phantom shape/spacing must be three numbers each; got {shape!r}, {spacing!r}") from None
    if len(shape) != 3 or len(spacing) != 3 or min(shape) < 8 or min(spacing) <= 0:
        raise ConfigError(f"phantom needs a 3D shape of at least 8 voxels per axis and positive spacing; "
                          f"got shape={shape}, spacing={spacing}")
    return shape, spacing


def _tumour_counts(tumours: dict[str, int] | None) -> dict[str, int]:
    if not tumours:
        return {}
    from ..taxonomy import default_taxonomy

    tax = default_taxonomy()
    out: dict[str, int] = {}
    for name, count in tumours.items():
        info = tax.get(name)
        if info is None or info.name not in _TUMOURS:
            raise TaxonomyError(f"phantoms can hold tumours {sorted(_TUMOURS)}; not {name!r}")
        if not isinstance(count, (int, np.integer)) or count < 0:
            raise ConfigError(f"tumour count for {name!r} must be a non-negative integer; got {count!r}")
        out[info.name] = out.get(info.name, 0) + int(count)
    return out


# --- the case generator ------------------------------------------------------------------------
def make_phantom_case(seed: int, shape=DEFAULT_SHAPE, spacing=DEFAULT_SPACING,
                      tumours: dict[str, int] | None = None) -> tuple[Volume, Volume, dict[str, int]]:
    """One synthetic contrast-enhanced abdominal CT: (image int16 HU, label uint8, label table).

    `tumours` maps tumour class names ("liver tumor", "kidney tumor", "pancreas tumor") to how
    many to place; None or {} gives a tumour-free case. Same seed and arguments give identical
    arrays. Labels are one value per voxel (tumour overrides its organ); the table is
    `PHANTOM_LABELS` (background included), the same for every case.
    """
    shape, spacing = _check_grid(shape, spacing)
    counts = _tumour_counts(tumours)
    rng = np.random.default_rng(seed)
    origin, direction = _grid_geometry(shape, spacing)
    # The body sits a little off the grid centre, like a patient on the table.
    centre = _GRID_CENTRE_LPS + np.array([rng.uniform(-8, 8), rng.uniform(-6, 6), rng.uniform(-10, 10)])
    sp = _Space(shape, spacing, origin, direction, centre, rng)
    u = rng.uniform

    hu = {
        "fat": u(-110, -90), "muscle": u(45, 60), "cavity": u(22, 35), "liver": u(95, 110),
        "spleen": 0.0, "cortex": u(150, 175), "medulla": 0.0, "pancreas": u(85, 100),
        "aorta": u(220, 280), "ivc": u(125, 150), "cancellous": u(380, 450), "cortical": u(650, 750),
        "disc": u(80, 100), "canal": u(5, 20),
    }
    hu["spleen"] = hu["liver"] + u(8, 18)
    hu["medulla"] = hu["cortex"] - u(30, 50)

    img = np.full(shape, -1000.0, np.float32)
    lab = np.zeros(shape, np.uint8)

    def paint(mask, value, label=0):
        img[mask] = value if np.isscalar(value) else value[mask]
        lab[mask] = label

    texture = sp.smooth_field(rng, 5.0)  # gentle parenchymal inhomogeneity, shared by soft tissue

    # Body wall: skin/subcutaneous fat, muscle, then the abdominal cavity.
    ax, ay = u(138, 158), u(100, 115)
    t_fat, t_mus = u(12, 24), u(8, 13)
    body = sp.ellipsoid((0, 0, 0), (ax, ay, 1e6)) <= 1
    inner = sp.ellipsoid((0, 0, 0), (ax - t_fat, ay - t_fat, 1e6)) <= 1
    cavity = sp.ellipsoid((0, 0, 0), (ax - t_fat - t_mus, ay - t_fat - t_mus, 1e6)) <= 1
    paint(body, hu["fat"] + texture)
    paint(inner, hu["muscle"] + texture)
    bowel = hu["cavity"] + sp.smooth_field(rng, 10.0, (20.0, 50.0))
    paint(cavity, bowel)

    # Spine: vertebral bodies (cancellous core, cortical rim, discs), canal, arch, spinous process;
    # paraspinal muscles behind it, psoas muscles beside it; retroperitoneal fat in front.
    vy = ay - t_fat - t_mus - u(40, 48)  # vertebral body centre, well inside the posterior wall
    retro = (sp.ellipsoid((0, vy - 5, 0), (ax - 35, 32, 1e6)) <= 1) & cavity
    paint(retro, hu["fat"] + texture)
    paraspinal = [sp.ellipsoid((s * u(30, 36), vy + 42, 0), (u(24, 30), u(20, 26), 1e6)) <= 1 for s in (-1, 1)]
    for m in paraspinal:
        paint(m & body, hu["muscle"] + texture)
    vr = (u(18, 22), u(15, 18), 1e6)
    vb = sp.ellipsoid((0, vy, 0), vr)
    period, phase = u(32, 38), u(0, 40)
    disc = np.abs(((sp.p[2] - phase) % period) - period / 2) < 3.5
    paint(vb <= 1, np.where(disc, hu["disc"], np.where(vb > 0.6, hu["cortical"], hu["cancellous"])).astype(np.float32))
    arch = sp.ellipsoid((0, vy + vr[1] + 10, 0), (14, 11, 1e6)) <= 1
    spinous = sp.ellipsoid((0, vy + vr[1] + 28, 0), (5, 13, 1e6)) <= 1
    paint((arch | spinous) & ~disc, hu["cortical"] * 0.8)
    paint(sp.ellipsoid((0, vy + vr[1] + 9, 0), (7, 6, 1e6)) <= 1, hu["canal"])
    psoas_r = u(11, 15)
    for s in (-1, 1):
        # psoas widens caudally
        r = psoas_r * (1.0 - 0.004 * sp.p[2])
        psoas = ((sp.p[0] - s * (vr[0] + psoas_r)) ** 2 + (sp.p[1] - vy) ** 2) <= r * r
        paint(psoas & cavity & (sp.p[2] < 40), hu["muscle"] + texture)

    # Liver: big right lobe plus a left lobe reaching across the midline anteriorly.
    zl = u(38, 50)
    liver = sp.ellipsoid((-u(60, 68), u(-12, 0), zl), (u(56, 64), u(68, 80), u(55, 65)),
                         _rotation(rng, (10, 6, 6))) <= 1
    liver |= sp.ellipsoid((u(-5, 10), -u(40, 50), zl + u(10, 18)), (u(48, 58), u(25, 32), u(32, 40)),
                          _rotation(rng, (12, 6, 6))) <= 1
    paint(liver & cavity, hu["liver"] + texture, PHANTOM_LABELS["liver"])

    # Spleen: left, posterior, high, long axis along the posterolateral wall.
    spleen = sp.ellipsoid((u(82, 92), u(25, 38), u(35, 50)), (u(22, 28), u(45, 55), u(42, 52)),
                          _rotation(rng, (8, 8, 8), base_deg=(-40, 0, 0))) <= 1
    paint(spleen & cavity, hu["spleen"] + texture, PHANTOM_LABELS["spleen"])

    # Kidneys: either side of the spine, in perirenal fat; hilum faces antero-medially,
    # upper poles tilt medially; the right one sits lower (pushed down by the liver).
    z_left = u(-20, 0)
    for side, name in ((1, "left kidney"), (-1, "right kidney")):
        zc = z_left if side == 1 else z_left - u(8, 20)
        c = (side * u(62, 72), vy + u(-2, 8), zc)
        r = (u(22, 27), u(19, 23), u(44, 54))
        rot = _rotation(rng, (8, 5, 5), base_deg=(side * 30, 0, side * 12))
        f = sp.ellipsoid(c, r, rot)
        paint((f <= 1.6) & cavity, hu["fat"] + texture)
        kidney = (f <= 1) & cavity
        paint(kidney, np.where(f < 0.35, hu["medulla"], hu["cortex"]).astype(np.float32) + texture,
              PHANTOM_LABELS[name])

    # Great vessels: aorta anterior-left of the spine, IVC anterior-right; gently tortuous.
    front = vy - vr[1]
    ar = u(11, 14)
    ax0, ay0 = u(12, 20), front - ar - u(1, 4)
    wob, wph = u(1, 4), u(0, 2 * np.pi)
    acx = ax0 + wob * np.sin(sp.p[2] / 60.0 + wph)
    aorta = ((sp.p[0] - acx) ** 2 + (sp.p[1] - ay0) ** 2) <= ar * ar
    ivc = sp.ellipsoid((-u(20, 26), front - u(8, 12), 0), (u(11, 14), u(8, 10), 1e6)) <= 1
    paint(ivc & cavity, hu["ivc"] + texture)

    # Pancreas: head by the duodenum (right of midline), neck in front of the vessels, tail toward
    # the splenic hilum; a tube whose radius tapers from head to tail.
    ctrl = np.array([
        [-u(28, 36), front - u(30, 38), u(-14, -4)],
        [-u(2, 8), ay0 - ar - u(16, 22), u(2, 10)],
        [u(28, 36), ay0 - ar - u(12, 18), u(8, 16)],
        [u(62, 70), front + u(0, 10), u(14, 24)],
    ])
    pts = _spline(ctrl, 48)
    radii = np.interp(np.linspace(0, 1, 48), [0, 0.25, 0.6, 1], [u(17, 20), u(12, 14), u(11, 13), u(9, 11)])
    pancreas = sp.tube(pts, radii) & cavity
    kidneys = (lab == PHANTOM_LABELS["left kidney"]) | (lab == PHANTOM_LABELS["right kidney"])
    paint(sp.tube(pts, radii + 4.0) & cavity & ~kidneys, hu["fat"] + texture)  # peripancreatic fat plane
    paint(pancreas, hu["pancreas"] + texture, PHANTOM_LABELS["pancreas"])
    paint(((sp.p[0] - acx) ** 2 + (sp.p[1] - ay0) ** 2 <= (ar + 3.5) ** 2) & ~aorta & ~pancreas & cavity,
          hu["fat"] + texture)  # periaortic fat
    paint(aorta & cavity, hu["aorta"] + 0.5 * texture, PHANTOM_LABELS["aorta"])

    # Bowel gas and mesenteric fat pockets, only away from labelled organs.
    clear = ~ndimage.binary_dilation(lab > 0, iterations=2) & cavity & ~retro
    for _ in range(rng.integers(4, 9)):
        c = (u(-80, 80), u(-90, -10), u(-90, 20))
        blob = sp.ellipsoid(c, (u(5, 14), u(5, 12), u(6, 16)), raw=True) <= 1
        paint(blob & clear, -1000.0 if rng.random() < 0.5 else hu["fat"])

    # Tumours: hypodense ellipsoids strictly inside their organ (one voxel of organ around them).
    for tname in sorted(counts):
        hosts, (rmin, rmax), (hlo, hhi) = _TUMOURS[tname]
        for _ in range(counts[tname]):
            host = hosts[rng.integers(len(hosts))]
            _place_tumour(sp, rng, img, lab, host, tname, (rmin, rmax), u(hlo, hhi), spacing, texture)

    # Acquisition: slight blur (partial volume), Gaussian noise, int16 HU.
    sigma = [max(0.0, 1.6 / s) for s in spacing]
    img = ndimage.gaussian_filter(img, sigma, mode="nearest")
    img += rng.normal(0.0, u(15, 20), shape).astype(np.float32)
    img = np.clip(np.rint(img), -1024, 3071).astype(np.int16)

    image = Volume(img, spacing, origin, direction)
    label = Volume(lab, spacing, origin, direction)
    return image, label, dict(PHANTOM_LABELS)


def _place_tumour(sp: _Space, rng, img, lab, host: str, tname: str, rrange, value: float, spacing,
                  texture) -> None:
    organ = lab == PHANTOM_LABELS[host]
    core = erode_cube(organ, 3)
    if not core.any():
        raise ConfigError(f"phantom grid too coarse (spacing {spacing}) to place a {tname} in the {host}")
    box = ndimage.find_objects(core.astype(np.uint8))[0]
    dist = ndimage.distance_transform_edt(np.pad(core[box], 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    r = rng.uniform(*rrange)
    need = min(0.8 * r, float(dist.max()))
    cand = np.argwhere(dist >= need)
    i, j, k = cand[rng.integers(len(cand))] + np.array([b.start for b in box])
    centre = (sp.axes[0][i], sp.axes[1][j], sp.axes[2][k])
    radii = r * rng.uniform(0.8, 1.2, 3)
    mask = (sp.ellipsoid(centre, radii, _rotation(rng, (180, 90, 180)), raw=True) <= 1) & core
    mask[i, j, k] = True  # never empty, even when the organ barely fits one
    img[mask] = value + texture[mask]
    lab[mask] = PHANTOM_LABELS[tname]


# --- dataset folders ---------------------------------------------------------------------------
def _write_volume(volume: Volume, path: Path) -> None:
    """Write one image (atomically, exact geometry): the one place that decides how phantoms reach disk."""
    from ..io import write_image

    write_image(volume, path)


def _relabel(lab: np.ndarray, classes: tuple[str, ...]) -> tuple[np.ndarray, dict[str, int]]:
    """Keep only `classes` (renumbered 1..n in the given order); the rest becomes background.

    A tumour whose class is not annotated but whose organ is counts as that organ, as a human
    annotating only organs would have drawn it.
    """
    table = {"background": 0, **{c: i + 1 for i, c in enumerate(classes)}}
    lut = np.zeros(256, np.uint8)
    for name, v in PHANTOM_LABELS.items():
        if name in table:
            lut[v] = table[name]
    out = lut[lab]
    for tname, (hosts, _, _) in _TUMOURS.items():
        if tname in table or not any(h in table for h in hosts):
            continue
        comps, n = ndimage.label(lab == PHANTOM_LABELS[tname])
        for c in range(1, n + 1):
            comp = comps == c
            ring = lab[ndimage.binary_dilation(comp) & ~comp]
            host = max(hosts, key=lambda h: int((ring == PHANTOM_LABELS[h]).sum()))
            if host in table:
                out[comp] = table[host]
    return out, table


def _case_seed(seed: int, stream: int, index: int) -> int:
    """Independent per-case seeds: no case repeats across datasets or base seeds."""
    return int(np.random.SeedSequence([int(seed), stream, index]).generate_state(1, np.uint32)[0])


def _write_dataset(root: Path, name: str, classes, tumour_ranges, stream: int, n: int, seed: int,
                   shape, spacing, test: bool, progress) -> Path:
    final = root / name
    refuse_foreign(final, "promptseg phantom", "a promptseg phantom dataset")
    with atomic_directory(final) as work:
        img_dir, lab_dir = ("imagesTs", "labelsTs") if test else ("imagesTr", "labelsTr")
        (work / img_dir).mkdir()
        (work / lab_dir).mkdir()
        prefix = name.split("_")[0]
        rng = np.random.default_rng(_case_seed(seed, stream, 10_000))  # tumour counts per case
        entries, table = [], None
        for i in range(1, n + 1):
            counts = {t: int(rng.integers(lo, hi + 1)) for t, (lo, hi) in sorted(tumour_ranges.items())}
            image, label, _ = make_phantom_case(_case_seed(seed, stream, i), shape, spacing, counts)
            arr, table = _relabel(label.array, tuple(classes))
            case = f"{prefix}_{i:03d}"
            _write_volume(image, work / img_dir / channel_file(case))
            _write_volume(label.with_array(arr), work / lab_dir / f"{case}.nii.gz")
            entries.append({"image": f"./{img_dir}/{channel_file(case)}", "label": f"./{lab_dir}/{case}.nii.gz"})
            progress.update(1)
        if table is None:
            table = _relabel(np.zeros((1, 1, 1), np.uint8), tuple(classes))[1]
        kind = "held-out test set, every class labelled" if test else f"partially labelled: {', '.join(classes)}"
        meta = {
            "channel_names": {"0": "CT"},
            "labels": table,
            "numTraining": 0 if test else n,
            "file_ending": ".nii.gz",
            "name": name,
            "description": f"promptseg phantom ({kind}); synthetic contrast-enhanced abdominal CT, seed {seed}",
            "licence": "CC0 (synthetic)",
            "tensorImageSize": "3D",
        }
        if test:
            meta["numTest"] = n
            meta["test"] = entries
        else:
            meta["training"] = entries
        atomic_write(work / "dataset.json", json.dumps(meta, indent=2) + "\n")
    return final


def make_phantom_datasets(root: str | Path, seed: int = 0, n_train=(8, 8, 8, 4), n_test: int = 4,
                          shape=DEFAULT_SHAPE, spacing=DEFAULT_SPACING, progress: bool = True) -> dict[str, Path]:
    """Write partially labelled nnU-Net v2 raw folders of phantoms under `root` (`progress`: a bar).

    `n_train` gives the case counts of PhantomA_liver, PhantomB_kidney, PhantomC_organs and
    PhantomD_pancreas (a 3-tuple, or a 0, leaves D out). PhantomTest_full (`n_test` cases, all
    classes labelled, in imagesTs/labelsTs and listed under "test" in its dataset.json) is the
    held-out set. Each folder is written to a temporary name and renamed into place; an existing
    phantom folder of the same name is replaced. Returns dataset name -> folder.
    """
    from tqdm import tqdm

    shape, spacing = _check_grid(shape, spacing)
    counts = tuple(int(c) for c in n_train)
    if len(counts) not in (3, 4) or min(counts) < 0 or int(n_test) < 0:
        raise ConfigError(f"n_train must be 3 or 4 non-negative counts (A, B, C[, D]); got {n_train!r}")
    counts = counts + (0,) * (4 - len(counts))
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(spec, c, False) for spec, c in zip(_DATASETS, counts) if c > 0]
    if n_test > 0:
        jobs.append((_TEST_DATASET, int(n_test), True))
    out: dict[str, Path] = {}
    with tqdm(total=sum(c for _, c, _ in jobs), desc="phantoms", unit="case", leave=False,
              disable=not progress) as bar:
        for (name, classes, tumour_ranges, stream), n, test in jobs:
            out[name] = _write_dataset(root, name, classes, tumour_ranges, stream, n, seed, shape,
                                       spacing, test, bar)
    return out
