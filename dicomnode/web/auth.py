"""Who may use the console: sessions for people, bearer tokens for scripts, CSRF on every POST.

A console bound to a loopback address is open (only local users reach it) unless
`web.require_login` is set; on any other address a login or an API token is required.
Every login attempt is audited.
"""
from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from fastapi import HTTPException, Request
from sqlalchemy import select

from dicomnode.config import WebSettings
from dicomnode.passwords import token_label, token_matches, verify_password
from storage.audit import record_event
from storage.db import Database
from storage.events import EventCode
from storage.models import User

SESSION_USER = "user"
SESSION_CSRF = "csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
# a syntactically valid hash that never matches: failed logins for unknown users cost the same time
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


class LoginRequired(Exception):
    """Raised by page dependencies; the app turns it into a redirect to /login."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


class Auth:
    def __init__(self, settings: WebSettings, db: Database) -> None:
        self.db = db
        self.required = settings.require_login or not is_loopback(settings.host)
        self.tokens = [t for t in settings.api_tokens if t]
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
        user = request.session.get(SESSION_USER)
        if user:
            return Principal(str(user), "session")
        if not self.required:
            return Principal("local", "open")
        return None

    def login(self, request: Request, username: str, password: str) -> bool:
        client = client_host(request)
        with self.db.session() as s:
            row = s.execute(select(User).where(User.username == username)).scalar_one_or_none()
            ok = verify_password(password, row.password_hash if row else _DUMMY_HASH) and row is not None
            if ok:
                record_event(s, EventCode.ADMIN_LOGIN, f"{username} logged in from {client}",
                             details={"user": username, "client": client})
            else:
                record_event(s, EventCode.ADMIN_LOGIN_FAILED, f"failed login for {username!r} from {client}",
                             details={"user": username[:64], "client": client})
        if ok:
            request.session.clear()  # a fresh session (and CSRF token) after login: no fixation
            request.session[SESSION_USER] = username
            csrf_token(request)
        return ok


def client_host(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def csrf_token(request: Request) -> str:
    token = request.session.get(SESSION_CSRF)
    if not token:
        token = secrets.token_urlsafe(32)
        request.session[SESSION_CSRF] = token
    return str(token)


async def check_csrf(request: Request, principal: Principal) -> None:
    """Token-authenticated calls carry no cookie, so they cannot be forged cross-site."""
    if principal.via == "token":
        return
    expected = request.session.get(SESSION_CSRF)
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()  # starlette caches it; the endpoint reads the same form
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not expected or not sent or not hmac.compare_digest(str(expected), sent):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
