"""Macroscopic fat inside a solid nodule: the sign of a hamartoma, which Lung-RADS v2022 counts as benign (category 1).

Fat is -120 ... -40 HU (`FAT_HU`): Siegelman SS, Khouri NF, Scott WW Jr et al., "Pulmonary hamartoma: CT findings",
Radiology 1986;160:313-317 found fat in 18 of 47 hamartomas as a focus of CT numbers of -40 to -120 HU; the v2022
table lists "fat-containing nodules" with the benign calcifications.

Everything else that reads -120 ... -40 HU in a nodule is partial volume of soft tissue with air or noise:
- the nodule's edge against the lung, and the top and bottom slices that hold it in part: only its core is looked at,
  the voxels a pixel or more inside it on its central slices (`attenuation.core`);
- the wall of an air bronchogram, a cavity or a bubble lucency (signs of a cancer, not of a hamartoma): a focus with
  aerated voxels (below `AIR_HU`) within `AIR_CLEARANCE_MM` of it is not fat;
- noise: the upper bound falls to soft tissue - `NOISE_MARGIN_SD` x the smoothed image's noise where that is lower, so
  a soft-tissue voxel does not reach it by chance; where the range left is narrower than `MIN_RANGE_HU` fat is not
  assessed (a low-dose scan with a sharp kernel).
A focus must hold `MIN_VOXELS` voxels and `MIN_MM3` mm3.

What the node does with it: a note for the reader (`pipeline._fat_note`), not category 1 on its own. The phantoms
paint no fat, so the rule is shown on spheres only (tests/inference/test_characterize.py); on the crop harness's 1506
phantom nodules it finds none at 20, 40 and 70 HU of noise (docs/characterization.md, "Fifty-first session"). A
false category 1 would call a possible cancer benign; a note the reader checks on the images costs a look.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from inference.characterize.attenuation import core
from inference.characterize.calcification import NOISE_MARGIN_SD, SOFT_TISSUE_HU
from inference.characterize.segment.masks import dilate_mm

FAT_HU = (-120.0, -40.0)
# the upper bound stands NOISE_MARGIN_SD x the noise under soft tissue, as the calcium threshold stands over it
MIN_RANGE_HU = 30.0
AIR_HU = -300.0  # aerated: lung, a bronchus, a cavity (and their partial volume more than half air)
AIR_CLEARANCE_MM = 2.0
MIN_VOXELS = 3
MIN_MM3 = 8.0  # a focus of about 2.5 mm


def fat_focus(smooth: np.ndarray, mask: np.ndarray, spacing: np.ndarray, noise_sd: float | None) -> tuple[float, float]:
    """(volume in mm3, mean HU) of the fat inside a solid nodule's `mask` on `smooth` (the ROI's lightly smoothed HU;
    `noise_sd` its noise, `calcification.lung_noise_sd`); (0, 0) where there is none or the noise leaves no range."""
    sp = np.asarray(spacing, float)
    low, high = FAT_HU
    if noise_sd is not None:
        high = min(high, SOFT_TISSUE_HU - NOISE_MARGIN_SD * noise_sd)
    if high - low < MIN_RANGE_HU or not mask.any():
        return 0.0, 0.0
    candidate = core(mask, sp) & (smooth >= low) & (smooth <= high)
    if not candidate.any():
        return 0.0, 0.0
    air = smooth < AIR_HU
    labels, n = ndimage.label(candidate, structure=np.ones((3, 3, 3), bool))
    voxel = float(np.prod(sp))
    volume, total_hu = 0.0, 0.0
    for label in range(1, n + 1):
        focus = labels == label
        count = int(focus.sum())
        if count < MIN_VOXELS or count * voxel < MIN_MM3:
            continue
        if (dilate_mm(focus, AIR_CLEARANCE_MM, sp) & air).any():
            continue  # partial volume round air: a bronchus, a cavity, the lung
        volume += count * voxel
        total_hu += float(smooth[focus].sum())
    if volume == 0.0:
        return 0.0, 0.0
    return volume, total_hu * voxel / volume
