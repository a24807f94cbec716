"""Re-running a series from the REST API and from the series page (dicomnode.process.reprocess).

POST /api/series/{uid}/reprocess: logged in or an API token, CSRF token for a browser session;
202 with the queued job, 404 unknown series, 409 source files gone or a job still pending,
422 unknown pipeline. POST /series/{uid}/reprocess: the console's form (CSRF field), back to the
series page. Both audited (SERIES_REPROCESS_REQUESTED) with the user, the client and the pipeline.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from dicomnode.node import Node
from dicomnode.process.reprocess import ReprocessError, ReprocessRequest, ReprocessResult, request_reprocess
from dicomnode.web.auth import Principal, client_host
from dicomnode.web.deps import api_post, get_node, page_post

router = APIRouter()

MAX_PIPELINE = 200  # characters of a pipeline name read from a request


def _queue(node: Node, series_uid: str, pipeline: str | None, user: Principal, request: Request, via: str) -> ReprocessResult:
    name = (pipeline or "").strip()[:MAX_PIPELINE] or None
    req = ReprocessRequest(series_uid=series_uid, pipeline=name, user=user.name, client=client_host(request), via=via)
    try:
        return request_reprocess(node.db, node.spool, node.settings, req)
    except ReprocessError as exc:
        raise HTTPException(exc.status, str(exc)) from None


@router.post("/api/series/{series_uid}/reprocess", tags=["api"], status_code=202,
             summary="Analyse a series again; the new result supersedes the old one (same UIDs: replaced in the PACS)")
def api_reprocess(series_uid: str, request: Request,
                  pipeline: str | None = Query(None, description="pipeline (default: the series' last one)"),
                  user: Principal = Depends(api_post), node: Node = Depends(get_node)) -> JSONResponse:
    result = _queue(node, series_uid, pipeline, user, request, "api")
    body: dict[str, Any] = result.to_json()
    return JSONResponse(body, status_code=202)


@router.post("/series/{series_uid}/reprocess", include_in_schema=False)
def page_reprocess(series_uid: str, request: Request, pipeline: str | None = Form(None),
                   user: Principal = Depends(page_post), node: Node = Depends(get_node)) -> Response:
    result = _queue(node, series_uid, pipeline, user, request, "console")
    target = f"/series/{quote(series_uid, safe='')}?" + urlencode({"reprocessed": result.job_id})
    return RedirectResponse(target, status_code=303)
