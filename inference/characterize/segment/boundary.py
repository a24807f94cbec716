"""The nodule's final boundary: the half maximum between the lung and the nodule's own level."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from inference.characterize.segment.masks import dilate_mm
from inference.characterize.segment.segmentation import SEED_THRESHOLD_HU, Segmentation

# grow_to_half_maximum: how far (mm) beyond the -750 HU boundary the half-maximum boundary is looked for;
# the two lie a voxel or two apart (the nodule's edge is about one voxel wide)
HALF_MAXIMUM_REACH_MM = 2.0


def refine_boundary(seg: Segmentation, level_hu: float) -> float:
    """Half-maximum boundary between parenchyma and the nodule's level; returns the threshold used."""
    threshold = max(SEED_THRESHOLD_HU, (seg.parenchyma_hu + level_hu) / 2)
    refined = seg.mask & (seg.smooth > threshold)
    if refined.any():
        seg.mask = refined
    return threshold


def near_other_structures(seg: Segmentation, first_mask: np.ndarray, threshold_hu: float) -> np.ndarray:
    """Voxels whose HU other structures share: what lies above the seed threshold and is not the nodule
    (the wall, the vessels and airways the watershed gave to other basins: candidates outside
    `first_mask`, segment_nodule's nodule; the stubs trim_vessels cut: inside `first_mask`, above the
    boundary threshold, no longer in the mask), and the voxels next to them (their partial-volume edge)."""
    candidates = seg.smooth > SEED_THRESHOLD_HU
    others = seg.wall | (candidates & ~first_mask) | (first_mask & ~seg.mask & (seg.smooth > threshold_hu))
    return np.asarray(ndimage.binary_dilation(others, structure=np.ones((3, 3, 3), bool)))


def grow_to_half_maximum(
    seg: Segmentation, level_hu: float, near_others: np.ndarray, spacing: np.ndarray,
) -> np.ndarray:
    """The nodule out to its half-maximum boundary where that lies below SEED_THRESHOLD_HU.

    A faint ground-glass nodule (-650 HU in lung of -890 HU) has its half maximum at -770 HU; the
    candidates stop at -750 HU, and the nodule's edge voxels between the two, each at least half
    nodule, were lost (held-out full-size seed 14020, a 6.2 mm ground-glass nodule: -19 %). The mask
    grows through voxels above the half maximum within HALF_MAXIMUM_REACH_MM of it, but not next to
    other structures (`near_others`: their own partial-volume edge is as bright). The size is measured
    on the grown mask; the margin keeps the candidates' boundary (its ragged edge at the half maximum,
    inside the noise, would read as lobulation: lidc-idri-0002).
    """
    half = (seg.parenchyma_hu + level_hu) / 2
    if half >= SEED_THRESHOLD_HU or not seg.mask.any():
        return seg.mask
    allowed = (seg.smooth > half) & ~near_others & dilate_mm(seg.mask, HALF_MAXIMUM_REACH_MM, spacing)
    return np.asarray(ndimage.binary_propagation(seg.mask, mask=allowed | seg.mask))
