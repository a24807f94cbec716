"""Airway nodules: a lesion inside a bronchus's or the trachea's lumen (Lung-RADS v2022 "airway nodules").

What v2022 says (Christensen J et al., ACR Lung-RADS v2022: Assessment Categories and Management Recommendations,
CHEST 2024;165:738-753 / J Am Coll Radiol 2024;21:473-488, as summarised in
https://diagnosticimaging.com/view/seven-takeaways-from-lung-rads-2022-for-ct-lung-cancer-screening and the ECR 2025
poster C-22137, https://portal.myesr.org/esr/membership/publicposter/ba878c24-25d4-4695-a75c-012da1bd2055/show/purpose):
- a solid endotracheal or endobronchial nodule in a segmental or more proximal airway is category 4A at baseline (and
  new); persistent at its 3-month LDCT it is 4B, for bronchoscopy;
- subsegmental (and multiple tubular) endobronchial findings favour infection or mucus: category 2 (or 0 where they
  suggest an infection) when no obstructing nodule is seen.
An airway nodule is graded by these rules, not by the parenchymal nodules' size thresholds.

How it is found, from the detector's centre and diameter, on the image (`airway_lesion`):
- the lesion: soft tissue (over `SOFT_HU` on the image lightly smoothed in plane) joined to the detector's centre
  within `LESION_REACH` x its radius;
- the lumen: air (`segment.lung.lumen_air_limit_hu`: under -950 HU and 60 HU under the lung round it) (on the image
  smoothed in 3D: a bronchus's lumen reads -1000 ... -950 HU, aerated lung -900 ... -800) within `CONTACT_MM` of the
  lesion, grown out to its walls' half-way level (`SOFT_HU`). It runs out of the ROI (an airway goes on; a cyst's
  lumen is sealed, `characterize.cyst`) and is lined by a wall: `WALLED_MIN_SHARE` of its surface near the lesion lies
  within `WALL_NEAR_MM` of a wall (over `WALL_SEEN_HU`; emphysema and bullae border lung, not a wall);
- one straight tube through the lesion (`_one_tube_through`): the lumen round it is one part (a polyp's crescent joins
  the tube's two ends) or two (a plug's sides), each straight, with its axis within the lumen's radius of the lesion's
  centre. A fork shows three parts, or branches whose axes pass beside a nodule in their crotch;
- inside it: the detector's centre lies `CENTRE_DEPTH_MM` inside the convex hull of the lumen near the lesion (within
  `LOCAL_MARGIN_MM` of its radius), `INSIDE_MIN_SHARE` of the lesion lies within that hull grown by a bronchial wall
  (`WALL_TOLERANCE_MM`), and the lesion is at least `MIN_DEPTH_MM` deep inside the hull where the detector's centre is
  (`CENTRE_REACH_MM`). A nodule beside a bronchus, or the bronchus's artery, lies outside its lumen's hull beyond the
  wall; a cancer with an air bronchogram is far wider than the bronchus through it; a wall or a spur is thinner;
- the airway's level, by its calibre: the lumen's largest inscribed diameter within `LOCAL_MARGIN_MM` of the lesion.
  Segmental bronchi on screening CT measure 5.7 +- 0.7 mm across the lumen (Petersen J et al., Danish Lung Cancer
  Screening Trial, 961 subjects: Eur Radiol 2014;24:2319-2325, "Effect of inspiration on airway dimensions measured in
  maximal inspiration CT images of subjects without airflow limitation"); a lumen of `SEGMENTAL_MIN_LUMEN_MM` (their
  mean - 2 SD) or more is taken as segmental or more proximal. The calibre approximates the generation, which the node
  does not trace; the note says so. A large airway reads smaller than it is (a 16 mm one about 13 mm: the widest near
  the lesion), which does not move it below the line.
Limits: a lumen under about 3.5 mm (partial volume keeps it over -950 HU on 1 mm slices) is not seen, nor is a
lesion under 3 mm across (`MIN_DEPTH_MM`), so those are graded as nodules by their size; a plug with air on one side
only (the lumen ends at it) is not called intraluminal, nor is a cancer a bronchus leads into (the bronchus sign), nor
a lesion at a branching (the fork rule), which are graded by size as before. Shown on tubes and
spheres of exactly known geometry (tests/inference/test_airway.py); no real airway nodule has been measured.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from inference.characterize.model import AirwayLesion, AirwayLevel
from inference.characterize.segment.lung import lumen_air_limit_hu
from inference.characterize.segment.masks import (
    component_at, dilate_mm, distance2, mask_surface, on_the_faces, parts_touching, roi_box,
)

SOFT_HU = -500.0  # over halfway from aerated lung (-850) to soft tissue (40): the lesion and the airway's wall
# the lumen on the image smoothed in 3D (70 HU of noise falls to about 16 HU: the lumen reads whole), the lesion and the
# walls on the image smoothed lightly in plane (a 1 mm wall keeps its peak)
SMOOTH_MM = 0.6
FINE_SMOOTH_MM = 0.3
LESION_REACH = 1.2  # x the detector's radius: the lesion's soft tissue round its centre
MIN_LUMEN_MM3 = 10.0
# the air touches the lesion: between the lesion's or a wall's edge (-500 HU) and the smoothed lumen's (-950 HU) lie
# about 2 mm of partial volume and smoothing
CONTACT_MM = 2.5
# a wall, even a 1 mm one on 1.25 mm slices read through partial volume, stands over WALL_SEEN_HU; aerated lung lies
# under -800. Near a lesion, real bronchi of lidc-idri-0002 have 0.80-0.95 of their lumen's surface walled; painted
# bronchi of 6-9 mm with a 1 mm wall 0.59-0.99 on 1, 1.25 and 2.5 mm slices (least when oblique to the grid) at 0 and
# 70 HU of noise; a plugged channel of unwalled air 0.10-0.21 and a slab of emphysema's air round a nodule 0.25-0.45
# (docs/characterization.md, "Fifty-third session")
WALL_SEEN_HU = -700.0
WALL_NEAR_MM = 1.0
WALLED_MIN_SHARE = 0.5
LOCAL_MARGIN_MM = 6.0
WALL_TOLERANCE_MM = 1.5
INSIDE_MIN_SHARE = 0.7
CENTRE_DEPTH_MM = 1.0
# one tube through the lesion (`_one_tube_through`): the lumen from SHELL_INNER_MM past the lesion's radius out to the
# ROI's faces, in parts of MIN_PART_MM3 or more that come within LOCAL_MARGIN_MM of it
SHELL_INNER_MM = 2.0
MIN_PART_MM3 = 3.0
MAX_ACROSS_SPREAD = 0.8  # x the lumen's radius: a straight tube's spread across its axis is 0.5
AXIS_TOLERANCE_MM = 1.5
MIN_DEPTH_MM = 1.5
CENTRE_REACH_MM = 1.5  # the detector's centre lies within about a millimetre of a lesion's (median 0.95 mm)
SEGMENTAL_MIN_LUMEN_MM = 4.3
ROI_MARGIN_MM = 12.0


def _walled_share(lumen: np.ndarray, near: np.ndarray, fine: np.ndarray, spacing: np.ndarray) -> float:
    """Share of the lumen's surface `near` the lesion with a wall (or the lesion: over WALL_SEEN_HU) within
    WALL_NEAR_MM. The ROI's faces are no surface: the lumen runs on past them."""
    surface = mask_surface(lumen) & near
    to_wall = ndimage.distance_transform_edt(fine <= WALL_SEEN_HU, sampling=spacing)
    return float((to_wall[surface] <= WALL_NEAR_MM).mean()) if surface.any() else 0.0


