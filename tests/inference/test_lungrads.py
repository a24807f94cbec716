"""Lung-RADS v2022: every size boundary (diameter and volume), calcified, juxtapleural, cysts, 4X, exam = max,
category 0 with its reason, follow-up (new / growing / stable) and the recommendation of each category.

Expected categories come from the ACR table (see the module docstring of inference/clinical/lungrads.py),
written out here as literals, not computed from the module's constants.
"""
from __future__ import annotations

import pytest

from inference.clinical import (
    AirwayLevel,
    Change,
    CystKind,
    Exam,
    LungRadsCategory as C,
    Margin,
    Nodule,
    NoduleType,
    classify_exam,
    classify_nodule,
    is_growth,
    recommendation,
)

S, PS, GG = NoduleType.SOLID, NoduleType.PART_SOLID, NoduleType.GROUND_GLASS


def cat(nodule: Nodule, **kw: bool) -> str:
    return classify_nodule(nodule, **kw).category.value


@pytest.mark.parametrize(
    "mm, expected",
    [(5.9, "2"), (6.0, "3"), (7.9, "3"), (8.0, "4A"), (14.9, "4A"), (15.0, "4B"), (0.5, "2"), (40.0, "4B")],
)
def test_solid_baseline_diameter_boundaries(mm: float, expected: str) -> None:
    assert cat(Nodule(S, mm)) == expected


@pytest.mark.parametrize(
    "mm3, expected",
    [
        # v2022 reports volume to the nearest whole mm3, so 112.9 is reported as 113 (category 3):
        # the volume boundary lies between 112.4 (-> 112, category 2) and 112.5 (-> 113).
        (112.9, "3"),
        (113.0, "3"),
        (112.0, "2"),
        (267.9, "4A"),
        (268.0, "4A"),
        (267.0, "3"),
        (1766.9, "4B"),
        (1767.0, "4B"),
        (1766.0, "4A"),
    ],
)
def test_solid_baseline_volume_boundaries(mm3: float, expected: str) -> None:
    assert cat(Nodule(S, 5.0, volume_mm3=mm3), by_volume=True) == expected


@pytest.mark.parametrize(
    "mm3, expected", [(112.4, "2"), (112.5, "3"), (267.4, "3"), (267.5, "4A"), (1766.4, "4A"), (1766.5, "4B")]
)
def test_solid_volume_rounded_to_whole_mm3(mm3: float, expected: str) -> None:
    assert cat(Nodule(S, 5.0, volume_mm3=mm3), by_volume=True) == expected


def test_mean_diameter_rounded_to_one_decimal_half_up() -> None:
    # 5.94 is reported 5.9 (category 2); 5.95 is reported 6.0 (category 3).
    assert cat(Nodule(S, 5.94)) == "2"
    assert cat(Nodule(S, 5.95)) == "3"
    assert cat(Nodule(S, 7.95)) == "4A"
    assert cat(Nodule(S, 14.95)) == "4B"


@pytest.mark.parametrize("mm, expected", [(29.9, "2"), (30.0, "3"), (5.0, "2")])
def test_ground_glass_baseline(mm: float, expected: str) -> None:
    assert cat(Nodule(GG, mm)) == expected


@pytest.mark.parametrize("mm3, expected", [(14136.0, "2"), (14137.0, "3")])
def test_ground_glass_volume(mm3: float, expected: str) -> None:
    assert cat(Nodule(GG, 29.0, volume_mm3=mm3), by_volume=True) == expected


@pytest.mark.parametrize(
    "total, solid, expected",
    [
        (5.9, 3.0, "2"),  # total < 6 at baseline
        (6.0, 3.0, "3"),  # total >= 6, solid component < 6
        (12.0, 5.9, "3"),
        (12.0, 6.0, "4A"),
        (12.0, 7.9, "4A"),
        (12.0, 8.0, "4B"),
    ],
)
def test_part_solid_baseline(total: float, solid: float, expected: str) -> None:
    assert cat(Nodule(PS, total, solid_component_mm=solid)) == expected


