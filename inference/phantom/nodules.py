"""Nodules (solid, part-solid, ground-glass; some on the pleura or a vessel): sampled, placed, painted.

`_sample_nodule_spec` draws kind, size, margin and malignancy; `_place_nodules` finds centres in the
lung that do not overlap; `paint_nodule` draws one nodule at full resolution into any HU array.
"""
from __future__ import annotations

import logging
import math
from typing import NamedTuple, TypedDict

import numpy as np

from inference.phantom.drawing import _Grid, _segment_distance, _soft
from inference.phantom.model import Attachment, NoduleKind, NoduleMargin, PhantomNodule

log = logging.getLogger(__name__)

# The values drawn by name, each mapped to its typed value (the draw order is the key order).
_KINDS: dict[str, NoduleKind] = {"solid": "solid", "part-solid": "part-solid", "ground-glass": "ground-glass"}
_ATTACHMENTS: dict[str, Attachment] = {"none": None, "pleura": "pleura", "vessel": "vessel"}


class _NoduleSpec(TypedDict):
    """A sampled nodule before placement: PhantomNodule's fields less its centre."""

    kind: NoduleKind
    diameter_mm: float
    malignant: bool
    margin: NoduleMargin
    calcified: bool
    solid_diameter_mm: float
    attached_to: Attachment
    shape_seed: int


def _sample_nodule_spec(rng: np.random.Generator) -> _NoduleSpec:
    """Kind, size, margin and label; malignancy follows size, kind and margin as in screening data."""
    kind = _KINDS[str(rng.choice(list(_KINDS), p=[0.62, 0.2, 0.18]))]
    diameter = float(3.0 + 27.0 * rng.beta(1.3, 3.2))
    logit = -3.4 + 0.24 * (diameter - 3.0) + {"solid": 0.0, "part-solid": 1.3, "ground-glass": -0.4}[kind]
    malignant = bool(rng.random() < 1 / (1 + math.exp(-logit)))
    calcified = False
    margin: NoduleMargin
    if malignant:
        margin = "spiculated" if kind != "ground-glass" and rng.random() < 0.75 else "lobulated"
    else:
        margin = "lobulated" if rng.random() < 0.25 else "smooth"
        calcified = kind == "solid" and diameter >= 4 and rng.random() < 0.35
    solid = diameter if kind == "solid" else diameter * rng.uniform(0.3, 0.6) if kind == "part-solid" else 0.0
    attached = _ATTACHMENTS[str(rng.choice(list(_ATTACHMENTS), p=[0.65, 0.2, 0.15]))]
    return _NoduleSpec(
        kind=kind, diameter_mm=diameter, malignant=malignant, margin=margin, calcified=calcified,
        solid_diameter_mm=float(solid), attached_to=attached,
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
    specs: list[_NoduleSpec], inside: np.ndarray, grid: _Grid, vessels: list[tuple[np.ndarray, float]],
    rng: np.random.Generator, lung: np.ndarray | None = None,
) -> list[PhantomNodule]:
    """Centres in the lung, at the pleura or on a vessel as the spec asks, not overlapping.

    `inside` is aerated lung (free of vessels and airways); `lung` the whole lung, against which a
    vessel-attached nodule's clearance is measured (its own vessel is not an obstacle).
    A "pleura" nodule's clearance is measured against `inside` too, so the structure it abuts is the
    nearest non-aerated one: the chest wall or mediastinum, but as often a vessel or an airway deep in
    the lung (14 of 24 on seeds 14000..14039). Kept as it is, since every phantom (and the figures
    measured on them) depends on it; inference.training.characterize_eval judges the site from the
    painting instead.
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
            nodule = PhantomNodule(center_mm=(float(center[0]), float(center[1]), float(center[2])), **spec)
            placed.append(nodule)
            result.append(nodule)
            break
        else:
            log.warning("could not place a %.1f mm %s nodule; skipped", spec["diameter_mm"], spec["kind"])
    return result


class _Shape(NamedTuple):
    lo: np.ndarray
    hi: np.ndarray
    outer: np.ndarray
    core: np.ndarray
    dist: np.ndarray
    edge: float
    surface: np.ndarray


def edge_mm(spacing: np.ndarray) -> float:
    """Width of a painted surface's partial-volume ramp on a grid of `spacing` (z, y, x): at least 0.6 mm, else the
    in-plane pixel."""
    return float(max(0.6, np.asarray(spacing, float)[1:].mean()))


def painted_solid_diameter_mm(nodule: PhantomNodule, spacing: np.ndarray) -> float:
    """Diameter of the nodule's solid part as painted on a grid of `spacing` (z, y, x): a solid nodule's whole, blended
    into the lung by its partial volume (`solid_diameter_mm`); a part-solid nodule's core `solid_diameter_mm` plus the
    ramp width `edge_mm`, because `paint_nodule` paints solid tissue wherever the core's ramp is above 0 (the core is
    not blended into its ground glass, so its solid part reaches half a ramp beyond the core's surface); 0 for
    ground glass. Lobes of the core are not counted."""
    if nodule.kind == "part-solid":
        return nodule.solid_diameter_mm + edge_mm(spacing)
    return nodule.solid_diameter_mm if nodule.kind == "solid" else 0.0


def _nodule_shape(
    rng: np.random.Generator, origin: np.ndarray, spacing: np.ndarray, direction: np.ndarray,
    shape: tuple[int, ...], nodule: PhantomNodule,
) -> _Shape | None:
    """Partial-volume fractions of one nodule on a grid: (lo, hi) index box, `outer` (whole nodule),
    `core` (solid part), `dist`/`surface` (mm) for the calcification; None when outside the grid.
    Draws the lobes and spicules from `rng` (the nodule's own generator)."""
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
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.array(shape)[::-1])[::-1]
    if np.any(hi <= lo):
        return None
    zz, yy, xx = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij")
    ijk_mm = np.stack([xx, yy, zz], axis=-1) * spacing[::-1]
    offset = (origin + ijk_mm @ direction.T - center).astype(np.float32)
    dist = np.linalg.norm(offset, axis=-1)
    unit = offset / np.maximum(dist, 1e-3)[..., None]
    surface = radius * (1 + (lobe_amp * np.exp(4.0 * (unit @ lobe_dirs.T - 1))).sum(axis=-1))
    edge = edge_mm(spacing)
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
    return _Shape(lo, hi, outer, core, dist, edge, surface)


