"""Location: which lung, which craniocaudal zone, and whether the nodule touches the pleura.

- Side: the nodule's world x (LPS: +x is the patient's LEFT) against the lung mask's midline (the
  mean world x of the lung voxels), computed with the series' direction cosines, so a flipped or
  feet-first series is still right.
- Zone: the nodule's world z (+z is head) within the craniocaudal extent of that lung's voxels in
  the mask, in thirds: upper / middle / lower. This approximates the lobe; it is not a lobe
  segmentation (the right middle lobe and lingula are anterior, not a craniocaudal third). The
  Brock model's "upper lobe" input is taken as the upper zone, an approximation.
- Juxtapleural: the segmentation (dilated by one voxel) touches the chest wall or mediastinum
  found by the large-ball opening in segment.py.
- Perifissural: always False: fissures are not detected, so this cannot be told.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from inference.characterize.model import Location, Lung, Zone


def _world(zyx: np.ndarray, spacing: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Voxel (z, y, x) -> LPS offset from voxel 0 (x, y, z) in mm (origin does not matter here)."""
    return (np.atleast_2d(zyx)[:, ::-1] * spacing[::-1]) @ direction.T


def side_and_zone(
    centre_zyx: np.ndarray, lung_mask: np.ndarray, spacing: np.ndarray, direction: np.ndarray,
) -> tuple[Lung | None, Zone | None]:
    if not lung_mask.any():
        return None, None
    # the mask's voxels, subsampled for speed (side and extent need no more)
    step = max(1, int(round(4.0 / float(spacing[1]))))
    pts = np.argwhere(lung_mask[:, ::step, ::step]).astype(float)
    pts[:, 1:] *= step
    world = _world(pts, spacing, direction)
    nodule = _world(np.asarray(centre_zyx, float), spacing, direction)[0]
    midline = float(world[:, 0].mean())
    lung: Lung = "left" if nodule[0] > midline else "right"
    same = world[:, 0] > midline if lung == "left" else world[:, 0] <= midline
    z = world[same, 2] if same.any() else world[:, 2]
    top, bottom = float(z.max()), float(z.min())
    if top - bottom <= 0:
        return lung, None
    frac = (top - nodule[2]) / (top - bottom)  # 0 at the apex, 1 at the base
    zone: Zone = "upper" if frac < 1 / 3 else "middle" if frac < 2 / 3 else "lower"
    return lung, zone


def juxtapleural(mask: np.ndarray, wall: np.ndarray) -> bool:
    """The nodule touches the chest wall / mediastinum (the large structures cut off in segment.py)."""
    grown = ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3), bool))
    return bool((grown & wall).any())


def make_location(lung: Lung | None, zone: Zone | None, pleural: bool) -> Location:
    return Location(lung=lung, zone=zone, juxtapleural=pleural, perifissural=False)
