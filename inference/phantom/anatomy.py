"""The chest on the coarse grid: body with skin, fat and muscle, ribs, spine, sternum, heart,
aorta, mediastinum, two lungs with texture, branching vessel trees, airways, diaphragm with liver
and stomach. Everything is drawn from the seed's random generator, so it is deterministic by seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.phantom.drawing import _draw_tube, _Grid, _upsample
from inference.phantom.model import AIR, BLOOD, CANCELLOUS, CORTICAL, FAT, LIVER, LUNG, MUSCLE, SOFT


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


def _rim_mask(Z: np.ndarray, Y: np.ndarray, X: np.ndarray, c: np.ndarray, r: np.ndarray, an: _Anatomy) -> np.ndarray:
    return (((Z - c[2]) / r[2]) ** 2 + (((Y - (c[1] - an.cy)) / r[1]) ** 2)[None] + (((X - (c[0] - an.cx)) / r[0]) ** 2)[None]) < 1



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