@pytest.mark.parametrize(
    "total3, solid3, expected",
    [(112.9, 50.0, "3"), (112.4, 50.0, "2"), (500.0, 112.0, "3"), (500.0, 113.0, "4A"), (500.0, 267.0, "4A"), (500.0, 268.0, "4B")],
)
def test_part_solid_volume(total3: float, solid3: float, expected: str) -> None:
    nodule = Nodule(PS, 10.0, solid_component_mm=4.0, volume_mm3=total3, solid_component_volume_mm3=solid3)
    assert cat(nodule, by_volume=True) == expected


def test_part_solid_needs_its_solid_component() -> None:
    with pytest.raises(ValueError, match="solid_component_mm"):
        Nodule(PS, 10.0)


def test_volume_mode_needs_volumes() -> None:
    with pytest.raises(ValueError, match="volume_mm3"):
        classify_nodule(Nodule(S, 10.0), by_volume=True)
    with pytest.raises(ValueError, match="solid_component_volume_mm3"):
        classify_nodule(Nodule(PS, 10.0, solid_component_mm=4.0, volume_mm3=500.0), by_volume=True)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_nodule_rejects_impossible_sizes(bad: float) -> None:
    with pytest.raises(ValueError, match="mean_diameter_mm"):
        Nodule(S, bad)


def test_calcified_is_category_1_whatever_the_size() -> None:
    result = classify_nodule(Nodule(S, 22.0, calcified=True, margin=Margin.SPICULATED))
    assert result.category is C.C1
    assert "calcification" in result.reasons[0]


def juxta(mm: float, **kw: object) -> Nodule:
    args: dict[str, object] = dict(juxtapleural=True, margin=Margin.SMOOTH, pleural_shape_benign=True)
    args.update(kw)
    return Nodule(S, mm, **args)  # type: ignore[arg-type]


def test_juxtapleural_rule_v2022() -> None:
    # Solid, smooth, oval/lentiform/triangular, mean diameter < 10 mm -> 2 (would be 4A by size).
    assert cat(juxta(9.9)) == "2"
    assert cat(juxta(10.0)) == "4A"  # 10.0 is not < 10
    assert cat(Nodule(S, 9.9, perifissural=True, pleural_shape_benign=True)) == "2"
    # Each condition missing -> the size rule applies.
    assert cat(juxta(9.0, margin=Margin.LOBULATED)) == "4A"
    assert cat(juxta(9.0, margin=None)) == "4A"  # a margin not assessed is no smooth margin
    assert cat(juxta(9.0, pleural_shape_benign=None)) == "4A"
    assert cat(juxta(9.0, pleural_shape_benign=False)) == "4A"
    assert cat(Nodule(PS, 9.0, juxtapleural=True, pleural_shape_benign=True, solid_component_mm=6.5)) == "4A"
    assert cat(juxta(9.0, change=Change.GROWING)) == "4B"  # growing >= 8 mm
    # Volume equivalent of 10 mm: 524 mm3.
    assert cat(juxta(9.0, volume_mm3=523.0), by_volume=True) == "2"
    assert cat(juxta(9.0, volume_mm3=524.0), by_volume=True) == "4A"
    # A spiculated pleural nodule is never downgraded, and becomes 4X.
    assert cat(juxta(9.0, margin=Margin.SPICULATED)) == "4X"


