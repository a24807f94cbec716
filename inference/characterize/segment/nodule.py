"""The first segmentation of a nodule at the detector's centre (`segment_nodule`, which counts its spicules:
`spicules`) and the inscribed diameter that checks the detector's."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from inference.characterize.segment.lung import aerated_hu, airway_walls, clear_lung, lung_noise, parenchyma_level
from inference.characterize.segment.masks import distance2, opening_mm, roi_box
from inference.characterize.segment.spicules import count_spicules, faint_strands
from inference.characterize.segment.segmentation import SEED_THRESHOLD_HU, SMOOTH_MM, Segmentation
from inference.characterize.segment.split import centre_reach_mm, split_from_neighbours
from inference.characterize.segment.wall import CAP_PASSES, restore_cap

# what segment_nodule says when nothing near the centre is the nodule's: no candidate voxel there...
NO_NODULE_REASON = "no nodule above -750 HU at the given centre"
# ...or all of them survive the wall's opening: the centre lies in a structure much larger than the diameter given
# (a detector's mark in the chest wall, the mediastinum or a thick vessel; characterize._checked_diameter has already
# measured a nodule the detector undersized by up to DETECTOR_UNDERSIZE_MAX at its own diameter)
LARGER_STRUCTURE_REASON = ("no nodule at the given centre: the tissue there belongs to a structure much larger than "
                           "the detector's diameter (the chest wall, the mediastinum or a thick vessel)")
INSCRIBED_SEARCH_MM = 1.5  # inscribed_diameter looks this far round the detector's centre (its offset: median 0.8 mm)


def inscribed_diameter(volume_hu: np.ndarray, spacing: np.ndarray, centre: np.ndarray, roi_half_mm: float) -> float:
    """Twice the depth (mm) of the nodule's centre inside the voxels above SEED_THRESHOLD_HU (lightly smoothed):
    the diameter of the largest ball of nodule density within INSCRIBED_SEARCH_MM of `centre` (voxel index), in
    an ROI of `roi_half_mm`. A second opinion on the detector's diameter that needs no diameter of its own; in a
    bundle of vessels or on the wall it reads large (their tissue adds depth), so it is only a check."""
    box = roi_box(volume_hu.shape, spacing, np.asarray(centre, float), roi_half_mm)
    smooth = ndimage.gaussian_filter(np.asarray(volume_hu[box], dtype=np.float32), SMOOTH_MM / spacing)
    depth = ndimage.distance_transform_edt(smooth > SEED_THRESHOLD_HU, sampling=spacing)
    local = np.asarray(centre, float) - np.array([s.start for s in box])
    near = distance2(depth.shape, local, spacing) <= INSCRIBED_SEARCH_MM ** 2
    return 2.0 * float(depth[near].max()) if near.any() else 0.0


def segment_nodule(
    volume_hu: np.ndarray, spacing_zyx: np.ndarray, centre_zyx: np.ndarray, diameter_mm: float,
    *, far_mm: float | None = None,
) -> Segmentation:
    """The nodule at `centre_zyx` (voxel indices) of about `diameter_mm`, separated from vessels and the wall.
    `far_mm`: candidate voxels farther than this from the centre belong to something else (`split_from_neighbours`;
    default
    2 R + 4 mm: nothing of the nodule reaches that far)."""
    spacing = np.asarray(spacing_zyx, float)
    radius = max(float(diameter_mm) / 2, 1.5)
    box = roi_box(volume_hu.shape, spacing, np.asarray(centre_zyx, float), 2 * radius + 8.0)
    hu = np.asarray(volume_hu[box], dtype=np.float32)
    smooth = ndimage.gaussian_filter(hu, SMOOTH_MM / spacing)
    local = np.asarray(centre_zyx, float) - np.array([s.start for s in box])
    seed = smooth > SEED_THRESHOLD_HU

    wall = opening_mm(seed, 0.6 * 2 * radius + 1.5, spacing)
    lung = clear_lung(hu, seed, spacing)
    noise = lung_noise(lung)
    airways = airway_walls(seed, hu, noise, spacing)
    body, outer_layer = split_from_neighbours(smooth, seed, wall, airways, local, spacing, radius, far_mm)
    if not body.any():
        empty = np.zeros_like(seed)
        near_centre = distance2(seed.shape, local, spacing) <= centre_reach_mm(radius) ** 2
        reason = LARGER_STRUCTURE_REASON if (seed & near_centre).any() else NO_NODULE_REASON
        return Segmentation(box, hu, smooth, empty, wall, parenchyma_level(aerated_hu(hu, seed)), False, reason, 0)
    site: str | None = None  # how the wall under the nodule is modelled, decided on the first pass that sees it
    for _ in range(CAP_PASSES):
        body, site = restore_cap(body, wall, seed, hu, spacing, site)
    parenchyma = parenchyma_level(lung)
    spicules = count_spicules(body, seed, spacing, hu, noise, faint_strands(hu, body, noise, spacing))
    return Segmentation(box, hu, smooth, body, wall, parenchyma, True, None, spicules, outer_layer & ~body)
