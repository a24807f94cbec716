"""REST API under /api (OpenAPI docs at /docs) and /health."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from dicomnode.node import Node
from dicomnode.web.auth import Principal, client_host, csrf_token
from dicomnode.web.deps import api_post, api_user, get_node
from dicomnode.web.echo import UnknownDestination, echo_destination
from dicomnode.web.receive import receive_upload
from dicomnode.web.timeline import series_timeline, timeline
from dicomnode.web.views import (
    NotFound,
    attach_comparisons,
    dashboard_stats,
    destinations,
    finding_json,
    health,
    job_json,
    list_series,
    series_detail,
)
from storage.queries import AuditFilter, nodes, parse_since, run_query

router = APIRouter(prefix="/api", tags=["api"], dependencies=[Depends(api_user)])
health_router = APIRouter(tags=["health"])


def audit_filter(since: str | None = Query(None, description="age (30m, 2h, 7d) or ISO date/time"),
                 status: str | None = Query(None, description="state / status / level to match"),
                 series: str | None = Query(None, description="SeriesInstanceUID or a prefix"),
                 limit: int = Query(200, ge=1, le=10000)) -> AuditFilter:
    try:
        return AuditFilter(parse_since(since) if since else None, status or None, series or None, limit)
    except (ValueError, OverflowError) as exc:  # since=99999999999999d overflows the date arithmetic
        raise HTTPException(422, f"since: {exc}") from None


def _query(node: Node, subject: str, f: AuditFilter) -> list[dict[str, Any]]:
    with node.db.session() as s:
        return run_query(s, subject, f)


@router.get("/nodes", summary="Nodes sharing the audit database: state (running, silent, stopped), heartbeat age, "
            "jobs running, deliveries sending, engine, host, version")
def node_list(node: Node = Depends(get_node)) -> list[dict[str, Any]]:
    with node.db.session() as s:
        return nodes(s, AuditFilter(limit=1000), node.settings.node.lease_s)


@router.get("/session", summary="Who is calling, and the CSRF token for POSTs from a browser session")
def session_info(request: Request, user: Principal = Depends(api_user)) -> dict[str, Any]:
    return {"user": user.name, "via": user.via, "csrf_token": csrf_token(request)}


@router.get("/stats", summary="Dashboard numbers: today's traffic, queue, jobs, deliveries, disk, model")
def stats(node: Node = Depends(get_node)) -> dict[str, Any]:
    return dashboard_stats(node)


@router.get("/destinations", summary="Health of each destination: pending, oldest pending age, last success and error")
def destination_list(node: Node = Depends(get_node)) -> list[dict[str, Any]]:
    return destinations(node)


@router.post("/destinations/{name}/echo", summary="C-ECHO a configured destination (audited as DESTINATION_ECHO)")
def destination_echo(name: str, request: Request, user: Principal = Depends(api_post),
                     node: Node = Depends(get_node)) -> dict[str, Any]:
    try:
        result = echo_destination(node.settings, node.db, name, user.name, client_host(request))
    except UnknownDestination as exc:
        raise HTTPException(404, str(exc)) from None
    return asdict(result)


@router.get("/series", summary="Series, newest first, with the state of their latest job")
def series_list(f: AuditFilter = Depends(audit_filter), node: Node = Depends(get_node)) -> list[dict[str, Any]]:
    return list_series(node, f)


COMPARISON_DOC = """With a prior exam (issue 12) each finding has `tracking_uid` (its SR TID 1500 Tracking UID, the
matched prior nodule's) and `comparison`, as in `dicomnode analyze CURRENT --prior PRIOR --json`: `status` (new,
growing, stable or shrinking), `prior` ({finding_id, index, center_mm, mean_diameter_mm, volume_mm3, type, lung_rads}
of the matched prior nodule, or null for a new one), `interval_days`, `volume_change_pct`, `doubling_time_days` (null:
not growing), `diameter_change_mm`, `lung_rads_growth` (mean diameter up > 1.5 mm in 12 months), `lung_rads` and
`lung_rads_reasons` (the follow-up category); `comparison` is null when the job made no comparison."""
SERIES_DOC = COMPARISON_DOC + """

The series (and each job) also has `comparison`: the exam-level comparison ({performed, reason,
prior_study_instance_uid, prior_series_instance_uid, prior_study_date, interval_days, registration, lung_rads,
recommendation, lung_rads_reason, prior_series_known}, or {performed: false, reason: "prior not available: ..."}),
null for a job that looked for no prior; and `resolved`: the prior nodules not found again ({prior_index, center_mm,
mean_diameter_mm, volume_mm3, type, lung_rads, status: "resolved"})."""
TIMELINE_DOC = """Every analysed exam of the patient (series with a finished job; same PatientID and IssuerOfPatientID),
oldest first, undated last: study date and UIDs, series, the job's verdict, the exam Lung-RADS (the follow-up
category when a prior was compared), the number of nodules, the comparison ({performed, reason,
prior_study_instance_uid, statuses: {new, growing, stable, shrinking, resolved: count}} or null) and
`identity_mismatch`: ["PatientName differs", "PatientBirthDate differs"] when that exam's name or birth date is not
the reference exam's (the series asked about; for /api/timeline the newest study), [] when they agree."""


