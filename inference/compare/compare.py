"""Comparison of a current exam with its prior: patient check, registration, matching, growth and the
Lung-RADS v2022 follow-up categories.

`compare_exams(current, prior)` takes each exam's analysis (`SeriesResult`), a DICOM header of it and
its volume (and, optionally, lung masks), and returns a `Comparison`: per current finding a
`FindingComparison` (status new/growing/stable/shrinking, the matched prior finding, interval, volume
change, doubling time, follow-up Lung-RADS), the resolved prior findings, and the exam's follow-up
category. A patient mismatch returns a Comparison with `performed=False` and the reason: never a
comparison across patients.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from inference.clinical import Exam, Lung, Nodule, NoduleType, Zone, classify_exam
from inference.clinical.lungrads import infection_caveat
from inference.clinical.lungrads import GROWTH_THRESHOLD_MM_PER_12_MONTHS
from inference.clinical.types import (
    Change, LungRadsCategory, airway_or_none, cyst_or_none, margin_or_not_assessed, round_half_up,
)
from inference.compare.growth import Growth, Status, growth
from inference.compare.matching import Point, match
from inference.compare.registration import ImageLike, Registration, register
from inference.findings import Finding, SeriesResult

DAYS_PER_MONTH = 365.25 / 12


@dataclass
class ExamInput:
    """One analysed exam: its result, one DICOM header of the series, its volume and (optional) lung mask."""

    result: SeriesResult
    header: Dataset
    volume: ImageLike
    lungs: np.ndarray | None = None


@dataclass(frozen=True)
class FindingComparison:
    status: Status
    prior_index: int | None
    prior: Finding | None
    growth: Growth | None
    distance_mm: float | None  # current centre to the registered prior centre
    lung_rads: str  # the v2022 follow-up category of this finding
    lung_rads_reasons: tuple[str, ...]

    def to_json(self, interval_days: int | None) -> dict[str, Any]:
        p, g = self.prior, self.growth
        return {
            "status": self.status,
            "prior": None if p is None else {
                "index": self.prior_index, "center_mm": [round(c, 3) for c in p.center_mm],
                "mean_diameter_mm": round(p.diameter_mm, 1), "volume_mm3": round(p.volume_mm3, 2),
                "type": p.nodule_type, "lung_rads": p.lung_rads},
            "interval_days": interval_days,
            "volume_change_pct": None if g is None else round(g.volume_change_pct, 1),
            "doubling_time_days": None if g is None or g.doubling_time_days is None else round(g.doubling_time_days, 1),
            "diameter_change_mm": None if g is None else g.diameter_change_mm,
            "lung_rads_growth": None if g is None else g.lung_rads_growth,
            "distance_mm": None if self.distance_mm is None else round(self.distance_mm, 1),
            "lung_rads": self.lung_rads,
            "lung_rads_reasons": list(self.lung_rads_reasons),
        }


@dataclass
class Comparison:
    performed: bool
    reason: str | None = None  # why not performed, or caveats
    prior_study_instance_uid: str | None = None
    prior_series_instance_uid: str | None = None
    prior_study_date: str | None = None
    interval_days: int | None = None
    registration: Registration | None = None
    findings: list[FindingComparison | None] = field(default_factory=list)  # one per current finding
    resolved: list[tuple[int, Finding]] = field(default_factory=list)
    lung_rads: str | None = None  # the exam's follow-up category
    recommendation: str | None = None
    lung_rads_reason: str | None = None

    def summary_json(self) -> dict[str, Any]:
        return {
            "performed": self.performed, "reason": self.reason,
            "prior_study_instance_uid": self.prior_study_instance_uid,
            "prior_series_instance_uid": self.prior_series_instance_uid,
            "prior_study_date": self.prior_study_date, "interval_days": self.interval_days,
            "registration": None if self.registration is None else self.registration.to_json(),
            "lung_rads": self.lung_rads, "recommendation": self.recommendation,
            "lung_rads_reason": self.lung_rads_reason,
        }

    def resolved_json(self) -> list[dict[str, Any]]:
        return [{"prior_index": i, "center_mm": [round(c, 3) for c in f.center_mm],
                 "mean_diameter_mm": round(f.diameter_mm, 1), "volume_mm3": round(f.volume_mm3, 2),
                 "type": f.nodule_type, "lung_rads": f.lung_rads, "status": "resolved"} for i, f in self.resolved]

    def apply_to_json(self, result_json: dict[str, Any]) -> dict[str, Any]:
        """The analyze JSON with `comparison` on every finding, `resolved` beside `findings` and the
        exam-level `comparison` (performed or not, and why)."""
        out = dict(result_json)
        findings = [dict(f) for f in out.get("findings", [])]
        for i, f in enumerate(findings):
            fc = self.findings[i] if self.performed and i < len(self.findings) else None
            f["comparison"] = None if fc is None else fc.to_json(self.interval_days)
        out["findings"] = findings
        out["resolved"] = self.resolved_json() if self.performed else []
        out["comparison"] = self.summary_json()
        return out


# -- patient safety ------------------------------------------------------------------------------
def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def _name(ds: Dataset) -> str:
    """PatientName compared case-insensitively, without empty trailing components ("DOE^JOHN^^" = "doe^john")."""
    return re.sub(r"\^+$", "", _text(ds, "PatientName")).strip().upper()


def patient_mismatch(current: Dataset, prior: Dataset) -> str | None:
    """Why the prior may not be compared with the current exam (another patient), or None when it may.
    PatientID must be present and equal; IssuerOfPatientID equal when both carry it; PatientName and
    PatientBirthDate equal when both carry them."""
    cur_id, pri_id = _text(current, "PatientID"), _text(prior, "PatientID")
    if not cur_id or not pri_id:
        return "PatientID missing in the " + ("current exam" if not cur_id else "prior exam")
    if cur_id != pri_id:
        return f"PatientID differs: current {cur_id!r}, prior {pri_id!r}"
    cur_iss, pri_iss = _text(current, "IssuerOfPatientID"), _text(prior, "IssuerOfPatientID")
    if cur_iss and pri_iss and cur_iss != pri_iss:
        return f"IssuerOfPatientID differs: current {cur_iss!r}, prior {pri_iss!r}"
    if _name(current) and _name(prior) and _name(current) != _name(prior):
        return f"PatientName differs: current {_text(current, 'PatientName')!r}, prior {_text(prior, 'PatientName')!r}"
    cur_b, pri_b = _text(current, "PatientBirthDate"), _text(prior, "PatientBirthDate")
    if cur_b and pri_b and cur_b != pri_b:
        return f"PatientBirthDate differs: current {cur_b}, prior {pri_b}"
    return None


def _exam_date(ds: Dataset) -> date | None:
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate"):
        text = _text(ds, keyword)
        if re.fullmatch(r"\d{8}", text):
            try:
                return date(int(text[:4]), int(text[4:6]), int(text[6:]))
            except ValueError:
                continue
    return None


# -- the follow-up Lung-RADS ---------------------------------------------------------------------
def _clinical(f: Finding, change: Change | None, months: float | None, prior_category: str | None) -> Nodule:
    """The clinical Nodule of a finding, with its follow-up inputs."""
    kind = NoduleType(f.nodule_type)
    solid = f.solid_component_mm if kind is NoduleType.PART_SOLID else None
    if kind is NoduleType.PART_SOLID and not solid:
        kind, solid = NoduleType.GROUND_GLASS, None
    benign_shape = any("oval/lentiform" in r for r in f.lung_rads_reasons) or None
    return Nodule(
        type=kind, mean_diameter_mm=f.diameter_mm, calcified=f.calcified, margin=margin_or_not_assessed(f.margin),
        volume_mm3=f.volume_mm3 if f.volume_mm3 > 0 else None, solid_component_mm=solid,
        juxtapleural=f.location.juxtapleural, perifissural=f.location.perifissural,
        pleural_shape_benign=benign_shape,
        lung=Lung(f.location.lung) if f.location.lung else None,
        zone=Zone(f.location.zone) if f.location.zone else None,
        change=change, stable_months=months if change is Change.STABLE else None, cyst=cyst_or_none(f.cyst),
        airway=airway_or_none(f.airway) if cyst_or_none(f.cyst) is None else None,
        prior_category=LungRadsCategory(prior_category) if prior_category in {c.value for c in LungRadsCategory}
        and prior_category not in ("0",) else None,
    )


def _change(status: Status, g: Growth | None, current: Finding, prior: Finding | None) -> Change:
    if status == "new" or prior is None:
        return Change.NEW
    if current.nodule_type == "part_solid" and current.solid_component_mm:
        # v2022 grades a part-solid nodule's growth on its solid component: a new one (the prior had none)
        # or one whose mean diameter rose by > 1.5 mm
        if not prior.solid_component_mm or prior.nodule_type != "part_solid":
            return Change.GROWING if prior.nodule_type == "ground_glass" else Change.STABLE
        delta = round_half_up(round_half_up(current.solid_component_mm, 1) - round_half_up(prior.solid_component_mm, 1), 1)
        return Change.GROWING if delta > GROWTH_THRESHOLD_MM_PER_12_MONTHS else Change.STABLE
    if g is not None and g.lung_rads_growth:
        return Change.GROWING
    return Change.STABLE  # Lung-RADS: "stable" is unchanged or decreased in size


# -- the entry point ---------------------------------------------------------------------------
def compare_exams(current: ExamInput, prior: ExamInput) -> Comparison:
    """The comparison of `current` with `prior` (see the module docstring)."""
    base = Comparison(performed=False, prior_study_instance_uid=_text(prior.header, "StudyInstanceUID") or None,
                      prior_series_instance_uid=prior.result.series_instance_uid or None,
                      prior_study_date=_text(prior.header, "StudyDate") or None)
    why = patient_mismatch(current.header, prior.header)
    if why is not None:
        base.reason = f"no comparison: the prior is not this patient's exam ({why})"
        return base
    if base.prior_study_instance_uid and base.prior_study_instance_uid == _text(current.header, "StudyInstanceUID"):
        base.reason = "no comparison: the prior is the same study as the current exam"
        return base
    if not prior.result.analysed or not current.result.analysed:
        which = "prior" if not prior.result.analysed else "current"
        base.reason = f"no comparison: the {which} exam could not be analysed"
        return base
    d_cur, d_pri = _exam_date(current.header), _exam_date(prior.header)
    interval = (d_cur - d_pri).days if d_cur is not None and d_pri is not None else None
    if interval is not None and interval < 0:
        base.reason = f"no comparison: the prior ({d_pri}) is later than the current exam ({d_cur})"
        return base
    notes = [] if interval is not None else ["StudyDate missing: interval and doubling times unknown"]

    reg = register(prior.volume, current.volume, prior_lungs=prior.lungs, current_lungs=current.lungs)
    cur_f, pri_f = current.result.findings, prior.result.findings
    moved = reg.transform.apply(np.array([f.center_mm for f in pri_f], float)) if pri_f else np.zeros((0, 3))
    m = match([Point(f.center_mm, f.diameter_mm) for f in cur_f],
              [Point((float(c[0]), float(c[1]), float(c[2])), f.diameter_mm) for c, f in zip(moved, pri_f)])
    months = None if interval is None else round(interval / DAYS_PER_MONTH, 1)
    by_current: dict[int, tuple[int, float]] = {c: (p, d) for (c, p), d in zip(m.pairs, m.distances_mm)}
    rows: list[tuple[Status, int | None, Growth | None, float | None]] = []
    for i, f in enumerate(cur_f):
        if i not in by_current:
            rows.append(("new", None, None, None))
            continue
        j, dist = by_current[i]
        p = pri_f[j]
        g = growth(p.volume_mm3, f.volume_mm3, p.diameter_mm, f.diameter_mm, interval)
        rows.append((g.status, j, g, dist))
    nodules = tuple(_clinical(f, _change(st, g, f, None if j is None else pri_f[j]), months,
                              None if j is None else pri_f[j].lung_rads)
                    for f, (st, j, g, _d) in zip(cur_f, rows))
    infection = infection_caveat(nodules)
    if infection:
        notes.append(infection)
    exam_chars = current.result.exam
    covered = exam_chars.lungs_fully_covered if exam_chars is not None else True
    assessment = classify_exam(Exam(covered, nodules, None if covered else (exam_chars.reason if exam_chars else None)
                                    or "the lungs are not fully covered"))
    base.performed = True
    base.reason = "; ".join(notes) or None
    base.interval_days = interval
    base.registration = reg
    base.findings = [FindingComparison(st, j, None if j is None else pri_f[j], g, d, a.category.value, a.reasons)
                     for (st, j, g, d), a in zip(rows, assessment.nodules)]
    base.resolved = [(j, pri_f[j]) for j in m.resolved]
    base.lung_rads = assessment.category.value
    base.recommendation = assessment.recommendation
    base.lung_rads_reason = assessment.reason
    return base


def lung_masks(volume: ImageLike) -> np.ndarray | None:
    """The undilated lung mask of a volume for the registration's initialisation (None when none is found)."""
    from inference.preprocess import lung_mask

    try:
        mask = lung_mask(np.asarray(volume.hu), np.asarray(volume.spacing, float))
    except ValueError:
        return None
    return mask if mask.any() else None


__all__ = ["Comparison", "ExamInput", "FindingComparison", "compare_exams", "lung_masks", "patient_mismatch"]
