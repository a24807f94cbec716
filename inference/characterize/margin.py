"""Margin (smooth / lobulated / spiculated) from the segmentation's shape.

Features:
- spicules: parts of the nodule that reach at least 1 mm beyond a shell of 1.1 x its own outline
  (its moments' ellipsoid scaled to its median ray radius) and end freely in the lung (`segment.count_spicules`):
  lobules bulge less than that, vessels and the wall run on and are not counted. Spiculated when at
  least `MIN_SPICULES` (1) is found. On phantom seeds 7000..7049 at 2.5-3 mm slices, 26 of 31
  spiculated nodules of 6 mm or more are found (7 of 31 with the earlier test, protrusions thinner
  than an opening by 0.3 R, which missed spicules whose tips are thinner than a voxel) and 1 of 118
  smooth or lobulated ones is called spiculated; at full size (15000..15019) 7 of 8, no false call.
- lobulation: the in-plane radial irregularity of the body, the coefficient of variation of the
  boundary pixels' distance to the slice centroid, averaged over the central slices (a circle gives
  about 0.05 from pixelation; an undulating contour more). Lobulated at or above `LOBULATED_CV`.
  WEAK: on phantoms (seeds 1..40) this feature does not separate smooth from lobulated (median
  0.108 vs 0.093: attachments and pixelation dominate), so the cut-off 0.2 (the 75th-90th percentile
  of smooth ones) only flags strongly irregular contours. Lung-RADS does not use lobulation; Brock
  uses spiculation only.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from inference.characterize.model import Margin

MIN_SPICULES = 1
LOBULATED_CV = 0.2
_CENTRAL_AREA = 0.6


def radial_cv(mask: np.ndarray, spacing: np.ndarray) -> float:
    areas = mask.sum(axis=(1, 2))
    if areas.max() == 0:
        return 0.0
    values: list[float] = []
    for z in np.flatnonzero(areas >= _CENTRAL_AREA * areas.max()):
        plane = ndimage.binary_fill_holes(mask[z])
        edge = plane & ~ndimage.binary_erosion(plane)
        pts = np.argwhere(edge) * spacing[1:]
        if len(pts) < 8:
            continue
        r = np.linalg.norm(pts - (np.argwhere(plane) * spacing[1:]).mean(axis=0), axis=1)
        values.append(float(r.std() / max(r.mean(), 1e-6)))
    return float(np.mean(values)) if values else 0.0


def classify_margin(spicules: int, cv: float) -> Margin:
    if spicules >= MIN_SPICULES:
        return "spiculated"
    if cv >= LOBULATED_CV:
        return "lobulated"
    return "smooth"
