"""Server-rendered console pages (Jinja templates, no front-end build)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Path as PathParam, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from dicomnode.core.sizes import human_bytes

from dicomnode.node import Node
from dicomnode.web.auth import SESSION_CSRF, Auth, Principal, client_host, csrf_token
from dicomnode.web.deps import get_auth, get_node, page_post, page_user
from dicomnode.web.echo import UnknownDestination, echo_destination
from dicomnode.web.report import (
    COMPARISON_COLUMNS,
    RESOLVED_COLUMNS,
    build_pdf,
    comparison_cells,
    comparison_rows,
    report_context,
    resolved_cells,
)
from dicomnode.web.receive import receive_upload
from dicomnode.web.story import series_story
from dicomnode.web.tables import cell, short_uid, table_rows
from dicomnode.web.overlays import dicom_date, overlay_images, overlay_png
from dicomnode.web.timeline import series_timeline
from dicomnode.web.views import NotFound, dashboard_stats, list_series, series_detail
from inference.findings import lesion_type_words
from storage.audit_subjects import AUDIT_SUBJECTS
from storage.queries import (
    AuditFilter,
    audit_row,
    echo_event,
    nodes,
    parse_since,
    run_query,
    series_events,
)
from storage.states import SeriesState

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
SERIES_STATUSES = tuple(SeriesState)
router = APIRouter(include_in_schema=False)
MAX_ROW_ID = 2**63 - 1  # SQL integers: a larger id in a URL is a 422, not a driver overflow


def _bytes(value: float | None) -> str:
    return "" if value is None else human_bytes(value)


TEMPLATES.env.filters["bytes"] = _bytes
TEMPLATES.env.filters["urlquote"] = lambda v: quote(str(v), safe="")
TEMPLATES.env.filters["short_uid"] = short_uid
# the comparison with the prior exam: the same cells in the console, the HTML report and the PDF
TEMPLATES.env.filters["dicom_date"] = dicom_date
TEMPLATES.env.filters["comparison_rows"] = comparison_rows
TEMPLATES.env.filters["lesion_type"] = lambda f: lesion_type_words(f.get("type"), f.get("cyst"), f.get("airway"))
TEMPLATES.env.filters["comparison_cells"] = comparison_cells
TEMPLATES.env.filters["resolved_cells"] = resolved_cells
TEMPLATES.env.globals["comparison_columns"] = COMPARISON_COLUMNS
TEMPLATES.env.globals["resolved_columns"] = RESOLVED_COLUMNS


def _age(seconds: float | None) -> str:
    """'45 s', '12 min', '3.5 h', '2.0 d': the age of the oldest pending delivery."""
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 172800 else f"{seconds / 86400:.1f} d"


TEMPLATES.env.filters["age"] = _age
TEMPLATES.env.filters["cell"] = lambda value, column: cell(column, value)


def render(request: Request, name: str, user: Principal | None, status_code: int = 200, **context: Any) -> HTMLResponse:
    auth: Auth = request.app.state.auth
    return TEMPLATES.TemplateResponse(request, name, {
        "user": user, "csrf_token": csrf_token(request), "login_required": auth.required,
        "ae_title": request.app.state.node.settings.node.ae_title, **context,
    }, status_code=status_code)


def _filter(since: str | None, status: str | None, series: str | None, limit: int = 200) -> tuple[AuditFilter, str | None]:
    try:
        return AuditFilter(parse_since(since) if since else None, status or None, series or None, limit), None
    except (ValueError, OverflowError) as exc:  # since=99999999999999d overflows the date arithmetic
        return AuditFilter(None, status or None, series or None, limit), str(exc)


# -- login ---------------------------------------------------------------------------
@router.get("/login")
def login_form(request: Request, next: str = "/", auth: Auth = Depends(get_auth)) -> Response:
    return render(request, "login.html", None, next=_safe_next(next), error=None, has_users=auth.has_users())


def _safe_next(target: str) -> str:
    # only local paths: an attacker's link must not bounce a fresh login to another site. Browsers
    # read "/\\host" as "//host", and drop tabs and newlines, so those are refused too.
    if not target.startswith("/") or target.startswith("//") or any(c in target for c in "\\\t\r\n"):
        return "/"
    return target[:2000]


MAX_LOGIN_FIELD = 256  # characters of a user name or password read; longer ones cannot match


@router.post("/login")
async def login(request: Request, auth: Auth = Depends(get_auth)) -> Response:
    form = await request.form()  # urlencoded and small: the guard holds it to web.max_request_kb
    expected = request.session.get(SESSION_CSRF)
    if not expected or form.get("csrf_token") != expected:
        raise HTTPException(403, "missing or wrong CSRF token: reload the login page and try again")
    username = str(form.get("username", ""))[:MAX_LOGIN_FIELD]
    password = str(form.get("password", ""))[:MAX_LOGIN_FIELD]
    target = _safe_next(str(form.get("next", "/")))
    result = await auth.login(request, username, password)
    if result.ok:
        return RedirectResponse(target, status_code=303)
    has_users = await run_in_threadpool(auth.has_users)  # a DB query: not on the event loop
    if result.retry_after_s is not None:
        response = render(request, "login.html", None, status_code=429, next=target, has_users=has_users,
                          error=f"Too many failed logins from this address or for this user: try again in"
                                f" {result.retry_after_s} s.")
        response.headers["Retry-After"] = str(result.retry_after_s)
        return response
    return render(request, "login.html", None, status_code=401, next=target, error="Wrong user name or password.",
                  has_users=has_users)


@router.post("/logout")
def logout(request: Request, user: Principal = Depends(page_post), auth: Auth = Depends(get_auth)) -> Response:
    auth.logout(request)  # revokes the server-side session: the old cookie is worthless from now on
    return RedirectResponse("/login", status_code=303)


# -- dashboard and series -------------------------------------------------------------
@router.get("/")
def dashboard(request: Request, echo: str | None = None, user: Principal = Depends(page_user),
              node: Node = Depends(get_node)) -> Response:
    recent = list_series(node, AuditFilter(limit=10))
    return render(request, "dashboard.html", user, stats=dashboard_stats(node), recent=recent,
                  refresh_s=node.settings.web.dashboard_refresh_s, echo=_last_echo(node, echo))


def _last_echo(node: Node, event_id: str | None) -> dict[str, Any] | None:
    """The DESTINATION_ECHO row an echo redirect points to, for the page's status line."""
    if not event_id or not event_id.isdigit() or int(event_id) > MAX_ROW_ID:
        return None
    with node.db.session() as s:
        return echo_event(s, int(event_id))


