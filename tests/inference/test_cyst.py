"""Cystic airspaces (inference/characterize/cyst.py) on spheres of exactly known wall: thin-walled, thick-walled,
focally thickened, multilocular, a nodule's cavity, and what encloses no air (Lung-RADS v2022 atypical cysts)."""
from __future__ import annotations

import numpy as np
import pytest

from inference.characterize.cyst import cystic_airspace
from inference.characterize.model import Cyst
from tests.inference.test_characterize import CENTRE, SPACING, ellipsoid_fraction, fraction, lung, paint

SOFT_TISSUE_HU = 40.0
AIR_HU = -1000.0


def cyst_image(outer_mm: float, wall_mm: float, seed: int = 3, noise_hu: float = 0.0,
               shape: tuple[int, int, int] = (60, 96, 96), spacing: np.ndarray = SPACING,
               centre: np.ndarray = CENTRE) -> np.ndarray:
    """A sphere of soft tissue of radius `outer_mm` with air inside `outer_mm - wall_mm`, in aerated lung."""
    hu = lung(seed, shape)
    paint(hu, ellipsoid_fraction((outer_mm,) * 3, centre, shape, spacing), SOFT_TISSUE_HU)
    paint(hu, ellipsoid_fraction((outer_mm - wall_mm,) * 3, centre, shape, spacing), AIR_HU)
    if noise_hu:
        hu += np.random.default_rng(seed + 100).normal(0.0, noise_hu, shape).astype(np.float32)
    return hu


def measured(hu: np.ndarray, diameter_mm: float, spacing: np.ndarray = SPACING, centre: np.ndarray = CENTRE) -> Cyst:
    cyst = cystic_airspace(hu, spacing, centre, diameter_mm)
    assert cyst is not None
    return cyst


@pytest.mark.parametrize("outer, wall, kind", [
    (6.0, 1.0, "thin_walled"), (8.0, 1.0, "thin_walled"), (10.0, 1.0, "thin_walled"), (8.0, 1.5, "thin_walled"),
    (8.0, 2.0, "thick_walled"), (6.0, 2.0, "thick_walled"), (10.0, 2.5, "thick_walled"), (8.0, 3.0, "thick_walled"),
])
@pytest.mark.parametrize("noise_hu", [0.0, 70.0])
def test_the_wall_is_measured_across_and_the_lesion_whole(outer: float, wall: float, kind: str,
                                                          noise_hu: float) -> None:
    """The wall's thickness within 0.2 mm of what was painted (its median over the rays), the lesion's mean diameter
    within 0.7 mm (a 1 mm wall's outer edge, at half its partial-volume peak, lies 0.2-0.3 mm out: +0.5 mm across), and
    the v2022 line at 2 mm, on 0.7 mm pixels and 1 mm slices, at the phantoms' noise and a low-dose scan's 70 HU."""
    cyst = measured(cyst_image(outer, wall, noise_hu=noise_hu), 2 * outer)
    assert cyst.kind == kind and cyst.loculi == 1
    assert abs(cyst.wall_median_mm - wall) <= 0.2, cyst
    assert abs(cyst.axes.mean_mm - 2 * outer) <= 0.7, cyst
    assert abs(cyst.lumen_diameter_mm - 2 * (outer - wall)) <= 0.6, cyst
    assert cyst.wall_share >= 0.95


@pytest.mark.parametrize("wall, kind", [(1.0, "thin_walled"), (1.5, "thin_walled"), (2.0, "thick_walled"),
                                        (3.0, "thick_walled")])
def test_thick_slices(wall: float, kind: str) -> None:
    """2.5 mm slices: the wall is measured in plane, on the lumen's central slices, as a reader measures it."""
    spacing, shape, centre = np.array([2.5, 0.7, 0.7]), (24, 96, 96), np.array([12.0, 48.0, 48.0])
    cyst = measured(cyst_image(8.0, wall, shape=shape, spacing=spacing, centre=centre), 16.0, spacing, centre)
    assert cyst.kind == kind and abs(cyst.wall_median_mm - wall) <= 0.2, cyst


