"""Is a series geometrically complete? The evidence that lets a released series complete after a
short grace instead of the idle timer (docs/architecture.md, "Series lifecycle").

Pure: header facts in, a verdict out. The facts are captured per instance at ingest
(dicomnode.receive.ingest) so that deciding never re-reads a file.

A series is complete on evidence when either
- it is one multi-frame instance (an enhanced CT: every frame travels in that one instance), or
- it has at least MIN_SLICES single-frame instances, each with a position and an orientation, all in
  one orientation, whose positions along the slice normal are evenly spaced with no gap and no
  duplicate, the spacing is no wider than the slice thickness (where known: a wider step means
  slices are missing in between, e.g. every other slice came first), and the count matches
  ImagesInAcquisition where the instances state it (and agree on it).
Anything else is no evidence: the idle timer decides, as before.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIN_SLICES = 3
# positions are equally spaced when every step is within this of the median step
SPACING_RELATIVE_TOLERANCE = 0.01
SPACING_ABSOLUTE_TOLERANCE_MM = 0.01
# direction cosines that differ by less than this are the same orientation
ORIENTATION_TOLERANCE = 1e-3
# the orientation as stored: six direction cosines, rounded, joined with "\" as DICOM writes them
_ORIENTATION_DECIMALS = 5


@dataclass(frozen=True)
class InstanceGeometry:
    """What one instance says about where it lies; None where the header did not say it."""

    slice_position_mm: float | None
    orientation: str | None
    images_in_acquisition: int | None = None
    number_of_frames: int | None = None


@dataclass(frozen=True)
class Verdict:
    complete: bool
    reason: str  # why, for the audit event and the log


def orientation_text(cosines: Sequence[float]) -> str | None:
    """ImageOrientationPatient as stored in instances.orientation, or None when it is not six finite
    numbers describing two non-parallel unit directions."""
    if len(cosines) != 6 or not all(math.isfinite(c) for c in cosines):
        return None
    if _normal(cosines) is None:
        return None
    return "\\".join(f"{c:.{_ORIENTATION_DECIMALS}f}" for c in cosines)


def slice_position(position: Sequence[float], cosines: Sequence[float]) -> float | None:
    """ImagePositionPatient projected on the slice normal (row x column), in mm, or None."""
    normal = _normal(cosines)
    if normal is None or len(position) != 3 or not all(math.isfinite(p) for p in position):
        return None
    return sum(p * n for p, n in zip(position, normal))


def _normal(cosines: Sequence[float]) -> tuple[float, float, float] | None:
    if len(cosines) != 6:
        return None
    rx, ry, rz, cx, cy, cz = cosines
    normal = (ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx)
    length = math.sqrt(sum(n * n for n in normal))
    if not math.isfinite(length) or length < 0.5:  # parallel or degenerate directions: no plane
        return None
    return (normal[0] / length, normal[1] / length, normal[2] / length)


def _parse_orientation(text: str) -> tuple[float, ...] | None:
    try:
        values = tuple(float(v) for v in text.split("\\"))
    except ValueError:
        return None
    return values if len(values) == 6 else None


def judge(instances: Sequence[InstanceGeometry], slice_thickness_mm: float | None = None) -> Verdict:
    """The evidence verdict for the instances of one series (duplicates already dropped)."""
    if not instances:
        return Verdict(False, "no instances")
    frames = [i.number_of_frames for i in instances]
    if any(f is not None and f > 1 for f in frames):
        if len(instances) == 1:
            return Verdict(True, f"one multi-frame instance holding all {frames[0]} frames")
        return Verdict(False, f"{len(instances)} instances, some multi-frame: cannot tell which frames are missing")
    return _judge_slices(instances, slice_thickness_mm)


def _judge_slices(instances: Sequence[InstanceGeometry], slice_thickness_mm: float | None) -> Verdict:
    count = len(instances)
    if count < MIN_SLICES:
        return Verdict(False, f"{count} slice(s), fewer than {MIN_SLICES}")
    orientation = _common_orientation(instances)
    if isinstance(orientation, Verdict):
        return orientation
    expected = _images_in_acquisition(instances)
    if isinstance(expected, Verdict):
        return expected
    if expected is not None and expected != count:
        return Verdict(False, f"{count} slices but ImagesInAcquisition says {expected}")
    positions = sorted(i.slice_position_mm for i in instances if i.slice_position_mm is not None)
    if len(positions) != count:
        return Verdict(False, "an instance has no ImagePositionPatient")
    return _judge_spacing(positions, slice_thickness_mm)


def _common_orientation(instances: Sequence[InstanceGeometry]) -> Verdict | None:
    """None when all instances share one orientation, else the negative verdict."""
    first: tuple[float, ...] | None = None
    for inst in instances:
        cosines = _parse_orientation(inst.orientation) if inst.orientation else None
        if cosines is None:
            return Verdict(False, "an instance has no ImageOrientationPatient")
        if first is None:
            first = cosines
        elif any(abs(a - b) > ORIENTATION_TOLERANCE for a, b in zip(first, cosines)):
            return Verdict(False, "the instances do not share one orientation")
    return None


def _images_in_acquisition(instances: Sequence[InstanceGeometry]) -> int | Verdict | None:
    """The count the instances state, None when none states one, a negative verdict when they disagree."""
    stated = {i.images_in_acquisition for i in instances if i.images_in_acquisition is not None}
    if not stated:
        return None
    if len(stated) > 1:
        return Verdict(False, f"the instances disagree on ImagesInAcquisition ({sorted(stated)})")
    return stated.pop()


def _judge_spacing(positions: list[float], slice_thickness_mm: float | None) -> Verdict:
    steps = [b - a for a, b in zip(positions, positions[1:])]
    spacing = sorted(steps)[len(steps) // 2]
    tolerance = max(SPACING_RELATIVE_TOLERANCE * spacing, SPACING_ABSOLUTE_TOLERANCE_MM)
    if spacing <= tolerance or min(steps) <= tolerance:
        return Verdict(False, "two instances share one slice position")
    irregular = [s for s in steps if abs(s - spacing) > tolerance]
    if irregular:
        return Verdict(False, f"a gap: a step of {max(irregular, key=lambda s: abs(s - spacing)):.3f} mm "
                              f"where the spacing is {spacing:.3f} mm")
    if slice_thickness_mm is not None and slice_thickness_mm > 0 and spacing > slice_thickness_mm + tolerance:
        return Verdict(False, f"spacing {spacing:.3f} mm wider than the slice thickness {slice_thickness_mm:.3f} mm: "
                              "slices may be missing in between")
    return Verdict(True, f"{len(positions)} contiguous slices {spacing:.3f} mm apart")
