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
from dicomnode.web.views import (
    NotFound,
    dashboard_stats,
    destinations,
    finding_json,
    health,
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


@router.get("/series/{series_uid}", summary="One series: jobs, findings of the latest finished job, deliveries, events")
def series_one(series_uid: str, node: Node = Depends(get_node)) -> dict[str, Any]:
    try:
        return series_detail(node, series_uid)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/jobs")
def jobs(f: AuditFilter = Depends(audit_filter), node: Node = Depends(get_node)) -> list[dict[str, Any]]:
    return _query(node, "jobs", f)


@router.get("/findings", summary="Findings; status filters on the Lung-RADS category")
def findings(f: AuditFilter = Depends(audit_filter), node: Node = Depends(get_node)) -> list[dict[str, Any]]:
    return [finding_json(r) for r in _query(node, "findings", f)]  # the fields and shape of analyze --json


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
