"""Synthetic chest CT with known nodules: for tests, training and demos.

`make_phantom(seed)` builds an HU volume (int16, (z, y, x), axes along LPS +x, +y, +z) of a chest:
body with skin, fat and muscle, ribs, spine, sternum, heart, aorta, mediastinum, two lungs with
texture, branching vessel trees, airways, diaphragm with liver and stomach, and nodules (solid,
part-solid, ground-glass; some on the pleura or a vessel). Everything is deterministic by seed.

Speed: the anatomy is drawn on a coarse grid (about 1.5 mm) and upsampled trilinearly (which also
gives the scanner blur); nodules are drawn at full resolution; noise comes from a small pool of
noise planes shifted per slice. A 512x512x240 phantom builds in a few seconds on 2 cores.

`write_phantom_series` writes it as a CT Image Storage series plus `truth.json`;
`insert_nodules` paints phantom nodules into a real CT volume.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid
from scipy import ndimage

from inference.volume import CT_IMAGE_STORAGE, Volume

log = logging.getLogger(__name__)

NoduleKind = Literal["solid", "part-solid", "ground-glass"]
Attachment = Literal["pleura", "vessel"] | None

AIR = -1000.0
LUNG = -860.0
FAT = -100.0
SOFT = 40.0
MUSCLE = 50.0
LIVER = 58.0
BLOOD = 40.0
CANCELLOUS = 280.0
CORTICAL = 1050.0
_COARSE_MM = 1.5
_NOISE_SD = 20.0


@dataclass(frozen=True)
class PhantomNodule:
    center_mm: tuple[float, float, float]  # x, y, z LPS
    diameter_mm: float  # diameter of the core sphere before lobulation and spicules
    kind: NoduleKind
    attached_to: Attachment
    malignant: bool
    margin: Literal["smooth", "lobulated", "spiculated"] = "smooth"
    calcified: bool = False
    solid_diameter_mm: float = 0.0  # the solid component: all of a solid nodule, the core of a part-solid one
    shape_seed: int = 0  # fixes lobulation and spicule directions

    def to_json(self) -> dict:
        d = asdict(self)
        d["center_mm"] = [round(c, 3) for c in self.center_mm]
        d["diameter_mm"] = round(self.diameter_mm, 3)
        d["solid_diameter_mm"] = round(self.solid_diameter_mm, 3)
        return d


@dataclass
class Phantom:
    hu: np.ndarray  # int16 (z, y, x); x -> patient left (+x), y -> posterior (+y), z -> head (+z)
    origin: np.ndarray  # LPS mm of voxel [0, 0, 0]
    spacing: np.ndarray  # (z, y, x) mm
    slice_thickness_mm: float
    patient_position: Literal["HFS", "FFS"]
    nodules: list[PhantomNodule]
    seed: int
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def voxel_to_world(self, zyx: np.ndarray) -> np.ndarray:
        zyx = np.atleast_2d(np.asarray(zyx, dtype=np.float64))
        return self.origin + zyx[:, ::-1] * self.spacing[::-1]

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        xyz = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
        return ((xyz - self.origin) / self.spacing[::-1])[:, ::-1]


@dataclass
class PhantomCase:
    directory: Path
    files: list[Path]
    truth_path: Path
    phantom: Phantom
    study_instance_uid: str
    series_instance_uid: str


# ----------------------------------------------------------------------------------------------
# geometry helpers


@dataclass
class _Grid:
    """An axis-aligned grid in LPS: index (z, y, x), world = origin + index * spacing."""

    origin: np.ndarray  # x, y, z
    spacing: np.ndarray  # z, y, x
    shape: tuple[int, int, int]

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z = (self.origin[2] + np.arange(self.shape[0]) * self.spacing[0]).astype(np.float32)
        y = (self.origin[1] + np.arange(self.shape[1]) * self.spacing[1]).astype(np.float32)
        x = (self.origin[0] + np.arange(self.shape[2]) * self.spacing[2]).astype(np.float32)
        return z, y, x

    def index(self, xyz: np.ndarray) -> np.ndarray:
        """World (N, 3) -> nearest index (N, 3) zyx, clipped into the grid."""
        zyx = ((np.atleast_2d(xyz) - self.origin) / self.spacing[::-1])[:, ::-1]
        return np.clip(np.rint(zyx).astype(int), 0, np.array(self.shape) - 1)


def _soft(signed_distance_mm: np.ndarray, edge_mm: float) -> np.ndarray:
    """Partial-volume fraction for a surface at distance 0 (positive inside)."""
    return np.clip(signed_distance_mm / edge_mm + 0.5, 0.0, 1.0)


def _segment_distance(px: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of points (..., 3) to segment a-b, and the position t in [0, 1] along it."""
    ab = b - a
    t = np.clip(((px - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    closest = a + t[..., None] * ab
    return np.linalg.norm(px - closest, axis=-1), t


def _draw_tube(
    vol: np.ndarray, grid: _Grid, a: np.ndarray, b: np.ndarray, r0: float, r1: float, value: float,
    *, mode: str = "max", inside: np.ndarray | None = None,
) -> None:
    """Tapered tube a->b (radii r0->r1 mm) painted with partial volume into vol (float32, in place)."""
    rmax = max(r0, r1) + 1.5 * float(grid.spacing.max())
    lo = np.minimum(a, b) - rmax
    hi = np.maximum(a, b) + rmax
    i0 = np.maximum(np.floor(((lo - grid.origin) / grid.spacing[::-1])[::-1]).astype(int), 0)
    i1 = np.minimum(np.ceil(((hi - grid.origin) / grid.spacing[::-1])[::-1]).astype(int) + 1, grid.shape)
    if np.any(i1 <= i0):
        return
    zs = grid.origin[2] + np.arange(i0[0], i1[0]) * grid.spacing[0]
    ys = grid.origin[1] + np.arange(i0[1], i1[1]) * grid.spacing[1]
    xs = grid.origin[0] + np.arange(i0[2], i1[2]) * grid.spacing[2]
    pts = np.stack(np.meshgrid(xs, ys, zs, indexing="ij"), axis=-1).transpose(2, 1, 0, 3)  # (z, y, x, 3)
    dist, t = _segment_distance(pts, a, b)
    frac = _soft(r0 + (r1 - r0) * t - dist, float(grid.spacing[1:].mean()))
    region = (slice(i0[0], i1[0]), slice(i0[1], i1[1]), slice(i0[2], i1[2]))
    if inside is not None:
        frac = frac * inside[region]
    block = vol[region]
    if mode == "max":
        np.maximum(block, block + frac * (value - block) * (value > block), out=block)
    else:  # "set": paint the value over whatever is there (airway lumen)
        block += (frac * (value - block)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# anatomy


@dataclass
class _Anatomy:
    body_a: float
    body_b: float
    cx: float
    cy: float
    fat: float
    muscle: float
    lung_base: float
    lung_height: float
    dome: float


def _render_anatomy(grid: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, float]], _Anatomy]:
    """HU on the coarse grid, the lung label (0 none, 1 right, 2 left) and vessel points (xyz, radius)."""
    z, y, x = grid.axes()
    nz = len(z)
    extent_z = float(z[-1] - z[0])
    fov_x = float(x[-1] - x[0])
    body_a = min(rng.uniform(150, 172), 0.46 * fov_x)
    body_b = body_a * rng.uniform(0.66, 0.76)
    an = _Anatomy(
        body_a=body_a, body_b=body_b,
        cx=float(x.mean() + rng.uniform(-8, 8)), cy=float(y.mean() + rng.uniform(-6, 10)),
        fat=rng.uniform(8, 24) * body_a / 165, muscle=rng.uniform(8, 14) * body_a / 165,
        lung_base=0.0, lung_height=0.0, dome=0.0,
    )
    an.lung_height = min(rng.uniform(215, 260), 0.84 * extent_z)
    an.lung_base = float(z[0] + 0.1 * extent_z + rng.uniform(0, 0.04) * extent_z)
    an.dome = rng.uniform(0.14, 0.2) * an.lung_height

    X = (x - an.cx)[None, :]
    Y = (y - an.cy)[:, None]
    # 2D body layers (the chest is close to a cylinder over the lungs)
    def rho(a: float, b: float) -> np.ndarray:
        return np.sqrt((X / a) ** 2 + (Y / b) ** 2)

    a, b = an.body_a, an.body_b
    plane = np.full((len(y), len(x)), AIR, np.float32)
    plane[rho(a, b) < 1] = 30.0  # skin
    plane[rho(a - 2, b - 2) < 1] = FAT
    t_m = an.fat + 2
    plane[rho(a - t_m, b - t_m) < 1] = MUSCLE
    t_c = t_m + an.muscle
    plane[rho(a - t_c, b - t_c) < 1] = FAT + 30  # intercostal fat and the inner chest wall
    ac, bc = a - t_c - 10, b - t_c - 10  # the pleural cavity
    plane[rho(ac, bc) < 1] = SOFT - 10  # mediastinal soft tissue, lungs are carved out below
    vol = np.broadcast_to(plane, (nz, len(y), len(x))).copy()
    Z = z[:, None, None]

    # lungs: two ellipses inside the cavity, shrinking to the apex, above a domed diaphragm
    t = (Z - an.lung_base) / an.lung_height
    apex = np.sqrt(np.clip(1 - np.clip((t - 0.5) / 0.52, 0, None) ** 2, 0, 1))
    label = np.zeros(vol.shape, np.uint8)
    heart_c = np.array([an.cx + 0.15 * ac, an.cy - 0.3 * bc, an.lung_base + 0.22 * an.lung_height])
    heart_r = np.array([0.38 * ac, 0.45 * bc, 0.3 * an.lung_height])
    for side, sign in ((1, -1.0), (2, 1.0)):  # right lung is at -x (patient right)
        xc = sign * 0.5 * ac
        ar, br = 0.46 * ac, 0.93 * bc
        q = ((X - xc) / ar) ** 2 + ((Y - 0.02 * bc) / br) ** 2
        dome_top = an.lung_base + an.dome * (1.15 if side == 1 else 1.0)
        # the dome is highest in the middle of each hemithorax and falls to the costophrenic angle
        z_dia = an.lung_base + (dome_top - an.lung_base) * np.clip(1 - q, 0, 1) ** 0.7
        spine_cut = (np.abs(X) < 0.2 * ac) & (Y > 0.55 * bc)
        lung = (q[None] < apex ** 2) & (Z > z_dia[None]) & ~spine_cut[None] & (t <= 1.0)
        label[lung] = side
    # heart with its fat rim cuts into the left lung and the front of the right
    hz = ((Z - heart_c[2]) / (heart_r[2] + 4)) ** 2
    hy = ((Y - (heart_c[1] - an.cy)) / (heart_r[1] + 4)) ** 2
    hx = ((X - (heart_c[0] - an.cx)) / (heart_r[0] + 4)) ** 2
    rim = (hz + hy[None] + hx[None]) < 1
    label[rim] = 0
    lung_any = label > 0

    # parenchyma: dependent (posterior) density, smooth texture
    small = tuple(max(4, s // 4) for s in vol.shape)
    texture = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), 1.2)
    texture = _upsample(texture / max(float(texture.std()), 1e-6), vol.shape)
    gradient = (35.0 * np.clip((Y / bc), -1, 1)).astype(np.float32)
    lung_hu = LUNG + gradient[None] + 18.0 * texture
    vol[lung_any] = lung_hu[lung_any]
    del lung_hu, texture

    inner = _rim_mask(Z, Y, X, heart_c, heart_r, an)
    vol[rim & ~inner & ~lung_any] = FAT + 10  # pericardial fat
    vol[inner & ~lung_any] = BLOOD
    # below the diaphragm: liver on the right, stomach with a gas bubble on the left
    cavity = (((X / ac) ** 2 + (Y / bc) ** 2) < 1)[None]
    below = cavity & (Z < an.lung_base + an.dome * 1.1) & ~lung_any
    vol[below & (X < 0.25 * ac)[None]] = LIVER
    vol[below & (X >= 0.25 * ac)[None]] = SOFT
    gas = (((X - 0.55 * ac) / 35) ** 2 + ((Y + 0.3 * bc) / 25) ** 2)[None] + ((Z - (an.lung_base + 0.3 * an.dome)) / 14) ** 2 < 1
    vol[gas & ~lung_any] = AIR

    _draw_spine(vol, grid, an, bc)
    _draw_ribs(vol, grid, an, ac, bc)
    _draw_aorta(vol, grid, an, ac, bc)
    vessels = _draw_lung_trees(vol, grid, an, label, ac, bc, rng)
    return vol, label, vessels, an


def _rim_mask(Z, Y, X, c, r, an: _Anatomy) -> np.ndarray:
    return (((Z - c[2]) / r[2]) ** 2 + (((Y - (c[1] - an.cy)) / r[1]) ** 2)[None] + (((X - (c[0] - an.cx)) / r[0]) ** 2)[None]) < 1


def _upsample(small: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    with torch.no_grad():
        out = torch.nn.functional.interpolate(
            torch.from_numpy(np.ascontiguousarray(small, dtype=np.float32))[None, None],
            size=tuple(int(s) for s in shape), mode="trilinear", align_corners=True,
        )
    return out[0, 0].numpy()


def _draw_spine(vol: np.ndarray, grid: _Grid, an: _Anatomy, bc: float) -> None:
    z, y, x = grid.axes()
    X = (x - an.cx)[None, :]
    Y = (y - an.cy)[:, None]
    ys = bc - 2.0  # vertebral body centre, bulging into the back of the mediastinum
    body_r = np.hypot(X / 19, (Y - ys) / 16)
    canal = np.hypot(X, Y - (ys + 27)) < 8
    arch = (np.hypot(X, Y - (ys + 27)) < 14) & ~canal
    spinous = (np.abs(X) < 4) & (Y > ys + 27) & (Y < an.body_b - an.fat - 6)
    transverse = (np.abs(Y - (ys + 22)) < 5) & (np.abs(X) < 36)
    period = 27.0
    phase = np.mod(z - grid.origin[2], period)
    disc = (phase < 5.5)[:, None, None]
    body_bone = np.where(body_r < 0.85, CANCELLOUS, CORTICAL).astype(np.float32)
    body_mask = (body_r < 1)[None]
    vol[:] = np.where(body_mask & disc, 85.0, np.where(body_mask, body_bone[None], vol))
    posterior = (arch | spinous | transverse)[None] & ~disc
    vol[np.broadcast_to(posterior, vol.shape)] = 650.0
    vol[np.broadcast_to(canal[None], vol.shape)] = 15.0


def _draw_ribs(vol: np.ndarray, grid: _Grid, an: _Anatomy, ac: float, bc: float) -> None:
    z, y, x = grid.axes()
    X = (x - an.cx)[None, :]
    Y = (y - an.cy)[:, None]
    ar, br = ac + 6.0, bc + 6.0
    phi = np.arctan2(X, Y)  # 0 at the spine (posterior), +-pi at the sternum
    ell = np.sqrt((X / ar) ** 2 + (Y / br) ** 2)
    radial = (ell - 1.0) * np.hypot(ar * np.sin(phi), br * np.cos(phi))  # ~mm from the rib line
    shell = (np.abs(radial) < 6) & (np.abs(phi) > 0.3) & (np.abs(phi) < 2.6)
    yy, xx = np.nonzero(shell)
    if yy.size == 0:
        return
    slope = 14.0  # mm per radian: ribs run down towards the front
    u = z[:, None] + slope * np.abs(phi[yy, xx])[None, :]  # (nz, n)
    period = max(an.lung_height / 11.0, 12.0)
    u0 = an.lung_base + 0.55 * an.lung_height - 12 * period + slope * 0.8
    k = np.rint((u - u0) / period)
    dz = u - (u0 + k * period)
    e = np.sqrt((radial[yy, xx][None, :] / 5.0) ** 2 + (dz / 6.0) ** 2)
    inside = (e < 1) & (k >= 0) & (k < 12)
    hu = np.where(e < 0.65, CANCELLOUS + 100, CORTICAL)
    zi, ni = np.nonzero(inside)
    vol[zi, yy[ni], xx[ni]] = hu[zi, ni]
    # sternum in the upper two thirds, in front of the mediastinum
    sternum = (np.abs(X) < 16) & (Y > -bc - 16) & (Y < -bc - 4)
    zmask = (z > an.lung_base + 0.3 * an.lung_height)[:, None, None]
    vol[zmask & sternum[None]] = 400.0


def _draw_aorta(vol: np.ndarray, grid: _Grid, an: _Anatomy, ac: float, bc: float) -> None:
    c = np.array([an.cx, an.cy, 0.0])
    zb, h = an.lung_base, an.lung_height
    p = [
        c + [0.05 * ac, -0.2 * bc, zb + 0.35 * h],  # aortic root above the heart
        c + [0.0, -0.25 * bc, zb + 0.62 * h],
        c + [0.15 * ac, 0.25 * bc, zb + 0.7 * h],  # the arch runs back and to the left
        c + [0.22 * ac, 0.62 * bc, zb + 0.6 * h],
        c + [0.2 * ac, 0.68 * bc, zb - 0.2 * h],  # descending beside the spine
    ]
    for a, b in zip(p[:-1], p[1:]):
        _draw_tube(vol, grid, np.asarray(a, float), np.asarray(b, float), 13.0, 13.0, BLOOD + 5)


def _draw_lung_trees(
    vol: np.ndarray, grid: _Grid, an: _Anatomy, label: np.ndarray, ac: float, bc: float, rng: np.random.Generator
) -> list[tuple[np.ndarray, float]]:
    """Airways from the trachea, and artery/vein trees from each hilum, confined to the lungs."""
    c = np.array([an.cx, an.cy, 0.0])
    zb, h = an.lung_base, an.lung_height
    carina = c + [0.0, 0.15 * bc, zb + 0.62 * h]
    top = c + [0.0, 0.0, float(grid.origin[2] + (grid.shape[0] - 1) * grid.spacing[0]) + 5]
    # trachea: wall then lumen
    _draw_tube(vol, grid, top, carina, 10.5, 10.5, SOFT + 20)
    _draw_tube(vol, grid, top, carina, 8.5, 8.5, AIR, mode="set")
    vessels: list[tuple[np.ndarray, float]] = []
    lung = label > 0
    for side, sign in ((1, -1.0), (2, 1.0)):
        hilum = c + [sign * 0.3 * ac, 0.1 * bc, zb + 0.5 * h]
        _draw_tube(vol, grid, carina, hilum, 7.5, 6.5, SOFT + 20)
        _draw_tube(vol, grid, carina, hilum, 5.5, 4.5, AIR, mode="set")
        inside = (label == side).astype(np.float32)
        # airways: 4 generations, wall drawn only within the lung so they do not cut the mediastinum
        for start, direction, radius in _branches(hilum, sign, 4, 4.5, 30.0, lung, grid, rng):
            a, b = start, start + direction
            _draw_tube(vol, grid, a, b, radius + 1.2, 0.8 * radius + 1.0, SOFT, inside=inside)
            _draw_tube(vol, grid, a, b, radius, 0.8 * radius, AIR, mode="set", inside=inside)
        for offset, r0 in ((np.array([0.0, -8.0, 6.0]), 5.5), (np.array([0.0, 10.0, -14.0]), 5.0)):
            for start, direction, radius in _branches(hilum + offset, sign, 8, r0, 30.0, lung, grid, rng):
                _draw_tube(vol, grid, start, start + direction, radius, 0.8 * radius, BLOOD, inside=inside)
                vessels.append((start + 0.5 * direction, 0.9 * radius))
    return vessels


def _branches(
    root: np.ndarray, sign: float, depth: int, r0: float, length: float, lung: np.ndarray, grid: _Grid,
    rng: np.random.Generator,
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Segments (start, vector, radius) of a random binary tree that grows outwards inside the lung."""
    out: list[tuple[np.ndarray, np.ndarray, float]] = []
    # main directions: lateral, up, down, forward, back from the hilum
    stack = [
        (root, np.array([sign * 0.8, 0.0, 0.6]), r0, length, 0),
        (root, np.array([sign * 0.7, 0.0, -0.7]), r0, length, 0),
        (root, np.array([sign * 0.6, -0.7, -0.1]), r0 * 0.9, length, 0),
        (root, np.array([sign * 0.5, 0.75, -0.3]), r0 * 0.9, length, 0),
    ]
    while stack:
        start, heading, radius, seg_len, gen = stack.pop()
        for _ in range(10):
            d = heading / np.linalg.norm(heading) + rng.normal(0, 0.45, 3)
            d /= np.linalg.norm(d)
            end = start + d * seg_len
            probe = grid.index(np.stack([start + d * seg_len * f for f in (0.5, 1.0)]))
            if gen == 0 or lung[tuple(probe.T)].all():
                break
        else:
            continue
        out.append((start, d * seg_len, radius))
        if gen + 1 < depth and radius > 0.5:
            for _ in range(2 if gen < 2 or rng.random() < 0.7 else 3):
                stack.append((end, d + rng.normal(0, 0.6, 3), radius * 0.76, seg_len * 0.8, gen + 1))
    return out


# ----------------------------------------------------------------------------------------------
# nodules


def _sample_nodule_spec(rng: np.random.Generator) -> dict:
    """Kind, size, margin and label; malignancy follows size, kind and margin as in screening data."""
    kind = str(rng.choice(["solid", "part-solid", "ground-glass"], p=[0.62, 0.2, 0.18]))
    diameter = float(3.0 + 27.0 * rng.beta(1.3, 3.2))
    logit = -3.4 + 0.24 * (diameter - 3.0) + {"solid": 0.0, "part-solid": 1.3, "ground-glass": -0.4}[kind]
    malignant = bool(rng.random() < 1 / (1 + math.exp(-logit)))
    calcified = False
    if malignant:
        margin = "spiculated" if kind != "ground-glass" and rng.random() < 0.75 else "lobulated"
    else:
        margin = "lobulated" if rng.random() < 0.25 else "smooth"
        calcified = kind == "solid" and diameter >= 4 and rng.random() < 0.35
    solid = diameter if kind == "solid" else diameter * rng.uniform(0.3, 0.6) if kind == "part-solid" else 0.0
    attached = rng.choice(["none", "pleura", "vessel"], p=[0.65, 0.2, 0.15])
    return dict(
        kind=kind, diameter_mm=diameter, malignant=malignant, margin=margin, calcified=calcified,
        solid_diameter_mm=float(solid), attached_to=None if attached == "none" else str(attached),
        shape_seed=int(rng.integers(0, 2**31 - 1)),
    )


_DIRECTIONS = np.array(
    [[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)], float
)
_DIRECTIONS /= np.linalg.norm(_DIRECTIONS, axis=1, keepdims=True)


def _exit_distance(center: np.ndarray, inside: np.ndarray, grid: _Grid, limit: float) -> float:
    """Smallest distance (mm) from center to leave `inside`, probing 26 directions up to `limit`."""
    steps = np.arange(0.5, limit + 0.5, 0.75)
    pts = center[None, None, :] + _DIRECTIONS[:, None, :] * steps[None, :, None]
    idx = grid.index(pts.reshape(-1, 3)).T
    ok = inside[tuple(idx)].reshape(len(_DIRECTIONS), len(steps))
    first_out = np.where(ok.all(axis=1), limit + 1, steps[np.argmin(ok, axis=1)])
    return float(first_out.min())


def _place_nodules(
    specs: list[dict], inside: np.ndarray, grid: _Grid, vessels: list[tuple[np.ndarray, float]],
    rng: np.random.Generator, lung: np.ndarray | None = None,
) -> list[PhantomNodule]:
    """Centres in the lung, at the pleura or on a vessel as the spec asks, not overlapping.

    `inside` is aerated lung (free of vessels and airways); `lung` the whole lung, against which a
    vessel-attached nodule's clearance is measured (its own vessel is not an obstacle).
    """
    lung = inside if lung is None else lung
    placed: list[PhantomNodule] = []
    candidates = np.argwhere(inside)
    if candidates.size == 0:
        raise ValueError("no lung voxels to place nodules in")
    result: list[PhantomNodule] = []
    for spec in specs:
        radius = spec["diameter_mm"] / 2
        lung_vessels = [v for v in vessels if v[1] > 1.0]
        for attempt in range(400):
            if attempt == 300:  # crowded or small lungs: shrink rather than give up
                spec = {**spec, "diameter_mm": max(3.0, spec["diameter_mm"] * 0.6)}
                spec["solid_diameter_mm"] = min(spec["solid_diameter_mm"], spec["diameter_mm"])
                radius = spec["diameter_mm"] / 2
            if spec["attached_to"] == "vessel" and lung_vessels:
                point, vr = lung_vessels[int(rng.integers(len(lung_vessels)))]
                offset = rng.normal(size=3)
                offset /= np.linalg.norm(offset)
                center = point + offset * (0.75 * radius + 0.5 * vr)
            else:
                center = grid.origin + (candidates[int(rng.integers(len(candidates)))][::-1] + rng.uniform(-0.5, 0.5, 3)) * grid.spacing[::-1]
            on_vessel = spec["attached_to"] == "vessel" and bool(lung_vessels)
            idx = tuple(grid.index(center)[0])
            if not (lung if on_vessel else inside)[idx]:
                continue
            clearance = _exit_distance(center, lung if on_vessel else inside, grid, radius + 3)
            if spec["attached_to"] == "pleura":
                if not (0.55 * radius <= clearance <= max(radius, 1.6)):
                    continue
            elif clearance < radius + 1.5:
                continue
            if any(np.linalg.norm(center - np.array(p.center_mm)) < radius + p.diameter_mm / 2 + 6 for p in placed):
                continue
            nodule = PhantomNodule(center_mm=tuple(float(c) for c in center), **spec)  # type: ignore[arg-type]
            placed.append(nodule)
            result.append(nodule)
            break
        else:
            log.warning("could not place a %.1f mm %s nodule; skipped", spec["diameter_mm"], spec["kind"])
    return result


def paint_nodule(hu: np.ndarray, origin: np.ndarray, spacing: np.ndarray, direction: np.ndarray, nodule: PhantomNodule) -> None:
    """Draw one nodule into an HU array (float or int, (z, y, x), in place) with the given geometry."""
    rng = np.random.default_rng(nodule.shape_seed)
    radius = nodule.diameter_mm / 2
    n_lobes = int(rng.integers(3, 7))
    lobe_dirs = rng.normal(size=(n_lobes, 3))
    lobe_dirs /= np.linalg.norm(lobe_dirs, axis=1, keepdims=True)
    lobe_amp = rng.uniform(0.08, 0.18, n_lobes) if nodule.margin != "smooth" else rng.uniform(0.0, 0.04, n_lobes)
    spikes: list[tuple[np.ndarray, float, float]] = []
    if nodule.margin == "spiculated":
        for _ in range(int(rng.integers(6, 14))):
            d = rng.normal(size=3)
            spikes.append((d / np.linalg.norm(d), radius * rng.uniform(0.6, 1.3) + 2.0, max(0.7, 0.16 * radius)))
    reach = radius * (1 + lobe_amp.sum()) + max((s[1] for s in spikes), default=0.0) + 2.0

    center = np.asarray(nodule.center_mm, float)
    # bounding box in voxel space of this array's geometry
    corners = center + np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)]) * reach
    ijk = ((corners - origin) @ direction) / spacing[::-1]
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)[::-1]
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.array(hu.shape)[::-1])[::-1]
    if np.any(hi <= lo):
        return
    zz, yy, xx = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij")
    ijk_mm = np.stack([xx, yy, zz], axis=-1) * spacing[::-1]
    offset = (origin + ijk_mm @ direction.T - center).astype(np.float32)
    dist = np.linalg.norm(offset, axis=-1)
    unit = offset / np.maximum(dist, 1e-3)[..., None]
    surface = radius * (1 + (lobe_amp * np.exp(4.0 * (unit @ lobe_dirs.T - 1))).sum(axis=-1))
    edge = float(max(0.6, spacing[1:].mean()))
    outer = _soft(surface - dist, edge)
    core = np.zeros_like(outer)
    if nodule.kind == "solid":
        core = outer
    elif nodule.kind == "part-solid":
        core = _soft(surface * (nodule.solid_diameter_mm / nodule.diameter_mm) - dist, edge)
    for axis_dir, length, base in spikes:
        d_axis, t = _segment_distance(offset, axis_dir * radius * 0.7, axis_dir * (radius * 0.7 + length))
        spike = _soft(base * (1 - t) + 0.3 - d_axis, edge)
        core = np.maximum(core, spike)
        outer = np.maximum(outer, spike)
    texture = rng.normal(0, 1, outer.shape).astype(np.float32)
    region = tuple(slice(a, b) for a, b in zip(lo, hi))
    block = hu[region].astype(np.float32)
    ggo_hu = float(rng.uniform(-650, -500)) + 25 * texture
    solid_hu = float(rng.uniform(15, 55)) + 10 * texture
    target = np.where(core > 0, solid_hu, ggo_hu)
    frac = np.maximum(core, outer * (nodule.kind != "solid"))
    if nodule.calcified:
        calc = _soft(surface * rng.uniform(0.3, 0.6) - dist, edge)
        target = target + calc * (float(rng.uniform(250, 500)) - target)
    painted = np.maximum(block, block + frac * (target - block))
    hu[region] = painted.astype(hu.dtype) if np.issubdtype(hu.dtype, np.integer) else painted


# ----------------------------------------------------------------------------------------------
# public API


def make_phantom(
    seed: int,
    *,
    small: bool = False,
    matrix: int | None = None,
    n_slices: int | None = None,
    pixel_spacing_mm: float | None = None,
    slice_spacing_mm: float | None = None,
    slice_thickness_mm: float | None = None,
    patient_position: Literal["HFS", "FFS"] | None = None,
    origin_offset_mm: Sequence[float] | None = None,
    n_nodules: int | None = None,
) -> Phantom:
    """A synthetic chest CT. Unset options are drawn from the seed; `small` gives 256x256x~100 at coarse spacing."""
    rng = np.random.default_rng(seed)
    matrix = matrix or (256 if small else 512)
    if matrix < 64:
        raise ValueError(f"matrix {matrix} is too small for a chest phantom (64 or more)")
    if pixel_spacing_mm is None:
        fov = rng.uniform(330, 400)
        pixel_spacing_mm = fov / matrix
    if slice_spacing_mm is None:
        slice_spacing_mm = float(rng.choice([2.5, 3.0]) if small else rng.choice([0.625, 1.0, 1.25, 1.25, 1.5, 2.0, 2.5]))
    if n_slices is None:
        coverage = rng.uniform(280, 320)
        n_slices = int(round(coverage / slice_spacing_mm))
    if n_slices < 8:
        raise ValueError(f"n_slices {n_slices} is too few for a chest phantom (8 or more)")
    thickness = float(slice_thickness_mm or slice_spacing_mm)
    position = patient_position or str(rng.choice(["HFS", "FFS"], p=[0.8, 0.2]))
    if position not in ("HFS", "FFS"):
        raise ValueError(f"patient_position must be HFS or FFS, not {position!r}")
    offset = np.asarray(origin_offset_mm, float) if origin_offset_mm is not None else np.array(
        [rng.uniform(-20, 20), rng.uniform(-30, 10), rng.uniform(-400, -100)]
    )
    fov = matrix * pixel_spacing_mm
    origin = np.array([-fov / 2 + pixel_spacing_mm / 2 + offset[0], -fov / 2 + pixel_spacing_mm / 2 + offset[1], offset[2]])
    spacing = np.array([slice_spacing_mm, pixel_spacing_mm, pixel_spacing_mm], float)
    shape = (n_slices, matrix, matrix)
    fine = _Grid(origin=origin, spacing=spacing, shape=shape)

    # coarse grid with the same corners, so align_corners trilinear upsampling maps exactly
    coarse_shape = tuple(
        max(2, min(n, int(math.ceil((n - 1) * s / _COARSE_MM)) + 1)) for n, s in zip(shape, spacing)
    )
    coarse_spacing = np.array([(n - 1) * s / (c - 1) for n, s, c in zip(shape, spacing, coarse_shape)])
    coarse = _Grid(origin=origin, spacing=coarse_spacing, shape=coarse_shape)  # type: ignore[arg-type]
    vol, label, vessels, anatomy = _render_anatomy(coarse, rng)

    # nodules stay whole inside the scanned range and inside the lung (not in a big vessel or airway)
    inside = (label > 0) & (vol < -600)
    specs = [_sample_nodule_spec(rng) for _ in range(int(rng.integers(1, 7)) if n_nodules is None else n_nodules)]
    nodules = _place_nodules(specs, inside, coarse, vessels, rng, lung=label > 0)

    hu = _upsample(vol, shape)
    del vol
    for nodule in nodules:
        paint_nodule(hu, origin, spacing, np.eye(3), nodule)
    _add_noise(hu, rng)
    np.rint(hu, out=hu)
    np.clip(hu, -1024, 3071, out=hu)
    return Phantom(
        hu=hu.astype(np.int16), origin=origin, spacing=spacing, slice_thickness_mm=thickness,
        patient_position=position, nodules=nodules, seed=seed,  # type: ignore[arg-type]
    )


def _add_noise(hu: np.ndarray, rng: np.random.Generator) -> None:
    """Correlated Gaussian noise (~20 HU sd) from a pool of planes, rolled differently per slice."""
    n, rows, cols = hu.shape
    pool = rng.standard_normal((min(8, n), rows, cols), dtype=np.float32)
    pool = ndimage.gaussian_filter(pool, (0, 0.6, 0.6))
    pool *= _NOISE_SD / float(pool.std())
    shifts = rng.integers(0, max(rows, cols), size=(n, 2))
    for k in range(n):
        hu[k] += np.roll(pool[k % len(pool)], tuple(shifts[k]), axis=(0, 1))


def insert_nodules(
    volume: Volume, lung_mask: np.ndarray, nodules: int | Sequence[PhantomNodule], rng: np.random.Generator
) -> list[PhantomNodule]:
    """Paint phantom nodules into a real CT (volume.hu, in place) inside `lung_mask` ((z, y, x) like volume.hu).

    `nodules` is either a count (random nodules at random lung positions) or explicit nodules whose
    centres must lie inside the mask. Returns the nodules painted, with world centres.
    """
    if lung_mask.shape != volume.hu.shape:
        raise ValueError(f"lung mask shape {lung_mask.shape} differs from the volume {volume.hu.shape}")
    if isinstance(nodules, int):
        if not np.array_equal(np.abs(volume.direction), np.eye(3)):
            raise ValueError("random placement needs an axis-aligned volume; pass explicit nodules instead")
        # place on an axis-aligned grid view of the volume (flip axes whose direction is negative)
        flips = np.diag(volume.direction) < 0
        view = lung_mask[tuple(slice(None, None, -1) if f else slice(None) for f in flips[::-1])]
        corner = volume.voxel_to_world(np.array([[0 if not flips[2] else volume.shape[0] - 1,
                                                   0 if not flips[1] else volume.shape[1] - 1,
                                                   0 if not flips[0] else volume.shape[2] - 1]]))[0]
        grid = _Grid(origin=corner, spacing=volume.spacing, shape=lung_mask.shape)
        inside = view & (_as_view(volume.hu, flips) < -600)
        specs = [_sample_nodule_spec(rng) for _ in range(nodules)]
        for s in specs:
            if s["attached_to"] == "vessel":  # no vessel tree is known in a real scan
                s["attached_to"] = None
        placed = _place_nodules(specs, inside, grid, [], rng)
    else:
        placed = list(nodules)
        for nodule in placed:
            idx = np.rint(volume.world_to_voxel(np.asarray(nodule.center_mm))).astype(int)
            if np.any(idx < 0) or np.any(idx >= np.array(volume.shape)) or not lung_mask[tuple(idx)]:
                raise ValueError(f"nodule centre {nodule.center_mm} is not inside the lung mask")
    for nodule in placed:
        paint_nodule(volume.hu, volume.origin, volume.spacing, volume.direction, nodule)
    return placed


def _as_view(array: np.ndarray, flips: np.ndarray) -> np.ndarray:
    return array[tuple(slice(None, None, -1) if f else slice(None) for f in flips[::-1])]


# ----------------------------------------------------------------------------------------------
# DICOM


def _uid(seed: int, *parts: object) -> str:
    return generate_uid(entropy_srcs=["dicomnode-phantom", str(seed), *map(str, parts)])


def write_phantom_series(out_dir: str | Path, seed: int, **options: object) -> PhantomCase:
    """Write the phantom of `seed` (make_phantom options) as one CT Image Storage file per slice, plus truth.json.

    HFS series use ImageOrientationPatient 1\\0\\0\\0\\1\\0 and number instances from the head; FFS ones use
    -1\\0\\0\\0\\1\\0 and number from the feet, as scanners do. `fov_padding=True` marks pixels outside the
    reconstruction circle with PixelPaddingValue -2000.
    """
    fov_padding = bool(options.pop("fov_padding", False))
    phantom = make_phantom(seed, **options)  # type: ignore[arg-type]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = json.dumps(options, sort_keys=True, default=str)
    study_uid, series_uid, frame_uid = (_uid(seed, key, part) for part in ("study", "series", "frame"))
    prng = np.random.default_rng(seed + 7919)
    sex = str(prng.choice(["M", "F"]))
    age = int(prng.integers(50, 80))
    study_day = date(2024, 1, 1) + timedelta(days=int(prng.integers(0, 365)))
    birth = date(study_day.year - age, int(prng.integers(1, 13)), int(prng.integers(1, 29)))
    if (birth.month, birth.day) > (study_day.month, study_day.day):
        age -= 1

    n, rows, cols = phantom.hu.shape
    ffs = phantom.patient_position == "FFS"
    ps = float(phantom.spacing[1])
    intercept = -1024.0
    stored = (phantom.hu.astype(np.int32) - int(intercept)).astype(np.int16)
    if fov_padding:
        yy, xx = np.ogrid[:rows, :cols]
        outside = (yy - (rows - 1) / 2) ** 2 + (xx - (cols - 1) / 2) ** 2 > (min(rows, cols) / 2) ** 2
        stored[:, outside] = -2000
    z_order = np.arange(n) if ffs else np.arange(n)[::-1]  # instance 1 is the first slice scanned
    files = []
    for instance, k in enumerate(z_order, start=1):
        z = float(phantom.origin[2] + k * phantom.spacing[0])
        if ffs:
            iop = [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ipp = [float(phantom.origin[0] + (cols - 1) * ps), float(phantom.origin[1]), z]
            pixels = stored[k, :, ::-1]
        else:
            iop = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ipp = [float(phantom.origin[0]), float(phantom.origin[1]), z]
            pixels = stored[k]
        ds = _slice_dataset(
            seed=seed, key=key, instance=instance, pixels=np.ascontiguousarray(pixels), iop=iop, ipp=ipp,
            phantom=phantom, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, sex=sex, age=age,
            birth=birth, study_day=study_day, intercept=intercept, padding=fov_padding,
        )
        path = out / f"CT{instance:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    truth = {
        "seed": seed,
        "options": json.loads(key),
        "study_instance_uid": study_uid,
        "series_instance_uid": series_uid,
        "patient_position": phantom.patient_position,
        "shape_zyx": list(phantom.hu.shape),
        "origin_lps_mm": [round(float(v), 4) for v in phantom.origin],
        "spacing_zyx_mm": [round(float(v), 5) for v in phantom.spacing],
        "nodules": [nd.to_json() for nd in phantom.nodules],
    }
    truth_path = out / "truth.json"
    truth_path.write_text(json.dumps(truth, indent=2))
    return PhantomCase(out, files, truth_path, phantom, study_uid, series_uid)


def _slice_dataset(
    *, seed: int, key: str, instance: int, pixels: np.ndarray, iop: list[float], ipp: list[float], phantom: Phantom,
    study_uid: str, series_uid: str, frame_uid: str, sex: str, age: int, birth: date, study_day: date,
    intercept: float, padding: bool,
) -> Dataset:
    sop_uid = _uid(seed, key, "instance", instance)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    day = study_day.strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = day
    ds.StudyTime = "093000"
    ds.SeriesTime = "093100"
    ds.AcquisitionTime = ds.ContentTime = f"0931{min(instance, 5999) // 100:02d}"
    ds.AccessionNumber = f"PH{seed:08d}"
    ds.Modality = "CT"
    ds.Manufacturer = "dicomnode phantom"
    ds.ManufacturerModelName = "synthetic chest"
    ds.SoftwareVersions = "1"
    ds.InstitutionName = "Synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT CHEST LOW DOSE SCREENING (PHANTOM)"
    ds.SeriesDescription = f"Phantom chest {phantom.spacing[0]:g} mm"
    ds.PatientName = f"Phantom^{seed}"
    ds.PatientID = f"PHANTOM-{seed:06d}"
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = f"{phantom.slice_thickness_mm:g}"
    ds.KVP = "120"
    ds.DataCollectionDiameter = f"{phantom.hu.shape[2] * phantom.spacing[2]:.1f}"
    ds.ReconstructionDiameter = f"{phantom.hu.shape[2] * phantom.spacing[2]:.1f}"
    ds.PatientPosition = phantom.patient_position
    ds.ConvolutionKernel = "STANDARD"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"{seed % 100000}"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
    ds.ImageOrientationPatient = [f"{v:g}" for v in iop]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{ipp[2]:.4f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ps = f"{phantom.spacing[1]:.6g}"
    ds.PixelSpacing = [ps, ps]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if padding:
        ds.PixelPaddingValue = -2000
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = pixels.astype("<i2").tobytes()
    return ds
