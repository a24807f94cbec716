"""Brock University (PanCan) cancer risk of a screen-detected nodule: the full model with spiculation.

McWilliams A, Tammemagi MC, Mayo JR, et al. Probability of cancer in pulmonary nodules detected on
first screening CT. N Engl J Med 2013;369:910-919 (doi:10.1056/NEJMoa1214726), supplementary appendix,
full model with spiculation:

    logit = -6.7892 + 0.0287*(age - 62) + 0.6011*female + 0.2961*family_history + 0.2953*emphysema
            - 5.3854*((size_mm / 10)^-0.5 - 1.58113883) + 0.377*part_solid - 0.1276*ground_glass
            + 0.6581*upper_lobe - 0.0824*(nodule_count - 4) + 0.7729*spiculation
    risk  = 1 / (1 + exp(-logit))

Where the numbers were checked (search tool):
- Every slope (0.0287, 0.6011, 0.2961, 0.2953, -5.3854, 0.377, -0.1276, 0.6581, -0.0824, 0.7729) and the
  size transform (diameter/10)^-0.5: Table 2 of "Tabular form of mathematical prediction model's base
  equations", Eur Radiol 2019;29:5367-5377, https://pmc.ncbi.nlm.nih.gov/articles/PMC6717521/table/T2
  (its "BU" column). Its intercept cell, 0.2761, is the same model written without centring:
  -6.7892 - 0.0287*62 + 5.3854*1.58113883 + 0.0824*4 = 0.27607, which confirms -6.7892 independently.
- The intercept -6.7892 with the centring (age - 62), (count - 4) and - 1.58113883 (= (4/10)^-0.5, size
  centred at 4 mm): a published implementation of the full model (Kotlin "BrockCalculator", full Brock
  (PanCan) model with spiculation), and the centring constants 62 / 4 / 1.58113883 also in
  https://www.medicalalgorithms.com/pulmonary-nodule-cancer (McWilliams et al. models).
Nodule size: the model's size is the nodule's longest diameter in mm (the PanCan readers measured the
maximal diameter; van Riel et al., Eur Radiol 2017;27:4019-4029, name PanCan's definition "Dlongest-C",
the longest diameter on axial sections); callers pass the long axis, and the mean diameter only when no
long axis exists.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from inference.clinical.types import Margin, Nodule, NoduleType

METHOD = "Brock University (PanCan) full model with spiculation, McWilliams et al. NEJM 2013"

INTERCEPT = -6.7892
AGE_SLOPE = 0.0287
AGE_CENTRE_YEARS = 62.0
FEMALE = 0.6011
FAMILY_HISTORY = 0.2961
EMPHYSEMA = 0.2953
SIZE_SLOPE = -5.3854
SIZE_CENTRE = 1.58113883  # (4 mm / 10)^-0.5
PART_SOLID = 0.377
GROUND_GLASS = -0.1276
UPPER_LOBE = 0.6581
COUNT_SLOPE = -0.0824
COUNT_CENTRE = 4
SPICULATION = 0.7729


class Sex(str, Enum):
    MALE = "male"
    FEMALE = "female"


class FamilyHistory(str, Enum):
    """Lung cancer in a first-degree relative. UNKNOWN is computed as NO and reported as unknown."""

    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class BrockResult:
    risk: float  # probability of cancer, 0..1
    logit: float
    inputs: dict[str, float | int | bool | str]  # the values the equation used
    missing: tuple[str, ...]  # inputs that were absent and replaced by the model's reference value
    method: str = METHOD


def _check_number(name: str, value: float, low: float, high: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"[{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def brock_risk(
    *,
    size_mm: float,
    nodule_type: NoduleType,
    nodule_count: int,
    upper_lobe: bool,
    spiculation: bool,
    emphysema: bool,
    age_years: float | None,
    sex: Sex | None,
    family_history: FamilyHistory = FamilyHistory.UNKNOWN,
) -> BrockResult:
    """Probability of cancer for one nodule by the full Brock model with spiculation.

    Missing age -> 62 years (the model's centring value, the PanCan cohort's mean age), missing sex -> male
    (the reference category: female adds 0.6011, so male is the lower, non-extrapolated baseline and
    the cohort had no single "mean sex"); both are listed in `missing`. Unknown family history counts
    as no and is listed too.
    """
    if isinstance(size_mm, bool) or not isinstance(size_mm, (int, float)) or not math.isfinite(size_mm) or size_mm <= 0:
        raise ValueError(f"size_mm must be a finite number > 0, got {size_mm!r}")
    if isinstance(nodule_count, bool) or not isinstance(nodule_count, int) or nodule_count < 1:
        raise ValueError(f"nodule_count must be an integer >= 1 (this nodule counts), got {nodule_count!r}")
    if not isinstance(nodule_type, NoduleType):
        raise ValueError(f"nodule_type must be a NoduleType, got {nodule_type!r}")
    missing: list[str] = []
    if age_years is None:
        missing.append("age")
        age = AGE_CENTRE_YEARS
    else:
        _check_number("age_years", age_years, 0.0, 120.0)
        age = float(age_years)
    if sex is None:
        missing.append("sex")
        female = False
    else:
        female = Sex(sex) is Sex.FEMALE
    family = FamilyHistory(family_history)
    if family is FamilyHistory.UNKNOWN:
        missing.append("family_history")
    size_term = (size_mm / 10.0) ** -0.5 - SIZE_CENTRE
    logit = (
        INTERCEPT
        + AGE_SLOPE * (age - AGE_CENTRE_YEARS)
        + FEMALE * female
        + FAMILY_HISTORY * (family is FamilyHistory.YES)
        + EMPHYSEMA * bool(emphysema)
        + SIZE_SLOPE * size_term
        + PART_SOLID * (nodule_type is NoduleType.PART_SOLID)
        + GROUND_GLASS * (nodule_type is NoduleType.GROUND_GLASS)
        + UPPER_LOBE * bool(upper_lobe)
        + COUNT_SLOPE * (nodule_count - COUNT_CENTRE)
        + SPICULATION * bool(spiculation)
    )
    inputs: dict[str, float | int | bool | str] = {
        "age_years": age,
        "sex": "female" if female else "male",
        "family_history": family.value,
        "emphysema": bool(emphysema),
        "size_mm": float(size_mm),
        "nodule_type": nodule_type.value,
        "upper_lobe": bool(upper_lobe),
        "nodule_count": nodule_count,
        "spiculation": bool(spiculation),
    }
    return BrockResult(_sigmoid(logit), logit, inputs, tuple(missing))


def _sigmoid(x: float) -> float:
    # Two branches so that neither exp() overflows for extreme logits.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def brock_risk_for_nodule(
    nodule: Nodule,
    *,
    nodule_count: int,
    emphysema: bool,
    age_years: float | None,
    sex: Sex | None,
    family_history: FamilyHistory = FamilyHistory.UNKNOWN,
) -> BrockResult:
    """The Brock risk of a characterized nodule: long axis as size, upper zone as upper lobe, spiculated margin."""
    size = nodule.longest_diameter_mm if nodule.longest_diameter_mm is not None else nodule.mean_diameter_mm
    return brock_risk(
        size_mm=size,
        nodule_type=nodule.type,
        nodule_count=nodule_count,
        upper_lobe=nodule.upper_zone,
        spiculation=nodule.margin is Margin.SPICULATED,
        emphysema=emphysema,
        age_years=age_years,
        sex=sex,
        family_history=family_history,
    )