@router.post("/destinations/{name}/echo")
def destination_echo(name: str, request: Request, user: Principal = Depends(page_post),
                     node: Node = Depends(get_node)) -> Response:
    try:
        result = echo_destination(node.settings, node.db, name, user.name, client_host(request))
    except UnknownDestination as exc:
        raise HTTPException(404, str(exc)) from None
    # the dashboard shows the result from its audit row (a reload shows the same, a forged id nothing new)
    return RedirectResponse("/?" + urlencode({"echo": result.event_id or ""}) + "#destinations", status_code=303)


@router.get("/series")
def series_page(request: Request, status: str | None = None, since: str | None = None, series: str | None = None,
                user: Principal = Depends(page_user), node: Node = Depends(get_node)) -> Response:
    f, error = _filter(since, status, series)
    return render(request, "series_list.html", user, rows=list_series(node, f), statuses=SERIES_STATUSES,
                  status=status or "", since=since or "", series=series or "", error=error)


def _detail(node: Node, series_uid: str) -> dict[str, Any]:
    try:
        return series_detail(node, series_uid)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/series/{series_uid}")
def series_one(series_uid: str, request: Request, page: int = Query(1, ge=1, le=MAX_ROW_ID),
               user: Principal = Depends(page_user), node: Node = Depends(get_node)) -> Response:
    detail = _detail(node, series_uid)
    with node.db.session() as s:
        story = series_story(series_events(s, series_uid), page)
    return render(request, "series.html", user, **detail, images=overlay_images(node, series_uid, detail),
                  story=story, timeline=series_timeline(node, series_uid))


@router.get("/series/{series_uid}/overlay/{key}.png")
def overlay(series_uid: str, key: str, user: Principal = Depends(page_user), node: Node = Depends(get_node)) -> Response:
    try:
        png = overlay_png(node, series_uid, key)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})  # a patient image


