"""Per exam: lung volume, LAA-950 emphysema index, and whether the lungs are fully in the scan.

- LAA-950: the percentage of lung voxels below -950 HU, the standard CT emphysema index (Gevenois
  et al., Am J Respir Crit Care Med 1996;154:187-192, validated -950 HU against histology on thin
  sections; used by COPDGene and the Fleischner statement on CT emphysema). Noise and thick
  slices shift it: it is comparable only between similar protocols.
- Noise: the series' noise (`noise.global_noise_hu`, on up to `NOISE_SLICES` slices through the lungs) above
  `LAA950_MAX_NOISE_HU` makes LAA-950 unreliable (`laa950_reliable` False; the pipeline then leaves it out of
  Brock's emphysema input and says so). Noise spreads normal lung's attenuation, so more of it falls below -950 HU:
  lidc-idri-0002 (normal lung, 13.5 HU of noise) measures 1.1 % LAA-950; with correlated noise added, 1.9 % at
  21.5 HU, 2.7 % at 25.5, 3.8 % at 29.5, 5.0 % at 33.5, 8.0 % at 41.5 and 14 % at 59.5 HU (the noise of
  filtered-back-projection low-dose CT; den Harder et al., Eur Radiol Exp 2018;2:30: reduced dose overstates
  emphysema). At 25 HU that normal lung has gained 1.5 points, two fifths of the way to the 5 % emphysema
  threshold; the phantoms measure 15-20 HU.
- Coverage: an uncut lung tapers to the apex and the costophrenic recesses, so its first and last
  slices in the scan hold little or no lung. When the lung mask on the first or last slice of the
  volume covers at least `CUT_SHARE` of the largest lung slice's area, the lungs run out of the
  field of view: Lung-RADS 0 (incomplete).
"""
from __future__ import annotations

import numpy as np

from inference.characterize.model import ExamCharacteristics
from inference.characterize.noise import global_noise_hu

EMPHYSEMA_HU = -950.0
CUT_SHARE = 0.1
LAA950_MAX_NOISE_HU = 25.0
NOISE_SLICES = 24


def characterize_exam(volume_hu: np.ndarray, spacing_zyx: np.ndarray, lung_mask: np.ndarray) -> ExamCharacteristics:
    if lung_mask.shape != volume_hu.shape:
        raise ValueError(f"lung mask shape {lung_mask.shape} differs from the volume {volume_hu.shape}")
    spacing = np.asarray(spacing_zyx, float)
    areas = lung_mask.sum(axis=(1, 2))
    n = int(areas.sum())
    if n == 0:
        return ExamCharacteristics(0.0, 0.0, False, "no lung found in the series", (0.0, 0.0))
    volume_ml = n * float(np.prod(spacing)) / 1000.0
    low = 0
    lung_slices = np.flatnonzero(areas)
    for z in lung_slices:  # slice by slice: no full-size temporaries
        low += int(np.count_nonzero(volume_hu[z][lung_mask[z]] < EMPHYSEMA_HU))
    laa = 100.0 * low / n
    sample = lung_slices[np.linspace(0, len(lung_slices) - 1, min(NOISE_SLICES, len(lung_slices))).astype(int)]
    noise = global_noise_hu(volume_hu, float(spacing[1:].mean()), sample.tolist())
    reliable = noise is None or noise <= LAA950_MAX_NOISE_HU
    first, last = float(areas[0] / areas.max()), float(areas[-1] / areas.max())
    cut = [name for name, share in (("first (lowest index)", first), ("last", last)) if share >= CUT_SHARE]
    reason = None
    if cut:
        reason = (f"the lungs are cut by the field of view: lung fills {max(first, last):.0%} of the largest "
                  f"lung slice on the {' and '.join(cut)} slice(s)")
    return ExamCharacteristics(round(volume_ml, 1), round(laa, 2), not cut, reason, (round(first, 3), round(last, 3)),
                               image_noise_hu=noise, laa950_reliable=reliable)
