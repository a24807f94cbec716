"""The aerated lung round a nodule (its level, the partial-volume baseline) and the walls of airways beside it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import ndtri

from inference.characterize.noise import robust_sd
from inference.characterize.segment.masks import dilate_mm, enclosed_in_plane
from inference.characterize.segment.segmentation import SEED_THRESHOLD_HU

DEFAULT_PARENCHYMA_HU = -850.0
# The air of a lumen (a cyst's, an airway's): under LUMEN_MAX_HU (a lumen reads -1000 ... -950, normal lung -900 ...
# -800) and LUMEN_BELOW_LUNG_HU under the lung round it (emphysematous lung can reach -950)
LUMEN_MAX_HU = -950.0
LUMEN_BELOW_LUNG_HU = 60.0
# An airway beside a nodule: its wall (1-2 mm of soft tissue, read -300 ... -600 HU through partial volume) joins the
# nodule's ground-glass edge with no neck, and the first watershed's nodule took it: full-size 17039:0 (a free 6.0 mm
# part-solid nodule, +49 %) and 24016:3 (8.1 mm solid by the pleura, +88 %, read part-solid). On a slice the wall is a
# ring of candidates round the lumen, and the lumen holds air where lung has its own density: a region the candidates
# enclose whose darkest voxel is darker than the lung's noise explains for a region of its size (the chance that so
# many voxels of lung hold one so dark, by the union bound, under LUMEN_CHANCE) is a lumen, and the candidates within
# AIRWAY_WALL_PX pixels of it are the airway's wall. On the crop harness's 1507 phantom nodules (docs/
# characterization.md, "Thirty-seventh session") 24016:3 reads solid at -9 %, nothing crossed 15 % the other way, and
# no other nodule moved more than 5 points. 17039:0's lumens (2-4 voxels, 2.2-2.9 x the lung's noise under its level)
# pass only at a LUMEN_CHANCE of 10 % (then -11 %), where a pocket of lung of a hundred voxels passes for a lumen about
# one slice in ten. Without the test for air, such pockets that vessels enclose beside a nodule count as lumens:
# 15014:1 (ground glass in a bundle) -12 -> -22 %.
AIRWAY_WALL_PX = 1.5
LUMEN_CHANCE = 0.01
MIN_LUNG_VOXELS = 20  # fewer aerated voxels in the ROI give no level (nor noise) of the lung


@dataclass(frozen=True)
class LungNoise:
    """The level (HU) of the aerated lung round a nodule and its noise (HU, one standard deviation)."""

    level: float
    sd: float


def lung_noise(lung: np.ndarray) -> LungNoise | None:
    """The level (median) and noise (`noise.robust_sd`) of the aerated `lung` voxels' HU (`clear_lung`); None with
    fewer than MIN_LUNG_VOXELS of them."""
    if lung.size < MIN_LUNG_VOXELS:
        return None
    level = float(np.median(lung))
    return LungNoise(level, robust_sd(lung, level))


def aerated_hu(hu: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """HU of the ROI's aerated lung voxels outside `exclude`."""
    return hu[(hu < SEED_THRESHOLD_HU) & (hu > -1024) & ~exclude]


def clear_lung(hu: np.ndarray, seed: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """HU of the ROI's aerated lung more than 2 mm from any candidate (`seed`): its level is the partial-volume
    baseline, its spread the noise `airway_walls` weighs a lumen against."""
    return aerated_hu(hu, dilate_mm(seed, 2.0, spacing))


def lumen_air_limit_hu(lung_hu: float) -> float:
    """The HU under which a voxel is a lumen's air, beside lung of level `lung_hu` (LUMEN_MAX_HU)."""
    return min(LUMEN_MAX_HU, lung_hu - LUMEN_BELOW_LUNG_HU)


def parenchyma_level(lung: np.ndarray) -> float:
    """Median HU of aerated `lung` voxels (the partial-volume baseline), or the default with too few of them."""
    return float(np.median(lung)) if lung.size >= MIN_LUNG_VOXELS else DEFAULT_PARENCHYMA_HU


def airway_walls(seed: np.ndarray, hu: np.ndarray, lung: LungNoise | None, spacing: np.ndarray) -> np.ndarray:
    """The candidates (`seed`) within AIRWAY_WALL_PX pixels, on their slice, of an airway's lumen: a region that the
    candidates enclose on an axial slice and whose darkest voxel (raw `hu`) lies below the level of the lung (`lung`:
    `lung_noise` of `clear_lung`) by more than its noise explains (the chance that a region of lung of that many voxels
    holds one so dark under LUMEN_CHANCE). None for `lung` (too few aerated voxels): no walls. See AIRWAY_WALL_PX."""
    walls = np.zeros_like(seed)
    if lung is None:
        return walls
    level, noise = lung.level, lung.sd
    pixel = spacing[1:]
    holes = enclosed_in_plane(seed)
    for k in np.flatnonzero(holes.any(axis=(1, 2))):
        labels, n = ndimage.label(holes[k])
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        darkest = np.asarray(ndimage.minimum(hu[k], labels, index), float)
        size = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        lumen = np.concatenate([[False], darkest < level + noise * ndtri(LUMEN_CHANCE / size)])[labels]
        if lumen.any():
            near = ndimage.distance_transform_edt(~lumen, sampling=pixel) <= AIRWAY_WALL_PX * float(pixel.mean())
            walls[k] = seed[k] & near
    return walls
