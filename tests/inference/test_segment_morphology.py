"""segment.opening_mm and dilate_mm run their distance transforms on the mask's bounding box only: they must give
what the transforms give on the whole array, also for masks that touch the array's edge."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from inference.characterize.segment.masks import dilate_mm, opening_mm


def _whole_opening(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    eroded = ndimage.distance_transform_edt(mask, sampling=spacing) > radius_mm
    return ndimage.distance_transform_edt(~eroded, sampling=spacing) <= radius_mm if eroded.any() else eroded


def _whole_dilation(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    if not mask.any():  # scipy's transform of an array without background is no distance
        return mask.copy()
    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= radius_mm


@pytest.mark.parametrize("seed", range(4))
def test_opening_and_dilation_on_the_bounding_box_equal_the_whole_arrays(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for trial in range(50):
        shape = tuple(int(n) for n in rng.integers(6, 28, 3))
        spacing = np.array([rng.choice([0.625, 1.0, 2.5, 3.0]), *[rng.uniform(0.5, 1.6)] * 2])
        mask = ndimage.gaussian_filter(rng.random(shape), rng.uniform(0.6, 3.0)) > rng.uniform(0.48, 0.58)
        if trial % 2:
            mask[:, :, 0] |= rng.random(shape[:2]) > 0.5  # on the array's edge
        radius = float(rng.uniform(0.3, 6.0))
        assert np.array_equal(opening_mm(mask, radius, spacing), _whole_opening(mask, radius, spacing))
        assert np.array_equal(dilate_mm(mask, radius, spacing), _whole_dilation(mask, radius, spacing))
        assert opening_mm(mask, radius, spacing).shape == mask.shape


def test_a_ball_far_from_the_edge_dilates_to_the_bigger_ball() -> None:
    spacing = np.array([2.5, 0.7, 0.7])
    z, y, x = np.indices((30, 80, 80))
    distance = np.sqrt(((z - 15) * 2.5) ** 2 + ((y - 40) * 0.7) ** 2 + ((x - 40) * 0.7) ** 2)
    grown = dilate_mm(distance <= 5.0, 4.0, spacing)
    # within 4 mm of a voxel of the 5 mm ball: up to 9 mm out, and everything up to 9 mm less twice the voxel's
    # half-diagonal (1.34 mm) from the centre
    assert grown[distance <= 6.3].all() and not grown[distance > 9.0 + 1e-9].any()
    strand = np.zeros_like(grown)
    strand[15, 40, 40:] = True  # one voxel thick, from the centre to the array's edge
    opened = opening_mm((distance <= 8.0) | strand, 1.5, spacing)
    assert opened[distance <= 8.0 - 2 * 1.34].all() and not opened[strand & (distance > 11.0)].any()
