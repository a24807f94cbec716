"""A lesion's extent along its three principal axes: what tells a band or a plate (a scar, linear or plate
atelectasis) from a nodule, which is roughly as thick as it is long.

The extents come from the segmentation's voxel coordinates (mm): for a uniform solid ellipsoid the variance along a
semi-axis a is a^2 / 5, so each principal axis's full extent is 2 sqrt(5 lambda) for its eigenvalue lambda; a sphere
of 10 mm reads 10, 10, 10. A thin structure's partial volume thickens its mask, so a 3 mm band reads about 4-5 mm.

What the node does with it: a note (`pipeline._band_note`), not a category. Lung-RADS grades nodules, and a band-like
opacity is more often a scar or atelectasis than a nodule; but the reader decides, as a band can still be a cancer.
"""
from __future__ import annotations

import numpy as np

# longest over thinnest extent from which a lesion is band- or plate-like: a 24 x 3 x 3 mm band reads about 5.5-6,
# a 16 x 8 x 8 mm oval 2, phantom nodules with lobes and spicules under 2.5 (docs/characterization.md)
BAND_ELONGATION = 4.0


def principal_sds(points: np.ndarray) -> np.ndarray:
    """The standard deviations (mm) of `points` (n, 3 in mm) along their principal axes, largest first."""
    return np.sqrt(np.clip(np.linalg.eigvalsh(np.cov(points, rowvar=False)), 0, None))[::-1]


def principal_extents_mm(mask: np.ndarray, spacing: np.ndarray) -> tuple[float, float, float]:
    """The full extents (mm) of `mask` along its principal axes, longest first; zeros for fewer than 4 voxels."""
    points = np.argwhere(mask) * np.asarray(spacing, float)
    if len(points) < 4:
        return 0.0, 0.0, 0.0
    extents = 2.0 * np.sqrt(5.0) * principal_sds(points)
    return float(extents[0]), float(extents[1]), float(extents[2])
