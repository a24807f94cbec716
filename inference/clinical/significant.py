"""Lung-RADS v2022 modifier S: findings other than lung cancer that are, or may be, clinically significant.

Sources:
- ACR Lung-RADS v2022 (Christensen J et al., CHEST 2024;165:738-753, and the v2022 notes at
  https://www.yingbo777.com/home/lung-rads/): "S" may be added to categories 0-4 for clinically significant or
  potentially clinically significant findings unrelated to lung cancer; which findings qualify is the radiologist's
  call, and a finding already known, under evaluation or treated needs no S unless it changed.
- Which findings programmes mark: in the Korean National Lung Cancer Screening Program's seven standardized S
  modifiers ("Prevalence, Co-occurrence, and Prognostic Implications of S Modifiers in the Korean National Lung Cancer
  Screening Program", abstract read at
  https://beta.ncdpolicylab.org/feed/prevalence-co-occurrence-and-prognostic-implica; 125 600 baseline participants,
  2019-2020) coronary artery calcification was the commonest (15.1 %), then emphysema (13.8 %); both carried higher
  all-cause mortality.
- Coronary artery calcium on every non-contrast chest CT, graded none / mild / moderate / severe: the SCCT/STR
  guideline (Hecht HS et al., J Cardiovasc Comput Tomogr 2017;11:74-84) and CAC-DRS (Hecht HS et al., J Cardiovasc
  Comput Tomogr 2018;12:185-191: Agatston 0, 1-99, 100-299, >= 300).

The node suggests S for the two it measures, and says it is a suggestion: coronary calcium graded moderate or severe
(CAC-DRS 2-3), and emphysema by the LAA-950 threshold that is Brock's emphysema input (settings [clinical]). It cannot
know whether a finding is already known or treated; the reader can. The category itself never changes: S is a
modifier beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from inference.clinical.types import round_half_up


class CalciumGrade(str, Enum):
    """CAC-DRS 0-3 by the Agatston score."""

    NONE = "none"
    MILD = "mild"
    MODERATE = "moderate"
    SEVERE = "severe"


# CAC-DRS: the lowest Agatston score of each grade above none
MILD_FROM, MODERATE_FROM, SEVERE_FROM = 1.0, 100.0, 300.0
SIGNIFICANT_GRADES = (CalciumGrade.MODERATE, CalciumGrade.SEVERE)


def whole_score(agatston: float) -> int:
    """The Agatston score as reported, a whole number (rounded half up): CAC-DRS grades whole numbers."""
    if not agatston >= 0.0:
        raise ValueError(f"an Agatston score is >= 0, got {agatston!r}")
    return int(round_half_up(float(agatston), 0))


def calcium_grade(agatston: float) -> CalciumGrade:
    """CAC-DRS grade of an Agatston score, by its whole number (0 is none)."""
    agatston = whole_score(agatston)
    if agatston >= SEVERE_FROM:
        return CalciumGrade.SEVERE
    if agatston >= MODERATE_FROM:
        return CalciumGrade.MODERATE
    return CalciumGrade.MILD if agatston >= MILD_FROM else CalciumGrade.NONE


class SignificantKind(str, Enum):
    CORONARY_CALCIUM = "coronary_calcium"
    EMPHYSEMA = "emphysema"


@dataclass(frozen=True)
class SignificantFinding:
    """One finding for which the node suggests the S modifier, in the reader's words."""

    kind: SignificantKind
    text: str


def significant_findings(*, calcium_agatston: float | None, laa950_pct: float | None, laa950_reliable: bool,
                         emphysema_threshold_pct: float) -> tuple[SignificantFinding, ...]:
    """The findings for which S is suggested. `calcium_agatston` None: coronary calcium not measured (contrast, no
    heart in the scan); `laa950_reliable` False: a noisy image's LAA-950 says nothing of emphysema."""
    found = []
    if calcium_agatston is not None and (grade := calcium_grade(calcium_agatston)) in SIGNIFICANT_GRADES:
        found.append(SignificantFinding(SignificantKind.CORONARY_CALCIUM, (
            f"{grade.value} coronary artery calcification (Agatston-equivalent {whole_score(calcium_agatston)} on this "
            f"non-gated CT; CAC-DRS {_CAC_DRS[grade]})")))
    if laa950_reliable and laa950_pct is not None and laa950_pct >= emphysema_threshold_pct:
        found.append(SignificantFinding(SignificantKind.EMPHYSEMA, (
            f"emphysema (LAA-950 {laa950_pct:.1f} % of the lung volume, at or over {emphysema_threshold_pct:g} %)")))
    return tuple(found)


_CAC_DRS = {CalciumGrade.NONE: 0, CalciumGrade.MILD: 1, CalciumGrade.MODERATE: 2, CalciumGrade.SEVERE: 3}
