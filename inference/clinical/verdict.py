"""The exam verdict: one word for the study, from the Lung-RADS category and the highest Brock risk.

Rule (documented here, tested in tests/inference/test_verdict.py):
- Lung-RADS 1-2 -> negative; 3 -> probably benign; 4A/4B/4X -> suspicious; 0 -> incomplete.
- A Brock risk >= 10 % raises the verdict to suspicious whatever the category, and says why. The 10 %
  is the British Thoracic Society threshold for further work-up (PET-CT) of a nodule: Callister MEJ et al.
  BTS guidelines for the investigation and management of pulmonary nodules. Thorax 2015;70 Suppl 2:ii1-ii54
  (validated as "the threshold suggested by the British Thoracic Society" in Chung K et al. Thorax
  2018;73:857-863).
- An incomplete exam (0) whose nodules include a category 4A/4B/4X nodule, or a nodule at Brock >= 10 %,
  is suspicious (with the coverage problem stated): "incomplete" must never hide a suspicious row.

Non-contradiction: `finding_verdict` gives each finding row its own verdict from its category and
risk, and `exam_verdict` is never less severe than the verdict of any row it is given (the exam
category is the highest nodule category, and the highest risk is the maximum of the rows' risks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from inference.clinical.types import LungRadsCategory
from inference.findings import Verdict  # the one verdict enum, shared with the findings

BROCK_WORKUP_THRESHOLD = 0.10  # BTS 2015: Brock >= 10 % -> PET-CT / further work-up


_BY_CATEGORY = {
    LungRadsCategory.C0: Verdict.INCOMPLETE,
    LungRadsCategory.C1: Verdict.NEGATIVE,
    LungRadsCategory.C2: Verdict.NEGATIVE,
    LungRadsCategory.C3: Verdict.PROBABLY_BENIGN,
    LungRadsCategory.C4A: Verdict.SUSPICIOUS,
    LungRadsCategory.C4B: Verdict.SUSPICIOUS,
    LungRadsCategory.C4X: Verdict.SUSPICIOUS,
}


@dataclass(frozen=True)
class VerdictResult:
    verdict: Verdict
    reasons: tuple[str, ...]
    lung_rads: LungRadsCategory
    brock_risk: float | None


def _check_risk(risk: float | None) -> None:
    if risk is None:
        return
    if isinstance(risk, bool) or not isinstance(risk, (int, float)) or not math.isfinite(risk) or not 0.0 <= risk <= 1.0:
        raise ValueError(f"highest_brock_risk must be a probability in [0, 1], got {risk!r}")


def finding_verdict(category: LungRadsCategory, brock_risk: float | None) -> VerdictResult:
    """The verdict one finding row implies on its own (same rule as the exam)."""
    return exam_verdict(category, brock_risk)


def exam_verdict(
    exam_lung_rads: LungRadsCategory,
    highest_brock_risk: float | None,
    *,
    highest_nodule_category: LungRadsCategory | None = None,
) -> VerdictResult:
    """Verdict of an exam from its Lung-RADS category and its highest Brock risk (None: no risk computed).

    highest_nodule_category: for an exam of category 0, the highest category among its nodules, so a
    suspicious nodule in an incomplete exam still makes the exam suspicious.
    """
    category = LungRadsCategory(exam_lung_rads)
    _check_risk(highest_brock_risk)
    verdict = _BY_CATEGORY[category]
    reasons = [f"Lung-RADS {category.value} -> {verdict.value}"]
    if category is LungRadsCategory.C0 and highest_nodule_category is not None:
        nodule_verdict = _BY_CATEGORY[LungRadsCategory(highest_nodule_category)]
        if nodule_verdict is Verdict.SUSPICIOUS:
            verdict = Verdict.SUSPICIOUS
            reasons.append(
                f"a nodule is Lung-RADS {highest_nodule_category.value} although the lungs are not fully covered"
            )
    if highest_brock_risk is not None and highest_brock_risk >= BROCK_WORKUP_THRESHOLD:
        if verdict is not Verdict.SUSPICIOUS:
            verdict = Verdict.SUSPICIOUS
            reasons.append(
                f"Brock risk {highest_brock_risk:.1%} >= {BROCK_WORKUP_THRESHOLD:.0%} "
                "(BTS 2015 threshold for further work-up) raises the verdict to suspicious"
            )
        else:
            reasons.append(f"Brock risk {highest_brock_risk:.1%} >= {BROCK_WORKUP_THRESHOLD:.0%}")
    return VerdictResult(verdict, tuple(reasons), category, highest_brock_risk)
