"""The image noise of a CT series, measured on the patient: the global noise level.

After Christianson et al. (Automated technique to measure noise in clinical CT examinations, AJR Am J
Roentgenol 2015;205:W93-W99): a map of the local standard deviation over the soft tissue of each slice; the
mode of its histogram is the image's noise (structure edges only lengthen the histogram's tail, so the mode
stays at the noise). Our parameters, not theirs: a square ROI of `ROI_MM`, soft tissue 0-100 HU on a copy
smoothed by `TISSUE_SMOOTH_PX` (so that noise of 50 HU and more does not push tissue out of the range), the
tissue eroded by the ROI so that no ROI straddles an edge, histogram bins of 1 HU.

On lidc-idri-0002 (standard dose, 441 mA, standard kernel, 1.25 mm) it measures 13.5 HU. Why it matters: noise
moves normal lung below -950 HU, so LAA-950 overstates emphysema on noisy low-dose images (den Harder et al.,
Eur Radiol Exp 2018;2:30); emphysema.py says when it no longer holds.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

ROI_MM = 5.0
TISSUE_HU = (0.0, 100.0)
TISSUE_SMOOTH_PX = 2.0
MIN_TISSUE_VOXELS = 2000  # fewer measured voxels than this: no noise figure (a scan without soft tissue in view)
MAX_NOISE_HU = 400.0  # the histogram's range


def global_noise_hu(volume_hu: np.ndarray, pixel_mm: float, slices: Sequence[int]) -> float | None:
    """The noise (HU, one standard deviation) of `volume_hu` ((z, y, x)) measured on the axial `slices`; None
    when they hold too little soft tissue to measure it."""
    if not pixel_mm > 0:
        raise ValueError(f"pixel spacing must be positive, got {pixel_mm!r}")
    size = max(3, int(round(ROI_MM / pixel_mm)) | 1)  # odd: centred on its voxel
    core = np.ones((size, size), bool)
    local_sd: list[np.ndarray] = []
    for z in slices:
        plane = np.asarray(volume_hu[z], np.float64)
        smooth = ndimage.gaussian_filter(plane, TISSUE_SMOOTH_PX)
        tissue = ndimage.binary_erosion((smooth > TISSUE_HU[0]) & (smooth < TISSUE_HU[1]), core)
        if not tissue.any():
            continue
        mean = ndimage.uniform_filter(plane, size)
        mean_sq = ndimage.uniform_filter(plane * plane, size)
        local_sd.append(np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))[tissue])
    values = np.concatenate(local_sd) if local_sd else np.zeros(0)
    if values.size < MIN_TISSUE_VOXELS:
        return None
    counts, edges = np.histogram(values, bins=np.arange(0.0, MAX_NOISE_HU + 1.0, 1.0))
    counts = ndimage.uniform_filter1d(counts.astype(float), 5)  # a steadier mode than single 1 HU bins
    peak = int(np.argmax(counts))
    return float(edges[peak] + 0.5)


def robust_sd(values: np.ndarray, level: float | None = None) -> float:
    """The noise of `values` about `level` (their median when not given): 1.4826 x the median absolute deviation,
    the standard deviation of normal noise that a few outliers (a vessel's edge, a calcification) do not move."""
    centre = float(np.median(values)) if level is None else level
    return 1.4826 * float(np.median(np.abs(values - centre)))
