"""The FastAPI application of one node: pages, REST API, /metrics, /health."""
from __future__ import annotations

import secrets
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

import dicomnode
from dicomnode.node import Node
from dicomnode.web import api, pages
from dicomnode.web.auth import Auth, LoginRequired
from dicomnode.web.deps import api_user, page_user
from dicomnode.web.metrics import make_registry, render

SESSION_MAX_AGE_S = 12 * 3600  # one working day; then log in again


def create_app(node: Node) -> FastAPI:
    settings = node.settings.web
    # docs and schema are served below, behind the same login as the API
    app = FastAPI(title="dicomnode", version=getattr(dicomnode, "__version__", "0"), docs_url=None, redoc_url=None,
                  openapi_url=None, description="Lung nodule DICOM node: series, jobs, findings, deliveries, audit events.")
    app.state.node = node
    app.state.auth = Auth(settings, node.db)
    app.state.registry = make_registry(node)
    # without a configured secret, sessions last until the node restarts
    app.add_middleware(SessionMiddleware, secret_key=settings.session_secret or secrets.token_urlsafe(32),
                       session_cookie="dicomnode_session", max_age=SESSION_MAX_AGE_S, same_site="strict",
                       https_only=False)
    app.mount("/static", StaticFiles(directory=str(Path(__file__).with_name("static"))), name="static")
    app.include_router(api.health_router)
    app.include_router(api.router)
    app.include_router(pages.router)

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(api_user)])
    def metrics(request: Request) -> Response:
        return Response(render(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(api_user)])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(page_user)])
    def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="dicomnode API")

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse("/login?" + _query({"next": exc.next_url}), status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # browsers get a page they can read; API clients get JSON
        if request.url.path.startswith(("/api", "/health", "/metrics")) or "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))
        return pages.render(request, "error.html", None, status_code=exc.status_code, status=exc.status_code,
                            detail=exc.detail)

    return app


def _query(params: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode(params)
