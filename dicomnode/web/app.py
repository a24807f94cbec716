"""The FastAPI application of one node: pages, REST API, /metrics, /health."""
from __future__ import annotations

import secrets
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

import fastapi_offline

import dicomnode
from dicomnode.node import Node
from dicomnode.web import api, pages
from dicomnode.web import reprocess as reprocess_routes
from dicomnode.web import stow
from dicomnode.web.auth import Auth, LoginRequired
from dicomnode.web.deps import api_user, page_user
from dicomnode.web.guard import Guard
from dicomnode.web.metrics import make_registry, render
from dicomnode.web.sessions import MAX_LIFETIME
from dicomnode.web.upload import clear_temp_root

SESSION_MAX_AGE_S = int(MAX_LIFETIME.total_seconds())  # the cookie; the server-side session decides
MAX_ERROR_DETAIL = 300  # characters of an error message echoed back (it may quote the request)


def create_app(node: Node) -> FastAPI:
    settings = node.settings.web
    # docs and schema are served below, behind the same login as the API
    app = FastAPI(title="dicomnode", version=dicomnode.__version__, docs_url=None, redoc_url=None,
                  openapi_url=None, description="Lung nodule DICOM node: series, jobs, findings, deliveries, audit events.")
    app.state.node = node
    app.state.auth = Auth(settings, node.db)
    app.state.registry = make_registry(node)
    clear_temp_root(node)
    # the cookie holds only the CSRF token and a session id; who is logged in is decided server-side
    # (dicomnode.web.sessions). Without a configured secret the cookies last until the node restarts.
    app.add_middleware(SessionMiddleware, secret_key=settings.session_secret or secrets.token_urlsafe(32),
                       session_cookie="dicomnode_session", max_age=SESSION_MAX_AGE_S, same_site="strict",
                       https_only=settings.tls_cert_file is not None or settings.secure_cookies)
    # outermost: Host allow-list and body limits before anything else runs, headers on every answer
    app.add_middleware(Guard, settings=settings, audit=app.state.auth.audit, check_host=not app.state.auth.required)
    app.mount("/static", StaticFiles(directory=str(Path(__file__).with_name("static"))), name="static")
    # Swagger UI from an installed package (fastapi-offline ships swagger-ui 5, which reads OpenAPI 3.1),
    # never from a CDN at a floating version
    app.mount("/docs/assets", StaticFiles(directory=str(Path(fastapi_offline.__file__).with_name("static"))),
              name="docs-assets")
    app.include_router(api.health_router)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.include_router(reprocess_routes.router)
    app.include_router(stow.router)  # DICOMweb STOW-RS

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(api_user)])
    def metrics(request: Request) -> Response:
        return Response(render(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(api_user)])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(page_user)])
    def docs(request: Request) -> Response:
        return pages.TEMPLATES.TemplateResponse(request, "docs.html", {})

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse("/login?" + _query({"next": exc.next_url}), status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # browsers get a page they can read; API clients get JSON
        detail = exc.detail if len(str(exc.detail)) <= MAX_ERROR_DETAIL else str(exc.detail)[:MAX_ERROR_DETAIL] + "…"
        if request.url.path.startswith(("/api", "/health", "/metrics")) or "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))
        return pages.render(request, "error.html", None, status_code=exc.status_code, status=exc.status_code,
                            detail=detail)

    return app


def _query(params: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode(params)
