"""Nodule and exam characterisation on synthetic arrays of exactly known geometry (issue 11)."""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from scipy import ndimage

from inference.characterize import characterize_exam, characterize_nodule
from inference.characterize.location import juxtapleural
from inference.characterize.measure import (CONTACT_SHARE_CAVEAT, local_lung_hu, non_solid_volume_mm3,
                                           solid_nodule_volume_mm3, spicule_strands, volume_mm3)
from inference.characterize.model import NoduleCharacteristics
from inference.characterize.segment import DENSE_HU, Segmentation, restore_ground_glass_base
from inference.characterize.segment.lung import AIRWAY_WALL_PX, airway_walls, clear_lung, lung_noise
from inference.characterize.segment.masks import distance2
from inference.characterize.segment.split import _give_back_ground_glass
from tests.inference.phantom_nodules import phantom_nodule_as_detected

SPACING = np.array([1.0, 0.7, 0.7])  # (z, y, x) mm
SHAPE = (60, 96, 96)
CENTRE = np.array([30.0, 48.0, 48.0])


def lung(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """Aerated lung: -860 HU with 20 HU noise, like the phantoms."""
    return np.random.default_rng(seed).normal(-860.0, 20.0, shape).astype(np.float32)


Offsets = tuple[np.ndarray, np.ndarray, np.ndarray]


def _offsets(shape: tuple[int, int, int], centre: np.ndarray, sub: int, spacing: np.ndarray) -> Iterator[Offsets]:
    """Offsets (mm) of every voxel's sub-voxel samples from `centre`, one sample position at a time: (z, y, x)
    arrays that broadcast to `shape` (the whole (sub^3, z, y, x, 3) array at once took most of this file's time)."""
    steps = (np.arange(sub) + 0.5) / sub - 0.5
    for step in itertools.product(steps, repeat=3):
        z, y, x = ((np.arange(n, dtype=np.float32) + np.float32(s) - c) * d for n, s, c, d in zip(shape, step, centre, spacing))
        yield z[:, None, None], y[None, :, None], x[None, None, :]


def fraction(inside: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], shape: tuple[int, int, int] = SHAPE,
             centre: np.ndarray = CENTRE, spacing: np.ndarray = SPACING, sub: int = 3) -> np.ndarray:
    """Partial-volume fraction of a region: the share of each voxel's sub^3 samples whose offset (z, y, x mm)
    from `centre` is `inside` it."""
    count = np.zeros(shape, np.int32)
    for z, y, x in _offsets(shape, centre, sub, spacing):
        count += np.broadcast_to(inside(z, y, x), shape)
    return count / sub**3


def _dot(z: np.ndarray, y: np.ndarray, x: np.ndarray, d: np.ndarray) -> np.ndarray:
    return z * d[0] + y * d[1] + x * d[2]


