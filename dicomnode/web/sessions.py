"""Revocable server-side sessions for console logins.

The signed session cookie carries only a random id; the audit database keeps a row per login
with the SHA-256 of that id (never the id itself), the user, and when it was created and last used.
Logout deletes the row, so a copy of the cookie is worthless afterwards; a session also ends after
`web.session_idle_minutes` without a request and, whatever happens, after `MAX_LIFETIME`.
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select

from storage.db import Database
from storage.models import WebSession

MAX_LIFETIME = timedelta(hours=12)  # one working day; then log in again
# last_seen_at is written at most this often per session: one DB write per page view is wasteful
TOUCH_EVERY = timedelta(seconds=30)


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    def __init__(self, db: Database, idle: timedelta, lifetime: timedelta = MAX_LIFETIME) -> None:
        self.db = db
        self.idle = idle
        self.lifetime = lifetime

    def create(self, username: str, client: str) -> str:
        """A new session for a user who just logged in; returns the id for the cookie."""
        token = secrets.token_urlsafe(32)
        now = _now()
        with self.db.session() as s:
            s.add(WebSession(token_hash=token_hash(token), username=username[:64], client=client[:64],
                             created_at=now, last_seen_at=now))
            # expired rows of anyone go on each login, so the table stays as small as the active sessions
            s.execute(delete(WebSession).where(WebSession.created_at < now - self.lifetime))
        return token

    def user(self, token: str, touch: bool = True) -> str | None:
        """The user of a live session, or None (unknown, revoked, idle too long or too old).

        touch=False: a background poll (the dashboard's refresh), which must not keep an unattended
        screen logged in past the idle timeout.
        """
        if not token:
            return None
        now = _now()
        with self.db.session() as s:
            row = s.execute(select(WebSession).where(WebSession.token_hash == token_hash(token))).scalar_one_or_none()
            if row is None:
                return None
            if now - _aware(row.last_seen_at) > self.idle or now - _aware(row.created_at) > self.lifetime:
                s.delete(row)
                return None
            if touch and now - _aware(row.last_seen_at) > TOUCH_EVERY:
                row.last_seen_at = now
            return row.username

    def revoke(self, token: str) -> str | None:
        """End a session (logout); returns its user, or None when it was not live."""
        if not token:
            return None
        with self.db.session() as s:
            row = s.execute(select(WebSession).where(WebSession.token_hash == token_hash(token))).scalar_one_or_none()
            if row is None:
                return None
            s.delete(row)
            return row.username
