"""Principal extents (inference/characterize/shape.py) and the note a band- or plate-like lesion gets."""
from __future__ import annotations

import numpy as np
import pytest

from inference.characterize.shape import principal_extents_mm
from tests.inference.test_characterize import CENTRE, SPACING, ellipsoid_fraction, lung, paint


@pytest.mark.parametrize("semi_axes", [(5.0, 5.0, 5.0), (4.0, 8.0, 4.0), (10.0, 10.0, 2.0)])
def test_extents_of_an_ellipsoid_are_its_axes(semi_axes: tuple[float, float, float]) -> None:
    """A painted ellipsoid's mask at half its partial volume: each extent within 0.7 mm of the full axis."""
    mask = ellipsoid_fraction(semi_axes) >= 0.5
    expected = sorted((2 * a for a in semi_axes), reverse=True)
    assert principal_extents_mm(mask, SPACING) == pytest.approx(expected, abs=0.7)


@pytest.mark.parametrize("semi_axes, band", [
    ((1.5, 12.0, 1.5), True),  # a 24 mm band 3 mm thick: a linear scar's shape
    ((10.0, 10.0, 1.2), True),  # a plate 2.4 mm thick: plate atelectasis seen edge-on
    ((4.0, 8.0, 4.0), False),  # an oval nodule, 2:1
    ((5.0, 5.0, 5.0), False),
])
def test_a_band_or_plate_says_it_may_be_a_scar_and_keeps_its_category(semi_axes: tuple[float, float, float],
                                                                       band: bool) -> None:
    """A thin band read part-solid 14 mm, Lung-RADS 4B, Brock 38 % with nothing said; it keeps its category (a
    cancer can be elongated too) and the reader is told it is band-like, as a scar or atelectasis is."""
    from tests.inference.test_pipeline import lesion_assessed

    hu = lung(3)
    paint(hu, ellipsoid_fraction(semi_axes), 40.0)
    finding, _, _ = lesion_assessed(hu, SPACING, CENTRE, 1.6 * max(semi_axes))
    said = finding.note is not None and "band- or plate-like" in finding.note
    assert said is band, finding.note
    if band:
        assert finding.lung_rads in ("4A", "4B") and "scar or atelectasis" in (finding.note or "")