@router.get("/series/{series_uid}/report")
def report_html(series_uid: str, request: Request, user: Principal = Depends(page_user),
                node: Node = Depends(get_node)) -> Response:
    _detail(node, series_uid)
    return render(request, "report.html", user, **report_context(node, series_uid))


@router.get("/series/{series_uid}/report.pdf")
def report_pdf(series_uid: str, user: Principal = Depends(page_user), node: Node = Depends(get_node)) -> Response:
    _detail(node, series_uid)
    return Response(build_pdf(node, series_uid), media_type="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="report-{_file_safe(series_uid)}.pdf"'})


def _file_safe(text: str) -> str:
    # a header value: only what a UID may hold
    return re.sub(r"[^0-9A-Za-z.-]", "_", text)[:64]


# -- audit, dead letters, upload -------------------------------------------------------
@router.get("/audit")
def audit(request: Request, subject: str = "events", since: str | None = None, status: str | None = None,
          series: str | None = None, limit: int = 200, user: Principal = Depends(page_user),
          node: Node = Depends(get_node)) -> Response:
    if subject not in AUDIT_SUBJECTS:
        raise HTTPException(404, f"unknown audit subject {subject!r}; choose from {', '.join(AUDIT_SUBJECTS)}")
    f, error = _filter(since, status, series, max(1, min(limit, 5000)))
    with node.db.session() as s:
        rows = run_query(s, subject, f) if error is None else []
    # a few short columns, narrow enough for a window; every field is on the row's page and in the API
    columns, table = table_rows(subject, rows)
    return render(request, "audit.html", user, rows=table, columns=columns, subjects=AUDIT_SUBJECTS, subject=subject,
                  since=since or "", status=status or "", series=series or "", limit=f.limit, error=error)


@router.get("/audit/{subject}/{row_id}")
def audit_one(subject: str, request: Request, row_id: int = PathParam(ge=0, le=MAX_ROW_ID),
              user: Principal = Depends(page_user), node: Node = Depends(get_node)) -> Response:
    if subject not in AUDIT_SUBJECTS:
        raise HTTPException(404, f"unknown audit subject {subject!r}; choose from {', '.join(AUDIT_SUBJECTS)}")
    with node.db.session() as s:
        row = audit_row(s, subject, row_id)
    if row is None:
        raise HTTPException(404, f"no {subject} row {row_id}")
    fields = [(k, json.dumps(v, indent=2, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in row.items()]
    return render(request, "audit_row.html", user, subject=subject, row_id=row_id, fields=fields,
                  series_uid=row.get("series_instance_uid"))


@router.get("/nodes")
def nodes_page(request: Request, user: Principal = Depends(page_user), node: Node = Depends(get_node)) -> Response:
    """Every node sharing the audit database: heartbeat, the work it holds, engine, version."""
    lease_s = node.settings.node.lease_s
    with node.db.session() as s:
        rows = nodes(s, AuditFilter(limit=1000), lease_s)
    return render(request, "nodes.html", user, rows=rows, this_node=node.node_id, lease_s=lease_s)


@router.get("/dead-letters")
def dead_letters(request: Request, retried: str | None = None, user: Principal = Depends(page_user),
                 node: Node = Depends(get_node)) -> Response:
    with node.db.session() as s:
        rows = run_query(s, "dead-letters", AuditFilter(limit=1000))
    return render(request, "dead_letters.html", user, rows=rows, retried=retried)


@router.post("/dead-letters/retry")
def dead_letters_retry(request: Request, delivery_id: int | None = Form(None), user: Principal = Depends(page_post),
                       node: Node = Depends(get_node)) -> Response:
    ids = node.retry_deliveries(user.name, client_host(request), delivery_id)
    return RedirectResponse("/dead-letters?" + urlencode({"retried": ",".join(map(str, ids)) or "none"}), status_code=303)


@router.get("/upload")
def upload_form(request: Request, user: Principal = Depends(page_user)) -> Response:
    return render(request, "upload.html", user, result=None)


@router.post("/upload")
async def upload(request: Request, user: Principal = Depends(page_user), node: Node = Depends(get_node)) -> Response:
    result = await receive_upload(request, user, node)  # checks the CSRF token before any file is written
    return render(request, "upload.html", user, result=result)
