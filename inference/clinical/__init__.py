"""Published clinical rules as pure functions: Lung-RADS v2022, the Brock (PanCan) risk, the exam verdict.

No I/O and no dicomnode imports: the image measurements (inference/characterize/) fill the dataclasses
in `types`, and the pipeline, database, SR and console call these functions.
"""
from __future__ import annotations

from inference.clinical.brock import METHOD, BrockResult, FamilyHistory, Sex, brock_risk, brock_risk_for_nodule
from inference.clinical.lungrads import (
    RECOMMENDATIONS,
    ExamAssessment,
    NoduleAssessment,
    classify_exam,
    classify_nodule,
    is_growth,
    recommendation,
)
from inference.clinical.types import (
    AirwayLevel, Change, CystKind, Exam, Lung, LungRadsCategory, Margin, Nodule, NoduleType, Zone,
)
from inference.clinical.verdict import BROCK_WORKUP_THRESHOLD, Verdict, VerdictResult, exam_verdict, finding_verdict

__all__ = [
    "BROCK_WORKUP_THRESHOLD",
    "METHOD",
    "RECOMMENDATIONS",
    "AirwayLevel",
    "BrockResult",
    "Change",
    "CystKind",
    "Exam",
    "ExamAssessment",
    "FamilyHistory",
    "Lung",
    "LungRadsCategory",
    "Margin",
    "Nodule",
    "NoduleAssessment",
    "NoduleType",
    "Sex",
    "Verdict",
    "VerdictResult",
    "Zone",
    "brock_risk",
    "brock_risk_for_nodule",
    "classify_exam",
    "classify_nodule",
    "exam_verdict",
    "finding_verdict",
    "is_growth",
    "recommendation",
]
