"""inference.training.findings_audit: the painted nodules' Lung-RADS categories and the matching of a result's
findings to them (the pipeline's own run on a phantom is in test_pipeline.py)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from inference.phantom import Phantom, PhantomNodule
from inference.training import findings_audit
from inference.training.findings_audit import audit_result, truth_category
from inference.training.painted_axes import PaintedAxes


def painted(diameter_mm: float, kind: str = "solid", *, margin: str = "smooth", calcified: bool = False,
            solid_mm: float = 0.0, at: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> PhantomNodule:
    return PhantomNodule(at, diameter_mm, cast(Any, kind), None, False, cast(Any, margin), calcified,
                         solid_mm or (diameter_mm if kind == "solid" else 0.0))


@pytest.mark.parametrize(("nodule", "category"), [
    (painted(5.94), "2"),  # 5.9 after rounding
    (painted(5.96), "3"),  # 6.0
    (painted(7.9), "3"), (painted(8.0), "4A"), (painted(14.9), "4A"), (painted(15.0), "4B"),
    (painted(9.0, margin="spiculated"), "4X"),  # a category 3-4 nodule with spiculation
    (painted(4.0, margin="spiculated"), "2"),  # category 2 stays 2
    (painted(20.0, calcified=True), "1"),
    (painted(29.9, "ground-glass"), "2"), (painted(30.0, "ground-glass"), "3"),
    (painted(10.0, "part-solid", solid_mm=5.9), "3"), (painted(10.0, "part-solid", solid_mm=6.0), "4A"),
    (painted(10.0, "part-solid", solid_mm=8.0), "4B"),
])
def test_a_painted_nodules_category_is_lung_rads_of_what_was_painted(nodule: PhantomNodule, category: str) -> None:
    assert truth_category(nodule, outlined(nodule)).value == category


def outlined(nodule: PhantomNodule) -> PaintedAxes:
    """A painted outline as round as the nodule's core diameter (its axes on a painting: test_pipeline.py)."""
    d, solid = nodule.diameter_mm, nodule.solid_diameter_mm
    return PaintedAxes(d, d, solid, solid)


def finding(x: float, category: str) -> SimpleNamespace:
    return SimpleNamespace(center_mm=(x, 0.0, 0.0), lung_rads=category)


def test_findings_are_matched_within_one_and_a_half_radii_and_repeats_and_misses_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the painted outline's axes on a painting are in test_painted_axes.py and test_pipeline.py; here the painted
    # diameter stands in for them
    monkeypatch.setattr(findings_audit, "painted_axes", lambda _phantom, _inside, nodule: outlined(nodule))
    nodules = [painted(10.0, at=(0.0, 0.0, 0.0)), painted(6.0, at=(40.0, 0.0, 0.0)), painted(4.0, at=(80.0, 0.0, 0.0))]
    phantom = cast(Phantom, SimpleNamespace(nodules=nodules))
    result = SimpleNamespace(exam=SimpleNamespace(lung_rads="4A"), findings=[
        finding(7.5, "4A"),   # 1.5 radii from the 10 mm nodule: it
        finding(-2.0, "3"),   # the same nodule again: a repeat
        finding(84.0, "2"),   # 2 radii from the 4 mm one: no nodule's
    ])
    audit = audit_result(1, phantom, cast(Any, result))
    assert [(f.nodule, f.repeat, f.category, f.truth_category) for f in audit.findings] == [
        (0, False, "4A", "4A"), (0, True, "3", "4A"), (None, False, "2", None)]
    assert audit.missed == (1,)  # the 6 mm nodule; the 4 mm one is under 6 mm
    assert (audit.matched, audit.agreeing) == (1, 1)
    assert (audit.exam_category, audit.truth_exam_category) == ("4A", "4A")