def _to_the_walls(core: np.ndarray, fine: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The lumen out to its walls' half-way level (SOFT_HU on the lightly smoothed image, where a reader's calipers sit
    on the wall's inner edge): the lumen's air on the smoothed image lies up to a millimetre or two inside
    it, and a 4 mm bronchus on 1 mm slices holds it on one slice only."""
    near = ndimage.distance_transform_edt(~core, sampling=spacing) <= CONTACT_MM
    return parts_touching((fine < SOFT_HU) & near, core)


def _one_tube_through(around: np.ndarray, near: np.ndarray, centre: np.ndarray, spacing: np.ndarray,
                      lumen_radius_mm: float) -> bool:
    """Whether the lumen round the lesion (`around`: clear of the lesion, out to the ROI's faces; its parts that come
    `near` it) is one straight tube whose axis passes through the lesion: one part (the crescent round a polyp joins
    the tube's two ends), or two (a plug's two sides), each straight (`MAX_ACROSS_SPREAD`) with its principal axis
    within the lumen's radius of the lesion's centre (+ `AXIS_TOLERANCE_MM`). A fork shows three parts, or two branches
    whose axes pass beside a nodule in their crotch; branches joined by their parent are no straight tube."""
    labels, n = ndimage.label(around, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * float(np.prod(spacing))
    parts = [label for label in np.unique(labels[near & around]) if label > 0 and sizes[label] >= MIN_PART_MM3]
    if not 1 <= len(parts) <= 2:
        return False
    for label in parts:
        points = np.argwhere(labels == label) * spacing
        if len(points) < 4:
            return False
        values, vectors = np.linalg.eigh(np.cov(points.T))
        if np.sqrt(max(float(values[1]), 0.0)) > MAX_ACROSS_SPREAD * lumen_radius_mm:
            return False
        offset = centre * spacing - points.mean(axis=0)
        off_axis = offset - float(offset @ vectors[:, 2]) * vectors[:, 2]
        if float(np.linalg.norm(off_axis)) > lumen_radius_mm + AXIS_TOLERANCE_MM:
            return False
    return True


def _tissue_depth_in_hull(tissue: np.ndarray, hull: ConvexHull, spacing: np.ndarray, at: np.ndarray) -> float:
    """How deep (mm) the tissue inside the hull is at its deepest `at` (the detector's centre): its inscribed radius
    there. A lesion's centre lies deep in it; a wall or a spur is thin where the detector's centre falls on it."""
    voxels = np.argwhere(tissue)
    inside = np.zeros_like(tissue)
    inside[tuple(voxels[_beyond_hull(voxels * spacing, hull) <= 0.0].T)] = True
    depth = ndimage.distance_transform_edt(inside, sampling=spacing)[at]
    return float(depth.max()) if depth.size else 0.0


def _beyond_hull(points_mm: np.ndarray, hull: ConvexHull) -> np.ndarray:
    """How far (mm) each point lies beyond the hull's farthest facet plane: <= 0 inside (a lower bound of the
    distance outside, exact off a facet's face)."""
    normals, offsets = hull.equations[:, :-1], hull.equations[:, -1]
    return np.asarray((points_mm @ normals.T + offsets).max(axis=1))


def _open_lumen(lesion: np.ndarray, smooth: np.ndarray, fine: np.ndarray, soft: np.ndarray,
                spacing: np.ndarray) -> np.ndarray | None:
    """The air that touches the lesion, out to its walls (`_to_the_walls`), where it runs on out of the ROI as an
    airway does; None where there is none, or it is sealed (a cyst's, `characterize.cyst`)."""
    lung = float(np.median(smooth[~soft])) if (~soft).any() else -850.0
    air = smooth < lumen_air_limit_hu(lung)
    labels, _ = ndimage.label(air, structure=np.ones((3, 3, 3), bool))
    touching = np.unique(labels[dilate_mm(lesion, CONTACT_MM, spacing) & air])
    lumen = _to_the_walls(np.isin(labels, touching[touching > 0]), fine, spacing)
    if lumen.sum() * float(np.prod(spacing)) < MIN_LUMEN_MM3 or not on_the_faces(lumen):
        return None
    return lumen


def _share_inside(lesion: np.ndarray, local: np.ndarray, centre: np.ndarray, at_centre: np.ndarray,
                  spacing: np.ndarray) -> float | None:
    """The share of the lesion inside the hull of the lumen near it (`local`), grown by a wall; None where the lesion
    is not inside the lumen: its centre not CENTRE_DEPTH_MM inside, under INSIDE_MIN_SHARE of it within the hull, or no
    more than a wall's thickness of it there (MIN_DEPTH_MM: a wall where the airway bends, the spur between two
    branches)."""
    try:
        hull = ConvexHull(np.argwhere(local) * spacing)
    except QhullError:
        return None  # flat or too few points: no tube
    if float(_beyond_hull((centre * spacing)[None, :], hull)[0]) > -CENTRE_DEPTH_MM:
        return None
    inside = float((_beyond_hull(np.argwhere(lesion) * spacing, hull) <= WALL_TOLERANCE_MM).mean())
    if inside < INSIDE_MIN_SHARE or _tissue_depth_in_hull(lesion, hull, spacing, at_centre) < MIN_DEPTH_MM:
        return None
    return inside


def airway_lesion(hu: np.ndarray, spacing_zyx: np.ndarray, centre_zyx: np.ndarray,
                  diameter_mm: float) -> AirwayLesion | None:
    """The airway a detected lesion (`centre_zyx` in voxels, the detector's `diameter_mm`) lies inside, measured on
    `hu`; None where it lies in the lung, not in an airway's lumen."""
    spacing = np.asarray(spacing_zyx, float)
    radius = diameter_mm / 2
    box = roi_box(hu.shape, spacing, np.asarray(centre_zyx, float), radius + ROI_MARGIN_MM)
    roi = hu[box].astype(np.float32)
    fine = ndimage.gaussian_filter(roi, (0.0, *(FINE_SMOOTH_MM / spacing[1:])))
    smooth = ndimage.gaussian_filter(roi, SMOOTH_MM / spacing)
    centre = np.asarray(centre_zyx, float) - np.array([s.start for s in box])
    soft = fine > SOFT_HU
    d2 = distance2(smooth.shape, centre, spacing)
    lesion = component_at(soft & (d2 <= (LESION_REACH * radius) ** 2), centre, spacing, radius)
    lumen = _open_lumen(lesion, smooth, fine, soft, spacing) if lesion.any() else None
    if lumen is None:
        return None
    near = d2 <= (radius + LOCAL_MARGIN_MM) ** 2
    local = lumen & near
    walled = _walled_share(lumen, near, fine, spacing)
    if not local.any() or walled < WALLED_MIN_SHARE:
        return None
    # the lumen's largest inscribed diameter near the lesion (a voxel's distance runs to the nearest voxel centre
    # outside the lumen, which lies just past its edge)
    calibre = 2.0 * float(ndimage.distance_transform_edt(lumen, sampling=spacing)[local].max())
    if not _one_tube_through(lumen & (d2 > (radius + SHELL_INNER_MM) ** 2), near, centre, spacing, calibre / 2):
        return None  # a fork, a bend, or a tube passing by: the lesion may lie between branches or beside one
    inside = _share_inside(lesion, local, centre, d2 <= CENTRE_REACH_MM**2, spacing)
    if inside is None:
        return None
    level: AirwayLevel = "segmental_or_proximal" if calibre >= SEGMENTAL_MIN_LUMEN_MM else "subsegmental"
    return AirwayLesion(level=level, lumen_diameter_mm=round(calibre, 1), inside_share=round(inside, 3),
                        walled_share=round(walled, 3))
