"""The completion-evidence rule (dicomnode.receive.geometry) on synthetic position lists."""
from __future__ import annotations

import math

import pytest

from dicomnode.receive.geometry import InstanceGeometry, judge, orientation_text, slice_position

AXIAL = orientation_text([1, 0, 0, 0, 1, 0])


def slices(positions: list[float], orientation: str | None = AXIAL, images: int | None = None) -> list[InstanceGeometry]:
    return [InstanceGeometry(p, orientation, images, None) for p in positions]


def grid(count: int, spacing: float = 1.25, start: float = -300.0) -> list[float]:
    return [start + i * spacing for i in range(count)]


def test_contiguous_evenly_spaced_slices_in_any_order_are_whole() -> None:
    positions = grid(261)
    shuffled = positions[1::2] + positions[0::2]
    verdict = judge(slices(shuffled), slice_thickness_mm=1.25)
    assert verdict.complete, verdict.reason
    assert "261 contiguous slices" in verdict.reason


def test_a_missing_slice_is_a_gap() -> None:
    positions = grid(100)
    del positions[40]
    verdict = judge(slices(positions), 1.25)
    assert not verdict.complete and "gap" in verdict.reason


def test_a_duplicate_position_is_not_whole() -> None:
    positions = grid(50) + [grid(50)[10]]
    verdict = judge(slices(positions), 1.25)
    assert not verdict.complete and "share one slice position" in verdict.reason


def test_every_other_slice_is_even_but_wider_than_the_thickness() -> None:
    """The first of two associations carrying alternate slices: evenly spaced, yet half the series."""
    verdict = judge(slices(grid(261)[0::2]), slice_thickness_mm=1.25)
    assert not verdict.complete and "wider than the slice thickness" in verdict.reason
    # without a thickness the grid alone cannot tell
    assert judge(slices(grid(261)[0::2]), None).complete


def test_rounding_jitter_within_tolerance_is_still_even() -> None:
    positions = [p + (0.004 if i % 3 == 0 else -0.003) for i, p in enumerate(grid(80, 0.625))]
    assert judge(slices(positions), 0.625).complete


def test_a_step_off_by_more_than_the_tolerance_is_a_gap() -> None:
    positions = grid(80, 2.5)
    positions[30:] = [p + 0.1 for p in positions[30:]]  # 4 % of the spacing
    assert not judge(slices(positions), 2.5).complete


def test_mixed_orientations_are_not_whole() -> None:
    tilted = orientation_text([1, 0, 0, 0, math.cos(0.2), math.sin(0.2)])
    instances = slices(grid(10)) + [InstanceGeometry(grid(11)[10], tilted)]
    verdict = judge(instances, 1.25)
    assert not verdict.complete and "orientation" in verdict.reason


@pytest.mark.parametrize("missing", ["position", "orientation"])
def test_an_instance_without_geometry_leaves_it_to_the_timer(missing: str) -> None:
    instances = slices(grid(10))
    instances[3] = InstanceGeometry(None, AXIAL) if missing == "position" else InstanceGeometry(instances[3].slice_position_mm, None)
    verdict = judge(instances, 1.25)
    assert not verdict.complete and "no Image" in verdict.reason


def test_too_few_slices_are_not_whole() -> None:
    assert not judge(slices(grid(2)), 1.25).complete
    assert not judge([], 1.25).complete


def test_images_in_acquisition_must_match_the_count() -> None:
    assert judge(slices(grid(100), images=100), 1.25).complete
    short = judge(slices(grid(100), images=101), 1.25)  # the last slice has not come: the grid cannot see it
    assert not short.complete and "ImagesInAcquisition says 101" in short.reason
    disagree = slices(grid(10), images=10)
    disagree[0] = InstanceGeometry(disagree[0].slice_position_mm, AXIAL, 12, None)
    assert not judge(disagree, 1.25).complete


def test_one_multi_frame_instance_is_whole_and_several_are_not() -> None:
    assert judge([InstanceGeometry(None, None, None, 300)]).complete
    two = [InstanceGeometry(None, None, None, 150), InstanceGeometry(None, None, None, 150)]
    assert not judge(two).complete


def test_slice_position_is_the_projection_on_the_normal() -> None:
    assert slice_position([10.0, 20.0, -150.5], [1, 0, 0, 0, 1, 0]) == pytest.approx(-150.5)
    # coronal: row x column = x cross -z = +y
    assert slice_position([10.0, 20.0, -150.5], [1, 0, 0, 0, 0, -1]) == pytest.approx(20.0)
    assert slice_position([0.0, 0.0, 1.0], [1, 0, 0, 1, 0, 0]) is None  # parallel directions: no plane
    assert orientation_text([1, 0, 0, 1, 0, 0]) is None
    assert orientation_text([1, 0, 0, 0, 1, float("nan")]) is None
