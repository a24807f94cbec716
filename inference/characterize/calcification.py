"""Calcification: voxels above 200 HU inside the nodule, and their pattern.

200 HU: a conservative calcium threshold (Siegelman et al., "Solitary pulmonary nodules: CT
assessment", Radiology 1986;160:307-312 called nodules with CT numbers above 164 HU on their
scanner calcified; about 200 HU is the value commonly quoted since; soft tissue is 20-60 HU). Patterns (Lung-RADS v2022 category 1: complete, central, popcorn,
concentric-ring calcification are benign): we tell
- diffuse: calcified share of the nodule >= `DIFFUSE_SHARE`;
- central: the calcified voxels' centroid lies within `CENTRAL_OFFSET` nodule radii of the
  nodule's centroid (central, popcorn and laminated patterns are all centred; we do not separate them);
- eccentric: otherwise (NOT benign: an eccentric calcification does not make a nodule category 1).
A pattern needs at least `MIN_SHARE` of the nodule and `MIN_VOXELS` voxels above the threshold, so noise
or a grazing rib does not count.

Noise: the voxels are read on the segmentation's lightly smoothed HU (Gaussian, 0.5 mm), and where the image is
noisy the threshold rises above 200 HU to soft tissue (`SOFT_TISSUE_HU`) + `NOISE_MARGIN_SD` x the noise of that
smoothed image in the ROI's aerated lung (`noise.robust_sd`). Noise of a low-dose scan with a
sharp kernel otherwise puts 1-3 % of a soft-tissue nodule's voxels above 200 HU, which read as a calcification,
and a central or diffuse one makes the nodule Lung-RADS 1: benign. Crop harness (1506 phantom nodules >= 6 mm, 241
calcified), raw HU over 200: 234 calcifications found, none false; with noise raised from about 20 to 70 HU
(per voxel), 217 false and 236 found. Smoothed at 200 HU: 233 and none, at 70 HU 25 false. With the noise margin:
233 and none, at 70 HU 218 found and none false (a first estimate of the margin on 462 of them: 3 SD 12 false, 4 SD 1,
5 SD 207 of 241 found). A calcification this misses on a noisy scan leaves the nodule to its size and type
category, the cautious side; a false one would call it benign. The threshold is returned with the pattern, and a solid
nodule of Lung-RADS 3 or more read without calcification above a raised threshold gets a note saying a fainter one
would not be seen (`pipeline._calcium_note`; at 70 HU 31 of the 34 nodules whose calcification is missed carry it).
Finding more of them at 70 HU (heavier smoothing; one voxel over 4.5-6 SD; no share floor) gained 5-15 of 241 and
stood half an SD from calling a soft-tissue nodule calcified (docs/characterization.md, "Fiftieth session").

Contrast: on a series with intravenous contrast a vessel through a soft-tissue nodule is 150-400 HU inside it, and
one through its centre read as a central calcification (Lung-RADS 1: a possible cancer called benign). A calcification
lies inside its nodule; an enhanced vessel runs on outside it, where its partial volume with the lung can lower it
under the calcium threshold but not to the 30-50 HU of a vessel without contrast: the dense voxels of a structure
over `ENHANCED_HU` that reaches beyond the nodule into the lung are not counted (`running_on`). The crop harness
(1506 nodules, no contrast) reads every calcification as before at 20, 40 and 70 HU of noise. A calcification within
about a millimetre of an enhanced vessel joins it and is not counted either (the cautious side), and a vessel under
about 2 mm may still pass (2 of 4 such cases on a 10 mm sphere); the report therefore says, for a series whose header names
intravenous contrast, that a calcification is to be confirmed without it (`inference.contrast`).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from inference.characterize.model import CalcificationPattern
from inference.characterize.noise import robust_sd
from inference.characterize.segment.masks import offset_in_radii, parts_reaching_out

CALCIUM_HU = 200.0
MIN_SHARE = 0.01
MIN_VOXELS = 2
DIFFUSE_SHARE = 0.5
CENTRAL_OFFSET = 0.5
SOFT_TISSUE_HU = 40.0  # a soft-tissue nodule's level (20-60 HU): the noise margin counts from here
NOISE_MARGIN_SD = 4.0
LUNG_HU = -700.0  # the aerated lung whose spread is the noise: below this after `LUNG_SMOOTH_MM` more smoothing
LUNG_SMOOTH_MM = 1.5
MIN_LUNG_VOXELS = 200
# running_on: an enhanced vessel. Blood without contrast is 30-50 HU; intravenous contrast raises the lungs' vessels
# to 150-400 HU. Over ENHANCED_HU, and over VESSEL_NOISE_SD x the noise above soft tissue on a noisy image (at 70 HU
# per voxel a vessel without contrast next to a calcified nodule, 7008:2, joined it at 1.33 SD)
ENHANCED_HU = 90.0
VESSEL_NOISE_SD = 3.0
MIN_OUTSIDE_VOXELS = 3  # ...reaching this many voxels beyond the nodule (not one noisy voxel)


def lung_noise_sd(smooth: np.ndarray, spacing: np.ndarray) -> float | None:
    """The noise of `smooth` (the ROI's lightly smoothed HU) in the ROI's aerated lung two voxels clear of anything
    else; None where too little of it is seen."""
    sp = np.asarray(spacing, float)
    lung = ndimage.binary_erosion(ndimage.gaussian_filter(smooth, LUNG_SMOOTH_MM / sp) < LUNG_HU, iterations=2)
    values = smooth[lung]
    return robust_sd(values) if values.size >= MIN_LUNG_VOXELS else None


def calcium_threshold_hu(noise_sd: float | None) -> float:
    """200 HU, or soft tissue + NOISE_MARGIN_SD x the smoothed image's noise (`lung_noise_sd`) where that is higher."""
    return CALCIUM_HU if noise_sd is None else max(CALCIUM_HU, SOFT_TISSUE_HU + NOISE_MARGIN_SD * noise_sd)


def running_on(smooth: np.ndarray, mask: np.ndarray, noise_sd: float | None, wall: np.ndarray | None) -> np.ndarray:
    """The nodule's voxels of an enhanced structure that runs on outside it through the lung: a vessel filled with
    contrast, as dense as calcium inside the nodule. A calcification lies inside its nodule.

    Such a structure is what lies above ENHANCED_HU (or VESSEL_NOISE_SD x the noise over soft tissue, where that is
    higher) and reaches MIN_OUTSIDE_VOXELS beyond the nodule's 26-neighbourhood, not in the chest wall: outside, in
    the lung, a thin enhanced vessel's partial volume lowers it below the calcium threshold (a 2 mm vessel of 350 HU
    reads about 160 HU there on 0.7 mm pixels, 300 HU inside a soft-tissue nodule) but leaves it above any vessel
    without contrast (blood 30-50 HU). Bone in the wall is left to `segment.bone.drop_bone`, which keeps a central
    calcification resting on a rib."""
    level = SOFT_TISSUE_HU + max(ENHANCED_HU - SOFT_TISSUE_HU, VESSEL_NOISE_SD * (noise_sd or 0.0))
    dense = smooth > level
    out = np.zeros_like(mask)
    if not (dense & mask).any():
        return out
    ball = np.ones((3, 3, 3), bool)
    around = ndimage.binary_dilation(mask, structure=ball)
    walls = ndimage.binary_dilation(wall, structure=ball, iterations=2) if wall is not None else np.zeros_like(mask)
    for part, outside in parts_reaching_out(dense, mask, around, MIN_OUTSIDE_VOXELS):
        if int((outside & ~walls).sum()) >= MIN_OUTSIDE_VOXELS:
            out |= part & mask
    return out


def calcification(smooth: np.ndarray, mask: np.ndarray, spacing: np.ndarray, noise_sd: float | None,
                  wall: np.ndarray | None = None) -> tuple[CalcificationPattern | None, float, float]:
    """(pattern or None, share of nodule voxels above the calcium threshold, that threshold in HU) on `smooth`, the
    segmentation's lightly smoothed HU of the ROI, whose noise is `noise_sd` (`lung_noise_sd`); `wall` the ROI's chest
    wall and mediastinum. A threshold over CALCIUM_HU says the noise hid calcifications fainter than it (the report
    says so: pipeline._calcium_note). The voxels of an enhanced vessel running through the nodule are no calcium
    (`running_on`)."""
    threshold = calcium_threshold_hu(noise_sd)
    n = int(mask.sum())
    if n == 0:
        return None, 0.0, threshold
    calc = mask & (smooth > threshold)
    if calc.any():
        calc &= ~running_on(smooth, mask, noise_sd, wall)
    k = int(calc.sum())
    share = k / n
    if k < MIN_VOXELS or share < MIN_SHARE:
        return None, share, threshold
    if share >= DIFFUSE_SHARE:
        return "diffuse", share, threshold
    return ("central" if offset_in_radii(calc, mask, spacing) <= CENTRAL_OFFSET else "eccentric"), share, threshold


def is_benign(pattern: CalcificationPattern | None) -> bool:
    return pattern in ("central", "diffuse")
