"""Geometry helpers: the grid, partial-volume edges, tubes, and the trilinear upsampling.

The anatomy is drawn on a coarse grid (about 1.5 mm) and upsampled trilinearly (which also gives
the scanner blur); `_Grid` maps between LPS mm and grid indices, `_draw_tube` paints vessels,
airways and the aorta with partial volume.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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
        return np.minimum(np.maximum(np.rint(zyx).astype(int), 0), np.array(self.shape) - 1)


# The helpers below run for every one of the thousands of tube segments of a phantom: np.clip and
# np.linalg.norm are spelled out as the ufuncs they call (the same values, without their per-call overhead).
def _unit_clip(values: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(values, 0.0), 1.0)


def _soft(signed_distance_mm: np.ndarray, edge_mm: float) -> np.ndarray:
    """Partial-volume fraction for a surface at distance 0 (positive inside)."""
    return _unit_clip(signed_distance_mm / edge_mm + 0.5)


def _segment_distance(px: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of points (..., 3) to segment a-b, and the position t in [0, 1] along it."""
    ab = b - a
    t = _unit_clip(((px - a) @ ab) / max(float(ab @ ab), 1e-9))
    off = px - (a + t[..., None] * ab)
    return np.sqrt(np.add.reduce(off * off, axis=-1)), t


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
    pts = np.empty((len(xs), len(ys), len(zs), 3))  # x, y, z: what np.meshgrid(xs, ys, zs, indexing="ij") stacks
    pts[..., 0], pts[..., 1], pts[..., 2] = xs[:, None, None], ys[None, :, None], zs
    pts = pts.transpose(2, 1, 0, 3)  # (z, y, x, 3)
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


def _upsample(small: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    with torch.no_grad():
        out = torch.nn.functional.interpolate(
            torch.from_numpy(np.ascontiguousarray(small, dtype=np.float32))[None, None],
            size=tuple(int(s) for s in shape), mode="trilinear", align_corners=True,
        )
    return out[0, 0].numpy()
