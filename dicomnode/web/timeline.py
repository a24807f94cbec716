"""The patient timeline: every analysed exam of one patient, oldest first, with its exam Lung-RADS, comparison and
findings (the console's series page, /api/timeline and /api/series/{uid}/timeline)."""
from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicomnode.priors.safety import PatientIdentity, mismatches
from dicomnode.web.views import NotFound, ID_CHUNK, job_comparison, lung_rads_overall
from storage.models import FindingRow, Job, Series, Study
from storage.states import JobState

if TYPE_CHECKING:
    from dicomnode.node import Node


def patient_timeline(s: Session, reference: PatientIdentity, current_series_uid: str | None = None) -> list[dict[str, Any]]:
    """Every analysed exam (series with a finished job) of one patient, the same PatientID and issuer
    ("" for none) as `reference`, oldest first (undated last), each with its exam Lung-RADS, comparison
    counts and `identity_mismatch`: why its PatientName or PatientBirthDate is not the reference's (the
    safety rule of dicomnode.priors.safety: shown, for a reader to notice, never used for a comparison).
    Without a PatientID nothing identifies the patient: only the current series is listed."""
    patient_id, issuer = reference.patient_id, reference.issuer
    query = (select(Study.study_date, Study.study_instance_uid, Study.accession_number, Study.study_description,
                    Study.patient_id, func.coalesce(Study.issuer_of_patient_id, "").label("issuer"),
                    Study.patient_name, func.coalesce(Study.patient_birth_date, "").label("birth_date"),
                    Series.series_instance_uid, Series.series_number, Series.series_description, Series.modality,
                    Series.role, Job.id.label("job_id"), Job.verdict, Job.summary, Job.finished_at)
             .join(Series, Series.study_id == Study.id).join(Job, Job.series_id == Series.id)
             .where(Job.state == JobState.DONE))
    if patient_id:
        query = query.where(Study.patient_id == patient_id, func.coalesce(Study.issuer_of_patient_id, "") == issuer)
    else:
        query = query.where(Series.series_instance_uid == (current_series_uid or ""))
    latest: dict[str, Any] = {}
    for row in s.execute(query.order_by(Job.id)):
        latest[row.series_instance_uid] = row  # the newest finished job of each series wins
    categories: dict[int, list[tuple[str, str | None]]] = {row.job_id: [] for row in latest.values()}
    job_ids = list(categories)
    for start in range(0, len(job_ids), ID_CHUNK):
        for job_id, category, status in s.execute(
                select(FindingRow.job_id, FindingRow.lung_rads, FindingRow.comparison_status)
                .where(FindingRow.job_id.in_(job_ids[start:start + ID_CHUNK]))):
            categories[job_id].append((category, status))
    exams = [_timeline_exam(row, categories[row.job_id], current_series_uid, reference) for row in latest.values()]
    return sorted(exams, key=lambda e: (e["study_date"] or "99999999", e["finished_at"] or "", e["job_id"]))


def _timeline_exam(row: Any, findings: list[tuple[str, str | None]], current_series_uid: str | None,
                   reference: PatientIdentity) -> dict[str, Any]:
    identity = PatientIdentity(row.patient_id, row.issuer, row.patient_name or "", row.birth_date)
    analysed = row.verdict != "not_analysed"
    summary = row.summary if isinstance(row.summary, dict) else {}
    comparison, resolved = job_comparison(summary)
    exam: dict[str, Any] = summary["exam"] if isinstance(summary.get("exam"), dict) else {}
    follow_up = (comparison or {}).get("lung_rads") if (comparison or {}).get("performed") else None
    category = follow_up or exam.get("lung_rads") or lung_rads_overall([c for c, _ in findings])
    statuses: dict[str, int] = {}
    for _, status in findings:
        if status:
            statuses[status] = statuses.get(status, 0) + 1
    if resolved:
        statuses["resolved"] = len(resolved)
    return {"study_date": row.study_date or None, "study_instance_uid": row.study_instance_uid,
            "accession_number": row.accession_number, "study_description": row.study_description,
            "series_instance_uid": row.series_instance_uid, "series_number": row.series_number,
            "series_description": row.series_description, "modality": row.modality, "role": row.role,
            "job_id": row.job_id, "verdict": row.verdict,
            "finished_at": row.finished_at.replace(tzinfo=UTC).isoformat(timespec="seconds") if row.finished_at else None,
            "lung_rads": category if analysed else None, "findings": len(findings),
            "comparison": None if comparison is None else {"performed": bool(comparison.get("performed")),
                                                           "reason": comparison.get("reason"),
                                                           "prior_study_instance_uid": comparison.get("prior_study_instance_uid"),
                                                           "statuses": statuses},
            "current": row.series_instance_uid == current_series_uid,
            "identity_mismatch": mismatches(reference, identity) if reference.patient_id else []}


def timeline(node: Node, patient_id: str, issuer: str) -> dict[str, Any]:
    """The timeline of a patient named by PatientID and issuer ("" for none)."""
    with node.db.session() as s:
        # the newest study names the patient and is the reference the others' name and birth date are checked against
        row = s.execute(select(Study.patient_name, func.coalesce(Study.patient_birth_date, ""))
                        .where(Study.patient_id == patient_id, func.coalesce(Study.issuer_of_patient_id, "") == issuer)
                        .order_by(Study.id.desc()).limit(1)).first()
        if row is None:
            raise NotFound(f"no study of patient {patient_id!r}" + (f" (issuer {issuer!r})" if issuer else " without an issuer"))
        exams = patient_timeline(s, PatientIdentity(patient_id, issuer, row[0] or "", row[1]))
    return {"patient_id": patient_id, "patient_name": row[0], "issuer_of_patient_id": issuer, "exams": exams}


def series_timeline(node: Node, series_uid: str) -> dict[str, Any]:
    """The timeline of the patient of one series (NotFound when the node has no such series)."""
    with node.db.session() as s:
        row = s.execute(select(Study.patient_id, Study.patient_name, func.coalesce(Study.issuer_of_patient_id, ""),
                               func.coalesce(Study.patient_birth_date, ""))
                        .join(Series, Series.study_id == Study.id).where(Series.series_instance_uid == series_uid)).first()
        if row is None:
            raise NotFound(f"no series {series_uid}")
        exams = patient_timeline(s, PatientIdentity(row[0], row[2], row[1] or "", row[3]), series_uid)
    return {"patient_id": row[0], "patient_name": row[1], "issuer_of_patient_id": row[2], "exams": exams}
