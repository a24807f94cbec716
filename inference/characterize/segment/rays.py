"""Rays from a nodule's centre: where a mask is left along 256 directions, and the centre of its thick part."""
from __future__ import annotations

import numpy as np

from inference.characterize.segment.masks import component_at, equivalent_radius, opening_mm


def _fibonacci_sphere(n: int) -> np.ndarray:
    """n nearly uniform unit vectors (z, y, x)."""
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = np.pi * (1 + 5 ** 0.5) * k
    r = np.sqrt(1 - z ** 2)
    return np.stack([z, r * np.sin(phi), r * np.cos(phi)], axis=1)


RAYS = _fibonacci_sphere(256)


def ray_radii(mask: np.ndarray, centre: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Where `mask` is first left (mm) along each of 256 rays (`RAYS`) from `centre`."""
    reach = float(np.max(np.array(mask.shape) * spacing))
    steps = np.arange(0.0, reach, 0.25 * float(spacing.min()))
    pts = centre[None, None, :] + RAYS[:, None, :] * steps[None, :, None] / spacing
    idx = np.rint(pts).astype(int)
    valid = np.all((idx >= 0) & (idx < np.array(mask.shape)), axis=-1)
    idx = np.clip(idx, 0, np.array(mask.shape) - 1)
    inside = mask[idx[..., 0], idx[..., 1], idx[..., 2]] & valid
    first_out = np.argmin(inside, axis=1)
    first_out[inside.all(axis=1)] = len(steps) - 1
    return np.asarray(steps[first_out], float)


def ray_radius(mask: np.ndarray, centre: np.ndarray, spacing: np.ndarray, quantile: float = 50.0) -> float:
    """The nodule's own radius (mm): the median (or `quantile`) over 256 rays from `centre` of where `mask` is left.

    A vessel or the wall lengthens only the rays that run into it, so the median stays the nodule's.
    """
    return float(np.percentile(ray_radii(mask, centre, spacing), quantile))


def body_centre(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The centre (voxel index) of the mask's thick part: an opening by half its equivalent radius drops what a
    vessel adds at its side, so the centre does not drift towards the vessel."""
    r_eq = equivalent_radius(mask, spacing)
    body = opening_mm(mask, 0.5 * r_eq, spacing)
    body = component_at(body, np.argwhere(mask).mean(axis=0), spacing, r_eq) if body.any() else body
    return np.asarray(np.argwhere(body if body.any() else mask).mean(axis=0), float)


def ray_ends(shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray, spacing: np.ndarray,
              inside: bool = False) -> np.ndarray:
    """The voxel (index, clipped to the array) just past where each ray of `RAYS` leaves the mask (`inside`: the last
    one before it leaves)."""
    step = -0.5 if inside else 0.5
    ends = centre[None, :] + RAYS * np.maximum(radii[:, None] + step * float(spacing.min()), 0.0) / spacing
    return np.clip(np.rint(ends).astype(int), 0, np.array(shape) - 1)