@pytest.mark.parametrize(
    "nodule, expected",
    [
        (Nodule(S, 6.5, margin=Margin.SPICULATED), "4X"),  # 3 + spiculation
        (Nodule(S, 9.0, margin=Margin.SPICULATED), "4X"),  # 4A + spiculation
        (Nodule(S, 23.0, margin=Margin.SPICULATED), "4X"),  # 4B + spiculation
        (Nodule(S, 5.0, margin=Margin.SPICULATED), "2"),  # category 2 is not upgraded
        (Nodule(S, 9.0, margin=Margin.LOBULATED), "4A"),  # lobulation is not the 4X feature
        (Nodule(PS, 12.0, solid_component_mm=4.0, margin=Margin.SPICULATED), "4X"),
    ],
)
def test_4x_for_spiculated_category_3_or_4(nodule: Nodule, expected: str) -> None:
    result = classify_nodule(nodule)
    assert result.category.value == expected
    if expected == "4X":
        assert any("4X suggested" in r for r in result.reasons)


@pytest.mark.parametrize(
    "nodule, expected",
    [
        (Nodule(S, 3.9, change=Change.NEW), "2"),
        (Nodule(S, 4.0, change=Change.NEW), "3"),
        (Nodule(S, 5.9, change=Change.NEW), "3"),
        (Nodule(S, 6.0, change=Change.NEW), "4A"),
        (Nodule(S, 7.9, change=Change.NEW), "4A"),
        (Nodule(S, 8.0, change=Change.NEW), "4B"),
        (Nodule(S, 5.0, change=Change.GROWING), "4A"),
        (Nodule(S, 7.9, change=Change.GROWING), "4A"),
        (Nodule(S, 8.0, change=Change.GROWING), "4B"),
        (Nodule(PS, 5.9, solid_component_mm=2.0, change=Change.NEW), "3"),
        (Nodule(PS, 10.0, solid_component_mm=3.9, change=Change.NEW), "4A"),
        (Nodule(PS, 10.0, solid_component_mm=4.0, change=Change.NEW), "4B"),
        (Nodule(PS, 10.0, solid_component_mm=3.9, change=Change.GROWING), "4A"),
        (Nodule(PS, 10.0, solid_component_mm=4.0, change=Change.GROWING), "4B"),
        (Nodule(GG, 30.0, change=Change.NEW), "3"),
        (Nodule(GG, 29.9, change=Change.NEW), "2"),
        (Nodule(GG, 35.0, change=Change.STABLE, stable_months=12), "2"),
        (Nodule(GG, 35.0, change=Change.GROWING), "2"),  # ">= 30 mm and slowly growing" -> 2
    ],
)
def test_follow_up_new_and_growing(nodule: Nodule, expected: str) -> None:
    assert cat(nodule) == expected


@pytest.mark.parametrize(
    "nodule, expected",
    [
        (Nodule(S, 7.0, change=Change.STABLE, stable_months=5.9), "3"),
        (Nodule(S, 7.0, change=Change.STABLE, stable_months=6), "2"),
        (Nodule(S, 10.0, change=Change.STABLE, stable_months=2.9), "4A"),
        (Nodule(S, 10.0, change=Change.STABLE, stable_months=3), "3"),
        (Nodule(S, 10.0, change=Change.STABLE, stable_months=9), "2"),
        (Nodule(S, 20.0, change=Change.STABLE, stable_months=12), "4B"),  # 4B needs work-up, not time
        (Nodule(S, 7.0, change=Change.STABLE), "3"),  # stable without a duration: no downgrade
        (Nodule(S, 7.0, change=Change.STABLE, stable_months=6, margin=Margin.SPICULATED), "2"),
        (Nodule(S, 10.0, change=Change.STABLE, stable_months=3, margin=Margin.SPICULATED), "4X"),
    ],
)
def test_follow_up_stable_stepped_management(nodule: Nodule, expected: str) -> None:
    assert cat(nodule) == expected


THIN, THICK, MULTI = CystKind.THIN_WALLED, CystKind.THICK_WALLED, CystKind.MULTILOCULAR


