"""Spicules (`inference.characterize.segment.spicules`), which make a margin spiculated: Lung-RADS 4X and Brock's
spiculation term (issue 11). Those the segmentation did not keep are counted; clumps of noise are not."""
from __future__ import annotations

import numpy as np
import pytest

from inference.characterize import characterize_nodule
from inference.characterize.segment.lung import LungNoise
from inference.characterize.segment.spicules import count_spicules, faint_strands
from inference.phantom.added_noise import raised_to
from tests.inference.phantom_nodules import phantom_nodule_as_detected
from tests.inference.test_characterize import (COARSE, COARSE_CENTRE, COARSE_SHAPE, ellipsoid_fraction, lung,
                                               paint)

LUNG_HU = -860.0
SPACING = np.array([1.0, 1.0, 1.0])
SHAPE = (40, 40, 40)
CENTRE = np.array([20, 20, 20])


def _sphere(radius_vox: float) -> np.ndarray:
    z, y, x = np.indices(SHAPE)
    return (z - CENTRE[0]) ** 2 + (y - CENTRE[1]) ** 2 + (x - CENTRE[2]) ** 2 <= radius_vox ** 2


def _line_along_x(first: int, last: int) -> np.ndarray:
    """A one-voxel line from x = `first` to `last` (inclusive) through the centre's row."""
    line = np.zeros(SHAPE, bool)
    line[CENTRE[0], CENTRE[1], first:last + 1] = True
    return line


def test_a_protrusion_is_a_spicule_only_where_it_stands_clear_of_the_noise() -> None:
    # a 5 mm sphere with a one-voxel strand reaching 5 mm beyond it, free in the lung: its voxels 300 HU over the lung
    # (5 x the noise of 60 HU) are tissue; 150 HU over it (2.5 x) is what the smoothing of a noisy scan joins to a
    # nodule. Without the HU, the count is the shape's alone and counts both.
    mask = _sphere(5) | _line_along_x(CENTRE[2] + 5, CENTRE[2] + 10)
    noise = LungNoise(LUNG_HU, 60.0)
    for contrast, expected in ((300.0, 1), (150.0, 0)):
        hu = np.full(SHAPE, LUNG_HU, np.float32)
        hu[mask] = LUNG_HU + contrast
        hu[_sphere(5)] = 40.0
        assert count_spicules(mask, mask, SPACING, hu, noise) == expected, contrast
        assert count_spicules(mask, mask, SPACING) == 1


def test_a_spicule_whose_tip_touches_a_clump_of_noise_still_ends_freely() -> None:
    # a spicule ends freely: a candidate voxel beyond its tip belongs to something that runs on (a vessel, the wall).
    # On a noisy scan the smoothing lifts clumps of noise over the candidates' threshold beside the tips; such a clump
    # is no structure: it averages under 3.5 x the noise over the lung (here 90 HU at 60 HU of noise), and the spicule
    # still counts. A vessel there (tissue, 900 HU over the lung) still stops it; so does anything without the HU.
    spicule = _line_along_x(CENTRE[2] + 5, CENTRE[2] + 10)
    mask = _sphere(5) | spicule
    beyond_tip = np.zeros(SHAPE, bool)
    beyond_tip[CENTRE[0] - 1:CENTRE[0] + 2, CENTRE[1] - 1:CENTRE[1] + 2, CENTRE[2] + 11:CENTRE[2] + 14] = True
    noise = LungNoise(LUNG_HU, 60.0)
    for contrast, expected in ((90.0, 1), (900.0, 0)):
        hu = np.full(SHAPE, LUNG_HU, np.float32)
        hu[_sphere(5)] = 40.0
        hu[spicule] = LUNG_HU + 400.0
        hu[beyond_tip] = LUNG_HU + contrast
        seed = mask | beyond_tip
        assert count_spicules(mask, seed, SPACING, hu, noise) == expected, contrast
        assert count_spicules(mask, seed, SPACING) == 0


def test_faint_strands_are_short_pieces_joined_to_the_nodule() -> None:
    # a 5 mm nodule's mask; beside it on the raw HU a short strand (ends 5 mm beyond it), a line that runs on to the
    # region's edge (a vessel), and a strand that does not touch it
    mask = _sphere(5)
    hu = np.full(SHAPE, LUNG_HU, np.float32)
    hu[mask] = 40.0
    short = _line_along_x(CENTRE[2] + 6, CENTRE[2] + 10)
    vessel = np.zeros(SHAPE, bool)
    vessel[CENTRE[0], 0:CENTRE[1] - 5, CENTRE[2]] = True
    apart = np.zeros(SHAPE, bool)
    apart[CENTRE[0] + 3, CENTRE[1] + 3, 2:8] = True
    for piece in (short, vessel, apart):
        hu[piece] = -500.0  # 360 HU over the lung: more than the 200 HU floor and 5 x the noise
    strands = faint_strands(hu, mask, LungNoise(LUNG_HU, 20.0), SPACING)
    assert strands[short].all()
    assert not strands[vessel].any() and not strands[apart].any()
    assert not strands[mask].any()
    # at 80 HU of noise 360 HU is under 5 x the noise: nothing
    assert not faint_strands(hu, mask, LungNoise(LUNG_HU, 80.0), SPACING).any()
    # no lung to measure the noise on: nothing
    assert not faint_strands(hu, mask, None, SPACING).any()


def test_clumps_of_noise_on_a_smooth_nodule_are_no_spicules() -> None:
    # twelve smooth 10 mm spheres on 1.5 x 1.5 x 3 mm voxels with 70 HU of noise (a low-dose scan's): the smoothing
    # joins clumps of noise to the nodule that reach as far as a spicule and end freely; without the contrast test
    # 2 of the 12 read spiculated (4X at 8 mm and more)
    sphere = ellipsoid_fraction((5.0, 5.0, 5.0), COARSE_CENTRE, COARSE_SHAPE, COARSE)
    margins = []
    for seed in range(12):
        hu = lung(seed, COARSE_SHAPE)
        paint(hu, sphere, 40.0)
        margins.append(characterize_nodule(raised_to(hu, 70.0, seed), COARSE, COARSE_CENTRE, 10.0).margin)
    assert margins == ["smooth"] * 12


@pytest.mark.parametrize("seed, index, kind", [(8019, 1, "solid"), (7034, 1, "part_solid")])
def test_a_phantoms_spicules_the_segmentation_did_not_keep_are_counted(seed: int, index: int, kind: str) -> None:
    # small phantoms on 2.5-3 mm slices, free in the lung: a 6.0 mm solid and a 9.9 mm part-solid spiculated nodule
    # whose spicules fell below the candidates' threshold or went to a neighbour's basin: read smooth before (the
    # part-solid one Lung-RADS 4B for the painted 4X)
    nodule, c, _ = phantom_nodule_as_detected(seed, index, small=True)
    assert (nodule.margin, nodule.attached_to) == ("spiculated", None)
    assert c.type == kind
    assert c.margin == "spiculated" and c.features["spicules"] >= 1
