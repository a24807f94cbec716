"""Who may use the console: sessions for people, bearer tokens for scripts, CSRF on every POST.

A console bound to a loopback address is open (only local users reach it) unless
`web.require_login` is set; on any other address a login or an API token is required.
Every login attempt is audited. Logins are sessions in the audit database (dicomnode.web.sessions),
so logout revokes them; password checks run in a small thread pool, behind a throttle
(dicomnode.web.throttle), so neither brute force nor a flood of logins stalls the console.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from datetime import timedelta

from anyio import CapacityLimiter, to_thread
from fastapi import HTTPException, Request
from sqlalchemy import delete, select

from dicomnode.config import WebSettings
from dicomnode.core.passwords import token_label, token_matches, verify_password
from dicomnode.web.sessions import SessionStore
from dicomnode.web.throttle import LoginThrottle, RateLimitedAudit, Refusal
from storage.audit import record_event
from storage.db import Database
from storage.events import EventCode
from storage.models import User, WebSession

SESSION_ID = "sid"  # the random id of a server-side session (dicomnode.web.sessions)
SESSION_CSRF = "csrf"
# a request the page makes by itself (dashboard refresh): not activity for the session idle timeout
BACKGROUND_HEADER = "x-dicomnode-background"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
# a syntactically valid hash that never matches: failed logins for unknown users cost the same time
# password checks waiting for a thread beyond this are refused at once (429): a flood from many
# addresses must not queue minutes of hashing
MAX_WAITING_CHECKS = 32
_DUMMY_HASH = "pbkdf2_sha256$390000$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Principal:
    name: str
    via: str  # "session", "token" or "open" (no login required)


@dataclass(frozen=True)
class LoginResult:
    ok: bool
    retry_after_s: int | None = None  # set when the attempt was throttled (not checked at all)


class LoginRequired(Exception):
    """Raised by page dependencies; the app turns it into a redirect to /login."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


