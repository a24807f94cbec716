"""Comparison with a prior exam (issue 12): registration (registration.py), matching (matching.py),
growth and doubling time (growth.py), and the entry point `compare_exams` (compare.py) that also
checks the patient and gives the Lung-RADS v2022 follow-up categories. Works offline: the caller
brings both analysed exams (the node's prior retrieval lives in dicomnode/priors/).
"""
from inference.compare.compare import Comparison, ExamInput, FindingComparison, compare_exams, lung_masks, patient_mismatch
from inference.compare.growth import VOLUME_ERROR_PCT, Growth, growth
from inference.compare.matching import GATE_BASE_MM, Match, Point, match
from inference.compare.registration import Registration, RigidTransform, register

__all__ = [
    "Comparison", "ExamInput", "FindingComparison", "GATE_BASE_MM", "Growth", "Match", "Point", "Registration",
    "RigidTransform", "VOLUME_ERROR_PCT", "compare_exams", "growth", "lung_masks", "match", "patient_mismatch",
    "register",
]
