"""Noise added to an image to make it read as a noisier (low-dose) scan's: the one helper the characterisation tests and
the crop evaluation (`inference.training.characterize_crops --noise-hu`) share for it."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from inference.phantom.build import NOISE_SD_HU


def correlated_noise(shape: tuple[int, ...], sd_hu: float, seed: int, draw_dtype: type = np.float64) -> np.ndarray:
    """Gaussian noise of standard deviation `sd_hu`, correlated over 0.6 pixel in-plane as the phantom generator's own
    (a reconstruction kernel's), as float32. `draw_dtype` is the dtype drawn in: it decides the random stream, so a
    test's measured figures stay those of the dtype it was measured with."""
    draw = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape, dtype=draw_dtype), (0, 0.6, 0.6))
    return (draw * draw.dtype.type(sd_hu / float(draw.std()))).astype(np.float32)


def raised_to(hu: np.ndarray, noise_hu: float, seed: int, own_hu: float = NOISE_SD_HU) -> np.ndarray:
    """`hu` (as float32) with `correlated_noise` added that brings its noise per voxel from `own_hu` (the phantoms'
    NOISE_SD_HU) to `noise_hu`, a low-dose scan's; `hu` itself where `noise_hu` is no more than `own_hu`."""
    if noise_hu <= own_hu:
        return hu
    return hu.astype(np.float32) + correlated_noise(hu.shape, float(np.sqrt(noise_hu ** 2 - own_hu ** 2)), seed)