class Auth:
    def __init__(self, settings: WebSettings, db: Database) -> None:
        self.db = db
        self.required = settings.require_login or not is_loopback(settings.host)
        self.tokens = [t for t in settings.api_tokens if t]
        self.sessions = SessionStore(db, idle=timedelta(minutes=settings.session_idle_minutes))
        self.throttle = LoginThrottle(settings.login_client_failures, settings.login_user_failures,
                                      settings.login_max_delay_s)
        self.audit = RateLimitedAudit(db)
        # PBKDF2 releases the GIL: at most half the cores hash, the event loop keeps the rest
        self.hash_threads = max(1, (os.cpu_count() or 2) // 2)
        self._limiter: CapacityLimiter | None = None  # made on first use, inside the event loop
        self._checks = 0  # password checks running or waiting for a thread
        self.sync_users(settings.users)

    def sync_users(self, users: dict[str, str]) -> None:
        """Config-file users win over the table: a changed hash in node.toml takes effect on start."""
        with self.db.session() as s:
            for name, encoded in users.items():
                row = s.execute(select(User).where(User.username == name)).scalar_one_or_none()
                if row is None:
                    s.add(User(username=name, password_hash=encoded))
                elif row.password_hash != encoded:
                    row.password_hash = encoded
                    # a changed password ends the sessions opened with the old one
                    s.execute(delete(WebSession).where(WebSession.username == name))

    def has_users(self) -> bool:
        with self.db.session() as s:
            return s.execute(select(User.id).limit(1)).first() is not None

    # -- checks --------------------------------------------------------------------
    def token_principal(self, request: Request) -> Principal | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        # one constant-time comparison for hashed ("sha256$…") and older plain-text tokens alike
        known = token_matches(token.strip(), self.tokens)
        if known is not None:
            return Principal(token_label(known), "token")
        raise HTTPException(401, "invalid API token", headers={"WWW-Authenticate": "Bearer"})

    def principal(self, request: Request) -> Principal | None:
        by_token = self.token_principal(request)
        if by_token is not None:
            return by_token
        # the dashboard's background refresh says so: it is not a user's activity
        background = request.headers.get(BACKGROUND_HEADER) == "1"
        user = self.sessions.user(str(request.session.get(SESSION_ID, "")), touch=not background)
        if user:
            return Principal(user, "session")
        if not self.required:
            return Principal("local", "open")
        return None

    async def login(self, request: Request, username: str, password: str) -> LoginResult:
        """Check a password off the event loop, unless the client or user is throttled (then at once)."""
        client = client_host(request)
        if self._checks >= MAX_WAITING_CHECKS + self.hash_threads:
            return await self._busy(client)
        admitted = self.throttle.admit(client, username)
        if isinstance(admitted, Refusal):
            if admitted.audit:
                await to_thread.run_sync(self._audit_throttled, admitted, client, username)
            return LoginResult(False, admitted.retry_after_s)
        ok = False
        try:
            if self._limiter is None:
                self._limiter = CapacityLimiter(self.hash_threads)
            self._checks += 1
            try:
                ok = await to_thread.run_sync(self._check_password, username, password, client, limiter=self._limiter)
            finally:
                self._checks -= 1
        finally:
            self.throttle.finished(admitted, ok)
        if ok:
            token = await to_thread.run_sync(self.sessions.create, username, client)
            request.session.clear()  # a fresh session id and CSRF token after login: no fixation
            request.session[SESSION_ID] = token
            csrf_token(request)
        return LoginResult(ok)

    def _check_password(self, username: str, password: str, client: str) -> bool:
        """Blocking: PBKDF2 and an audit row. Runs in a worker thread."""
        with self.db.session() as s:
            row = s.execute(select(User).where(User.username == username)).scalar_one_or_none()
            ok = verify_password(password, row.password_hash if row else _DUMMY_HASH) and row is not None
            if ok:
                record_event(s, EventCode.ADMIN_LOGIN, f"{username} logged in from {client}",
                             details={"user": username, "client": client})
            else:
                record_event(s, EventCode.ADMIN_LOGIN_FAILED, f"failed login for {username[:64]!r} from {client}",
                             details={"user": username[:64], "client": client})
        return ok

    def _audit_throttled(self, refusal: Refusal, client: str, username: str) -> None:
        who = f"client {refusal.key}" if refusal.kind == "client" else f"user {refusal.key!r}"
        message = (f"logins for {who} throttled after {refusal.failures} failed attempt(s)"
                   f" ({refusal.checking} more being checked): refused for {refusal.retry_after_s} s"
                   " without checking the password")
        if refusal.refused_before:
            message += f"; {refusal.refused_before} attempt(s) refused in the previous delay"
        with self.db.session() as s:
            record_event(s, EventCode.ADMIN_LOGIN_THROTTLED, message,
                         details={"by": refusal.kind, "key": refusal.key, "client": client, "user": username[:64],
                                  "failures": refusal.failures, "checking": refusal.checking, "retry_after_s": refusal.retry_after_s,
                                  "refused_before": refusal.refused_before})

    async def _busy(self, client: str) -> LoginResult:
        suppressed = self.audit.admit("login-busy")
        if suppressed is not None:
            await to_thread.run_sync(self.audit.write, EventCode.ADMIN_LOGIN_THROTTLED,
                                     f"login from {client} refused: {MAX_WAITING_CHECKS} password checks already"
                                     " waiting", {"by": "load", "client": client}, suppressed)
        return LoginResult(False, 1)

    def logout(self, request: Request) -> str | None:
        """Revoke the session (blocking: call from a worker thread); audited as ADMIN_LOGOUT."""
        user = self.sessions.revoke(str(request.session.get(SESSION_ID, "")))
        request.session.clear()
        if user is not None:
            client = client_host(request)
            with self.db.session() as s:
                record_event(s, EventCode.ADMIN_LOGOUT, f"{user} logged out from {client}",
                             details={"user": user, "client": client})
        return user


def client_host(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def csrf_token(request: Request) -> str:
    token = request.session.get(SESSION_CSRF)
    if not token:
        token = secrets.token_urlsafe(32)
        request.session[SESSION_CSRF] = token
    return str(token)


async def check_csrf(request: Request, principal: Principal, form_value: str | None = None) -> None:
    """Token-authenticated calls carry no cookie, so they cannot be forged cross-site.

    The token comes in the X-CSRF-Token header, or as the csrf_token field of a form: `form_value`
    when the caller parsed the form itself (uploads), else the (small, size-limited) form is read here.
    """
    if principal.via == "token":
        return
    sent = request.headers.get(CSRF_HEADER) or form_value
    if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()  # starlette caches it; the endpoint reads the same form
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    verify_csrf(request, principal, sent)


def verify_csrf(request: Request, principal: Principal, sent: str | None) -> None:
    """Compare a sent CSRF token with the session's (no I/O: safe inside a body parser callback)."""
    if principal.via == "token":
        return
    expected = request.session.get(SESSION_CSRF)
    if not expected or not sent or not hmac.compare_digest(str(expected).encode(), sent.encode()):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
