"""The painted outline's axes (training.painted_axes), the truth the measured axes and the Lung-RADS category by
diameter are scored against, checked against a plain pixel count on a finer grid and against a cut of known size."""
from __future__ import annotations

import math

import numpy as np
import pytest

from inference.characterize.measure import slice_axes
from inference.phantom.model import Phantom, PhantomNodule
from inference.phantom.nodules import edge_mm, nodule_fractions
from inference.training.characterize_eval import NoduleResult
from inference.training.painted_axes import painted_axes

SPACING = np.array([1.25, 0.7, 0.7])  # (z, y, x) mm
SHAPE = (40, 80, 80)


def scan(direction: np.ndarray | None = None) -> Phantom:
    return Phantom(hu=np.zeros(SHAPE, np.int16), origin=np.array([-28.0, -28.0, -25.0]), spacing=SPACING,
                   slice_thickness_mm=1.25, patient_position="HFS", nodules=[], seed=0,
                   direction=np.eye(3) if direction is None else direction)


def nodule(kind: str = "solid", margin: str = "smooth", diameter: float = 9.0, solid: float = 0.0,
           centre: tuple[float, float, float] = (0.2, -0.3, 0.4), shape_seed: int = 11) -> PhantomNodule:
    return PhantomNodule(center_mm=centre, diameter_mm=diameter, kind=kind, attached_to=None,  # type: ignore[arg-type]
                         malignant=False, margin=margin, solid_diameter_mm=solid or diameter,  # type: ignore[arg-type]
                         shape_seed=shape_seed)


def counted_axes(phantom: Phantom, n: PhantomNodule, step: float = 0.04, part: str = "outer") -> tuple[float, float]:
    """The largest section's axes by counting pixels of a 0.04 mm grid at fraction >= 0.5 (of the whole nodule, or
    `part` "core") on each of the scan's slices (pixel centres plus a pixel: long by 0.7-0.85 of this grid's pixel,
    0.03 mm)."""
    half = n.diameter_mm
    side = int(2 * half / step) + 1
    best = (0.0, 0.0)
    cz = (n.center_mm[2] - phantom.origin[2]) / SPACING[0]
    for k in range(int(cz - half / SPACING[0]), int(cz + half / SPACING[0]) + 2):
        origin = np.array([n.center_mm[0] - half, n.center_mm[1] - half, phantom.origin[2] + k * SPACING[0]])
        outer, core = nodule_fractions(n, origin, np.array([SPACING[0], step, step]), np.eye(3), (1, side, side))
        long_short = slice_axes((core if part == "core" else outer)[0] >= 0.5, np.array([step, step]))
        best = max(best, long_short)
    return best


@pytest.mark.parametrize("margin, shape_seed", [("smooth", 11), ("lobulated", 12), ("lobulated", 13)])
def test_the_painted_axes_are_the_largest_sections_own(margin: str, shape_seed: int) -> None:
    phantom = scan()
    n = nodule(margin=margin, shape_seed=shape_seed)
    axes = painted_axes(phantom, np.ones(SHAPE, bool), n)
    long, short = counted_axes(phantom, n)
    assert axes.long_mm == pytest.approx(long, abs=0.08) and axes.short_mm == pytest.approx(short, abs=0.08)
    assert (axes.solid_long_mm, axes.solid_short_mm) == (axes.long_mm, axes.short_mm)  # a solid nodule's whole
    # the lobes make the outline larger than the core's 9 mm, and a lobulated one more so
    assert axes.mean_mm >= 9.0 - 0.2 and (margin == "smooth") == (axes.mean_mm < 9.5)


def test_what_the_scan_counts_outside_the_lungs_is_cut_away() -> None:
    # a smooth 10 mm nodule whose right half lies outside the lungs (`inside`: the lung region at the scan's pixels):
    # its section is a half disc, 10 mm along the cut and 5 mm across, plus the half pixel to the cut's pixel edge
    phantom = scan()
    centre_x_index = 40
    n = nodule(diameter=10.0, centre=(phantom.origin[0] + centre_x_index * SPACING[2], 0.0, 0.0))
    whole = painted_axes(phantom, np.ones(SHAPE, bool), n)
    inside = np.ones(SHAPE, bool)
    inside[:, :, centre_x_index + 1:] = False
    cut = painted_axes(phantom, inside, n)
    assert cut.long_mm == pytest.approx(whole.long_mm, abs=0.15)
    assert cut.short_mm == pytest.approx(whole.short_mm / 2 + SPACING[2] / 2, abs=0.15)


def test_a_part_solid_nodules_solid_part_is_its_cores_outline_widened_by_the_ramp() -> None:
    # the painter paints solid tissue wherever the core's ramp is above 0: half the scan's ramp beyond the core's
    # outline on each side (nodules.painted_solid_diameter_mm)
    phantom = scan()
    n = nodule(kind="part-solid", diameter=12.0, solid=6.0)
    axes = painted_axes(phantom, np.ones(SHAPE, bool), n)
    long, short = counted_axes(phantom, n, part="core")
    assert axes.solid_long_mm == pytest.approx(long + edge_mm(SPACING), abs=0.08)
    assert axes.solid_short_mm == pytest.approx(short + edge_mm(SPACING), abs=0.08)
    assert axes.solid_mean_mm < axes.mean_mm and axes.mean_mm >= 12.0 - 0.2
    ground_glass = painted_axes(phantom, np.ones(SHAPE, bool), nodule(kind="ground-glass"))
    assert ground_glass.long_mm > 8.5 and (ground_glass.solid_long_mm, ground_glass.solid_short_mm) == (0.0, 0.0)


