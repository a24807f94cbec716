"""The long and short axes placed below a pixel (measure.subpixel_slice_axes), on digitised planes and nodules of exactly
known size (issue 11: the mean diameter is the Lung-RADS measurement).

The longest distance between pixel centres plus one pixel (`slice_axes`) reads a disc's long axis 0.7-0.85 pixel
long: the direction picked as the longest is the one whose outermost pixel centres lie nearest the edge."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from inference.characterize import characterize_nodule
from inference.characterize.measure import OUTSIDE_SHARE_CAP, outline_axes, slice_axes, subpixel_slice_axes
from inference.characterize.model import Axes
from tests.inference.test_characterize import SPACING, ellipsoid_fraction, lung, paint

PIXEL = np.array([0.7, 0.7])
LUNG_HU, NODULE_HU = -860.0, 40.0


def ellipse_share(shape: tuple[int, int], centre: tuple[float, float], semi_yx: tuple[float, float],
                  sub: int = 16) -> np.ndarray:
    """Each pixel's share inside an ellipse (pixel units), from sub x sub samples: a digitised edge."""
    steps = (np.arange(sub) + 0.5) / sub - 0.5
    y = (np.arange(shape[0])[:, None] + steps[None, :]).reshape(-1) - centre[0]
    x = (np.arange(shape[1])[:, None] + steps[None, :]).reshape(-1) - centre[1]
    inside = (y[:, None] / semi_yx[0]) ** 2 + (x[None, :] / semi_yx[1]) ** 2 <= 1.0
    return inside.reshape(shape[0], sub, shape[1], sub).mean(axis=(1, 3))


