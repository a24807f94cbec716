"""Volume and the Lung-RADS v2022 axial diameters of a segmentation.

Lung-RADS v2022 (ACR): size is the mean diameter, the average of the long axis and the
perpendicular short axis measured on the same axial image where the nodule is largest, rounded to
one decimal place; volume may be used instead. Here the long axis is the largest in-plane Feret
diameter of the slice's pixels and the short axis the longest chord perpendicular to it. Pixel
centres are measured and one pixel is added (a pixel's centre-to-centre span underestimates the
edge-to-edge extent by one pixel).
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from inference.characterize.model import Axes


def volume_mm3(mask: np.ndarray, spacing: np.ndarray) -> float:
    return float(mask.sum()) * float(np.prod(spacing))


def slice_axes(plane: np.ndarray, pixel_yx: np.ndarray) -> tuple[float, float]:
    """(long, short) in mm of one axial mask."""
    points = np.argwhere(plane) * pixel_yx
    if len(points) == 0:
        return 0.0, 0.0
    px = float(pixel_yx.mean())
    if len(points) == 1:
        return px, px
    hull = points
    if len(points) > 3:
        try:
            hull = points[ConvexHull(points).vertices]
        except QhullError:  # collinear pixels
            hull = points
    d = np.linalg.norm(hull[:, None, :] - hull[None, :, :], axis=-1)
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    long = float(d[i, j])
    u = (hull[j] - hull[i]) / max(long, 1e-9)
    v = np.array([-u[1], u[0]])
    along = points @ u
    across = points @ v
    # the longest chord perpendicular to the long axis: bins of one pixel along it
    bins = np.floor((along - along.min()) / px).astype(int)
    short = 0.0
    for b in np.unique(bins):
        a = across[bins == b]
        short = max(short, float(a.max() - a.min()))
    return long + px, short + px


def axes(mask: np.ndarray, spacing: np.ndarray, z_offset: int = 0) -> Axes | None:
    """Axes on the axial slice with the longest long axis; None for an empty mask."""
    best: tuple[float, float, int] | None = None
    for z in (int(k) for k in np.flatnonzero(mask.any(axis=(1, 2)))):
        long, short = slice_axes(mask[z], spacing[1:])
        if best is None or long > best[0]:
            best = (long, short, z)
    if best is None:
        return None
    long, short, z = best
    return Axes(long_mm=round(long, 1), short_mm=round(short, 1), mean_mm=round((long + short) / 2, 1),
                slice_index=z + z_offset)