@pytest.mark.parametrize("nodule_radius", [3.0, 4.0])
def test_a_nodule_on_a_thin_wall_makes_the_cyst_atypical(nodule_radius: float) -> None:
    """A nodule on the wall of a 1 mm-walled cyst (a cancer's pattern) spans less than a tenth of the rays; a few rays
    of 2 mm or more are a focal thickening, and the cyst is thick-walled, not a benign thin-walled one."""
    hu = cyst_image(8.0, 1.0)
    paint(hu, ellipsoid_fraction((nodule_radius,) * 3, CENTRE + np.array([0.0, 0.0, 7.0 / SPACING[2]])), SOFT_TISSUE_HU)
    cyst = measured(hu, 16.0)
    assert cyst.kind == "thick_walled"
    assert cyst.wall_median_mm < 1.5 and cyst.wall_max_mm >= 2 * nodule_radius - 1.0, cyst
    assert "focally thickened" in cyst.describe()


def test_a_septum_makes_two_loculi() -> None:
    """A 20 mm cyst with a 1.2 mm wall and a 1.2 mm septum through its centre: multilocular."""
    hu = cyst_image(10.0, 1.2)
    paint(hu, fraction(lambda z, y, x: (np.abs(x) <= 0.6) & (z * z + y * y + x * x <= 100.0)), SOFT_TISSUE_HU)
    cyst = measured(hu, 20.0)
    assert cyst.kind == "multilocular" and cyst.loculi == 2, cyst


def test_a_small_lumen_in_a_nodule_is_a_cavity() -> None:
    """Air 6 mm across in a 16 mm nodule (a wall of 5 mm): under half its diameter, a nodule with a cavity."""
    cyst = measured(cyst_image(8.0, 5.0), 16.0)
    assert cyst.kind == "cavity" and not cyst.is_cyst
    assert abs(cyst.wall_median_mm - 5.0) <= 0.3 and abs(cyst.lumen_diameter_mm - 6.0) <= 0.6, cyst


def test_a_thin_cyst_on_the_chest_wall_is_not_called_thin_walled() -> None:
    """Where a third of the wall lies against the chest wall, a thicker part could hide there: not thin-walled."""
    hu = lung(3)
    paint(hu, fraction(lambda z, y, x: x + 0 * y + 0 * z > 8.0), SOFT_TISSUE_HU)
    paint(hu, ellipsoid_fraction((8.0,) * 3), SOFT_TISSUE_HU)
    paint(hu, ellipsoid_fraction((7.0,) * 3), AIR_HU)
    cyst = measured(hu, 16.0)
    assert cyst.kind == "thin_walled_in_part" and cyst.wall_share < 0.9, cyst


def test_no_air_no_cyst() -> None:
    """A solid nodule, one with a vessel through it, a ring of vessel enclosing lung on its slices (lung, not air), and
    ground glass (under the wall's -500 HU) enclose no air."""
    solid = lung(3)
    paint(solid, ellipsoid_fraction((5.0,) * 3), SOFT_TISSUE_HU)
    assert cystic_airspace(solid, SPACING, CENTRE, 10.0) is None
    paint(solid, fraction(lambda z, y, x: (z * z + y * y <= 1.5**2) & (x == x)), SOFT_TISSUE_HU)
    assert cystic_airspace(solid, SPACING, CENTRE, 10.0) is None
    loop = lung(3)
    paint(loop, fraction(lambda z, y, x: (np.sqrt(y * y + x * x) - 5.0) ** 2 + z * z <= 1.5**2), SOFT_TISSUE_HU)
    assert cystic_airspace(loop, SPACING, CENTRE, 10.0) is None
    ground_glass = lung(3)
    paint(ground_glass, ellipsoid_fraction((6.0,) * 3), -600.0)
    assert cystic_airspace(ground_glass, SPACING, CENTRE, 12.0) is None