def plane_of(share: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the mask at half the contrast, the HU) of a digitised plane."""
    return share >= 0.5, LUNG_HU + share * (NODULE_HU - LUNG_HU)


@pytest.mark.parametrize("semi_yx, centre_bias_px", [
    ((4.0, 4.0), 0.5), ((6.3, 6.3), 0.5), ((11.2, 11.2), 0.5), ((4.1, 6.7), 0.15), ((7.4, 12.9), 0.15),
])
def test_the_long_axis_of_a_digitised_ellipse_is_not_read_long(semi_yx: tuple[float, float],
                                                               centre_bias_px: float) -> None:
    rng = np.random.default_rng(int(semi_yx[1] * 10))
    long_errors, short_errors, centre_errors = [], [], []
    for _ in range(12):
        share = ellipse_share((40, 40), (19.5 + rng.uniform(-0.5, 0.5), 19.5 + rng.uniform(-0.5, 0.5)), semi_yx)
        mask, hu = plane_of(share)
        long, short = subpixel_slice_axes(mask, hu, LUNG_HU, NODULE_HU, PIXEL)
        long_errors.append(long / 0.7 - 2 * max(semi_yx))
        short_errors.append(short / 0.7 - 2 * min(semi_yx))
        centre_errors.append(slice_axes(mask, PIXEL)[0] / 0.7 - 2 * max(semi_yx))
    # in pixels: within 0.2 on average and 0.4 each; the pixel-centre reading is long (discs 0.5 pixel or more)
    assert abs(np.mean(long_errors)) < 0.2 and np.max(np.abs(long_errors)) < 0.4, long_errors
    assert abs(np.mean(short_errors)) < 0.2 and np.max(np.abs(short_errors)) < 0.4, short_errors
    assert np.mean(centre_errors) > centre_bias_px


def test_a_dense_neighbour_the_mask_left_out_does_not_lengthen_the_axes() -> None:
    # a vessel of nodule density beside a disc: the segmentation cut it away, and its pixels beside the edge count
    # OUTSIDE_SHARE_CAP at most, so the outline stays at the disc's own edge
    share = ellipse_share((40, 40), (19.5, 19.5), (6.0, 6.0))
    mask, hu = plane_of(share)
    alone = subpixel_slice_axes(mask, hu, LUNG_HU, NODULE_HU, PIXEL)
    vessel = np.zeros_like(mask)
    vessel[19:21, 26:40] = True  # from the disc's right edge outwards
    hu[vessel] = NODULE_HU
    mask[vessel] = False
    near_vessel = ndimage.binary_dilation(vessel)  # the vessel and its partial-volume edge, as near_other_structures
    beside = subpixel_slice_axes(mask, hu, LUNG_HU, NODULE_HU, PIXEL, near_vessel)
    assert beside[0] == pytest.approx(alone[0], abs=0.3) and beside[0] / 0.7 == pytest.approx(12.0, abs=0.4)
    # not told where the vessel is, a pixel left out counts under half at most: the outline stops at its centre
    assert OUTSIDE_SHARE_CAP <= 0.5
    assert subpixel_slice_axes(mask, hu, LUNG_HU, NODULE_HU, PIXEL)[0] <= alone[0] + 0.7


def test_outline_axes_of_a_fraction_are_its_half_crossing() -> None:
    # a fine grid's fraction of an ellipse of 10 x 6 mm: its outline at 0.5 gives the axes to a few hundredths
    fine = np.array([0.05, 0.05])
    share = ellipse_share((260, 260), (129.5, 129.5), (60.0, 100.0), sub=4)
    long, short = outline_axes(share, fine)
    assert long == pytest.approx(10.0, abs=0.05) and short == pytest.approx(6.0, abs=0.05)
    assert outline_axes(np.zeros((5, 5)), fine) == (0.0, 0.0)


def test_a_small_mask_or_no_contrast_falls_back_to_the_pixel_centres() -> None:
    mask = np.zeros((5, 5), bool)
    mask[2, 2:4] = True
    hu = np.where(mask, NODULE_HU, LUNG_HU)
    assert subpixel_slice_axes(mask, hu, LUNG_HU, NODULE_HU, PIXEL) == slice_axes(mask, PIXEL)
    # levels under 1 HU apart say nothing about where the edge lies
    square = np.zeros((5, 5), bool)
    square[1:4, 1:4] = True
    assert subpixel_slice_axes(square, hu, LUNG_HU, LUNG_HU + 0.5, PIXEL) == slice_axes(square, PIXEL)


SHAPE = (40, 80, 80)


def section_errors(axes: Axes, centre: np.ndarray, semi_zyx: tuple[float, float, float]) -> tuple[float, float]:
    """(long, short) measured minus the exact axes of an ellipsoid's section on the slice measured (its y semi-axis
    the longer)."""
    a, b, c = semi_zyx
    section = np.sqrt(max(0.0, 1 - ((axes.slice_index - centre[0]) * SPACING[0] / a) ** 2))
    return axes.long_mm - 2 * max(b, c) * section, axes.short_mm - 2 * min(b, c) * section


def assert_within_a_tenth_on_average(errors: list[tuple[float, float]], each_mm: float = 0.4) -> None:
    long_err, short_err = np.array(errors).T
    assert abs(long_err.mean()) <= 0.1 and abs(short_err.mean()) <= 0.1, errors
    assert np.abs(long_err).max() <= each_mm and np.abs(short_err).max() <= each_mm, errors


@pytest.mark.parametrize("nodule_hu, noise_hu", [(40.0, 0.0), (40.0, 50.0), (-600.0, 0.0), (-600.0, 50.0)])
def test_a_nodules_axes_are_read_to_a_tenth_of_a_millimetre_on_average(nodule_hu: float, noise_hu: float) -> None:
    # solid and ground-glass ellipsoids of 6-22 mm at sub-voxel positions, with the lung's noise and more: the axes
    # of the section on the slice the measurement picks, against that section's own (exact) size
    rng = np.random.default_rng(5)
    errors = []
    for k in range(10):
        a = rng.uniform(3, 7)
        semi = (a, a * rng.uniform(1, 1.6), a)
        centre = np.array([20.0, 40.0, 40.0]) + rng.uniform(0, 1, 3)
        hu = lung(k, SHAPE) + np.random.default_rng(k + 99).normal(0, noise_hu, SHAPE).astype(np.float32)
        paint(hu, ellipsoid_fraction(semi, centre, SHAPE), nodule_hu)
        c = characterize_nodule(hu, SPACING, centre, 2 * semi[1])
        assert c.axes is not None
        errors.append(section_errors(c.axes, centre, semi))
    assert_within_a_tenth_on_average(errors)


def test_a_part_solid_nodules_solid_part_is_read_to_a_tenth_of_a_millimetre_on_average() -> None:
    # spheres of ground glass with a solid core of 40-60 % of their diameter, both with their partial volume: the solid
    # part's edge lies between the ground glass and the solid tissue, and is placed there
    rng = np.random.default_rng(7)
    errors = []
    for k in range(8):
        radius = rng.uniform(5, 8)
        core = (radius * rng.uniform(0.4, 0.6),) * 3
        centre = np.array([20.0, 40.0, 40.0]) + rng.uniform(0, 1, 3)
        hu = lung(k, SHAPE)
        paint(hu, ellipsoid_fraction((radius,) * 3, centre, SHAPE), -600.0)
        paint(hu, ellipsoid_fraction(core, centre, SHAPE), 40.0)
        c = characterize_nodule(hu, SPACING, centre, 2 * radius)
        assert c.type == "part_solid" and c.solid_axes is not None
        errors.append(section_errors(c.solid_axes, centre, core))
    assert_within_a_tenth_on_average(errors, each_mm=1.0)
