"""Lung-RADS v2022 modifier S (inference.clinical.significant): the CAC-DRS grade of an Agatston score at each
boundary, and which measured findings suggest S. Expected values are the published cut-offs (CAC-DRS, Hecht HS et al.,
J Cardiovasc Comput Tomogr 2018;12:185-191: 0 none, 1-99 mild, 100-299 moderate, >= 300 severe)."""
from __future__ import annotations

import math

import pytest

from inference.clinical.significant import CalciumGrade, SignificantKind, calcium_grade, significant_findings

G = CalciumGrade


@pytest.mark.parametrize(("score", "grade"), [
    (0.0, G.NONE), (0.49, G.NONE), (0.5, G.MILD), (1.0, G.MILD), (99.0, G.MILD), (99.49, G.MILD),
    (99.5, G.MODERATE), (100.0, G.MODERATE), (299.0, G.MODERATE), (299.5, G.SEVERE), (300.0, G.SEVERE),
    (4120.0, G.SEVERE),
])
def test_cac_drs_grade_at_each_boundary(score: float, grade: CalciumGrade) -> None:
    assert calcium_grade(score) is grade  # graded by the whole number a report shows, rounded half up


@pytest.mark.parametrize("bad", [-1.0, math.nan])
def test_a_negative_or_missing_score_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="Agatston"):
        calcium_grade(bad)


def _found(calcium: float | None, laa: float | None = 1.0, reliable: bool = True) -> list[SignificantKind]:
    return [f.kind for f in significant_findings(calcium_agatston=calcium, laa950_pct=laa, laa950_reliable=reliable,
                                                 emphysema_threshold_pct=5.0)]


def test_moderate_or_severe_coronary_calcium_suggests_s_and_mild_does_not() -> None:
    assert _found(None) == [] and _found(0.0) == [] and _found(99.4) == []
    assert _found(99.5) == [SignificantKind.CORONARY_CALCIUM] and _found(1500.0) == [SignificantKind.CORONARY_CALCIUM]
    (finding,) = significant_findings(calcium_agatston=154.0, laa950_pct=None, laa950_reliable=True,
                                      emphysema_threshold_pct=5.0)
    assert finding.text == ("moderate coronary artery calcification (Agatston-equivalent 154 on this non-gated CT; "
                            "CAC-DRS 2)")


def test_emphysema_at_the_threshold_suggests_s_unless_the_image_is_too_noisy() -> None:
    assert _found(None, laa=4.99) == []
    assert _found(None, laa=5.0) == [SignificantKind.EMPHYSEMA]
    assert _found(None, laa=12.0, reliable=False) == []  # noise, not emphysema, moved the lung below -950 HU
    assert _found(412.0, laa=7.5) == [SignificantKind.CORONARY_CALCIUM, SignificantKind.EMPHYSEMA]
    (emphysema,) = significant_findings(calcium_agatston=None, laa950_pct=7.46, laa950_reliable=True,
                                        emphysema_threshold_pct=5.0)
    assert emphysema.text == "emphysema (LAA-950 7.5 % of the lung volume, at or over 5 %)"