def test_an_airway_or_a_bulla_beside_a_nodule_is_no_cyst() -> None:
    """An airway crossing the slices is a ring on each of them, but its lumen runs out of the ROI; a bulla beside a
    solid nodule is air with a wall, but the detector's centre lies in the nodule, 4 mm from it: neither is the lesion
    found, which the nodule's own rules then grade."""
    airway = lung(3)
    paint(airway, fraction(lambda z, y, x: (y * y + x * x <= 3.5**2) & (z == z)), SOFT_TISSUE_HU)
    paint(airway, fraction(lambda z, y, x: (y * y + x * x <= 2.5**2) & (z == z)), AIR_HU)
    assert cystic_airspace(airway, SPACING, CENTRE, 8.0) is None
    beside = lung(3)
    paint(beside, ellipsoid_fraction((4.0,) * 3), SOFT_TISSUE_HU)
    bulla = CENTRE + np.array([0.0, 0.0, 12.0 / SPACING[2]])
    paint(beside, ellipsoid_fraction((8.0,) * 3, bulla), SOFT_TISSUE_HU)
    paint(beside, ellipsoid_fraction((7.0,) * 3, bulla), AIR_HU)
    assert cystic_airspace(beside, SPACING, CENTRE, 8.0) is None
    # where the detector finds the bulla, the nodule on its wall is a focal thickening: an atypical cyst
    assert measured(beside, 16.0, centre=bulla).kind == "thick_walled"


@pytest.mark.parametrize("noise_hu", [0.0, 70.0])
def test_ground_glass_round_a_thin_walled_cyst_is_no_benign_cyst(noise_hu: float) -> None:
    """A 1 mm-walled cyst in a 2 mm layer of ground glass (-600 HU; a cancer with a cystic airspace) is a cyst with an
    opacity beside its wall, not a thin-walled one; the plain thin-walled cyst reads none."""
    hu = lung(3)
    paint(hu, ellipsoid_fraction((10.0,) * 3), -600.0)
    paint(hu, ellipsoid_fraction((8.0,) * 3), SOFT_TISSUE_HU)
    paint(hu, ellipsoid_fraction((7.0,) * 3), AIR_HU)
    hu += np.random.default_rng(7).normal(0.0, noise_hu, hu.shape).astype(np.float32)
    cyst = measured(hu, 20.0)
    assert cyst.kind == "with_opacity" and cyst.opacity_share >= 0.5, cyst
    assert measured(cyst_image(8.0, 1.0, noise_hu=noise_hu), 16.0).opacity_share < 0.1


@pytest.mark.parametrize("radius, along", [(1.0, "z"), (2.0, "z"), (1.5, "y"), (2.0, "y")])
def test_a_vessel_passing_a_thin_wall_is_no_thickening(radius: float, along: str) -> None:
    """A vessel of 2-4 mm touching a 1 mm-walled cyst, across the slices or in their plane, widens the wall's profile
    where it touches (3-12 mm: it read thick-walled, 4A); it runs on into the lung and is no thicker than a vessel, so
    its rays are left out and the cyst stays thin-walled. A 6 mm nodule on the wall fed by a 2 mm vessel stays a
    focal thickening."""
    def vessel(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        across = y if along == "z" else z
        return (across * across + (x - 8.0 - radius) ** 2 <= radius**2) & (z == z) & (y == y)

    hu = cyst_image(8.0, 1.0)
    paint(hu, fraction(vessel), SOFT_TISSUE_HU)
    cyst = measured(hu, 16.0)
    assert cyst.kind == "thin_walled" and cyst.wall_max_mm < 2.0, cyst
    fed = cyst_image(8.0, 1.0)
    paint(fed, ellipsoid_fraction((3.0,) * 3, CENTRE + np.array([0.0, 0.0, 9.5 / SPACING[2]])), SOFT_TISSUE_HU)
    paint(fed, fraction(lambda z, y, x: (z * z + y * y <= 1.0) & (x >= 9.5)), SOFT_TISSUE_HU)
    assert measured(fed, 16.0).kind == "thick_walled"
