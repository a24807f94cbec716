"""The axes of a phantom nodule as painted: the truth its measured long axis, short axis and mean diameter are
scored against.

The generator's `diameter_mm` is its core's size before lobes and spicules; the painted outline is larger (by 0.17 mm
in mean diameter on smooth solid nodules, 1.08 mm on lobulated ones: docs/characterization.md, "Forty-seventh
session"). So the truth is taken from the painting itself, as a reader would measure it on the scan: on each of the
scan's axial slices the nodule's fraction is drawn on a fine grid (`STEP_MM`), kept where the scan counts it in the
lungs (`inside`, the evaluation's truth region, at the scan's pixels), and outlined where it crosses 0.5; the slice
whose outline has the longest long axis gives the axes (`measure.outline_axes`: the longest diameter and the longest
chord perpendicular to it), as the measurement picks its slice. A part-solid nodule's solid part is its core's
outline widened by the scan's ramp (`nodules.painted_solid_diameter_mm`: the painter paints solid tissue wherever the
core's ramp is above 0); where no slice crosses its core at half, `nodules.painted_solid_diameter_mm`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from inference.characterize.measure import outline_axes
from inference.clinical.types import round_half_up
from inference.phantom.model import Phantom, PhantomNodule
from inference.phantom.nodules import edge_mm, nodule_fractions, painted_solid_diameter_mm, reach_mm

STEP_MM = 0.1  # the fine grid's pixel: the outline within a few hundredths of a mm
MAX_SIDE = 400  # ... coarser for the largest spiculated nodules, to keep a plane under 400 x 400 pixels


@dataclass(frozen=True)
class PaintedAxes:
    long_mm: float
    short_mm: float
    solid_long_mm: float  # the solid part's (a solid nodule's: its whole; 0 for ground glass)
    solid_short_mm: float

    @property
    def mean_mm(self) -> float:
        """The Lung-RADS mean diameter, to one decimal (of the axes to two: a truth finer than a reading)."""
        return _mean(self.long_mm, self.short_mm)

    @property
    def solid_mean_mm(self) -> float:
        return _mean(self.solid_long_mm, self.solid_short_mm)


def _mean(long_mm: float, short_mm: float) -> float:
    return round_half_up((long_mm + short_mm) / 2, 1)


def painted_axes(phantom: Phantom, inside: np.ndarray | None, nodule: PhantomNodule) -> PaintedAxes:
    """The painted nodule's axes on `phantom`'s axial slices, kept to `inside` (bool, the phantom's grid; None: all of
    the painting)."""
    spacing = np.asarray(phantom.spacing, float)
    direction = np.asarray(phantom.direction, float)
    # the centre as a fractional voxel index (x, y, z), by the mapping the painter uses: world = origin + ijk_mm @ D.T
    cx, cy, cz = ((np.asarray(nodule.center_mm, float) - phantom.origin) @ direction) / spacing[::-1]
    half = reach_mm(nodule)
    step = max(STEP_MM, 2 * half / MAX_SIDE)
    side = int(math.ceil(2 * half / step)) + 1
    x0, y0 = cx - half / spacing[2], cy - half / spacing[1]
    # the scan's pixel under each fine pixel (nearest), for `inside`
    ys = np.rint(y0 + np.arange(side) * step / spacing[1]).astype(int)
    xs = np.rint(x0 + np.arange(side) * step / spacing[2]).astype(int)
    shape = phantom.hu.shape
    in_y = (ys >= 0) & (ys < shape[1])
    in_x = (xs >= 0) & (xs < shape[2])
    fine = np.array([spacing[0], step, step])
    pixel = np.array([step, step])
    best = (0.0, 0.0)
    best_solid = (0.0, 0.0)
    first = max(int(math.ceil(cz - half / spacing[0])), 0)
    last = min(int(math.floor(cz + half / spacing[0])), shape[0] - 1)
    for k in range(first, last + 1):
        origin = phantom.origin + np.array([x0 * spacing[2], y0 * spacing[1], k * spacing[0]]) @ direction.T
        outer, core = nodule_fractions(nodule, origin, fine, direction, (1, side, side))
        kept = np.zeros((side, side), bool)
        kept[np.ix_(in_y, in_x)] = True if inside is None else inside[k][np.ix_(ys[in_y], xs[in_x])]
        whole = outline_axes(outer[0] * kept, pixel)
        if whole[0] > best[0]:
            best = whole
        if nodule.kind == "part-solid":
            solid = outline_axes(core[0] * kept, pixel)
            if solid[0] > best_solid[0]:
                best_solid = solid
    if nodule.kind == "solid":
        best_solid = best
    elif nodule.kind == "part-solid" and best_solid[0] > 0:
        ramp = edge_mm(spacing)
        best_solid = (best_solid[0] + ramp, best_solid[1] + ramp)
    elif nodule.kind == "part-solid":  # a core no slice crosses at half its fraction: its solid part as painted
        best_solid = (painted_solid_diameter_mm(nodule, spacing),) * 2
    return PaintedAxes(round(best[0], 2), round(best[1], 2), round(best_solid[0], 2), round(best_solid[1], 2))