def test_a_flipped_scan_gives_the_same_axes() -> None:
    # feet first: x and z flipped; the same nodule on the same slices (the mapping the painter uses)
    flipped = np.diag([-1.0, 1.0, -1.0])
    phantom = scan(flipped)
    phantom.origin = np.array([28.0 - 0.7, -28.0, 25.0 - 1.25])
    n = nodule()
    axes = painted_axes(phantom, np.ones(SHAPE, bool), n)
    reference = painted_axes(scan(), np.ones(SHAPE, bool), n)
    assert axes.long_mm == pytest.approx(reference.long_mm, abs=0.1)
    assert axes.short_mm == pytest.approx(reference.short_mm, abs=0.1)


def test_the_painted_category_by_diameter_takes_the_painted_outline_where_recorded() -> None:
    # a lobulated 7.6 mm core outlined at 8.2 x 7.9 mm: 8.05 -> 8.1 mm mean, category 4A, not the core's 3
    base = NoduleResult(seed=0, index=0, truth_type="solid", predicted_type="", diameter_mm=7.6,
                        truth_volume_mm3=math.pi / 6 * 7.6 ** 3, volume_mm3=0.0, truth_margin="lobulated", margin="",
                        truth_calcified=False, calcified=False, attached_to=None, juxtapleural=False,
                        segmentation_ok=False, solid_diameter_mm=7.6)
    assert base.painted_lung_rads() == "3"
    from dataclasses import replace

    outlined = replace(base, painted_long_mm=8.2, painted_short_mm=7.9)
    assert outlined.painted_lung_rads() == "4A"
    assert outlined.painted_lung_rads(by_volume=True) == "3"  # by volume the painted volume decides, as before
    part_solid = replace(outlined, truth_type="part_solid", diameter_mm=12.0, solid_diameter_mm=5.8,
                         painted_long_mm=12.5, painted_short_mm=12.1, painted_solid_mm=6.1)
    assert part_solid.painted_lung_rads() == "4A"  # solid part 6.1 mm as outlined (5.8 + ramp: 3 by the core)


def test_the_evaluation_reports_diameters_against_the_painted_outlines() -> None:
    from dataclasses import replace

    from inference.training.characterize_eval import Evaluation, format_report

    base = NoduleResult(seed=0, index=0, truth_type="solid", predicted_type="solid", diameter_mm=9.0,
                        truth_volume_mm3=380.0, volume_mm3=380.0, truth_margin="smooth", margin="smooth",
                        truth_calcified=False, calcified=False, attached_to=None, juxtapleural=False,
                        segmentation_ok=True, painted_long_mm=9.4, painted_short_mm=9.0)
    right = replace(base, mean_diameter_mm=9.3, long_mm=9.5, short_mm=9.1)  # mean 9.2 painted: +0.1
    long = replace(base, index=1, mean_diameter_mm=10.5, long_mm=11.0, short_mm=10.0)  # +1.3: outside 1 mm
    saved_before = replace(base, index=2, painted_long_mm=0.0, painted_short_mm=0.0, mean_diameter_mm=9.0,
                           long_mm=9.0, short_mm=9.0)
    ev = Evaluation(results=[right, long, saved_before])
    errors = ev.diameter_errors()
    assert errors.shape == (2, 3)
    assert errors[:, 0] == pytest.approx([0.1, 1.3]) and errors[:, 1] == pytest.approx([0.1, 1.6])
    assert ev.diameter_errors("lobulated").shape == (0, 3)
    summary = ev.to_json()["diameter_error_mm"]
    assert summary["all"]["count"] == 2 and summary["all"]["mean_within"] == 1 and summary["lobulated"] is None
    assert "smooth +0.70 / +0.85 / +0.55, 1 of 2" in format_report(ev, details=False)


def test_a_core_no_slice_crosses_is_its_solid_part_as_painted() -> None:
    # a 1.4 mm core centred between two 3 mm slices: no slice crosses it at half its fraction, and its solid part is
    # its painted diameter (core plus the ramp), not nothing
    thick = Phantom(hu=np.zeros((20, 40, 40), np.int16), origin=np.array([-14.0, -14.0, -30.0]),
                    spacing=np.array([3.0, 0.7, 0.7]), slice_thickness_mm=3.0, patient_position="HFS", nodules=[],
                    seed=0)
    n = nodule(kind="part-solid", diameter=8.0, solid=1.4, centre=(0.0, 0.0, -30.0 + 9 * 3.0 + 1.5))
    axes = painted_axes(thick, None, n)
    assert axes.long_mm > 0 and axes.solid_long_mm == axes.solid_short_mm == pytest.approx(1.4 + edge_mm(thick.spacing))