def nodule_fractions(nodule: PhantomNodule, origin: np.ndarray, spacing: np.ndarray, direction: np.ndarray,
                     shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The nodule's partial-volume fractions on a grid (`origin`, `spacing` (z, y, x), `direction`, `shape`): the whole
    nodule and its core (the solid part: a solid nodule's whole), each of `shape` (zero where it does not reach), drawn
    as `paint_nodule` draws them (lobes and spicules included)."""
    outer = np.zeros(shape, np.float32)
    core = np.zeros(shape, np.float32)
    found = _nodule_shape(np.random.default_rng(nodule.shape_seed), origin, spacing, direction, shape, nodule)
    if found is not None:
        region = tuple(slice(a, b) for a, b in zip(found.lo, found.hi))
        outer[region], core[region] = found.outer, found.core
    return outer, core


def reach_mm(nodule: PhantomNodule) -> float:
    """Half the side of a box round the nodule's centre that holds all of its painting: its lobes (up to 1.6 x its
    radius) and spicules."""
    radius = nodule.diameter_mm / 2
    return radius * 1.6 + (radius * 1.3 + 2.0 if nodule.margin == "spiculated" else 0.0) + 2.0


def nodule_volume_mm3(nodule: PhantomNodule, voxel_mm: float = 0.25) -> float:
    """The true volume of a painted nodule (lobes and spicules included), from its shape on a fine grid:
    the truth a follow-up's growth is measured against (independent of any scan's voxels)."""
    half = reach_mm(nodule)
    n = int(np.ceil(2 * half / voxel_mm)) + 1
    centre = np.asarray(nodule.center_mm, float)
    origin = centre - half
    spacing = np.full(3, voxel_mm)
    found = _nodule_shape(np.random.default_rng(nodule.shape_seed), origin, spacing, np.eye(3), (n, n, n), nodule)
    if found is None:
        return 0.0
    return float(found.outer.sum()) * voxel_mm**3


def paint_nodule(hu: np.ndarray, origin: np.ndarray, spacing: np.ndarray, direction: np.ndarray, nodule: PhantomNodule) -> None:
    """Draw one nodule into an HU array (float or int, (z, y, x), in place) with the given geometry."""
    rng = np.random.default_rng(nodule.shape_seed)
    found = _nodule_shape(rng, origin, spacing, direction, hu.shape, nodule)
    if found is None:
        return
    lo, hi, outer, core, dist, edge, surface = found
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
