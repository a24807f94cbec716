"""Brock (PanCan) full model with spiculation: worked examples computed by hand, monotonicity, missing
inputs and input validation.

The model (McWilliams et al. NEJM 2013, supplementary appendix):
    logit = -6.7892 + 0.0287(age-62) + 0.6011 female + 0.2961 family history + 0.2953 emphysema
            - 5.3854((size/10)^-0.5 - 1.58113883) + 0.377 part-solid - 0.1276 ground-glass
            + 0.6581 upper lobe - 0.0824(count-4) + 0.7729 spiculation
    risk = 1 / (1 + exp(-logit))
The expected values below were worked out by hand (exp values from a table / calculator, written out).
"""
from __future__ import annotations

import math

import pytest

from inference.clinical import METHOD, FamilyHistory, Margin, Nodule, NoduleType, Sex, Zone, brock_risk, brock_risk_for_nodule

S, PS, GG = NoduleType.SOLID, NoduleType.PART_SOLID, NoduleType.GROUND_GLASS


def risk(**kw: object) -> float:
    args: dict[str, object] = dict(
        size_mm=10.0,
        nodule_type=S,
        nodule_count=1,
        upper_lobe=False,
        spiculation=False,
        emphysema=False,
        age_years=62,
        sex=Sex.MALE,
        family_history=FamilyHistory.NO,
    )
    args.update(kw)
    return brock_risk(**args).risk  # type: ignore[arg-type]


def test_example_1_man_62_solid_10mm_lower_zone_one_nodule() -> None:
    # Age 62 -> 0.0287*0 = 0; male, no family history, no emphysema, solid, lower zone, smooth -> 0.
    # Size: (10/10)^-0.5 = 1; 1 - 1.58113883 = -0.58113883; -5.3854 * -0.58113883 = +3.1296650
    #   (5.3854*0.5 = 2.6927; 5.3854*0.08113883 = 0.4369650).
    # Count: -0.0824 * (1 - 4) = +0.2472.
    # logit = -6.7892 + 3.1296650 + 0.2472 = -3.4123350
    # exp(3.4123350) = e^3 * e^0.412335 = 20.085537 * 1.510336 = 30.33600
    # risk = 1 / (1 + 30.33600) = 1 / 31.33600 = 0.031912
    result = brock_risk(
        size_mm=10.0, nodule_type=S, nodule_count=1, upper_lobe=False, spiculation=False,
        emphysema=False, age_years=62, sex=Sex.MALE, family_history=FamilyHistory.NO,
    )
    assert result.logit == pytest.approx(-3.4123350, abs=1e-6)
    assert result.risk == pytest.approx(0.031912, abs=5e-6)
    assert result.missing == ()
    assert result.method == METHOD == "Brock University (PanCan) full model with spiculation, McWilliams et al. NEJM 2013"


def test_example_2_woman_70_spiculated_part_solid_25mm_upper_emphysema() -> None:
    # Age: 0.0287 * (70 - 62) = 0.2296; female +0.6011; emphysema +0.2953; no family history 0.
    # Size: (25/10)^-0.5 = 0.63245553; 0.63245553 - 1.58113883 = -0.94868330;
    #   -5.3854 * -0.94868330 = +5.1090390  (5.3854 - 5.3854*0.0513167 = 5.3854 - 0.2763610).
    # Part-solid +0.377; upper lobe +0.6581; count -0.0824*(1-4) = +0.2472; spiculation +0.7729.
    # Sum of terms = 0.2296 + 0.6011 + 0.2953 + 5.1090390 + 0.377 + 0.6581 + 0.2472 + 0.7729 = 8.2902390
    # logit = -6.7892 + 8.2902390 = 1.5010390
    # exp(-1.5010390) = e^-1.5 * e^-0.001039 = 0.22313016 * 0.99896154 = 0.22289845
    # risk = 1 / 1.22289845 = 0.817729
    result = brock_risk(
        size_mm=25.0, nodule_type=PS, nodule_count=1, upper_lobe=True, spiculation=True,
        emphysema=True, age_years=70, sex=Sex.FEMALE, family_history=FamilyHistory.NO,
    )
    assert result.logit == pytest.approx(1.5010390, abs=1e-6)
    assert result.risk == pytest.approx(0.817729, abs=5e-6)


def test_example_3_woman_55_ground_glass_4mm_five_nodules() -> None:
    # Age: 0.0287 * (55 - 62) = -0.2009; female +0.6011; no family history, no emphysema.
    # Size: (4/10)^-0.5 = 1.58113883 -> size term 0 (the model is centred at 4 mm).
    # Ground-glass -0.1276; lower zone 0; count -0.0824 * (5 - 4) = -0.0824; no spiculation.
    # logit = -6.7892 - 0.2009 + 0.6011 - 0.1276 - 0.0824 = -6.5990
    # exp(6.5990) = e^6.6 * e^-0.001 = 735.09519 * 0.99900050 = 734.36046
    # risk = 1 / 735.36046 = 0.0013599
    result = brock_risk(
        size_mm=4.0, nodule_type=GG, nodule_count=5, upper_lobe=False, spiculation=False,
        emphysema=False, age_years=55, sex=Sex.FEMALE, family_history=FamilyHistory.NO,
    )
    assert result.logit == pytest.approx(-6.5990, abs=1e-6)
    assert result.risk == pytest.approx(0.0013599, abs=5e-7)