def _distance_from_line_point(z: np.ndarray, y: np.ndarray, x: np.ndarray, t: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Distance (mm) of each offset from the point `t` mm along the unit direction `d` through the centre."""
    return np.sqrt((z - t * d[0]) ** 2 + (y - t * d[1]) ** 2 + (x - t * d[2]) ** 2)


def ellipsoid_fraction(semi_axes_zyx: tuple[float, float, float], centre: np.ndarray = CENTRE,
                       shape: tuple[int, int, int] = SHAPE, spacing: np.ndarray = SPACING) -> np.ndarray:
    """Partial-volume fraction of an ellipsoid (3^3 sub-samples per voxel)."""
    a, b, c = semi_axes_zyx
    return fraction(lambda z, y, x: (z / a) ** 2 + (y / b) ** 2 + (x / c) ** 2 <= 1.0, shape, centre, spacing)


def paint(hu: np.ndarray, frac: np.ndarray, value: float) -> None:
    hu += frac * (value - hu)


def test_solid_ellipsoid_volume_axes_and_type() -> None:
    hu = lung()
    frac = ellipsoid_fraction((5.0, 8.0, 5.0))
    paint(hu, frac, 40.0)
    c = characterize_nodule(hu, SPACING, CENTRE, 14.0)
    assert c.segmentation_ok, c.reason
    truth = 4 / 3 * math.pi * 5 * 8 * 5
    assert abs(c.volume_mm3 - truth) / truth < 0.05
    assert c.axes is not None
    assert abs(c.axes.long_mm - 16.0) <= 0.7 and abs(c.axes.short_mm - 10.0) <= 0.7
    assert c.axes.mean_mm == round((c.axes.long_mm + c.axes.short_mm) / 2, 1)
    assert c.axes.slice_index == 30
    assert c.type == "solid" and not c.calcified and c.margin == "smooth"
    assert c.solid_axes == c.axes  # all of a solid nodule is its solid component


def test_part_solid_nodule_reports_its_solid_component() -> None:
    hu = lung(1)
    paint(hu, ellipsoid_fraction((7.0, 7.0, 7.0)), -600.0)
    paint(hu, ellipsoid_fraction((3.0, 3.0, 3.0)), 30.0)
    c = characterize_nodule(hu, SPACING, CENTRE, 14.0)
    assert c.type == "part_solid"
    assert c.axes is not None and abs(c.axes.mean_mm - 14.0) <= 1.0
    assert c.solid_axes is not None and abs(c.solid_axes.mean_mm - 6.0) <= 1.0
    truth = 4 / 3 * math.pi * 7**3
    assert abs(c.volume_mm3 - truth) / truth < 0.1


def test_ground_glass_nodule() -> None:
    hu = lung(2)
    paint(hu, ellipsoid_fraction((6.0, 6.0, 6.0)), -580.0)
    c = characterize_nodule(hu, SPACING, CENTRE, 12.0)
    assert c.type == "ground_glass" and c.solid_axes is None and c.solid_component_mm == 0.0
    truth = 4 / 3 * math.pi * 6**3
    assert abs(c.volume_mm3 - truth) / truth < 0.1


THICK = np.array([2.5, 1.4, 1.4])  # (z, y, x) mm: thick slices, where a voxel's share of the nodule matters most


def test_solid_volume_sums_the_edge_voxels_fractions(monkeypatch: pytest.MonkeyPatch) -> None:
    # a 9 mm solid sphere on 2.5 mm slices at four sub-voxel positions: each edge voxel's HU says how much
    # of it is nodule (partial-volume analysis); counting the voxels above the half maximum instead is
    # off by up to a tenth, depending on where the sphere falls on the grid
    shape = (24, 48, 48)
    cases = []
    for k, offset in enumerate([(0.0, 0.0, 0.0), (0.5, 0.3, 0.2), (0.25, 0.5, 0.5), (0.4, 0.1, 0.45)]):
        centre = np.array([12.0, 24.0, 24.0]) + np.array(offset)
        hu = lung(k, shape)
        frac = ellipsoid_fraction((4.5, 4.5, 4.5), centre, shape, THICK)
        paint(hu, frac, 40.0)
        cases.append((hu, centre, float(frac.sum() * THICK.prod())))

    def errors(partial_volume: bool) -> list[float]:
        out = []
        for hu, centre, truth in cases:
            c = characterize_nodule(hu, THICK, centre, 9.0)
            assert c.type == "solid" and c.features["partial_volume"] == float(partial_volume)
            out.append((c.volume_mm3 - truth) / truth)
        return out

    measured = errors(True)
    assert max(abs(e) for e in measured) < 0.03 and max(measured) - min(measured) < 0.02, measured
    # the half-maximum count only
    monkeypatch.setattr("inference.characterize.measure.solid_nodule_volume_mm3",
                        lambda hu, mask, others, wall, lung_hu, spacing: (volume_mm3(mask, spacing), False))
    counted = errors(False)
    assert max(abs(e) for e in counted) > 0.07 and max(counted) - min(counted) > 0.05, counted


@pytest.mark.parametrize("z_offset", [0.0, 0.25, 0.5])
def test_small_or_calcified_solid_nodule_counts_its_edge_against_nominal_soft_tissue(z_offset: float) -> None:
    # too few voxels fully inside to measure the nodule's own level: a 7 mm sphere on 2.5 mm slices, and a 9 mm one
    # calcified throughout (calcium is not the level of its soft-tissue edge). Their half-maximum counts measured
    # +2.7 / +5.7 / +11.6 % and -10.8 / -22.1 / -14.1 % at these offsets from the slice grid; their edges by their
    # fractions against 40 HU of soft tissue: +2.9 ... +6.7 %
    shape = (24, 48, 48)
    centre = np.array([12.0 + z_offset, 24.0, 24.0])
    hu = lung(8, shape)
    frac = ellipsoid_fraction((3.5, 3.5, 3.5), centre, shape, THICK)
    paint(hu, frac, 40.0)
    c = characterize_nodule(hu, THICK, centre, 7.0)
    truth = float(frac.sum() * THICK.prod())
    assert c.type == "solid" and c.features["partial_volume"] == 1.0
    assert abs(c.volume_mm3 - truth) / truth <= 0.05, (c.volume_mm3, truth)
    hu = lung(9, shape)
    frac = ellipsoid_fraction((4.5, 4.5, 4.5), centre, shape, THICK)
    paint(hu, frac, 40.0)
    paint(hu, ellipsoid_fraction((3.6, 3.6, 3.6), centre, shape, THICK), 400.0)
    c = characterize_nodule(hu, THICK, centre, 9.0)
    truth = float(frac.sum() * THICK.prod())
    assert c.calcified and c.features["partial_volume"] == 1.0
    assert abs(c.volume_mm3 - truth) / truth <= 0.08, (c.volume_mm3, truth)


def test_faint_ground_glass_is_measured_at_its_half_maximum_and_by_its_edges_fractions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # -680 HU in lung of -890 HU: the half maximum (-785 HU) lies below the -750 HU candidates' threshold
    hu = lung(3) - 30.0
    frac = ellipsoid_fraction((3.5, 3.5, 3.5))
    paint(hu, frac, -680.0)
    truth = float(frac.sum() * SPACING.prod())
    c = characterize_nodule(hu, SPACING, CENTRE, 7.0)
    assert c.type == "ground_glass" and abs(c.volume_mm3 - truth) / truth < 0.05, (c.volume_mm3, truth)
    assert c.features["partial_volume"] == 1.0
    # the mask at the candidates' threshold held under 85 % of it counted whole (until 2026-12-05); its edge
    # counted by fractions of ground glass (the voxels just outside it hold the rest) measures it as well
    monkeypatch.setattr("inference.characterize.grow_to_half_maximum", lambda seg, *args: seg.mask)
    at_candidates = characterize_nodule(hu, SPACING, CENTRE, 7.0)
    assert abs(at_candidates.volume_mm3 - truth) / truth < 0.05, (at_candidates.volume_mm3, truth)


def test_central_calcification_is_benign_and_plain_solid_is_not() -> None:
    hu = lung(3)
    paint(hu, ellipsoid_fraction((5.0, 5.0, 5.0)), 40.0)
    plain = characterize_nodule(hu, SPACING, CENTRE, 10.0)
    paint(hu, ellipsoid_fraction((2.0, 2.0, 2.0)), 400.0)
    calcified = characterize_nodule(hu, SPACING, CENTRE, 10.0)
    assert not plain.calcified and plain.calcification_pattern is None
    assert calcified.calcified and calcified.calcification_pattern == "central"


def test_a_noisy_scans_soft_tissue_nodule_is_not_read_calcified_and_a_dense_calcification_still_is() -> None:
    # a 10 mm soft-tissue nodule (40 HU) in lung with 80 HU of white noise, a sharp-kernel low-dose scan's: N(40, 80)
    # puts 2.3 % of its voxels over 200 HU, which raw read as a central calcification (Lung-RADS 1, benign)
    rng = np.random.default_rng(21)
    clean = np.full(SHAPE, -860.0, np.float32)
    paint(clean, ellipsoid_fraction((5.0, 5.0, 5.0)), 40.0)
    noise = rng.normal(0.0, 80.0, SHAPE).astype(np.float32)
    inside = ellipsoid_fraction((4.0, 4.0, 4.0)) == 1.0
    assert ((clean + noise)[inside] > 200.0).mean() > 0.015  # what the raw 200 HU threshold saw
    plain = characterize_nodule(clean + noise, SPACING, CENTRE, 10.0)
    assert plain.segmentation_ok and plain.type == "solid"
    assert not plain.calcified and plain.calcification_pattern is None
    # a central calcification of 700 HU (a granuloma's calcium is several hundred HU and more) is still read
    paint(clean, ellipsoid_fraction((2.0, 2.0, 2.0)), 700.0)
    calcified = characterize_nodule(clean + noise, SPACING, CENTRE, 10.0)
    assert calcified.calcified and calcified.calcification_pattern == "central"


def test_an_enhanced_vessel_through_a_nodule_is_no_calcification() -> None:
    """On a series with intravenous contrast a vessel of 300 HU through a soft-tissue nodule is as dense as calcium
    inside it; it runs on outside the nodule, and a calcification does not (calcification.running_on). Without the
    rule the vessel through the centre read as a central calcification: Lung-RADS 1, benign."""
    def with_vessel(hu: np.ndarray, value: float, offset_mm: float, radius_mm: float = 1.5) -> np.ndarray:
        out = hu.copy()  # a vessel along x through the whole region, `offset_mm` off the centre in y
        paint(out, fraction(lambda z, y, x: np.hypot(z, y - offset_mm) <= radius_mm), value)
        return out

    soft = lung(3)
    paint(soft, ellipsoid_fraction((5.0, 5.0, 5.0)), 40.0)
    for offset in (0.0, 2.5):
        c = characterize_nodule(with_vessel(soft, 300.0, offset), SPACING, CENTRE, 10.0)
        assert c.segmentation_ok and c.type == "solid"
        assert not c.calcified and c.calcification_pattern is None and c.features["calcified_share"] == 0.0
    # a central calcification 1.5 mm clear of a 2 mm enhanced vessel is still read, and its centroid is its own
    calcified = soft.copy()
    paint(calcified, ellipsoid_fraction((1.5, 1.5, 1.5)), 400.0)
    c = characterize_nodule(with_vessel(calcified, 300.0, 4.0, 1.0), SPACING, CENTRE, 10.0)
    assert c.calcified and c.calcification_pattern == "central"
    # a vessel without contrast (40 HU) takes nothing from a diffusely calcified nodule
    diffuse = lung(3)
    paint(diffuse, ellipsoid_fraction((5.0, 5.0, 5.0)), 400.0)
    c = characterize_nodule(with_vessel(diffuse, 40.0, 0.0), SPACING, CENTRE, 10.0)
    assert c.calcified and c.calcification_pattern == "diffuse"


def test_a_focus_of_fat_in_a_solid_nodule_is_found_and_air_or_noise_is_not() -> None:
    """A hamartoma's fat (-90 HU, a 4 mm focus) in a 10 mm soft-tissue nodule is found (characterize.fat); the partial
    volume of soft tissue round a bubble or a bronchus passes through the same HU and is not fat, nor is noise."""
    plain = lung(3)
    paint(plain, ellipsoid_fraction((5.0, 5.0, 5.0)), 40.0)

    def fat_of(hu: np.ndarray) -> tuple[float, float]:
        c = characterize_nodule(hu, SPACING, CENTRE, 10.0)
        assert c.segmentation_ok and c.type == "solid"
        return c.features["fat_mm3"], c.features["fat_hu"]

    with_fat = plain.copy()
    paint(with_fat, ellipsoid_fraction((2.0, 2.0, 2.0)), -90.0)
    volume, mean_hu = fat_of(with_fat)
    assert 10.0 <= volume <= 4 / 3 * math.pi * 8 and -120.0 <= mean_hu <= -40.0
    assert fat_of(plain) == (0.0, 0.0)
    bubble = plain.copy()
    paint(bubble, ellipsoid_fraction((1.0, 1.0, 1.0)), -1000.0)
    bronchus = plain.copy()
    paint(bronchus, fraction(lambda z, y, x: np.hypot(z, y) <= 0.8), -1000.0)
    noisy = np.full(SHAPE, -860.0, np.float32)
    paint(noisy, ellipsoid_fraction((5.0, 5.0, 5.0)), 40.0)
    noisy += np.random.default_rng(5).normal(0.0, 40.0, SHAPE).astype(np.float32)
    for hu in (bubble, bronchus, noisy):
        assert fat_of(hu) == (0.0, 0.0)


def test_a_thick_walled_cavitary_nodule_is_solid_smooth_and_sized_whole() -> None:
    """A solid nodule with an air cavity round its centre (cavitation: Lung-RADS sizes it as a solid nodule, by the
    whole lesion's mean diameter). The rays that give a nodule its own radius start in the cavity; they leave the
    nodule where the lung is, not where the cavity is, so its wall is no ring of spicules (it read spiculated: 4X)."""
    hu = lung(3)
    paint(hu, ellipsoid_fraction((6.0, 6.0, 6.0)), 40.0)
    paint(hu, ellipsoid_fraction((3.0, 3.0, 3.0)), -1000.0)
    c = characterize_nodule(hu, SPACING, CENTRE, 12.0)
    assert c.segmentation_ok and c.type == "solid" and not c.calcified
    assert c.margin == "smooth" and c.features["spicules"] == 0
    assert c.axes is not None and abs(c.axes.mean_mm - 12.0) <= 0.5


def spikes_fraction(radius: float, n: int, length: float, thickness: float, centre: np.ndarray = CENTRE,
                    shape: tuple[int, int, int] = SHAPE, spacing: np.ndarray = SPACING, sub: int = 2) -> np.ndarray:
    """Thin straight spicules leaving a sphere in evenly spread directions."""
    golden = math.pi * (3 - math.sqrt(5))
    directions = [np.array([z, math.sqrt(1 - z * z) * math.sin(golden * k), math.sqrt(1 - z * z) * math.cos(golden * k)])
                  for k, z in ((k, 1 - 2 * (k + 0.5) / n) for k in range(n))]

    def on_a_spicule(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        inside = np.zeros(shape, bool)
        for d in directions:
            along = _dot(z, y, x, d)
            t = np.clip(along, radius * 0.8, radius + length)
            inside |= (_distance_from_line_point(z, y, x, t, d) <= thickness) & (along >= radius * 0.8)
        return inside

    return fraction(on_a_spicule, shape, centre, spacing, sub)


def test_spiculated_sphere_versus_smooth_sphere() -> None:
    smooth = lung(4)
    paint(smooth, ellipsoid_fraction((5.0, 5.0, 5.0)), 40.0)
    spiculated = smooth.copy()
    paint(spiculated, spikes_fraction(5.0, 10, 6.0, 0.6), 40.0)
    assert characterize_nodule(smooth, SPACING, CENTRE, 10.0).margin == "smooth"
    assert characterize_nodule(spiculated, SPACING, CENTRE, 10.0).margin == "spiculated"


def lobulated_fraction(core: float, lobe: float, out: float, directions: list[tuple[float, float, float]]) -> np.ndarray:
    """A core sphere of radius `core` (mm) and one sphere of radius `lobe` per direction, its centre `out`
    mm from the core's: bulges with clefts where they meet the core."""
    frac = ellipsoid_fraction((core, core, core))
    for d in directions:
        centre = CENTRE + out * np.array(d) / np.linalg.norm(d) / SPACING
        frac = np.maximum(frac, ellipsoid_fraction((lobe, lobe, lobe), centre))
    return frac


def test_lobulated_outline_versus_an_oval_one() -> None:
    """Four 3 mm lobes rising 1.4 mm above a 4.8 mm core (clefts between them) make a lobulated margin; an
    oval of about the same size (semi-axes 4.5 x 7 x 4.5 mm: no cleft) and a sphere stay smooth."""
    lobulated = lung(12)
    paint(lobulated, lobulated_fraction(4.8, 3.0, 3.2, [(0, 1, 0), (0, 0, 1), (0, -1, -1), (1, -1, 0)]), 40.0)
    c = characterize_nodule(lobulated, SPACING, CENTRE, 12.0)
    assert c.segmentation_ok and c.margin == "lobulated", c.features
    oval = lung(13)
    paint(oval, ellipsoid_fraction((4.5, 7.0, 4.5)), 40.0)
    sphere = lung(14)
    paint(sphere, ellipsoid_fraction((5.5, 5.5, 5.5)), 40.0)
    for hu in (oval, sphere):
        c = characterize_nodule(hu, SPACING, CENTRE, 12.0)
        assert c.segmentation_ok and c.margin == "smooth", c.features


def test_margin_mostly_in_contact_with_tissue_is_not_assessed() -> None:
    """Three quarters of every slice's outline lie against tissue outside the nodule: its lobulation cannot
    be judged, and with no spicule the margin is not assessed (None), never called smooth."""
    from inference.characterize.margin import classify_margin, undulation

    mask = ellipsoid_fraction((5.0, 5.0, 5.0)) > 0.5
    z, y, x = np.indices(mask.shape)
    angle = np.arctan2((y - CENTRE[1]) * SPACING[1], (x - CENTRE[2]) * SPACING[2])
    shell = (ellipsoid_fraction((7.0, 7.0, 7.0)) > 0.5) & ~mask
    smooth = np.where(shell & (angle > -np.pi / 2), 40.0, -850.0)  # tissue against 270 degrees of the outline
    smooth[mask] = 40.0
    lobulation = undulation(mask, smooth, -400.0, SPACING)
    assert not lobulation.judged and classify_margin(0, lobulation) is None
    assert classify_margin(2, lobulation) == "spiculated"  # spicules are counted apart from the outline
    free = undulation(mask, np.where(mask, 40.0, -850.0), -400.0, SPACING)
    assert free.judged and classify_margin(0, free) == "smooth"


def test_failed_segmentation_states_no_margin() -> None:
    c = characterize_nodule(lung(9), SPACING, CENTRE, 8.0)
    assert not c.segmentation_ok and c.margin is None


COARSE = np.array([3.0, 1.5, 1.5])  # a 2.5-3 mm slice screening reconstruction
COARSE_SHAPE = (24, 48, 48)
COARSE_CENTRE = np.array([12.0, 24.0, 24.0])


def test_spicules_thinner_than_a_voxel_are_found_at_3_mm_slices() -> None:
    """Eight spicules 1.6 mm across and 5 mm long on 1.5 x 1.5 x 3 mm voxels: each is a faint trail of
    partial-volume voxels; how far the trail reaches beyond the nodule's own radius tells it (an
    opening by a ball, the earlier test, found none of these)."""
    hu = lung(11, COARSE_SHAPE)
    paint(hu, ellipsoid_fraction((7.0, 7.0, 7.0), COARSE_CENTRE, COARSE_SHAPE, COARSE), 40.0)
    smooth = hu.copy()
    paint(hu, spikes_fraction(7.0, 8, 5.0, 0.8, COARSE_CENTRE, COARSE_SHAPE, COARSE, sub=4), 40.0)
    assert characterize_nodule(smooth, COARSE, COARSE_CENTRE, 14.0).margin == "smooth"
    spiculated = characterize_nodule(hu, COARSE, COARSE_CENTRE, 14.0)
    assert spiculated.margin == "spiculated" and spiculated.features["spicules"] >= 3


def test_a_vessel_running_on_from_a_nodule_is_not_a_spicule() -> None:
    """A vessel leaves the nodule and runs on out of the region: it touches other tissue, so however far
    it reaches it is not counted as a spicule."""
    hu = lung(12, COARSE_SHAPE)
    paint(hu, ellipsoid_fraction((7.0, 7.0, 7.0), COARSE_CENTRE, COARSE_SHAPE, COARSE), 40.0)
    vessel = fraction(lambda z, y, x: (np.hypot(z, y) <= 1.5) & (x > 0),  # along +x to the edge
                      COARSE_SHAPE, COARSE_CENTRE, COARSE)
    paint(hu, vessel, 40.0)
    c = characterize_nodule(hu, COARSE, COARSE_CENTRE, 14.0)
    assert c.segmentation_ok and c.margin == "smooth" and c.features["spicules"] == 0


def test_juxtapleural_nodule_is_cut_at_the_chest_wall() -> None:
    hu = lung(5)
    hu[:, :, :30] = 40.0  # chest wall: soft tissue over the first 21 mm of x
    centre = np.array([30.0, 48.0, 30.0 + 4.0 / 0.7])  # a 5 mm sphere whose edge touches the wall
    paint(hu, ellipsoid_fraction((5.0, 5.0, 5.0), centre), 40.0)
    c = characterize_nodule(hu, SPACING, centre, 10.0)
    assert c.segmentation_ok and c.location.juxtapleural
    truth = 4 / 3 * math.pi * 125  # all of the sphere lies in the lung except a 1 mm cap
    assert 0.75 * truth < c.volume_mm3 < 1.1 * truth  # the wall is not part of it
    free = lung(6)
    paint(free, ellipsoid_fraction((5.0, 5.0, 5.0)), 40.0)
    assert not characterize_nodule(free, SPACING, CENTRE, 10.0).location.juxtapleural


def cylinder_fraction(radius: float, point: np.ndarray, axis: tuple[float, float, float]) -> np.ndarray:
    """Partial-volume fraction of an infinite cylinder (a vessel crossing the whole volume)."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)

    def inside(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return _distance_from_line_point(z, y, x, _dot(z, y, x, a), a) <= radius

    return fraction(inside, centre=point)


def nodule_on_vessel(seed: int, radius: float, vessel_radius: float, nodule_hu: float,
                     offset_mm: float | None = None) -> tuple[np.ndarray, float]:
    """A sphere painted over a vessel (40 HU) as the phantom does; returns (HU, the sphere's volume).

    The vessel's axis passes 0.75 R + 0.5 r from the centre (the phantom's vessel-attached nodules),
    or `offset_mm` from it; where the nodule covers the vessel the denser of the two shows.
    """
    hu = lung(seed)
    offset = 0.75 * radius + 0.5 * vessel_radius if offset_mm is None else offset_mm
    paint(hu, cylinder_fraction(vessel_radius, CENTRE + np.array([0.0, offset / SPACING[1], 0.0]), (0, 0, 1)), 40.0)
    sphere = ellipsoid_fraction((radius, radius, radius))
    hu = np.maximum(hu, hu + sphere * (nodule_hu - hu))
    return hu, float(sphere.sum() * SPACING.prod())


@pytest.mark.parametrize("vessel_radius", [2.0, 2.5])
def test_vessel_attached_solid_nodule_is_cut_at_its_surface(vessel_radius: float) -> None:
    # a vessel as thick as half the nodule leaves no neck for the watershed: before the shape prior
    # the nodule took +16 % / +57 % of vessel with it
    hu, truth = nodule_on_vessel(12, 5.0, vessel_radius, 40.0)
    c = characterize_nodule(hu, SPACING, CENTRE, 10.0)
    assert c.segmentation_ok and c.type == "solid"
    assert abs(c.volume_mm3 - truth) / truth <= 0.1, (c.volume_mm3, truth)


@pytest.mark.parametrize("offset_mm", [None, 0.0])
def test_ground_glass_nodule_on_a_vessel_stays_ground_glass(offset_mm: float | None) -> None:
    # the vessel's dense voxels inside the nodule are not a solid component (they were: part-solid)
    hu, truth = nodule_on_vessel(13, 5.0, 1.5, -600.0, offset_mm)
    c = characterize_nodule(hu, SPACING, CENTRE, 10.0)
    assert c.type == "ground_glass" and c.solid_axes is None, (c.type, c.solid_share)
    assert abs(c.volume_mm3 - truth) / truth <= 0.1, (c.volume_mm3, truth)


def test_part_solid_nodule_on_a_vessel_keeps_its_solid_core() -> None:
    # the guard of the vessel exclusion above: a real core thicker than the vessel is not taken for it
    hu, truth = nodule_on_vessel(14, 6.0, 1.5, -600.0)
    paint(hu, ellipsoid_fraction((3.0, 3.0, 3.0)), 30.0)
    c = characterize_nodule(hu, SPACING, CENTRE, 12.0)
    assert c.type == "part_solid"
    assert c.solid_axes is not None and abs(c.solid_axes.mean_mm - 6.0) <= 1.0


def test_ground_glass_the_vessels_basin_took_comes_back_and_the_vessel_stays() -> None:
    # the watershed's neck ran through a ground-glass nodule beside a vessel (full-size 15014:1: -31 %); the
    # vessel's basin holds the vessel (soft tissue), its partial-volume halo (a pixel) and that ground glass
    hu = lung(18)
    sphere = ellipsoid_fraction((4.0, 4.0, 4.0))
    hu = np.maximum(hu, hu + sphere * (-560.0 - hu))
    vessel_axis = CENTRE + np.array([0.0, 0.0, 5.0 / SPACING[2]])  # 5 mm off the centre, 2 mm thick: 1-3 mm into it
    hu = np.maximum(hu, hu + cylinder_fraction(2.0, vessel_axis, (1, 0, 0)) * (40.0 - hu))
    dist2 = distance2(SHAPE, CENTRE, SPACING)
    nodule = (sphere >= 0.5) & (dist2 <= 2.0 ** 2)  # what the nodule's basin kept: its middle
    basin = (hu > -750.0) & ~nodule  # the rest went to the vessel's
    back = _give_back_ground_glass(nodule, basin, hu > DENSE_HU, dist2, 4.0, CENTRE, SPACING) & ~nodule
    assert back.any() and (hu[back] < DENSE_HU).all()
    assert (dist2[back] <= (0.9 * 4.0) ** 2).all()  # only within the nodule's own radius
    # the nodule's ground glass away from the vessel comes back; the vessel and its halo stay with the basin
    y, x = ((np.arange(n) - c) * d for n, c, d in zip(SHAPE[1:], vessel_axis[1:], SPACING[1:]))
    vessel_mm = np.broadcast_to(np.sqrt(y[:, None] ** 2 + x[None, :] ** 2), SHAPE)  # from the vessel's axis (along z)
    far = basin & (dist2 <= 3.0 ** 2) & (vessel_mm >= 2.0 + 2 * SPACING[1])
    near = basin & (vessel_mm <= 2.0 + 0.5 * SPACING[1])
    assert far.any() and near.any()
    assert (back & far).sum() >= 0.9 * far.sum(), (int((back & far).sum()), int(far.sum()))
    assert not (back & near).any()


@pytest.mark.parametrize(("radius", "vessel_radius"), [(4.0, 3.0), (5.0, 3.5)])
def test_ground_glass_nodule_on_a_thick_vessel_stays_ground_glass(radius: float, vessel_radius: float) -> None:
    # a vessel thicker than half the nodule: the opening cannot tell its course from a core, but its
    # voxels lie off the nodule's centre (they were a "solid component": part-solid, share 0.22-0.34)
    hu, _ = nodule_on_vessel(15, radius, vessel_radius, -600.0)
    c = characterize_nodule(hu, SPACING, CENTRE, 2 * radius)
    assert c.type == "ground_glass" and c.solid_axes is None, (c.type, c.solid_share)
    # the guard: a central core (half the nodule's diameter) on the same vessel is still a solid component
    paint(hu, ellipsoid_fraction((radius / 2, radius / 2, radius / 2)), 30.0)
    assert characterize_nodule(hu, SPACING, CENTRE, 2 * radius).type == "part_solid"


@pytest.mark.parametrize("axis", [(0, 0, 1), (1, 0, 0)])
def test_vessel_stub_is_cut_next_to_the_wall(axis: tuple[int, int, int]) -> None:
    # a nodule 1.5 mm off the chest wall on a vessel that runs into the wall (along x) or along it (along z):
    # trim_vessels used to leave every nodule within 3 mm of the wall alone (+15 % / +12 %, and +35 % / +25 %
    # on a 3 mm vessel); its contact with the wall is a point, not a base, so the stub is cut
    hu = lung(31)
    hu[:, :, :30] = 40.0
    centre = np.array([30.0, 48.0, 29.5 + 6.5 / 0.7])
    paint(hu, cylinder_fraction(2.0, centre + np.array([0.0, 4.75 / 0.7, 0.0]), axis), 40.0)
    sphere = ellipsoid_fraction((5.0, 5.0, 5.0), centre)
    truth = float(sphere.sum() * SPACING.prod())
    hu = np.maximum(hu, hu + sphere * (40.0 - hu))
    c = characterize_nodule(hu, SPACING, centre, 10.0)
    assert c.segmentation_ok and c.type == "solid"
    assert abs(c.volume_mm3 - truth) / truth <= 0.1, (c.volume_mm3, truth)


def test_contact_with_the_wall_is_on_the_slice_or_straight_across_it() -> None:
    mask = np.zeros((5, 5, 5), bool)
    mask[2, 2, 2] = True
    for wall_voxel, touching in [((2, 3, 3), True), ((3, 2, 2), True), ((1, 2, 2), True), ((2, 2, 2), True),
                                 ((3, 3, 2), False), ((1, 2, 3), False), ((2, 4, 2), False)]:
        wall = np.zeros_like(mask)
        wall[wall_voxel] = True
        assert juxtapleural(mask, wall) is touching, wall_voxel


def test_nodule_on_the_diaphragm_is_juxtapleural_on_thick_slices_and_one_above_it_is_not() -> None:
    # 2.5 mm slices: a 5 mm sphere resting on a horizontal soft-tissue slab (the diaphragm's dome)
    # touches it only straight across a slice (no slice holds both), which must still count as
    # contact; the same sphere 3 mm higher does not touch it
    spacing = np.array([2.5, 0.7, 0.7])
    shape = (24, 96, 96)
    slab = 16  # slices from here on are the slab: its surface at 15.5 slices = 38.75 mm
    for lift_mm, touching in [(-1.0, True), (3.0, False)]:
        hu = lung(21, shape)
        hu[slab:] = 40.0
        centre = np.array([(38.75 - 5.0 - lift_mm) / 2.5, 48.0, 48.0])
        frac = ellipsoid_fraction((5.0, 5.0, 5.0), centre, shape, spacing)
        frac[slab:] = 0.0  # the part in the slab is invisible
        paint(hu, frac, 40.0)
        c = characterize_nodule(hu, spacing, centre, 10.0)
        assert c.segmentation_ok and c.location.juxtapleural is touching, lift_mm


def test_juxtapleural_nodule_keeps_its_base_on_the_wall() -> None:
    # a sphere whose centre lies 0.6 R inside the lung: the wall's opening took its base (-35 %
    # volume, and the bitten contour read as lobulated); the pleura's plane gives it back
    hu = lung(16)
    hu[:, :, :30] = 40.0
    centre = np.array([30.0, 48.0, 29.5 + 3.0 / 0.7])
    frac = ellipsoid_fraction((5.0, 5.0, 5.0), centre)
    frac[:, :, :30] = 0.0  # the part in the wall is invisible and not the nodule's (as in the phantoms)
    truth = float(frac.sum() * SPACING.prod())
    paint(hu, frac, 40.0)
    c = characterize_nodule(hu, SPACING, centre, 10.0)
    assert c.location.juxtapleural and c.margin == "smooth" and c.type == "solid"
    assert 0.8 * truth <= c.volume_mm3 <= 1.1 * truth, (c.volume_mm3, truth)


def ground_glass_plaque_on_the_wall() -> tuple[np.ndarray, np.ndarray, float]:
    """A broad ground-glass lesion (-600 HU) on the pleura: half an ellipsoid 12 x 12 mm across and 8 mm high,
    its flat side on the wall (like lidc-idri-0002's lesion). (HU, a centre inside it, truth mm3)."""
    hu = lung(22)
    hu[:, :, :30] = 40.0
    frac = ellipsoid_fraction((12.0, 12.0, 8.0), np.array([30.0, 48.0, 29.5]))
    frac[:, :, :30] = 0.0  # the part in the wall is invisible and not the lesion's (as in the phantoms)
    paint(hu, frac, -600.0)
    return hu, np.array([30.0, 48.0, 29.5 + 3.0 / 0.7]), float(frac.sum() * SPACING.prod())


@pytest.mark.parametrize(("left_mm", "right_mm"), [(3.5, 6.0), (3.0, 9.0)])
def test_nodule_filling_a_strip_of_lung_between_two_walls_keeps_both_bases(left_mm: float, right_mm: float) -> None:
    # a 12 mm solid nodule in a strip of lung 9.5 / 12 mm wide (walls on both sides, like full-size phantom
    # 15028's 18 mm nodule): the ring around it lies on two walls, no plane fits it, and both bases stayed with
    # the walls (-32 % / -35 %); a plane per candidate through its nearest wall points gives them back
    hu = lung(42)
    strip = fraction(lambda z, y, x: (x >= -left_mm) & (x <= right_mm))
    hu += (1 - strip) * (40.0 - hu)
    sphere = ellipsoid_fraction((6.0, 6.0, 6.0))
    truth = float((sphere * strip).sum() * SPACING.prod())  # the part inside the lung
    hu = np.maximum(hu, hu + sphere * (40.0 - hu))
    c = characterize_nodule(hu, SPACING, CENTRE, 12.0)
    assert c.segmentation_ok and c.type == "solid" and c.location.juxtapleural
    assert abs(c.volume_mm3 - truth) / truth <= 0.1, (c.volume_mm3, truth)


def test_nodule_on_a_strongly_curved_wall_keeps_its_base() -> None:
    # lung inside a cylinder of 22 mm radius (a costophrenic recess, a paravertebral gutter), a 12 mm solid
    # nodule a third of whose radius lies in the wall: the ring is no plane (spread above 1.5 mm) and the base
    # stayed with the wall (-27 %); with planes through the nearest wall points -8 %
    hu = lung(41)
    axis = np.array([0.0, CENTRE[1], CENTRE[2] - (22.0 - 0.7 * 6.0) / SPACING[2]])
    inside = fraction(lambda z, y, x: np.sqrt(y**2 + x**2) <= 22.0, centre=axis)
    hu += (1 - inside) * (40.0 - hu)
    sphere = ellipsoid_fraction((6.0, 6.0, 6.0))
    truth = float((sphere * inside).sum() * SPACING.prod())
    hu = np.maximum(hu, hu + sphere * (40.0 - hu))
    c = characterize_nodule(hu, SPACING, CENTRE, 12.0)
    assert c.segmentation_ok and c.type == "solid" and c.location.juxtapleural
    assert abs(c.volume_mm3 - truth) / truth <= 0.15, (c.volume_mm3, truth)


def test_ground_glass_plaque_gets_back_the_base_the_wall_took(monkeypatch: pytest.MonkeyPatch) -> None:
    hu, centre, truth = ground_glass_plaque_on_the_wall()
    c = characterize_nodule(hu, SPACING, centre, 24.0)
    assert c.type == "ground_glass" and c.location.juxtapleural
    # the base comes back, except its layer within GLASS_BASE_CLEARANCE_MM of the wall (the wall's own
    # partial-volume surface is ground-glass density too), and nothing of that surface beyond the lesion
    assert 0.65 * truth <= c.volume_mm3 <= 1.05 * truth, (c.volume_mm3, truth)
    monkeypatch.setattr("inference.characterize.restore_ground_glass_base", lambda *args: None)
    without = characterize_nodule(hu, SPACING, centre, 24.0)
    assert without.volume_mm3 < 0.55 * truth, (without.volume_mm3, truth)  # the wall's opening took half of it


@pytest.mark.parametrize("wall_offset_px", [0.25, 0.5])
def test_ground_glass_base_does_not_run_along_a_blurred_wall(wall_offset_px: float) -> None:
    # a 10 mm ground-glass nodule (-600 HU) 1.5 mm into a chest wall whose edge is blurred over 3.5 mm (the
    # phantoms draw the chest on a 1.5 mm grid and upsample it), on 1.25 x 0.75 x 0.75 mm voxels: the wall's
    # partial-volume surface lies two pixels from soft tissue, past the base's clearance, and that layer along
    # the pleura joined the base around the nodule (long axis 16.5 / 17.2 mm; volume -2 / +10 %, now -10 %)
    spacing = np.array([1.25, 0.75, 0.75])
    hu = lung(5)
    x = (np.arange(SHAPE[2]) - CENTRE[2]) * spacing[2]
    wall_x, ramp, radius = (30.0 + wall_offset_px - CENTRE[2]) * spacing[2], 3.5, 5.0
    wall = np.broadcast_to(np.clip((wall_x + ramp / 2 - x) / ramp, 0.0, 1.0).astype(np.float32), SHAPE)
    centre = CENTRE + np.array([0.0, 0.0, (wall_x + radius - 1.5) / spacing[2]])
    sphere = ellipsoid_fraction((radius,) * 3, centre, SHAPE, spacing)
    truth = float((sphere * (wall < 0.5)).sum() * spacing.prod())  # its part on the lung side of the pleura
    paint(hu, sphere, -600.0)
    paint(hu, wall, 40.0)
    c = characterize_nodule(hu, spacing, centre, 2 * radius)
    assert c.type == "ground_glass" and c.location.juxtapleural and c.axes is not None
    assert c.axes.long_mm <= 12.0, c.axes
    assert 0.85 * truth <= c.volume_mm3 <= 1.05 * truth, (c.volume_mm3, truth)


def test_solid_plaque_keeps_the_wall_out() -> None:
    hu, centre, truth = ground_glass_plaque_on_the_wall()
    solid = np.where((hu > -800) & (hu < 0), 40.0, hu).astype(np.float32)  # the same lesion as dense as the wall
    c = characterize_nodule(solid, SPACING, centre, 24.0)
    # the plane of the pleura gives its base back as for any juxtapleural nodule; the wall stays out
    assert c.type == "solid" and 0.6 * truth <= c.volume_mm3 <= 1.1 * truth, (c.volume_mm3, truth)


def plane_fraction(point: np.ndarray, normal: tuple[float, float, float], thickness: float) -> np.ndarray:
    """Partial-volume fraction of an infinite slab (a fissure crossing the whole volume)."""
    n = np.asarray(normal, float) / np.linalg.norm(normal)
    return fraction(lambda z, y, x: np.abs(_dot(z, y, x, n)) <= thickness / 2, centre=point)


@pytest.mark.parametrize(("fissure_hu", "gap_mm", "perifissural"), [(0.0, 0.0, True), (-500.0, 0.0, True), (0.0, 3.0, False)])
def test_nodule_touching_a_fissure_is_perifissural(fissure_hu: float, gap_mm: float, perifissural: bool) -> None:
    # an oblique 1 mm sheet of soft tissue (0 HU) or of a faint fissure's partial volume (-500 HU);
    # a nodule on it is perifissural, one 3 mm away is not (before: always False)
    hu = lung(17)
    normal = np.array([0.3, 1.0, 0.2]) / np.linalg.norm([0.3, 1.0, 0.2])
    paint(hu, plane_fraction(CENTRE + (4.5 + gap_mm) * normal / SPACING, tuple(normal), 1.0), fissure_hu)
    paint(hu, ellipsoid_fraction((4.0, 4.0, 4.0)), 40.0)
    c = characterize_nodule(hu, SPACING, CENTRE, 8.0)
    assert c.segmentation_ok and c.type == "solid"
    assert c.location.perifissural is perifissural and not c.location.juxtapleural


def test_vessels_and_the_chest_wall_are_not_fissures() -> None:
    # tubes (vessels of 1 and 2.5 mm) and the wall's flat surface are not thin sheets
    for vessel_radius in (1.0, 2.5):
        hu, _ = nodule_on_vessel(18, 5.0, vessel_radius, 40.0)
        assert not characterize_nodule(hu, SPACING, CENTRE, 10.0).location.perifissural
    hu = lung(19)
    hu[:, :, :30] = 40.0
    centre = np.array([30.0, 48.0, 30.0 + 4.0 / 0.7])
    paint(hu, ellipsoid_fraction((5.0, 5.0, 5.0), centre), 40.0)
    c = characterize_nodule(hu, SPACING, centre, 10.0)
    assert c.location.juxtapleural and not c.location.perifissural


def lungs_mask(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """Two box lungs: voxel x < 44 and x > 52, rows 10..86, slices 5..54."""
    m = np.zeros(shape, bool)
    m[5:55, 10:86, 4:44] = True
    m[5:55, 10:86, 52:92] = True
    return m


@pytest.mark.parametrize(
    ("z", "x", "direction", "lung", "zone"),
    [
        (50.0, 20.0, np.eye(3), "right", "upper"),  # low x index = patient right (+x LPS is left), high z = head
        (30.0, 70.0, np.eye(3), "left", "middle"),
        (8.0, 70.0, np.eye(3), "left", "lower"),
        (50.0, 20.0, np.diag([-1.0, 1.0, -1.0]), "left", "lower"),  # x and z axes flipped: world decides
    ],
)
def test_side_and_zone_from_world_coordinates(z: float, x: float, direction: np.ndarray, lung: str, zone: str) -> None:
    hu = globals()["lung"](7)
    centre = np.array([z, 48.0, x])
    paint(hu, ellipsoid_fraction((3.0, 3.0, 3.0), centre), 40.0)
    c = characterize_nodule(hu, SPACING, centre, 6.0, lungs_mask(), direction=direction)
    assert (c.location.lung, c.location.zone) == (lung, zone)
    assert c.location.perifissural is False


def test_contact_share_is_the_part_of_the_outline_on_other_structures() -> None:
    free = lung(21)
    paint(free, ellipsoid_fraction((5.0, 5.0, 5.0)), 40.0)
    assert characterize_nodule(free, SPACING, CENTRE, 10.0).contact_share == 0.0
    # a vessel half the nodule's thickness borders a small part of it, and the volume holds (within 10 %)
    hu, truth = nodule_on_vessel(12, 5.0, 2.5, 40.0)
    on_vessel = characterize_nodule(hu, SPACING, CENTRE, 10.0)
    assert 0.05 < on_vessel.contact_share < CONTACT_SHARE_CAVEAT
    assert abs(on_vessel.volume_mm3 - truth) / truth <= 0.1
    # a 10 mm nodule filling a lung sliver 7 mm wide between two walls: most of its outline is where it was
    # cut from them (its volume there is about half the truth: the walls' opening takes it; held-out seed 14014)
    sliver = lung(22)
    sliver[:, :, :43] = 40.0
    sliver[:, :, 53:] = 40.0
    paint(sliver, ellipsoid_fraction((5.0, 5.0, 5.0)), 40.0)
    wedged = characterize_nodule(sliver, SPACING, CENTRE, 10.0)
    assert wedged.segmentation_ok and wedged.contact_share >= CONTACT_SHARE_CAVEAT


def test_nodule_cut_by_the_field_of_view_is_reported() -> None:
    hu = lung(8)
    centre = np.array([1.0, 48.0, 48.0])  # on the first slice: half of it is outside the scan
    paint(hu, ellipsoid_fraction((4.0, 4.0, 4.0), centre), 40.0)
    c = characterize_nodule(hu, SPACING, centre, 8.0)
    assert not c.segmentation_ok and c.reason is not None and "field of view" in c.reason


def test_no_nodule_at_the_centre_is_a_clear_failure() -> None:
    c = characterize_nodule(lung(9), SPACING, CENTRE, 8.0)
    assert not c.segmentation_ok and c.reason is not None and "no nodule above -750 HU" in c.reason


def test_a_centre_inside_the_chest_wall_says_so() -> None:
    # a detector's mark 9.8 mm deep in a wall of soft tissue: the tissue at the centre is the wall's (it survives the
    # opening by a ball of 0.6 x 8 mm + 1.5 mm), not a nodule the segmentation failed to find in aerated lung
    hu = lung(9)
    hu[:, :, 62:] = 40.0  # the wall: x from 43.4 mm
    c = characterize_nodule(hu, SPACING, CENTRE + np.array([0.0, 0.0, 28.0]), 8.0)  # x 53.2 mm: 9.8 mm inside it
    assert not c.segmentation_ok and c.reason is not None
    assert "structure much larger than the detector's diameter" in c.reason and "chest wall" in c.reason


def test_laa950_lung_volume_and_coverage() -> None:
    hu = np.full(SHAPE, -860.0, np.float32)
    mask = lungs_mask()
    idx = np.flatnonzero(mask.ravel())
    low = np.random.default_rng(10).choice(idx, size=int(0.12 * idx.size), replace=False)
    hu.ravel()[low] = -980.0
    exam = characterize_exam(hu, SPACING, mask)
    assert exam.laa950_pct == pytest.approx(12.0, abs=0.01)
    assert exam.lung_volume_ml == pytest.approx(mask.sum() * SPACING.prod() / 1000, abs=0.1)
    assert exam.lungs_fully_covered and exam.reason is None


def test_lungs_cut_by_the_field_of_view() -> None:
    mask = lungs_mask()
    mask[:5] = mask[5]  # the lungs run into the first slice
    exam = characterize_exam(np.full(SHAPE, -860.0, np.float32), SPACING, mask)
    assert not exam.lungs_fully_covered
    assert exam.reason is not None and "field of view" in exam.reason


def test_spicule_strands_are_the_thin_free_parts_not_a_thick_slices_caps() -> None:
    # a 12 mm ball on 3 mm slices (its top and bottom slices hold a few pixels: caps, which an opening per slice
    # removes) with a strand one pixel thick running 9 mm out of it in the slice through its centre
    spacing = np.array([3.0, 0.7, 0.7])
    zz, yy, xx = (np.indices((9, 60, 60)).T * spacing).T
    ball = (zz - 12) ** 2 + (yy - 21) ** 2 + (xx - 21) ** 2 <= 36
    strand = (zz == 12) & (np.abs(yy - 21) < 0.35) & (xx > 21) & (xx < 36)
    assert ball[2].sum() == 1 and ball[6].sum() == 1  # the caps
    found = spicule_strands(ball | strand, np.zeros_like(ball), spacing)
    outside = strand & ~ball
    assert found[outside].sum() >= outside.sum() - 1  # the strand beyond the ball (its root joins the body)
    assert (found & ~outside).sum() <= 0.01 * ball.sum()  # a few of the ball's pixelated edge, no more
    assert not found[[2, 6]].any()
    # a strand that runs on into the wall is the nodule's contact with it, not a spicule
    wall = np.zeros_like(ball)
    wall[4, 30, 51:] = True  # on the strand's line (z 12, y 21 mm), from x 35.7 mm on
    strand_to_wall = (zz == 12) & (np.abs(yy - 21) < 0.35) & (xx > 21) & (xx < 36 + 0.7)
    assert strand_to_wall[wall].any()
    assert not (spicule_strands(ball | strand_to_wall & ~wall, wall, spacing) & strand_to_wall).any()


@pytest.mark.parametrize(("seed", "index"), [(22028, 0), (22037, 2)])
def test_a_spiculated_part_solid_nodules_spicules_count_by_their_partial_volume(seed: int, index: int) -> None:
    # full-size phantoms' 7.3 and 6.6 mm spiculated part-solid nodules, free in the lung, on 0.625 and 1 mm slices: the
    # half-maximum mask of ground glass (about -700 HU) took each voxel a spicule partly fills whole, +18 and +19 %;
    # their strands now count their fraction of solid tissue (measure.non_solid_volume_mm3)
    nodule, c, truth = phantom_nodule_as_detected(seed, index)
    assert (nodule.kind, nodule.margin, nodule.attached_to) == ("part-solid", "spiculated", None)
    assert (c.type, c.margin) == ("part_solid", "spiculated")
    assert c.features["partial_volume"] == 1.0
    assert abs(c.volume_mm3 - truth) / truth <= 0.10, (c.volume_mm3, truth)


def test_the_lung_level_around_a_nodule_is_its_own_shells_not_the_exams_nor_a_neighbours() -> None:
    # lung at -810 HU around the nodule; a vessel beside it (another structure) and the wall are not lung
    spacing = np.array([1.0, 0.7, 0.7])
    zz, yy, xx = (np.indices((21, 40, 40)).T * spacing).T
    mask = (zz - 10) ** 2 + (yy - 14) ** 2 + (xx - 14) ** 2 <= 16
    hu = np.full(mask.shape, -810.0, np.float32)
    hu[mask] = -600.0
    vessel = (np.abs(yy - 14) < 1.0) & (np.abs(zz - 10) < 1.0) & (xx > 18.5)
    hu[vessel] = 30.0
    wall = yy > 19.0
    hu[wall] = 40.0
    assert local_lung_hu(hu, mask, vessel, wall, spacing) == -810.0
    # a nodule in the wall's corner with no lung around it: no level of its own
    assert local_lung_hu(hu, mask, np.zeros_like(mask), np.ones_like(mask), spacing) is None


def ball_in_lung(radius_mm: float, nodule_hu: float, lung_hu: float) -> tuple[np.ndarray, float]:
    """(HU of a ball drawn with its partial volume in uniform lung, off the voxel grid, its volume in mm3)."""
    shape = (21, 30, 30)
    frac = ellipsoid_fraction((radius_mm,) * 3, centre=np.array([10.3, 14.6, 15.1]), shape=shape)
    hu = np.full(shape, lung_hu, np.float32)
    paint(hu, frac, nodule_hu)
    return hu, float(frac.sum() * SPACING.prod())


def test_a_ground_glass_edge_counts_by_its_fraction_against_the_lung_around_it() -> None:
    # a 7 mm ground-glass ball (-600 HU) on 1 x 0.7 x 0.7 mm voxels in lung of -800 HU beside the exam's median
    # -860: its half-maximum mask counted whole missed the outer half of its edge voxels; by fractions of ground
    # glass against the lung around it the volume is the ball's
    hu, truth = ball_in_lung(3.5, -600.0, -800.0)
    mask = hu > -700.0
    none = np.zeros_like(mask)
    volume, by_fraction = non_solid_volume_mm3(hu, mask, none, none, -860.0, -600.0, SPACING, spiculated=False)
    assert by_fraction
    assert abs(volume - truth) / truth <= 0.01, (volume, truth)
    # too thin to hold ten inner voxels of ground glass (no level of its own): its voxels count whole
    thin = np.zeros_like(mask)
    thin[9:12, 14:16, 10:20] = True
    assert non_solid_volume_mm3(hu, thin, none, none, -860.0, -600.0, SPACING, spiculated=False) == (
        float(thin.sum()) * float(np.prod(SPACING)), False)


def test_a_solid_edge_counts_by_its_fraction_against_the_lung_around_it() -> None:
    # a 6 mm solid ball (40 HU) in lung of -800 HU where the exam's median is -900: against -900 each lung voxel of
    # its edge would count a tenth of a voxel of nodule
    hu, truth = ball_in_lung(3.0, 40.0, -800.0)
    mask = hu > -380.0
    none = np.zeros_like(mask)
    volume, by_fraction = solid_nodule_volume_mm3(hu, mask, none, none, -900.0, SPACING)
    assert by_fraction
    assert abs(volume - truth) / truth <= 0.01, (volume, truth)


@pytest.mark.parametrize(("seed", "index"), [(14020, 1), (18015, 1)])
def test_a_small_ground_glass_nodules_volume_counts_its_edge_by_fractions(seed: int, index: int) -> None:
    # full-size phantoms' 6.2 and 6.3 mm ground-glass nodules, free in the lung, on 1 and 1.25 mm slices: their
    # half-maximum masks counted whole measured -10 % (the smoothing moves a small body's half-maximum surface
    # inwards, and half the edge lies outside it); their edge by its fraction of ground glass: within 5 %
    nodule, c, truth = phantom_nodule_as_detected(seed, index)
    assert (nodule.kind, nodule.attached_to) == ("ground-glass", None)
    assert c.type == "ground_glass" and c.features["partial_volume"] == 1.0
    assert abs(c.volume_mm3 - truth) / truth <= 0.05, (c.volume_mm3, truth)


def test_large_spiculated_free_nodule_keeps_its_surface_and_its_spicules() -> None:
    # full-size phantom 19017's 18.8 mm spiculated solid nodule, free in the lung among small vessels: the
    # envelope pass marked spicules that the first pass had given to a vessel's basin, and near each one's root
    # cut the nodule's outer shell as a vessel's stub (-16.6 %); only vessels that cross the ROI do that now.
    # Its spicules themselves were marked as vessels (the nodule's partial-volume halo joins them to a vessel it
    # touches elsewhere), so it read smooth (-12.9 %); thin strands of a solid nodule that reach no vessel tissue stay
    nodule, c, truth = phantom_nodule_as_detected(19017, 5)
    assert (nodule.kind, nodule.margin, nodule.attached_to) == ("solid", "spiculated", None)
    assert c.type == "solid"
    assert c.margin == "spiculated"
    assert abs(c.volume_mm3 - truth) / truth <= 0.10, (c.volume_mm3, truth)


def test_large_spiculated_nodule_on_a_vessel_keeps_its_spicules() -> None:
    # full-size phantom 16017's 17.8 mm spiculated solid nodule on a vessel: the stub cut's opening (by about
    # 0.5 R + 1 mm) left a rim all round it that joined its spicules to a vessel's stub, and they went with the
    # stub (no spicule counted: read smooth, so no Brock spiculation term and no 4X); dense thin strands that
    # touch no other basin stay now
    nodule, c, truth = phantom_nodule_as_detected(16017, 0)
    assert (nodule.kind, nodule.margin, nodule.attached_to) == ("solid", "spiculated", "vessel")
    assert c.type == "solid"
    assert c.margin == "spiculated"
    assert c.features["spicules"] >= 2
    assert abs(c.volume_mm3 - truth) / truth <= 0.10, (c.volume_mm3, truth)


def test_solid_nodule_on_a_vessel_counts_its_edge_voxels_there_by_their_fraction() -> None:
    # full-size phantom 19004's 6.7 mm solid nodule, two thirds of its outline on other structures: its edge voxels
    # there counted whole (+11 %); by their fraction (which holds the neighbour's share too) it is within 8 %. The
    # neighbours' own voxels beside the mask stay out.
    nodule, c, truth = phantom_nodule_as_detected(19004, 3)
    assert nodule.kind == "solid"
    assert c.type == "solid" and c.features["partial_volume"] == 1.0
    assert c.contact_share >= CONTACT_SHARE_CAVEAT
    assert abs(c.volume_mm3 - truth) / truth <= 0.08, (c.volume_mm3, truth)


@pytest.mark.parametrize("offset_mm", [None, 5.5])
def test_solid_nodule_touching_or_crossed_by_a_vessel_is_measured_within_a_tenth(offset_mm: float | None) -> None:
    # a 7 mm sphere and a 4 mm vessel that runs into it (the phantoms' way) or only touches it (5.5 mm = R + r):
    # the edge voxels next to the vessel count their fraction (+7.8 -> +6.7 % where it runs in); where it only touches,
    # the sphere's own edge on the vessel's side of the cut is left out (-3.6 -> -7.4 %: the cost, measure.py)
    hu, truth = nodule_on_vessel(5, 3.5, 2.0, 40.0, offset_mm)
    c = characterize_nodule(hu, SPACING, CENTRE, 7.0)
    assert c.segmentation_ok and c.type == "solid" and c.features["partial_volume"] == 1.0
    assert abs(c.volume_mm3 - truth) / truth <= 0.10, (c.volume_mm3, truth)


@pytest.mark.parametrize(("seed", "index", "kind"), [
    # full-size phantom 17033's 7.2 mm part-solid nodule inside a bundle of vessels of its own density near the
    # wall, on 2 mm slices: no edge between nodule and vessels on any slice, and the first segmentation took the
    # bundle (+423 %, over 4 x the detector's sphere, 84 % of its outline on other structures); done again with
    # everything beyond 1.3 x the detector's radius counted as the vessels', it is the nodule
    (17033, 1, "part-solid"),
    # full-size phantom 22008's 6.5 mm solid nodule where vessels as thick as itself meet, on 2.5 mm slices: 96 % of
    # its outline on them, and the first segmentation took lengths of them (+70 %, typed part-solid from their partial
    # volume) but stayed under 3 x the detector's sphere; held, it shrinks to under 1 / 1.4 of that and stays at the
    # sphere's size, so the held one is the nodule
    (22008, 3, "solid"),
])
def test_nodule_among_vessels_of_its_density_is_held_to_the_detectors_extent(seed: int, index: int, kind: str) -> None:
    nodule, c, truth = phantom_nodule_as_detected(seed, index)
    assert (nodule.kind, nodule.attached_to) == (kind, "vessel")
    assert c.held_to_detector
    assert c.type == kind.replace("-", "_")
    assert abs(c.volume_mm3 - truth) / truth <= 0.15, (c.volume_mm3, truth)


def test_nodule_the_held_segmentation_would_cut_below_the_detectors_sphere_is_not_held() -> None:
    # full-size phantom 20012's 7.8 mm solid nodule inside vessels (95 % of its outline on them), called 6.7 mm: held
    # to 1.3 x that radius it loses half of itself (-47 %, 0.85 x the detector's sphere), whereas the first
    # segmentation is right; a held segmentation under 0.9 x the detector's own estimate is not taken
    nodule, c, truth = phantom_nodule_as_detected(20012, 2, 6.7)
    assert (nodule.kind, nodule.attached_to) == ("solid", "vessel") and c.contact_share >= CONTACT_SHARE_CAVEAT
    assert not c.held_to_detector
    assert abs(c.volume_mm3 - truth) / truth <= 0.15, (c.volume_mm3, truth)


@pytest.mark.parametrize(("seed", "index", "detector_mm"), [
    # full-size phantom 20019's 7.9 mm solid nodule on a vessel (1.25 mm slices) called 8.8 mm: the first
    # segmentation took a length of the vessel (+101 %), a third of it beyond 1.3 x the detector's radius; held, it is
    # the nodule, but at 0.79 x the detector's sphere, under the 0.9 that the shrink rule asks
    (20019, 0, 8.8),
    # full-size phantom 24007's 11.2 mm solid nodule on a vessel called 9.5 mm: first +26 %, a fifth of it beyond;
    # held, it shrinks by 1.28 x, less than the 1.4 x of the shrink rule
    (24007, 0, 9.5),
])
def test_nodule_whose_first_segmentation_reaches_far_past_the_detectors_extent_is_held(
        seed: int, index: int, detector_mm: float) -> None:
    nodule, c, truth = phantom_nodule_as_detected(seed, index, detector_mm)
    assert (nodule.kind, nodule.attached_to) == ("solid", "vessel")
    assert c.held_to_detector and c.type == "solid"
    assert abs(c.volume_mm3 - truth) / truth <= 0.12, (c.volume_mm3, truth)


@pytest.mark.parametrize(("seed", "index", "detector_mm"), [
    # full-size phantoms' spiculated part-solid nodules on a curved stretch of the pleura, called as the crop harness
    # drew them: 24013's 14.7 mm on 2.5 mm slices (-19 %) and 15022's 17.6 mm on 0.625 mm slices (-15 %) lost their
    # base to the wall's opening, which was given back on curved walls to solid nodules only
    (24013, 3, 15.86),
    (15022, 3, 18.14),
])
def test_a_part_solid_nodules_base_on_a_curved_wall_is_given_back(seed: int, index: int, detector_mm: float) -> None:
    nodule, c, truth = phantom_nodule_as_detected(seed, index, detector_mm)
    assert (nodule.kind, nodule.attached_to) == ("part-solid", "pleura") and c.location.juxtapleural is not False
    assert c.type == "part_solid"
    assert abs(c.volume_mm3 - truth) / truth <= 0.10, (c.volume_mm3, truth)


def test_a_ground_glass_nodule_the_detector_undersized_is_not_held_and_is_measured_at_its_own_size() -> None:
    # full-size phantom 22030's 15.5 mm ground-glass nodule on a vessel (1.25 mm slices) where the packaged detector
    # puts it: 11.6 mm, its centre (0.6, -0.5, 1.9) voxels off. The first segmentation is the nodule (-1.5 %), but a
    # fifth of it lay beyond 1.3 x the detector's radius, so it was held: -25 %, and part-solid from the length of vessel
    # the cut kept. A ground-glass segmentation over 1.3 x the detector's diameter (15.6 mm here) says the detector
    # undersized it: it is measured again at its own diameter and not held to the detector's extent
    nodule, c, truth = phantom_nodule_as_detected(22030, 2, 11.62, offset_voxels=(0.61, -0.49, 1.85))
    assert (nodule.kind, nodule.attached_to) == ("ground-glass", "vessel")
    assert c.type == "ground_glass" and not c.held_to_detector
    assert abs(c.volume_mm3 - truth) / truth <= 0.05, (c.volume_mm3, truth)


@pytest.mark.parametrize("noise_seed", [0, 1, 2])
def test_a_large_part_solid_nodule_on_a_noisy_low_dose_image_keeps_its_outer_layer(noise_seed: int) -> None:
    # full-size phantom 19016's free 22.2 mm part-solid nodule (1.5 mm slices) with noise added to 70 HU per voxel, a
    # low-dose scan's with a sharp kernel: the noise leaves holes in its ground glass under the candidates' threshold,
    # the opening that finds vessel stubs took the layers round them for thin, they joined into a shell that touched a
    # vessel, and the shell went as a stub: -32 ... -35 % at each of three noise draws. Looked for with the enclosed
    # holes filled, the stubs leave the shell: -13 ... -26 %
    nodule, c, truth = phantom_nodule_as_detected(19016, 0, noise_hu=70.0, noise_seed=noise_seed)
    assert (nodule.kind, nodule.attached_to) == ("part-solid", None) and c.type == "part_solid"
    assert c.volume_mm3 >= 0.70 * truth, (c.volume_mm3, truth)


def test_a_large_ground_glass_nodules_ragged_outer_layer_on_a_noisy_image_is_not_cut_as_a_vessel() -> None:
    # full-size phantom 14016's 17.8 mm ground-glass nodule with noise added to 70 HU per voxel (noise seed 0): the noise
    # makes its edge ragged, the ragged edge shortened the base radius that trim_vessels cuts beyond, and the layer
    # beyond it (2745 of its 5800 voxels, which 53 % of the rays from the centre leave through) touched a vessel and
    # went: -56 %. A cut that wraps half the nodule is its own outer layer, not a vessel's piece: -1 %
    nodule, c, truth = phantom_nodule_as_detected(14016, 2, noise_hu=70.0, noise_seed=0)
    assert nodule.kind == "ground-glass" and c.type == "ground_glass"
    assert abs(c.volume_mm3 - truth) <= 0.15 * truth, (c.volume_mm3, truth)


def test_a_small_ground_glass_nodules_edge_touching_specks_of_lung_noise_on_a_noisy_image_is_not_cut(
        tmp_path: Path) -> None:
    # small phantom 12019's free 6.8 mm ground-glass nodule (3 mm slices) as the crop harness measures it with noise
    # added to 70 HU per voxel: the lung's noise crosses the boundary threshold in specks of one or two voxels, and
    # trim_vessels took the 31 voxels of the nodule's edge beyond its base radius that touched two of them for a
    # vessel's stub: -38 %. A continuation must be TRIM_MIN_OTHER_MM3 (10 mm3) or more: +11 %. Since the forty-ninth
    # session it reads +26 %: +11 % came from the noise's clumps called spicules (a spiculated non-solid nodule's
    # spicules count their fraction of soft tissue, measure.non_solid_volume_mm3); with clumps of noise no spicules
    # (segment.spicules), its edge counts its fraction of ground glass, which the noise of 70 HU, clipped at 0 on the
    # lung's side, raises. Its report says the volume is less reliable (non-solid, under 4 slices across).
    from inference.training.characterize_crops import build_seed, measure_crop

    assert build_seed(12019, False, tmp_path, 6.0) == 4
    r = measure_crop(tmp_path / "12019_1.npz", noise_hu=70.0)
    assert (r.truth_type, r.predicted_type, r.site) == ("ground_glass", "ground_glass", "free")
    assert r.margin != "spiculated" and r.size_caveat == "few slices"
    assert -0.15 <= r.volume_error <= 0.30, r  # not cut: the trim took 38 %


def test_a_ground_glass_nodules_outer_layer_touching_the_lungs_noise_on_a_low_dose_image_is_not_cut(
        tmp_path: Path) -> None:
    # small phantom 9010's free 13.1 mm ground-glass nodule (3 mm slices) as the crop harness measures it with noise
    # added to 70 HU per voxel: the lung's noise, smoothed, reaches the boundary threshold (-739 HU, 2.4 standard
    # deviations of it above the lung's level), clusters of it over 10 mm3 lie along the whole outer layer, and
    # trim_vessels cut the 84 of its 205 voxels beyond the (ragged) base radius that touched them: -47 %. Where the noise
    # reaches the threshold, only soft tissue marks a vessel's continuation: -1 %
    from inference.training.characterize_crops import build_seed, measure_crop

    build_seed(9010, False, tmp_path, 6.0)
    r = measure_crop(tmp_path / "9010_2.npz", noise_hu=70.0)
    assert (r.truth_type, r.predicted_type, r.site) == ("ground_glass", "ground_glass", "free")
    assert abs(r.volume_error) <= 0.15, r


def test_a_small_part_solid_nodules_ground_glass_layer_touching_the_wall_at_a_corner_is_kept() -> None:
    # small phantom 13003's free 6.4 mm part-solid nodule (3 mm slices, a 3.3 mm solid core), as the detector calls it
    # at 5.6 mm: its ground-glass layer and its caps on the next slices are one thin piece round the core, which
    # touched the chest wall's edge with 2 of its 11 voxels, and the stub cut took it all: solid, -58 %. A thin part
    # round (nearly) the whole body that hardly touches anything else is the nodule's outer layer: part-solid, -6 %.
    # (Called 6.2 mm or more, its layer is kept too, but its rim measures 0.88 mm, under the 0.93 mm that makes it
    # part-solid on these slices, and it reads solid at -48 %: docs/characterization.md, "Forty-second session")
    nodule, c, truth = phantom_nodule_as_detected(13003, 5, 5.6, small=True)
    assert (nodule.kind, nodule.attached_to) == ("part-solid", None)
    assert c.type == "part_solid"
    assert abs(c.volume_mm3 - truth) <= 0.15 * truth, (c.volume_mm3, truth)


def test_a_nodules_partial_volume_slice_touching_a_vessel_counts_for_its_size() -> None:
    # full-size phantom 20009's free 9.6 mm solid nodule (2.5 mm slices), called 8.5 mm as the crop harness draws it:
    # the outer ring of its last slice, a thin layer next to half its body's surface (176 voxels), touched a vessel
    # with 25 of them and the stub cut took it for the vessel's: -18.7 %. A layer that wraps that much of the body and
    # hardly touches anything else is the nodule's own, for its size (SIZE_LAYER_MIN_COVER): -5 %
    nodule, c, truth = phantom_nodule_as_detected(20009, 2, 8.55)
    assert (nodule.kind, nodule.attached_to) == ("solid", None) and c.type == "solid"
    assert abs(c.volume_mm3 - truth) <= 0.10 * truth, (c.volume_mm3, truth)


def test_a_small_solid_nodules_outer_layer_on_thick_slices_counts_for_its_size_not_its_type() -> None:
    # small phantom 10015's free 6.1 mm solid nodule (3 mm slices), called 5.4 mm: its outer layer (10 voxels next to
    # 0.58 of its body's surface, 2 of them on a vessel's basin) is partial volume in the ground-glass band. Left out, the
    # nodule measured -14 %; counted before the type is read, its rim was 1.09 mm, part-solid, and the held pass cut it
    # to -26 %. Counted for the size only: solid, +3 %
    nodule, c, truth = phantom_nodule_as_detected(10015, 0, 5.42, small=True)
    assert (nodule.kind, nodule.attached_to) == ("solid", None)
    assert c.type == "solid" and not c.held_to_detector
    assert abs(c.volume_mm3 - truth) <= 0.10 * truth, (c.volume_mm3, truth)


def characterized_free_nodule(seed: int, semi_axes_zyx: tuple[float, float, float],
                              detector_mm: float) -> tuple[NoduleCharacteristics, float]:
    """(what characterize_nodule reads from a solid ellipsoid free in the lung at CENTRE, called `detector_mm` by the
    detector, its painted volume in mm3)."""
    hu = lung(seed)
    frac = ellipsoid_fraction(semi_axes_zyx)
    paint(hu, frac, 40.0)
    return characterize_nodule(hu, SPACING, CENTRE, detector_mm), float(frac.sum() * np.prod(SPACING))


def test_free_nodule_larger_than_the_detector_says_is_not_held() -> None:
    # a free elongated nodule (10 x 16 x 10 mm) that the detector called 7 mm: 4.7 x the detector's sphere, but
    # nothing round it to run into (no outline on other structures), so its segmentation stands
    c, truth = characterized_free_nodule(23, (5.0, 8.0, 5.0), 7.0)
    assert c.volume_mm3 > 3.0 * np.pi / 6 * 7.0 ** 3
    assert not c.held_to_detector and c.contact_share < CONTACT_SHARE_CAVEAT
    assert abs(c.volume_mm3 - truth) / truth <= 0.10, (c.volume_mm3, truth)


def test_nodule_much_larger_than_the_detector_says_is_still_segmented() -> None:
    # a free 10 mm nodule called 6 mm survived the wall's opening (a ball of 0.6 x the diameter + 1.5 mm), was
    # taken for the wall and nothing was segmented; its inscribed diameter at the centre (about 10 mm, over
    # DETECTOR_UNDERSIZE_FACTOR x 6 mm) is the diameter it is measured at
    c, truth = characterized_free_nodule(24, (5.0, 5.0, 5.0), 6.0)
    assert c.segmentation_ok and c.type == "solid"
    assert abs(c.volume_mm3 - truth) / truth <= 0.10, (c.volume_mm3, truth)
    # and a centre in aerated lung still finds nothing, with the reason
    empty = characterize_nodule(lung(24), SPACING, CENTRE, 6.0)
    assert not empty.segmentation_ok and empty.reason is not None and "no nodule" in empty.reason


@pytest.mark.parametrize("noise_hu", [20.0, 45.0])
def test_an_airways_wall_is_the_ring_round_air_not_round_a_pocket_of_lung(noise_hu: float) -> None:
    # three slices of two rings of -450 HU (a thin wall read through partial volume): one round air (an airway's
    # lumen, -1000 HU, 20 voxels a slice), one round lung (a pocket that vessels and a nodule enclose, 113 voxels a
    # slice, whose darkest voxel lies about 2.6 x the noise under the lung's level); at the phantoms' noise and at a
    # low-dose scan's
    rng = np.random.default_rng(30)
    hu = rng.normal(-860.0, noise_hu, (5, 64, 64)).astype(np.float32)
    yy, xx = np.mgrid[:64, :64]
    rings = []
    for cy, cx, lumen_px, lumen_hu in [(16, 16, 2.5, -1000.0), (42, 42, 6.0, None)]:
        r = np.hypot(yy - cy, xx - cx)
        ring = (r >= lumen_px) & (r < lumen_px + 2)
        hu[1:4, ring] = -450.0 + rng.normal(0.0, noise_hu, (3, int(ring.sum())))
        if lumen_hu is not None:
            inner = r < lumen_px
            hu[1:4, inner] = lumen_hu + rng.normal(0.0, noise_hu, (3, int(inner.sum())))
        rings.append(ring)
    seed = ndimage.gaussian_filter(hu, 0.5 / SPACING) > -750.0
    walls = airway_walls(seed, hu, lung_noise(clear_lung(hu, seed, SPACING)), SPACING)
    inner_row = (np.hypot(yy - 16, xx - 16) < 2.5 + AIRWAY_WALL_PX) & rings[0]
    assert walls[1:4][:, inner_row].all() and walls[1:4][:, ~inner_row].sum() == 0
    assert not walls[[0, 4]].any()


def test_an_airways_wall_beside_a_nodule_is_not_the_nodules() -> None:
    # full-size 24016:3, an 8.1 mm solid nodule by the pleura beside an airway whose wall reads -300 ... -600 HU: the
    # first watershed's nodule took the wall with the nodule's edge (no neck between them), and the nodule read
    # part-solid at +85 %. The wall, a ring of candidates round air on each slice, is marked as another structure
    nodule, c, truth = phantom_nodule_as_detected(24016, 3)
    assert nodule.kind == "solid"
    assert c.type == "solid" and c.held_to_detector
    assert abs(c.volume_mm3 - truth) / truth <= 0.1, (c.volume_mm3, truth)


def test_a_stray_voxel_of_the_mask_does_not_replace_the_nodule_when_its_ground_glass_base_is_restored() -> None:
    # the half-maximum threshold can leave a voxel of the mask apart from the nodule; the base was joined to the
    # component at the mask's first voxel, and where that was the stray one the nodule was lost (a part-solid nodule
    # on the pleura of phantom 23037, 1130 voxels -> 1, seen while the wall's reach was tried larger)
    shape = (20, 30, 30)
    hu = np.full(shape, -850.0, np.float32)
    wall = np.zeros(shape, bool)
    wall[:, :, 20:] = True
    hu[:, :, 26:] = 40.0  # the chest wall's soft tissue
    z, y, x = np.indices(shape)
    hu[(x >= 20) & (x < 26) & (abs(z - 10) <= 3) & (abs(y - 15) <= 3)] = -550.0  # the base the wall's opening took
    ball = (z - 10) ** 2 + (y - 15) ** 2 + (x - 16) ** 2 <= 16
    hu[ball] = -550.0
    mask = ball.copy()
    mask[0, 0, 0] = True  # the stray voxel, first in raster order
    seg = Segmentation((slice(0, 20), slice(0, 30), slice(0, 30)), hu, hu.copy(), mask, wall, -850.0, True, None, 0)
    restore_ground_glass_base(seg, -700.0, np.ones(3))
    assert (seg.mask & ball).sum() == ball.sum()
    base = seg.mask & wall
    assert base.sum() >= 50 and base[10, 15, 20:23].all(), int(base.sum())
