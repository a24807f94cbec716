"""Location: which lung, which craniocaudal zone, and whether the nodule touches the pleura.

- Side: the nodule's world x (LPS: +x is the patient's LEFT) against the lung mask's midline (the
  mean world x of the lung voxels), computed with the series' direction cosines, so a flipped or
  feet-first series is still right.
- Zone: the nodule's world z (+z is head) within the craniocaudal extent of that lung's voxels in
  the mask, in thirds: upper / middle / lower. This approximates the lobe; it is not a lobe
  segmentation (the right middle lobe and lingula are anterior, not a craniocaudal third). The
  Brock model's "upper lobe" input is taken as the upper zone, an approximation.
- Juxtapleural: the segmentation touches the chest wall or mediastinum found by the large-ball
  opening in segment.nodule: a voxel of it is the wall's, or its neighbour on the same slice (8
  neighbours) or straight above or below (a nodule resting on the diaphragm). Not a diagonal
  neighbour across slices: on 2-3 mm slices that is 2-3 mm away, and counting it (the full
  26-neighbourhood) called nodules 2-3 mm off the wall juxtapleural (phantom seeds 13003, 14014),
  which the Lung-RADS juxtapleural rule could downgrade.
- Perifissural: the nodule touches a fissure, a thin sheet of soft tissue inside the lung. A
  voxel is on a sheet when the Hessian of the HU (Gaussian derivatives, sigma `SHEET_SIGMA_MM`) has
  one strongly negative eigenvalue across it (a bright ridge: sigma^2 |l1| >= `SHEET_MIN_CONTRAST`
  HU) and two small ones along it (|l2| <= `SHEET_MAX_L2` |l1|; a vessel, a tube, has two large
  ones, a nodule three). Sheet voxels within `SHEET_CONTACT_MM` of the nodule (outside it, away from
  the chest wall) form the candidate; it is a fissure when that sheet, followed away from the nodule,
  is broad in two directions and thin in the third (principal axes of its voxels: the second at
  least `SHEET_MIN_EXTENT_MM` and at least 3x the third). A curved airway wall or a vessel wall
  around a nodule does not pass the flatness test. Checked on synthetic planes (tests); the phantoms
  paint no fissures, and no phantom nodule was called perifissural (characterize_eval counts them).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from inference.characterize.model import Location, Lung, Zone
from inference.characterize.segment.masks import dilate_mm
from inference.characterize.shape import principal_sds


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


# the voxel itself, its 8 neighbours on its slice, and the voxels straight above and below it
_CONTACT = np.zeros((3, 3, 3), bool)
_CONTACT[1] = True
_CONTACT[0, 1, 1] = _CONTACT[2, 1, 1] = True


def juxtapleural(mask: np.ndarray, wall: np.ndarray) -> bool:
    """The nodule touches the chest wall / mediastinum (the large structures cut off in segment.nodule)."""
    grown = ndimage.binary_dilation(mask, structure=_CONTACT)
    return bool((grown & wall).any())


SHEET_SIGMA_MM = 1.0  # about a fissure's apparent thickness on 1-2.5 mm CT
SHEET_MIN_CONTRAST = 60.0  # HU: a 1 mm sheet of +300 HU over lung gives ~120; lung noise (20 HU) ~20
SHEET_MAX_L2 = 0.4
SHEET_CONTACT_MM = 2.5  # the sheet passes within this of the nodule's surface
SHEET_MIN_EXTENT_MM = 3.0  # principal-axis sd of the sheet's voxels: a plane disc of radius 6 mm has 3 mm
SHEET_MAX_FLATNESS = 1 / 3


def sheet_voxels(smooth: np.ndarray, spacing: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Voxels of `where` that lie on a thin bright sheet (a ridge in one direction only)."""
    sigma = SHEET_SIGMA_MM / spacing
    pts = np.nonzero(where)
    hessian = np.empty((len(pts[0]), 3, 3), np.float64)
    for i in range(3):
        for j in range(i, 3):
            order = [0, 0, 0]
            order[i] += 1
            order[j] += 1
            d = ndimage.gaussian_filter(smooth.astype(np.float32), sigma, order=order)[pts]
            hessian[:, i, j] = hessian[:, j, i] = d / (spacing[i] * spacing[j])
    out = np.zeros_like(where)
    if not len(pts[0]):
        return out
    ev = np.linalg.eigvalsh(hessian)
    order_ = np.argsort(np.abs(ev), axis=1)[:, ::-1]
    ev = np.take_along_axis(ev, order_, axis=1)  # by magnitude: l1 the largest
    l1, l2 = ev[:, 0], ev[:, 1]
    ok = (l1 < 0) & (-l1 * SHEET_SIGMA_MM ** 2 >= SHEET_MIN_CONTRAST) & (np.abs(l2) <= SHEET_MAX_L2 * np.abs(l1))
    out[tuple(p[ok] for p in pts)] = True
    return out


def perifissural(mask: np.ndarray, smooth: np.ndarray, wall: np.ndarray, spacing: np.ndarray) -> bool:
    """The nodule touches a thin, flat and broad sheet inside the lung (a fissure)."""
    if not mask.any():
        return False
    touching = dilate_mm(mask, SHEET_CONTACT_MM, spacing)
    lung_side = ~mask & ~dilate_mm(wall, 2.0, spacing)
    sheets = sheet_voxels(smooth, spacing, lung_side & (smooth > -900.0))
    labels, n = ndimage.label(sheets, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return False
    for label in np.unique(labels[sheets & touching]):
        pts = np.argwhere(labels == label) * spacing
        if len(pts) < 10:
            continue
        sd = principal_sds(pts)
        if sd[1] >= SHEET_MIN_EXTENT_MM and sd[2] <= SHEET_MAX_FLATNESS * sd[1]:
            return True
    return False


def make_location(lung: Lung | None, zone: Zone | None, pleural: bool, fissure: bool = False) -> Location:
    return Location(lung=lung, zone=zone, juxtapleural=pleural, perifissural=fissure)
