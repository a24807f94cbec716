"""A phantom's nodule characterised as the pipeline would, beside its truth volume as characterize_eval counts it:
the one helper the characterisation tests share for nodules of the generator's phantoms."""
from __future__ import annotations

import numpy as np

from inference.characterize import characterize_nodule
from inference.characterize.model import NoduleCharacteristics
from inference.phantom import PhantomNodule, phantom_and_anatomy
from inference.training.characterize_eval import DRAWN_LUNG_MARGIN_MM, painted_volumes, truth_region
from inference.phantom.added_noise import raised_to
from inference.phantom.build import NOISE_SD_HU as PHANTOM_NOISE_HU  # the generator's noise per voxel


def phantom_nodule_as_detected(seed: int, index: int, diameter_mm: float | None = None, *,
                               offset_voxels: tuple[float, float, float] = (0.0, 0.0, 0.0), small: bool = False,
                               noise_hu: float = PHANTOM_NOISE_HU, noise_seed: int = 0,
                               ) -> tuple[PhantomNodule, NoduleCharacteristics, float]:
    """(nodule `index` of phantom `seed` (full-size; `small`: the small one), what characterize_nodule reads from it at
    its painted centre moved by `offset_voxels` (z, y, x) with `diameter_mm` (None: the painted one) as the detector's
    diameter, its truth volume in mm3: its painted volume inside the lungs, as characterize_eval counts it). With
    `noise_hu` over the phantoms' own, noise is added round the nodule to bring it to that (`with_noise`, from
    `noise_seed`)."""
    phantom, anatomy, drawn = phantom_and_anatomy(seed, small=small, margin_mm=DRAWN_LUNG_MARGIN_MM)
    nodule = phantom.nodules[index]
    truth, _ = painted_volumes(phantom, truth_region(anatomy, drawn), nodule)
    centre = phantom.world_to_voxel(np.asarray(nodule.center_mm))[0] + np.asarray(offset_voxels, float)
    diameter = diameter_mm or nodule.diameter_mm
    hu = with_noise(phantom.hu, phantom.spacing, centre, 2 * diameter + 16.0, noise_hu, noise_seed)
    found = characterize_nodule(hu, phantom.spacing, centre, diameter, None, direction=phantom.direction)
    return nodule, found, truth


def with_noise(hu: np.ndarray, spacing: np.ndarray, centre: np.ndarray, half_mm: float, noise_hu: float,
               seed: int) -> np.ndarray:
    """`hu` with noise added in a box of `half_mm` round `centre` (voxel index) to bring its noise per voxel from the
    phantoms' PHANTOM_NOISE_HU to `noise_hu` (a low-dose scan's): Gaussian, correlated over 0.6 pixel in-plane as the
    generator's own. `hu` itself is left as it is."""
    if noise_hu <= PHANTOM_NOISE_HU:
        return hu
    lo = np.maximum(np.floor(centre - half_mm / np.asarray(spacing, float)).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half_mm / np.asarray(spacing, float)).astype(int) + 1, hu.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    noisy = np.array(hu, dtype=np.float32)
    noisy[box] = raised_to(noisy[box], noise_hu, seed)
    return noisy