def test_each_coefficient_moves_the_logit_by_its_published_value() -> None:
    def logit(**kw: object) -> float:
        args: dict[str, object] = dict(
            size_mm=10.0, nodule_type=S, nodule_count=4, upper_lobe=False, spiculation=False,
            emphysema=False, age_years=62, sex=Sex.MALE, family_history=FamilyHistory.NO,
        )
        args.update(kw)
        return brock_risk(**args).logit  # type: ignore[arg-type]

    base = logit()
    assert logit(age_years=63) - base == pytest.approx(0.0287)
    assert logit(sex=Sex.FEMALE) - base == pytest.approx(0.6011)
    assert logit(family_history=FamilyHistory.YES) - base == pytest.approx(0.2961)
    assert logit(emphysema=True) - base == pytest.approx(0.2953)
    assert logit(nodule_type=PS) - base == pytest.approx(0.377)
    assert logit(nodule_type=GG) - base == pytest.approx(-0.1276)
    assert logit(upper_lobe=True) - base == pytest.approx(0.6581)
    assert logit(nodule_count=5) - base == pytest.approx(-0.0824)
    assert logit(spiculation=True) - base == pytest.approx(0.7729)
    # Intercept: at age 62, male, 4 mm solid, 4 nodules, nothing else -> every term is 0.
    assert logit(size_mm=4.0) == pytest.approx(-6.7892, abs=1e-7)


def test_uncentred_intercept_matches_the_published_table() -> None:
    # Eur Radiol 2019;29:5367 (PMC6717521, Table 2) prints the Brock intercept uncentred as 0.2761:
    # -6.7892 - 0.0287*62 + 5.3854*1.58113883 + 0.0824*4 = -6.7892 - 1.7794 + 8.5150651 + 0.3296 = 0.2760651.
    # Uncentred: logit = 0.2760651 + 0.0287 age - 5.3854 (size/10)^-0.5 - 0.0824 count + ...
    # At age 0, 10 mm ((10/10)^-0.5 = 1), 1 nodule: 0.2760651 - 5.3854 - 0.0824 = -5.1917349.
    result = brock_risk(
        size_mm=10.0, nodule_type=S, nodule_count=1, upper_lobe=False, spiculation=False,
        emphysema=False, age_years=0, sex=Sex.MALE, family_history=FamilyHistory.NO,
    )
    assert result.logit == pytest.approx(0.2760651 - 5.3854 * 1.0 - 0.0824, abs=1e-6)


def test_bigger_and_spiculated_nodules_are_riskier() -> None:
    sizes = [2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 50.0]
    risks = [risk(size_mm=s) for s in sizes]
    assert risks == sorted(risks) and len(set(risks)) == len(risks)
    for s in sizes:
        assert risk(size_mm=s, spiculation=True) > risk(size_mm=s)
    assert risk(upper_lobe=True) > risk()
    assert risk(nodule_count=1) > risk(nodule_count=8)  # more nodules -> each is less likely cancer
    assert risk(nodule_type=PS) > risk(nodule_type=S) > risk(nodule_type=GG)


def test_missing_age_and_sex_use_reference_values_and_are_reported() -> None:
    result = brock_risk(
        size_mm=10.0, nodule_type=S, nodule_count=1, upper_lobe=False, spiculation=False,
        emphysema=False, age_years=None, sex=None,
    )
    assert result.missing == ("age", "sex", "family_history")
    assert result.inputs["age_years"] == 62.0
    assert result.inputs["sex"] == "male"
    assert result.inputs["family_history"] == "unknown"
    # Same figure as example 1 (62-year-old man, no family history).
    assert result.risk == pytest.approx(0.031912, abs=5e-6)


def test_unknown_family_history_counts_as_no() -> None:
    assert risk(family_history=FamilyHistory.UNKNOWN) == risk(family_history=FamilyHistory.NO)
    assert risk(family_history=FamilyHistory.YES) > risk(family_history=FamilyHistory.NO)


@pytest.mark.parametrize(
    "field, value",
    [
        ("size_mm", 0.0),
        ("size_mm", -3.0),
        ("size_mm", float("nan")),
        ("nodule_count", -1),
        ("nodule_count", 0),
        ("age_years", -1),
        ("age_years", 121),
        ("age_years", float("inf")),
    ],
)
def test_invalid_inputs_raise_naming_the_input(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        risk(**{field: value})


def test_extreme_logits_do_not_overflow() -> None:
    assert 0.0 <= risk(size_mm=0.001, nodule_count=10_000) < 1e-12  # no OverflowError
    assert risk(size_mm=1e9, spiculation=True, upper_lobe=True, nodule_type=PS) > 0.97  # size term saturates at +8.515


def test_from_a_characterized_nodule_uses_long_axis_upper_zone_and_spiculation() -> None:
    nodule = Nodule(
        PS, 22.0, longest_diameter_mm=25.0, solid_component_mm=9.0, margin=Margin.SPICULATED, zone=Zone.UPPER
    )
    result = brock_risk_for_nodule(
        nodule, nodule_count=1, emphysema=True, age_years=70, sex=Sex.FEMALE, family_history=FamilyHistory.NO
    )
    assert result.inputs["size_mm"] == 25.0
    assert result.inputs["upper_lobe"] is True and result.inputs["spiculation"] is True
    assert result.risk == pytest.approx(0.817729, abs=5e-6)  # example 2
    # Without a long axis the mean diameter is used.
    plain = brock_risk_for_nodule(Nodule(S, 10.0), nodule_count=1, emphysema=False, age_years=62, sex=Sex.MALE)
    assert plain.inputs["size_mm"] == 10.0
    assert math.isclose(plain.risk, 0.031912, abs_tol=5e-6)
