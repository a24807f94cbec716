"""The outermost layer of the console: Host allow-list, request body limits, security headers.

A plain ASGI middleware, so it sees every request before routing (and before any body is read) and
every response (error pages and static files included).
"""
from __future__ import annotations

import json
from collections.abc import Iterable

from anyio import to_thread
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomnode.config import WebSettings
from dicomnode.web.throttle import RateLimitedAudit
from storage.events import EventCode

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# routes whose body may be as large as web.max_upload_mb; everything else gets web.max_request_kb
UPLOAD_PATHS = frozenset({"/upload", "/api/upload"})
STOW_PREFIX = "/dicom-web/studies"  # STOW-RS (dicomnode.web.stow): an upload too


def is_upload(path: str) -> bool:
    return path in UPLOAD_PATHS or path == STOW_PREFIX or path.startswith(STOW_PREFIX + "/")
# no inline script anywhere (the templates load theirs from /static); Swagger UI sets inline styles
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
# assets that carry no patient data and may be cached
CACHEABLE_PREFIXES = ("/static/", "/docs/assets/")


class BodyTooLarge(HTTPException):
    """Raised while the body streams in, as soon as it passes the limit (whatever Content-Length said)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than the limit of {_size(limit)}")
        self.limit = limit


def _size(n: int) -> str:
    return f"{n >> 20} MB" if n >= 2**20 else f"{n >> 10} KB"


def allowed_hosts(settings: WebSettings) -> frozenset[str]:
    names = settings.allowed_hostnames or [*LOOPBACK_NAMES, settings.host]
    return frozenset(n.strip().lower().strip("[]") for n in names if n.strip())


def host_name(header: str) -> str:
    """The name part of a Host header: 'a.b:8080' -> 'a.b', '[::1]:80' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") > 1:  # a bare IPv6 address (not valid in Host, but harmless to read)
        return header
    return header.partition(":")[0].rstrip(".")


def security_headers(path: str, tls: bool) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY"),
               (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
               (b"cross-origin-opener-policy", b"same-origin")]
    if not path.startswith(CACHEABLE_PREFIXES):
        headers.append((b"cache-control", b"no-store"))  # pages and API answers carry patient data
    if tls:
        headers.append((b"strict-transport-security", b"max-age=31536000"))
    return headers


class Guard:
    def __init__(self, app: ASGIApp, settings: WebSettings, audit: RateLimitedAudit, check_host: bool) -> None:
        self.app = app
        self.hosts = allowed_hosts(settings)
        self.check_host = check_host or bool(settings.allowed_hostnames)
        self.max_upload = settings.max_upload_mb * 2**20
        self.max_request = settings.max_request_kb * 2**10
        self.tls = settings.tls_cert_file is not None or settings.secure_cookies
        self.audit = audit

    def limit_for(self, path: str) -> int:
        return self.max_upload if is_upload(path) else self.max_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        extra = security_headers(path, self.tls)
        headers = Headers(scope=scope)
        client = scope["client"][0] if scope.get("client") else "unknown"
        if self.check_host and host_name(headers.get("host", "")) not in self.hosts:
            await self._refused("host", client, f"request for Host {headers.get('host', '')[:100]!r} refused from {client}"
                          " (not in web.allowed_hostnames)", {"host": headers.get("host", "")[:100]})
            await _plain(send, 421, "unknown Host header: this console answers only to the names in "
                                    "web.allowed_hostnames", extra)
            return
        limit = self.limit_for(path)
        declared = _content_length(headers)
        if declared is not None and declared > limit and not is_upload(path):
            # uploads check the declared length themselves, after authentication, and audit it as an upload
            await self._refused("body", client, f"{declared} byte request to {path[:100]} refused from {client}"
                          f" (limit {_size(limit)})", {"path": path[:100], "declared": declared})
            await _plain(send, 413, f"request body larger than the limit of {_size(limit)}", extra)
            return
        await self._guarded(scope, receive, send, path, client, limit, extra)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, path: str, client: str, limit: int,
                       extra: list[tuple[bytes, bytes]]) -> None:
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if not is_upload(path):  # uploads are audited as UPLOAD_REJECTED by their route
                        await self._refused("body", client, f"request to {path[:100]} from {client} stopped at"
                                            f" {_size(limit)} (the body limit)", {"path": path[:100]})
                    raise BodyTooLarge(limit)
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": _merge(message.get("headers", []), extra)}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except BodyTooLarge as exc:  # read by code that did not turn it into a response itself
            if not started:
                await _plain(send, 413, str(exc.detail), extra)

    async def _refused(self, reason: str, client: str, message: str, details: dict) -> None:
        # decided on the event loop (no I/O); only the rare row that is written goes to a thread
        suppressed = self.audit.admit(f"refused:{reason}:{client}")
        if suppressed is not None:
            await to_thread.run_sync(self.audit.write, EventCode.WEB_REQUEST_REFUSED, message,
                                     {"reason": reason, "client": client, **details}, suppressed)


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _merge(headers: Iterable[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The response's own headers win (a page may set its own Cache-Control); ours fill the rest."""
    merged = list(headers)
    present = {name.lower() for name, _ in merged}
    merged.extend((name, value) for name, value in extra if name not in present)
    return merged


async def _plain(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
