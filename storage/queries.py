"""The admin's questions, answered as plain rows (dicts) that the CLI and the web console share."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar, Unpack

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session

from storage.audit_subjects import AUDIT_SUBJECTS
from storage.events import EventCode
from storage.models import Association, Delivery, Event, FindingRow, Instance, Job, NodeRow, Series, Study
from storage.states import DeliveryState, JobState

# the helpers below narrow a query (.where returns the same Select type), so keep its row type
_Query = TypeVar("_Query", bound="Select[Unpack[tuple[Any, ...]]]")

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
    row_id: int | None = None  # one row by its id (a row's own page in the console)


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


def _row_id(query: _Query, column: Any, f: AuditFilter) -> _Query:
    if f.row_id is not None:
        query = query.where(column == f.row_id)
    return query


def associations(s: Session, f: AuditFilter) -> list[dict[str, Any]]:
    q = select(Association.id, Association.started_at, Association.ended_at, Association.calling_ae,
               Association.called_ae, Association.peer_host, Association.peer_port, Association.tls,
               Association.state, Association.reject_reason, Association.instances_received,
               Association.bytes_received)
    q = _row_id(_since(q, Association.started_at, f), Association.id, f)
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
    q = _row_id(_series_uid(_since(q, Instance.received_at, f), f), Instance.id, f)
    return _rows(s, q.order_by(Instance.id.desc()).limit(f.limit))


def series(s: Session, f: AuditFilter) -> list[dict[str, Any]]:
    q = (select(Series.id, Series.series_instance_uid, Study.study_instance_uid, Study.patient_id,
                Study.accession_number, Series.modality, Series.body_part, Series.series_number,
                Series.series_description, Series.slice_thickness, Series.instance_count, Series.calling_ae,
                Series.status, Series.status_reason, Series.route_name, Series.generation,
                Series.first_received_at, Series.completed_at)
         .join(Study, Series.study_id == Study.id))
    q = _row_id(_series_uid(_since(q, Series.first_received_at, f), f), Series.id, f)
    if f.status:
        q = q.where(Series.status == f.status)
    return _rows(s, q.order_by(Series.id.desc()).limit(f.limit))


def jobs(s: Session, f: AuditFilter) -> list[dict[str, Any]]:
    q = (select(Job.id, Series.series_instance_uid, Job.pipeline, Job.route_name, Job.state, Job.attempts,
                Job.verdict, Job.progress, Job.error, Job.queued_at, Job.started_at, Job.finished_at, Job.summary,
                Job.supersedes_job_id, Job.claimed_by.label("node_id"), Job.lease_expires_at)
         .join(Series, Job.series_id == Series.id))
    q = _row_id(_series_uid(_since(q, Job.queued_at, f), f), Job.id, f)
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
                FindingRow.juxtapleural, FindingRow.perifissural, FindingRow.long_axis_mm, FindingRow.short_axis_mm, FindingRow.diameter_mm,
                FindingRow.volume_mm3, FindingRow.probability, FindingRow.center_x_mm, FindingRow.center_y_mm,
                FindingRow.center_z_mm, FindingRow.sop_instance_uid, FindingRow.row, FindingRow.column,
                FindingRow.lung_rads_reasons, FindingRow.note, FindingRow.cyst, FindingRow.airway,
                Job.finished_at)
         .join(Job, FindingRow.job_id == Job.id).join(Series, FindingRow.series_id == Series.id))
    q = _row_id(_series_uid(_since(q, Job.finished_at, f), f), FindingRow.id, f)
    if f.status:
        q = q.where(FindingRow.lung_rads == f.status)
    return [_rounded(r) for r in _rows(s, q.order_by(FindingRow.id.desc()).limit(f.limit))]


def deliveries(s: Session, f: AuditFilter) -> list[dict[str, Any]]:
    # forwards (kind "forward") have no job: their series is deliveries.series_id
    q = (select(Delivery.id, Delivery.job_id, Delivery.kind, Series.series_instance_uid, Delivery.destination,
                Delivery.ae_title, Delivery.host, Delivery.port, Delivery.sop_instance_uid, Delivery.sop_class_uid,
                Delivery.state, Delivery.attempts, Delivery.last_error, Delivery.created_at, Delivery.next_attempt_at,
                Delivery.delivered_at, Delivery.committed_at, Delivery.commit_transaction_uid,
                Delivery.claimed_by.label("node_id"), Delivery.lease_expires_at)
         .outerjoin(Job, Delivery.job_id == Job.id)
         .outerjoin(Series, Series.id == func.coalesce(Delivery.series_id, Job.series_id)))
    q = _row_id(_series_uid(_since(q, Delivery.created_at, f), f), Delivery.id, f)
    if f.status:
        q = q.where(Delivery.state == f.status)
    return _rows(s, q.order_by(Delivery.id.desc()).limit(f.limit))


def dead_letters(s: Session, f: AuditFilter) -> list[dict[str, Any]]:
    return deliveries(s, AuditFilter(f.since, DeliveryState.DEAD, f.series, f.limit, f.row_id))


def events(s: Session, f: AuditFilter) -> list[dict[str, Any]]:
    q = select(Event.id, Event.at, Event.code, Event.name, Event.level, Event.message, Event.association_id,
               Event.series_instance_uid, Event.job_id, Event.delivery_id)
    q = _row_id(_since(q, Event.at, f), Event.id, f)
    if f.series:
        q = q.where(Event.series_instance_uid.startswith(f.series))
    if f.status:  # for events, --status is the level or the event name
        q = q.where((Event.level == f.status) | (Event.name == f.status.upper()))
    return _rows(s, q.order_by(Event.id.desc()).limit(f.limit))


def nodes(s: Session, f: AuditFilter, lease_s: float = 30.0) -> list[dict[str, Any]]:
    """One row per node sharing the database: identity, heartbeat age, and the work it holds now."""
    if f.row_id is not None:
        return []  # nodes are named by node_id, not numbered: no /audit/nodes/{id} row
    running = (select(Job.claimed_by, func.count(Job.id)).where(Job.state == JobState.RUNNING)
               .group_by(Job.claimed_by))
    sending = (select(Delivery.claimed_by, func.count(Delivery.id)).where(Delivery.state == DeliveryState.SENDING)
               .group_by(Delivery.claimed_by))
    jobs_of: dict[str | None, int] = {k: n for k, n in s.execute(running).all()}
    sends_of: dict[str | None, int] = {k: n for k, n in s.execute(sending).all()}
    now = datetime.now(timezone.utc)
    rows = _rows(s, select(NodeRow.node_id, NodeRow.state, NodeRow.host, NodeRow.pid, NodeRow.version, NodeRow.engine,
                           NodeRow.ae_title, NodeRow.port, NodeRow.started_at, NodeRow.last_heartbeat,
                           NodeRow.stopped_at).order_by(NodeRow.node_id))
    out = []
    for row in rows:
        beat = datetime.fromisoformat(row["last_heartbeat"])
        age = (now - (beat if beat.tzinfo else beat.replace(tzinfo=timezone.utc))).total_seconds()
        row["heartbeat_age_s"] = round(max(age, 0.0), 1)
        if row["state"] == "running" and age > lease_s:
            row["state"] = "silent"
        row["jobs_running"] = jobs_of.get(row["node_id"], 0)
        row["deliveries_sending"] = sends_of.get(row["node_id"], 0)
        if f.status is None or row["state"] == f.status:
            out.append(row)
    return out[:f.limit]


QUERIES = {
    "nodes": nodes,
    "associations": associations, "instances": instances, "series": series, "jobs": jobs,
    "findings": findings, "deliveries": deliveries, "events": events, "dead-letters": dead_letters,
}


def run_query(s: Session, subject: str, f: AuditFilter) -> list[dict[str, Any]]:
    if subject not in QUERIES:
        raise ValueError(f"unknown audit subject {subject!r}; choose from {', '.join(AUDIT_SUBJECTS)}")
    return QUERIES[subject](s, f)


def counts_by(s: Session, column: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in s.execute(select(column, func.count()).group_by(column))}


def audit_row(s: Session, subject: str, row_id: int) -> dict[str, Any] | None:
    """One row of an audit subject, every field (a row's own page); None when there is no such row."""
    rows = run_query(s, subject, AuditFilter(limit=1, row_id=row_id))
    if not rows:
        return None
    row = rows[0]
    if subject == "jobs":  # the table shows the error's first line; its page shows all of it
        row["error"] = s.execute(select(Job.error).where(Job.id == row_id)).scalar()
    return row


def echo_event(s: Session, event_id: int) -> dict[str, Any] | None:
    """A DESTINATION_ECHO row: its message and whether the destination answered; None for any other row."""
    row = s.execute(select(Event.message, Event.details)
                    .where(Event.id == event_id, Event.code == int(EventCode.DESTINATION_ECHO))).first()
    if row is None:
        return None
    return {"message": row.message, "ok": bool((row.details or {}).get("ok"))}


# newest events of one series read for its page; a series far past this is a storm the admin reads in /audit
MAX_SERIES_EVENTS = 20000


def series_events(s: Session, series_uid: str, limit: int = MAX_SERIES_EVENTS) -> list[dict[str, Any]]:
    """Every event about one series, oldest first, each with the calling AE of its association.

    Events about the series' jobs and their deliveries count too: the sender records DELIVERY_SENT
    and the retries with a job and delivery id only, not the series UID.
    """
    series_ids = select(Series.id).where(Series.series_instance_uid == series_uid)
    job_ids = select(Job.id).where(Job.series_id.in_(series_ids))
    # results belong to the series through their job, forwards of its instances through series_id
    delivery_ids = select(Delivery.id).where(Delivery.job_id.in_(job_ids) | Delivery.series_id.in_(series_ids))
    q = (select(Event.id, Event.at, Event.code, Event.name, Event.level, Event.message, Event.association_id,
                Event.series_instance_uid, Event.job_id, Event.delivery_id, Association.calling_ae)
         .outerjoin(Association, Event.association_id == Association.id)
         .where((Event.series_instance_uid == series_uid) | Event.job_id.in_(job_ids)
                | Event.delivery_id.in_(delivery_ids)))
    return list(reversed(_rows(s, q.order_by(Event.id.desc()).limit(limit))))


# delivery states that still wait to go out
WAITING_STATES = (DeliveryState.PENDING, DeliveryState.SENDING)
_FAILURE_CODES = (int(EventCode.DELIVERY_ATTEMPT_FAILED), int(EventCode.DELIVERY_DEAD_LETTER),
                  int(EventCode.DELIVERY_COMMIT_FAILED))
# DESTINATION_ECHO rows read for the last echo of each destination
_ECHO_ROWS = 500


def _naive_utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive UTC, PostgreSQL aware datetimes: compare naive UTC
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def _later(a: tuple[datetime | None, str | None], b: tuple[datetime | None, str | None]) -> tuple[datetime | None, str | None]:
    if a[0] is None:
        return b
    if b[0] is None:
        return a
    return b if b[0] > a[0] else a


def destination_health(s: Session, names: list[str], warn_pending_s: float,
                       now: datetime | None = None) -> list[dict[str, Any]]:
    """Per destination (the configured names, then any other name deliveries went to, e.g. "sender"):
    pending count, the oldest pending delivery's age, dead letters, the last success and the last
    failure (text and time), from deliveries, their failure events and console C-ECHOs.

    `state`: "failing" when the last attempt (delivery or C-ECHO) failed, "backlog" when the oldest
    pending delivery is older than warn_pending_s, "ok" when it last succeeded, "idle" when untried.
    """
    now = _naive_utc(now or datetime.now(timezone.utc))
    assert now is not None
    waiting = {d: (int(n), _naive_utc(oldest)) for d, n, oldest in s.execute(
        select(Delivery.destination, func.count(), func.min(Delivery.created_at))
        .where(Delivery.state.in_(WAITING_STATES)).group_by(Delivery.destination))}
    dead = {d: int(n) for d, n in s.execute(select(Delivery.destination, func.count())
                                            .where(Delivery.state == DeliveryState.DEAD).group_by(Delivery.destination))}
    delivered = {d: _naive_utc(at) for d, at in s.execute(select(Delivery.destination, func.max(Delivery.delivered_at))
                                                          .group_by(Delivery.destination))}
    newest_failure = (select(func.max(Event.id)).join(Delivery, Event.delivery_id == Delivery.id)
                      .where(Event.code.in_(_FAILURE_CODES)).group_by(Delivery.destination))
    failed = {d: (_naive_utc(at), msg) for d, at, msg in s.execute(
        select(Delivery.destination, Event.at, Event.message).join(Delivery, Event.delivery_id == Delivery.id)
        .where(Event.id.in_(newest_failure)))}
    echo_ok: dict[str, datetime | None] = {}
    echo_failed: dict[str, tuple[datetime | None, str | None]] = {}
    for at, message, details in s.execute(select(Event.at, Event.message, Event.details)
                                          .where(Event.code == int(EventCode.DESTINATION_ECHO))
                                          .order_by(Event.id.desc()).limit(_ECHO_ROWS)):
        name = str((details or {}).get("destination", ""))
        if (details or {}).get("ok"):
            echo_ok.setdefault(name, _naive_utc(at))
        else:
            echo_failed.setdefault(name, (_naive_utc(at), message))
    extra = sorted((set(waiting) | set(dead) | set(delivered) | set(failed)) - set(names))
    rows = []
    for name in [*names, *extra]:
        success = _later((delivered.get(name), None), (echo_ok.get(name), None))[0]
        failure_at, failure = _later(failed.get(name, (None, None)), echo_failed.get(name, (None, None)))
        pending, oldest = waiting.get(name, (0, None))
        age = max((now - oldest).total_seconds(), 0.0) if oldest is not None else None
        if failure_at is not None and (success is None or failure_at >= success):
            state = "failing"
        elif age is not None and age > warn_pending_s:
            state = "backlog"
        else:
            state = "ok" if success is not None else "idle"
        rows.append({"destination": name, "configured": name in names, "state": state,
                     "warning": state in ("failing", "backlog"), "pending": pending,
                     "oldest_pending_at": _iso(oldest), "oldest_pending_age_s": age, "dead": dead.get(name, 0),
                     "last_success_at": _iso(success), "last_failure_at": _iso(failure_at), "last_error": failure})
    return rows

# -- retention (dicomnode.retention): facts the policy decides on, and what reprocess checks ------------
# a delivery in any other state (pending, sending, dead, or a state added later) is not yet sent
# (awaiting_commitment is not: a failed commitment sends the outbox file again)
SENT_DELIVERY_STATES = (DeliveryState.DELIVERED, DeliveryState.SUPERSEDED, DeliveryState.COMMITTED)


def retention_series(s: Session) -> list[dict[str, Any]]:
    """One row per series that may still have files: source instances not removed, or deliveries
    (i.e. outbox files) created since its results were last removed. Timestamps as stored."""
    present = (select(Instance.series_id, func.count(Instance.id).label("source_files"),
                      func.coalesce(func.sum(Instance.size_bytes), 0).label("source_bytes"),
                      func.max(Instance.id).label("max_instance_id"))
               .where(Instance.deleted_at.is_(None)).group_by(Instance.series_id).subquery())
    jobs = (select(Job.series_id, func.max(Job.id).label("latest_job_id"), func.max(Job.finished_at).label("job_finished_at"),
                   func.sum(case((Job.state.in_((JobState.QUEUED, JobState.RUNNING)), 1), else_=0)).label("active_jobs"))
            .group_by(Job.series_id).subquery())
    sent = (select(Job.series_id, func.max(Delivery.delivered_at).label("last_delivered_at"),
                   func.max(Delivery.created_at).label("last_delivery_created_at"))
            .join(Job, Delivery.job_id == Job.id).group_by(Job.series_id).subquery())
    latest = Job.__table__.alias("latest")
    q = (select(Series.id, Series.series_instance_uid, Series.status, Series.generation, Series.completed_at,
                Series.last_received_at, Series.files_deleted_at, Series.results_deleted_at,
                func.coalesce(present.c.source_files, 0).label("source_files"),
                func.coalesce(present.c.source_bytes, 0).label("source_bytes"), present.c.max_instance_id,
                func.coalesce(jobs.c.active_jobs, 0).label("active_jobs"), latest.c.state.label("latest_job_state"),
                jobs.c.job_finished_at, sent.c.last_delivered_at, sent.c.last_delivery_created_at)
         .outerjoin(present, present.c.series_id == Series.id)
         .outerjoin(jobs, jobs.c.series_id == Series.id)
         .outerjoin(latest, latest.c.id == jobs.c.latest_job_id)
         .outerjoin(sent, sent.c.series_id == Series.id)
         # outbox files come from a job (results, also with no destination) or a delivery (a forward)
         .where((present.c.source_files > 0) | _since_results_removed(jobs.c.job_finished_at)
                | _since_results_removed(sent.c.last_delivery_created_at))
         .order_by(Series.id))
    return [dict(row._mapping) for row in s.execute(q)]


def _since_results_removed(written_at: Any) -> Any:
    """Outbox files were written (at written_at) after the series' results were last removed."""
    return written_at.is_not(None) & (Series.results_deleted_at.is_(None) | (written_at > Series.results_deleted_at))


def series_with_unsent_deliveries(s: Session, series_id: int | None = None) -> set[int]:
    """Series ids with a delivery not yet delivered (or superseded), linked to the series by its job,
    by a SOP Instance UID of its instances (a forwarded source instance) or by its outbox folder
    (<outbox>/<series>/...); only `series_id` when given. A few queries, whatever the backlog."""
    unsent = Delivery.state.not_in(SENT_DELIVERY_STATES)
    by_job = select(Job.series_id).join(Delivery, Delivery.job_id == Job.id).where(unsent)
    by_sop = select(Instance.series_id).join(Delivery, Delivery.sop_instance_uid == Instance.sop_instance_uid).where(unsent)
    if series_id is not None:
        by_job, by_sop = by_job.where(Job.series_id == series_id), by_sop.where(Instance.series_id == series_id)
    found = set(s.execute(by_job).scalars()) | set(s.execute(by_sop).scalars())
    folders = {path.split("/", 1)[0] for path in s.execute(select(Delivery.path).where(unsent)).scalars() if "/" in path}
    by_path = select(Series.id).where(Series.series_instance_uid.in_(folders))
    if series_id is not None:
        by_path = by_path.where(Series.id == series_id)
    return found | set(s.execute(by_path).scalars()) if folders else found


def series_files_present(s: Session, series_uid: str) -> bool:
    """Whether every received instance of the series is still in the spool (not removed by
    retention): reprocess must refuse a series without them, naming the date they went."""
    return series_files_removed_at(s, series_uid) is None


def series_files_removed_at(s: Session, series_uid: str) -> datetime | None:
    """When retention removed source instances of the series (the latest removal), or None."""
    removed = s.execute(select(func.max(Instance.deleted_at)).join(Series, Instance.series_id == Series.id)
                        .where(Series.series_instance_uid == series_uid)).scalar()
    return removed if removed is None or removed.tzinfo else removed.replace(tzinfo=timezone.utc)


# -- priors for follow-up comparison (dicomnode.priors) ----------------------------------------------
@dataclass(frozen=True)
class AnalysedPrior:
    """An earlier CT series of the patient the node already analysed: its findings are the `findings`
    rows of `job_id` (FindingRow.job_id == job_id), cached; no network, no new analysis needed."""

    study_instance_uid: str
    series_instance_uid: str
    series_id: int
    job_id: int
    study_date: str
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: str
    series_description: str


def analysed_priors(s: Session, patient_id: str, issuer: str, date_from: str, date_before: str,
                    exclude_study_uid: str) -> list[AnalysedPrior]:
    """The patient's CT series with a finished analysis (job done, not "not_analysed") in studies dated
    from `date_from` up to, not including, `date_before` (YYYYMMDD), most recent study first and, within
    a study, the latest finished job first. The issuer must be the same ("" for none; NULL rows from
    before migration 0012 count as none)."""
    rows = s.execute(
        select(Study.study_instance_uid, Series.series_instance_uid, Series.id, Job.id, Study.study_date,
               Study.patient_id, func.coalesce(Study.issuer_of_patient_id, ""), Study.patient_name,
               func.coalesce(Study.patient_birth_date, ""), Series.series_description)
        .join(Series, Series.study_id == Study.id).join(Job, Job.series_id == Series.id)
        .where(Study.patient_id == patient_id, func.coalesce(Study.issuer_of_patient_id, "") == issuer,
               Study.study_date >= date_from, Study.study_date < date_before, Study.study_date != "",
               Study.study_instance_uid != exclude_study_uid, Series.modality == "CT",
               Job.state == JobState.DONE, func.coalesce(Job.verdict, "") != "not_analysed")
        .order_by(Study.study_date.desc(), Job.finished_at.desc(), Job.id.desc())
    ).all()
    seen: set[str] = set()
    priors: list[AnalysedPrior] = []
    for row in rows:
        if row[0] in seen:
            continue  # one series per study: the latest analysis
        seen.add(row[0])
        priors.append(AnalysedPrior(*row))  # type: ignore[call-arg]  # the select's columns, in field order
    return priors


def prior_job(s: Session, series_id: int) -> int | None:
    """The job that analyses (or analysed) a prior series, so it is analysed at most once: a queued,
    running or done one, the latest first; None when there is none (or only failed ones)."""
    return s.execute(select(Job.id).where(Job.series_id == series_id, Job.state != JobState.FAILED)
                     .order_by(Job.id.desc()).limit(1)).scalar()