@router.get("/series/{series_uid}", summary="One series: jobs, findings of the latest finished job, the comparison "
            "with the prior exam, deliveries, events", description=SERIES_DOC)
def series_one(series_uid: str, node: Node = Depends(get_node)) -> dict[str, Any]:
    try:
        return series_detail(node, series_uid)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/series/{series_uid}/timeline", summary="The patient timeline of this series' patient",
            description=TIMELINE_DOC + " Without a PatientID only this series is listed; `current` marks it.")
def series_timeline_one(series_uid: str, node: Node = Depends(get_node)) -> dict[str, Any]:
    try:
        return series_timeline(node, series_uid)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/timeline", summary="The patient timeline: every analysed exam of one patient, oldest first",
            description=TIMELINE_DOC)
def patient_timeline(patient_id: str = Query(..., min_length=1, max_length=64, description="PatientID"),
                     issuer: str = Query("", max_length=64, description="IssuerOfPatientID; empty for none"),
                     node: Node = Depends(get_node)) -> dict[str, Any]:
    try:
        return timeline(node, patient_id, issuer)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/jobs", summary="Jobs, newest first, each with its summary, `comparison` and `resolved`")
def jobs(f: AuditFilter = Depends(audit_filter), node: Node = Depends(get_node)) -> list[dict[str, Any]]:
    return [job_json(j) for j in _query(node, "jobs", f)]


@router.get("/findings", summary="Findings; status filters on the Lung-RADS category", description=COMPARISON_DOC)
def findings(f: AuditFilter = Depends(audit_filter), node: Node = Depends(get_node)) -> list[dict[str, Any]]:
    with node.db.session() as s:  # the fields and shape of analyze --json
        return attach_comparisons(s, [finding_json(r) for r in run_query(s, "findings", f)])


@router.get("/deliveries")
def deliveries(f: AuditFilter = Depends(audit_filter), node: Node = Depends(get_node)) -> list[dict[str, Any]]:
    return _query(node, "deliveries", f)


@router.get("/dead-letters")
def dead_letters(f: AuditFilter = Depends(audit_filter), node: Node = Depends(get_node)) -> list[dict[str, Any]]:
    return _query(node, "dead-letters", f)


@router.get("/events", summary="Audit events; status filters on the level or the event name")
def events(f: AuditFilter = Depends(audit_filter), node: Node = Depends(get_node)) -> list[dict[str, Any]]:
    return _query(node, "events", f)


@router.post("/dead-letters/retry", summary="Re-send every dead letter")
def retry_all(request: Request, user: Principal = Depends(api_post), node: Node = Depends(get_node)) -> dict[str, Any]:
    return {"requeued": node.retry_deliveries(user.name, client_host(request), None)}


@router.post("/dead-letters/{delivery_id}/retry", summary="Re-send one delivery (dead, pending or delivered)")
def retry_one(delivery_id: int, request: Request, user: Principal = Depends(api_post),
              node: Node = Depends(get_node)) -> dict[str, Any]:
    ids = node.retry_deliveries(user.name, client_host(request), delivery_id)
    if not ids:
        raise HTTPException(404, f"no delivery {delivery_id} that can be re-sent")
    return {"requeued": ids}


# the body is described here rather than declared as parameters: FastAPI reads a declared body
# before the dependencies run, i.e. before it knows who is calling
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"],
    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}


@router.post("/upload", summary="DICOM files or zips, ingested as if received by C-STORE", openapi_extra=UPLOAD_BODY)
async def upload(request: Request, user: Principal = Depends(api_user), node: Node = Depends(get_node)) -> dict[str, Any]:
    """Multipart field `files`; a browser session sends X-CSRF-Token (or a csrf_token field first)."""
    return (await receive_upload(request, user, node)).to_json()


@health_router.get("/health", summary="Readiness: database, spool disk space, model engine (503 when not ready)")
def health_ready(node: Node = Depends(get_node)) -> JSONResponse:
    report = health(node)
    return JSONResponse(report, status_code=200 if report["ready"] else 503)


@health_router.get("/health/live", summary="Liveness: the web server answers")
def health_live() -> dict[str, bool]:
    return {"live": True}
