"""The exam verdict: category mapping, the Brock >= 10 % (BTS 2015) upgrade, incomplete exams, and the
guarantee that the exam verdict never contradicts a finding row."""
from __future__ import annotations

import itertools

import pytest

from inference.clinical import (
    BROCK_WORKUP_THRESHOLD,
    Exam,
    LungRadsCategory as C,
    Margin,
    Nodule,
    NoduleType,
    Sex,
    Verdict,
    brock_risk_for_nodule,
    classify_exam,
    exam_verdict,
    finding_verdict,
)


@pytest.mark.parametrize(
    "category, expected",
    [
        (C.C0, Verdict.INCOMPLETE),
        (C.C1, Verdict.NEGATIVE),
        (C.C2, Verdict.NEGATIVE),
        (C.C3, Verdict.PROBABLY_BENIGN),
        (C.C4A, Verdict.SUSPICIOUS),
        (C.C4B, Verdict.SUSPICIOUS),
        (C.C4X, Verdict.SUSPICIOUS),
    ],
)
def test_category_to_verdict(category: C, expected: Verdict) -> None:
    assert exam_verdict(category, 0.01).verdict is expected
    assert exam_verdict(category, None).verdict is expected


def test_threshold_is_the_bts_10_percent() -> None:
    assert BROCK_WORKUP_THRESHOLD == 0.10


@pytest.mark.parametrize("category", [C.C1, C.C2, C.C3, C.C0])
def test_high_brock_risk_raises_a_low_category_to_suspicious_and_says_why(category: C) -> None:
    below = exam_verdict(category, 0.0999)
    assert below.verdict is not Verdict.SUSPICIOUS
    at = exam_verdict(category, 0.10)
    assert at.verdict is Verdict.SUSPICIOUS
    assert any("Brock risk 10.0% >= 10%" in r and "raises the verdict to suspicious" in r for r in at.reasons)


def test_4a_stays_suspicious_even_at_zero_risk() -> None:
    # The contradiction: p(cancer) 0 % reported beside Lung-RADS 4A. The verdict follows the 4A.
    result = exam_verdict(C.C4A, 0.0)
    assert result.verdict is Verdict.SUSPICIOUS


def test_incomplete_exam_with_a_suspicious_nodule_is_suspicious() -> None:
    exam = Exam(False, (Nodule(NoduleType.SOLID, 12.0),), incomplete_reason="lung bases cut off")
    assessment = classify_exam(exam)
    result = exam_verdict(assessment.category, 0.02, highest_nodule_category=assessment.highest_nodule_category)
    assert assessment.category is C.C0
    assert result.verdict is Verdict.SUSPICIOUS
    assert any("not fully covered" in r for r in result.reasons)
    # Without a suspicious nodule it stays incomplete.
    small = classify_exam(Exam(False, (Nodule(NoduleType.SOLID, 4.0),), incomplete_reason="lung bases cut off"))
    assert exam_verdict(small.category, 0.001, highest_nodule_category=small.highest_nodule_category).verdict is (
        Verdict.INCOMPLETE
    )


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan"), float("inf")])
def test_risk_must_be_a_probability(bad: float) -> None:
    with pytest.raises(ValueError, match="highest_brock_risk"):
        exam_verdict(C.C2, bad)


CATEGORIES = [C.C1, C.C2, C.C3, C.C4A, C.C4B, C.C4X]
RISKS = [None, 0.0, 0.001, 0.05, 0.0999, 0.10, 0.5, 1.0]


def test_exam_verdict_is_never_less_severe_than_any_finding_row() -> None:
    # Every pair of rows (category, risk): the exam gets the max category and the max risk, and its
    # verdict must be at least as severe as each row's own verdict.
    rows = list(itertools.product(CATEGORIES, RISKS))
    for a, b in itertools.product(rows, repeat=2):
        exam_category = max(a[0], b[0], key=lambda c: c.rank)
        risks = [r for r in (a[1], b[1]) if r is not None]
        exam = exam_verdict(exam_category, max(risks) if risks else None)
        for row in (a, b):
            assert exam.verdict.severity >= finding_verdict(*row).verdict.severity, (a, b)


def test_end_to_end_spiculated_23mm_solid_is_suspicious() -> None:
    # The case: a 23 mm spiculated solid nodule was called "benign". Lung-RADS 4X and Brock risk
    # well above 10 % both make the exam suspicious.
    nodule = Nodule(NoduleType.SOLID, 21.0, longest_diameter_mm=23.0, margin=Margin.SPICULATED)
    assessment = classify_exam(Exam(True, (nodule,)))
    risk = brock_risk_for_nodule(nodule, nodule_count=1, emphysema=False, age_years=None, sex=None)
    result = exam_verdict(assessment.category, risk.risk)
    assert assessment.category is C.C4X
    assert risk.risk > 0.10
    assert result.verdict is Verdict.SUSPICIOUS