@pytest.mark.parametrize(
    "nodule, expected",
    [
        (Nodule(S, 16.0, cyst=THIN), "1"),  # thin-walled unilocular: benign, not classified
        (Nodule(S, 40.0, cyst=THIN), "1"),  # whatever its size
        (Nodule(S, 5.0, cyst=THICK), "4A"),  # an atypical cyst: 4A at baseline, no size threshold
        (Nodule(S, 25.0, cyst=THICK), "4A"),
        (Nodule(S, 12.0, cyst=MULTI), "4A"),
        (Nodule(S, 30.0, cyst=CystKind.THIN_WALLED_IN_PART), "4A"),  # a thickening could hide: atypical until seen
        (Nodule(S, 12.0, cyst=MULTI, change=Change.NEW), "4A"),
        (Nodule(S, 12.0, cyst=THICK, change=Change.GROWING), "4B"),  # a growing thick-walled cyst
        (Nodule(S, 12.0, cyst=MULTI, change=Change.GROWING), "4B"),  # a growing multilocular cyst
        (Nodule(S, 12.0, cyst=THIN, change=Change.GROWING), "1"),  # still a thin-walled cyst
        (Nodule(S, 12.0, cyst=THICK, change=Change.STABLE, stable_months=3), "3"),  # 4A stable at 3 months
        (Nodule(S, 12.0, cyst=THICK, change=Change.STABLE, stable_months=2), "4A"),
    ],
)
def test_cyst_rules_v2022(nodule: Nodule, expected: str) -> None:
    assessment = classify_nodule(nodule)
    assert assessment.category.value == expected
    assert "cyst" in assessment.reasons[0] and assessment.measure == "cyst"


SEGMENTAL, SUBSEGMENTAL = AirwayLevel.SEGMENTAL_OR_PROXIMAL, AirwayLevel.SUBSEGMENTAL


@pytest.mark.parametrize(
    "nodule, expected, words",
    [
        (Nodule(S, 5.0, airway=SEGMENTAL), "4A", "segmental or more proximal airway nodule 5 mm: 3-month LDCT"),
        (Nodule(S, 3.0, airway=SEGMENTAL), "4A", "airway nodule 3 mm"),  # no size threshold below 4A
        (Nodule(S, 5.0, airway=SEGMENTAL, change=Change.NEW), "4A", "new segmental"),
        # persistent at follow-up: 4B, for bronchoscopy; no stepping down (a stable 4A nodule would be 3)
        (Nodule(S, 5.0, airway=SEGMENTAL, change=Change.STABLE, stable_months=3), "4B", "persistent (stable)"),
        (Nodule(S, 5.0, airway=SEGMENTAL, change=Change.GROWING), "4B", "persistent (growing)"),
        (Nodule(S, 16.0, airway=SEGMENTAL), "4B", "solid 16 mm >= 15 mm"),  # its size's category when higher
        (Nodule(S, 5.0, airway=SUBSEGMENTAL), "2", "subsegmental airway nodule 5 mm: favours mucus or infection"),
        (Nodule(S, 7.0, airway=SUBSEGMENTAL), "2", "subsegmental"),  # 3 by size: v2022 grades it 2
        (Nodule(S, 7.0, airway=SEGMENTAL, margin=Margin.SPICULATED), "4A", "airway"),  # no 4X for a lesion in a lumen
        (Nodule(S, 7.0, airway=SEGMENTAL, calcified=True), "1", "benign calcification"),  # a broncholith
    ],
)
def test_airway_nodule_rules_v2022(nodule: Nodule, expected: str, words: str) -> None:
    """v2022: a segmental or more proximal airway nodule is 4A at baseline or new and 4B when it persists; a
    subsegmental one favours mucus or infection: 2."""
    assessment = classify_nodule(nodule)
    assert assessment.category.value == expected and words in assessment.reasons[0], assessment


def test_an_airway_nodule_is_an_airway_level_and_no_cyst() -> None:
    with pytest.raises(ValueError, match="airway"):
        Nodule(S, 5.0, airway="subsegmental")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="airway nodule or a cyst"):
        Nodule(S, 5.0, airway=SEGMENTAL, cyst=THICK)


