"""Calcification: voxels above 200 HU inside the nodule, and their pattern.

200 HU: a conservative calcium threshold (Siegelman et al., "Solitary pulmonary nodules: CT
assessment", Radiology 1986;160:307-312 called nodules with CT numbers above 164 HU on their
scanner calcified; about 200 HU is the value commonly quoted since; soft tissue is 20-60 HU). Patterns (Lung-RADS v2022 category 1: complete, central, popcorn,
concentric-ring calcification are benign): we tell
- diffuse: calcified share of the nodule >= `DIFFUSE_SHARE`;
- central: the calcified voxels' centroid lies within `CENTRAL_OFFSET` nodule radii of the
  nodule's centroid (central, popcorn and laminated patterns are all centred; we do not separate them);
- eccentric: otherwise (NOT benign: an eccentric calcification does not make a nodule category 1).
A pattern needs at least `MIN_SHARE` of the nodule and `MIN_VOXELS` voxels above 200 HU, so noise
or a grazing rib does not count.
"""
from __future__ import annotations

import numpy as np

from inference.characterize.model import CalcificationPattern
from inference.characterize.segment import offset_in_radii

CALCIUM_HU = 200.0
MIN_SHARE = 0.01
MIN_VOXELS = 2
DIFFUSE_SHARE = 0.5
CENTRAL_OFFSET = 0.5


def calcification(hu: np.ndarray, mask: np.ndarray, spacing: np.ndarray) -> tuple[CalcificationPattern | None, float]:
    """(pattern or None, share of nodule voxels above 200 HU)."""
    n = int(mask.sum())
    if n == 0:
        return None, 0.0
    calc = mask & (hu > CALCIUM_HU)
    k = int(calc.sum())
    share = k / n
    if k < MIN_VOXELS or share < MIN_SHARE:
        return None, share
    if share >= DIFFUSE_SHARE:
        return "diffuse", share
    return ("central" if offset_in_radii(calc, mask, spacing) <= CENTRAL_OFFSET else "eccentric"), share


def is_benign(pattern: CalcificationPattern | None) -> bool:
    return pattern in ("central", "diffuse")
