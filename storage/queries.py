"""The admin's questions, answered as plain rows (dicts) that the CLI and the web console share."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar, Unpack

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from storage.models import Association, Delivery, Event, FindingRow, Instance, Job, Series, Study
from storage.states import DeliveryState

# the helpers below narrow a query (.where returns the same Select type), so keep its row type
_Query = TypeVar("_Query", bound="Select[Unpack[tuple[Any, ...]]]")

AUDIT_SUBJECTS = ("associations", "instances", "series", "jobs", "findings", "deliveries", "events", "dead-letters")

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """'2h', '30m', '7d' (ago), or an ISO date/time (UTC when no zone is given)."""
    now = now or datetime.now(timezone.utc)
    m = _RELATIVE.match(text.strip())
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: use an ISO date/time (2026-11-21, 2026-11-21T08:00) or an age (30m, 2h, 7d)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@dataclass
class AuditFilter:
    since: datetime | None = None
    status: str | None = None
    series: str | None = None  # a SeriesInstanceUID or its prefix
    limit: int = 1000


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat(timespec="seconds")
    return value


def _rows(s: Session, query: Select[Unpack[tuple[Any, ...]]]) -> list[dict[str, Any]]:
    return [{k: _iso(v) for k, v in row._mapping.items()} for row in s.execute(query)]


def _since(query: _Query, column: Any, f: AuditFilter) -> _Query:
    # SQLite stores naive UTC; compare against naive UTC so both backends agree
    if f.since is not None:
        query = query.where(column >= f.since.astimezone(timezone.utc).replace(tzinfo=None))
    return query


def _series_uid(query: _Query, f: AuditFilter) -> _Query:
    if f.series:
        query = query.where(Series.series_instance_uid.startswith(f.series))
    return query


def associations(s: Session, f: AuditFilter) -> list[dict[str, Any]]:
    q = select(Association.id, Association.started_at, Association.ended_at, Association.calling_ae,
               Association.called_ae, Association.peer_host, Association.peer_port, Association.tls,
               Association.state, Association.reject_reason, Association.instances_received,
               Association.bytes_received)
    q = _since(q, Association.started_at, f)
    if f.status:
        q = q.where(Association.state == f.status)
    return _rows(s, q.order_by(Association.id.desc()).limit(f.limit))


def instances(s: Session, f: AuditFilter) -> list[dict[str, Any]]:
    q = (select(Instance.id, Instance.received_at, Instance.sop_instance_uid, Instance.sop_class_uid,
                Instance.transfer_syntax_uid, Instance.instance_number, Instance.size_bytes, Instance.duplicates,
                Series.series_instance_uid, Study.patient_id, Association.calling_ae, Association.peer_host,
                Instance.association_id, Instance.path)
         .join(Series, Instance.series_id == Series.id).join(Study, Series.study_id == Study.id)
         .outerjoin(Association, Instance.association_id == Association.id))
    q = _series_uid(_since(q, Instance.received_at, f), f)
    return _rows(s, q.order_by(Instance.id.desc()).limit(f.limit))


def series(s: Session, f: AuditFilter) -> list[dict[str, Any]]:
    q = (select(Series.id, Series.series_instance_uid, Study.study_instance_uid, Study.patient_id,
                Study.accession_number, Series.modality, Series.body_part, Series.series_number,
                Series.series_description, Series.slice_thickness, Series.instance_count, Series.calling_ae,
                Series.status, Series.status_reason, Series.route_name, Series.generation,
                Series.first_received_at, Series.completed_at)
         .join(Study, Series.study_id == Study.id))
    q = _series_uid(_since(q, Series.first_received_at, f), f)
    if f.status:
        q = q.where(Series.status == f.status)
    return _rows(s, q.order_by(Series.id.desc()).limit(f.limit))


def jobs(s: Session, f: AuditFilter) -> list[dict[str, Any]]:
    q = (select(Job.id, Series.series_instance_uid, Job.pipeline, Job.route_name, Job.state, Job.attempts,
                Job.verdict, Job.progress, Job.error, Job.queued_at, Job.started_at, Job.finished_at, Job.summary,
                Job.supersedes_job_id)
         .join(Series, Job.series_id == Series.id))
    q = _series_uid(_since(q, Job.queued_at, f), f)
    if f.status:
        q = q.where(Job.state == f.status)
    rows = _rows(s, q.order_by(Job.id.desc()).limit(f.limit))
    for row in rows:  # the first line of the error is what an admin reads in a table
        if row["error"]:
            row["error"] = row["error"].splitlines()[0]
        # the exam-level statement (Lung-RADS, recommendation, LAA-950, risk inputs) of a finished job
        row["exam"] = row["summary"].get("exam") if isinstance(row["summary"], dict) else None
    return rows


# decimals each finding column is shown with: the measurement's precision, not a 15-digit float
FINDING_DECIMALS = {"center_x_mm": 1, "center_y_mm": 1, "center_z_mm": 1, "diameter_mm": 1, "mean_diameter_mm": 1,
                    "long_axis_mm": 1, "short_axis_mm": 1, "solid_component_mm": 1, "volume_mm3": 0,
                    "probability": 3, "brock_risk": 4, "model_score": 3, "row": 1, "column": 1}


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    for key, decimals in FINDING_DECIMALS.items():
        if isinstance(row.get(key), float):
            row[key] = round(row[key], decimals) if decimals else float(round(row[key]))
    return row


# what a findings table shows in an 80-120 column terminal or a browser window (everything: --format json)
FINDING_TABLE_COLUMNS = ("id", "series_instance_uid", "index", "type", "mean_diameter_mm", "solid_component_mm",
                         "lung_rads", "brock_risk", "model_score", "calcified", "margin", "lung", "zone", "finished_at")


def compact_finding(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in FINDING_TABLE_COLUMNS}


def findings(s: Session, f: AuditFilter) -> list[dict[str, Any]]:
    """One row per finding, flat (the CLI prints it as a table); dicomnode.web.views.finding_json nests it for the API."""
    q = (select(FindingRow.id, FindingRow.job_id, Series.series_instance_uid, FindingRow.index,
                FindingRow.nodule_type.label("type"), FindingRow.mean_diameter_mm, FindingRow.solid_component_mm,
                FindingRow.lung_rads, FindingRow.brock_risk, FindingRow.model_score, FindingRow.calcified,
                FindingRow.calcification_pattern, FindingRow.margin, FindingRow.lung, FindingRow.zone,
                FindingRow.juxtapleural, FindingRow.long_axis_mm, FindingRow.short_axis_mm, FindingRow.diameter_mm,
                FindingRow.volume_mm3, FindingRow.probability, FindingRow.center_x_mm, FindingRow.center_y_mm,
                FindingRow.center_z_mm, FindingRow.sop_instance_uid, FindingRow.row, FindingRow.column,
                FindingRow.lung_rads_reasons, FindingRow.note, Job.finished_at)
         .join(Job, FindingRow.job_id == Job.id).join(Series, FindingRow.series_id == Series.id))
    q = _series_uid(_since(q, Job.finished_at, f), f)
    if f.status:
        q = q.where(FindingRow.lung_rads == f.status)
    return [_rounded(r) for r in _rows(s, q.order_by(FindingRow.id.desc()).limit(f.limit))]


def deliveries(s: Session, f: AuditFilter) -> list[dict[str, Any]]:
    # forwards (kind "forward") have no job: their series is deliveries.series_id
    q = (select(Delivery.id, Delivery.job_id, Delivery.kind, Series.series_instance_uid, Delivery.destination,
                Delivery.ae_title, Delivery.host, Delivery.port, Delivery.sop_instance_uid, Delivery.sop_class_uid,
                Delivery.state, Delivery.attempts, Delivery.last_error, Delivery.created_at, Delivery.next_attempt_at,
                Delivery.delivered_at)
         .outerjoin(Job, Delivery.job_id == Job.id)
         .outerjoin(Series, Series.id == func.coalesce(Delivery.series_id, Job.series_id)))
    q = _series_uid(_since(q, Delivery.created_at, f), f)
    if f.status:
        q = q.where(Delivery.state == f.status)
    return _rows(s, q.order_by(Delivery.id.desc()).limit(f.limit))


def dead_letters(s: Session, f: AuditFilter) -> list[dict[str, Any]]:
    return deliveries(s, AuditFilter(f.since, DeliveryState.DEAD, f.series, f.limit))


def events(s: Session, f: AuditFilter) -> list[dict[str, Any]]:
    q = select(Event.id, Event.at, Event.code, Event.name, Event.level, Event.message, Event.association_id,
               Event.series_instance_uid, Event.job_id, Event.delivery_id)
    q = _since(q, Event.at, f)
    if f.series:
        q = q.where(Event.series_instance_uid.startswith(f.series))
    if f.status:  # for events, --status is the level or the event name
        q = q.where((Event.level == f.status) | (Event.name == f.status.upper()))
    return _rows(s, q.order_by(Event.id.desc()).limit(f.limit))


QUERIES = {
    "associations": associations, "instances": instances, "series": series, "jobs": jobs,
    "findings": findings, "deliveries": deliveries, "events": events, "dead-letters": dead_letters,
}


def run_query(s: Session, subject: str, f: AuditFilter) -> list[dict[str, Any]]:
    if subject not in QUERIES:
        raise ValueError(f"unknown audit subject {subject!r}; choose from {', '.join(AUDIT_SUBJECTS)}")
    return QUERIES[subject](s, f)


def counts_by(s: Session, column: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in s.execute(select(column, func.count()).group_by(column))}