def test_a_cyst_must_be_a_cyst_kind() -> None:
    with pytest.raises(ValueError, match="cyst"):
        Nodule(S, 12.0, cyst="thick_walled")  # type: ignore[arg-type]


def test_new_nodules_that_can_mean_infection_are_said() -> None:
    """v2022: more than six new nodules, or a new solid nodule of 8 mm or more, may mean infection or inflammation
    (category 0 with a 1-3 month LDCT is the reader's option): said, with the category left to the nodules."""
    from inference.clinical.lungrads import infection_caveat

    new = Nodule(S, 4.0, change=Change.NEW)
    assert infection_caveat([new] * 6) is None
    seven = infection_caveat([new] * 7)
    assert seven is not None and "7 new nodules (more than 6)" in seven and "category 0" in seven
    assert infection_caveat([Nodule(S, 7.9, change=Change.NEW)]) is None
    large = infection_caveat([Nodule(S, 8.0, change=Change.NEW), Nodule(S, 12.0, change=Change.STABLE)])
    assert large is not None and "(8 mm)" in large and "1-3 month" in large
    assert infection_caveat([Nodule(S, 12.0, change=Change.STABLE), Nodule(S, 12.0, calcified=True, change=Change.NEW),
                             Nodule(PS, 12.0, solid_component_mm=5.0, change=Change.NEW),
                             Nodule(S, 12.0)]) is None  # stable, calcified, part-solid, baseline


def test_growth_definition() -> None:
    assert is_growth(6.0, 7.6, 12) is True  # +1.6 mm
    assert is_growth(6.0, 7.5, 12) is False  # +1.5 mm is not > 1.5
    with pytest.raises(ValueError, match="interval_months"):
        is_growth(6.0, 9.0, 13)


def test_exam_category_is_the_highest_nodule_category() -> None:
    exam = Exam(True, (Nodule(S, 4.0), Nodule(GG, 12.0), Nodule(S, 9.0), Nodule(S, 6.5)))
    result = classify_exam(exam)
    assert [r.category.value for r in result.nodules] == ["2", "2", "4A", "3"]
    assert result.category is C.C4A
    assert "nodule 3" in result.reason
    assert result.recommendation == recommendation(C.C4A)


def test_exam_without_nodules_is_category_1() -> None:
    result = classify_exam(Exam(True, ()))
    assert result.category is C.C1
    assert result.reason == "no lung nodules"


def test_exam_not_fully_covered_is_category_0_with_the_reason() -> None:
    exam = Exam(False, (Nodule(S, 9.0),), incomplete_reason="lung apices outside the field of view")
    result = classify_exam(exam)
    assert result.category is C.C0
    assert "lung apices outside the field of view" in result.reason
    assert "additional lung cancer screening CT images" in result.recommendation
    # The rows are still graded, so the 4A nodule is not lost behind the 0.
    assert result.highest_nodule_category is C.C4A
    with pytest.raises(ValueError, match="incomplete_reason"):
        Exam(False, ())


@pytest.mark.parametrize(
    "category, words",
    [
        ("0", ["additional lung cancer screening CT images", "comparison with prior chest CT"]),
        ("1", ["12-month screening LDCT"]),
        ("2", ["12-month screening LDCT"]),
        ("3", ["6-month LDCT"]),
        ("4A", ["3-month LDCT", "PET/CT may be considered", ">= 8 mm (>= 268 mm3)"]),
        ("4B", ["Diagnostic chest CT with or without contrast", "PET/CT", "tissue sampling"]),
        ("4X", ["Diagnostic chest CT with or without contrast", "PET/CT", "tissue sampling"]),
    ],
)
def test_recommendation_text_per_category(category: str, words: list[str]) -> None:
    text = recommendation(C(category))
    for word in words:
        assert word in text
    # And each nodule row carries its category's text.
    if category == "3":
        assert classify_nodule(Nodule(S, 6.0)).recommendation == text
