"""Login throttling and rate-limited audit events.

Each client address and each user name has a count of failed logins. Below the free allowance an
attempt goes straight to the password check; from then on each failure doubles a delay (30 s, 1 min,
2 min ... up to `max_delay_s`) during which attempts are refused at once, without hashing. Attempts
still being checked count against the allowance, so 30 parallel requests cannot all slip through
before the first failure is recorded. A success clears the client's and the user's counts.

Refusals are audited once per delay window (with the count refused in the previous one), never
once per request: a flood must not turn into a flood of audit rows.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from storage.audit import record_event
from storage.db import Database
from storage.events import EventCode

MAX_TRACKED = 10_000  # keys kept in memory; the quietest go first
FIRST_DELAY_S = 30.0  # after the free allowance; long enough to make guessing slow, short for a typo


@dataclass
class _Count:
    failures: int = 0
    pending: int = 0
    last_failure: float = 0.0
    last_seen: float = 0.0
    refused: int = 0  # refused since the last audit row
    audited_at: float = -math.inf  # when the last audit row for this key was written


@dataclass(frozen=True)
class Refusal:
    kind: str  # "client" or "user"
    key: str
    retry_after_s: int
    failures: int
    checking: int  # attempts of this key still being checked
    audit: bool  # first refusal in this delay window: write one audit row
    refused_before: int  # refusals since the previous audit row


@dataclass(frozen=True)
class Ticket:
    """An admitted attempt; hand it back to `LoginThrottle.finished`."""
    client: str
    user: str


class LoginThrottle:
    def __init__(self, client_failures: int, user_failures: int, max_delay_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.free = {"client": client_failures, "user": user_failures}
        self.max_delay_s = max_delay_s
        self.clock = clock
        self._counts: dict[tuple[str, str], _Count] = {}
        self._lock = threading.Lock()

    def _delay(self, kind: str, failures: int) -> float:
        over = failures - self.free[kind]
        return 0.0 if over < 0 else min(float(self.max_delay_s), FIRST_DELAY_S * 2.0 ** min(over, 32))

    def _entry(self, kind: str, key: str, now: float) -> _Count:
        entry = self._counts.get((kind, key))
        if entry is None:
            if len(self._counts) >= MAX_TRACKED:
                self._forget(now)
            entry = self._counts[(kind, key)] = _Count()
        entry.last_seen = now
        return entry

    def _forget(self, now: float) -> None:
        # drop counts quiet for longer than the longest delay, then the oldest if still full
        quiet = [k for k, c in self._counts.items() if c.pending == 0 and now - c.last_seen > self.max_delay_s]
        for k in quiet:
            del self._counts[k]
        if len(self._counts) >= MAX_TRACKED:
            for k in sorted(self._counts, key=lambda k: self._counts[k].last_seen)[: MAX_TRACKED // 10]:
                del self._counts[k]

    def _refusal(self, kind: str, key: str, entry: _Count, now: float) -> Refusal | None:
        if entry.failures + entry.pending < self.free[kind]:
            return None
        wait = entry.last_failure + self._delay(kind, entry.failures) - now
        if entry.failures >= self.free[kind] and wait <= 0 and entry.pending == 0:
            return None  # the delay is over: one attempt at a time
        # one audit row per delay window (at least FIRST_DELAY_S apart) and key, however many refusals
        first = now - entry.audited_at >= max(FIRST_DELAY_S, self._delay(kind, entry.failures))
        refused_before = entry.refused
        if first:
            entry.audited_at, entry.refused = now, 0
        else:
            entry.refused += 1
        return Refusal(kind, key, max(1, math.ceil(wait)), entry.failures, entry.pending, first, refused_before)

    def admit(self, client: str, user: str) -> Ticket | Refusal:
        """Admit an attempt (the password may be checked) or say why and for how long not."""
        user = user[:64].lower()
        now = self.clock()
        with self._lock:
            by_client, by_user = self._entry("client", client, now), self._entry("user", user, now)
            refusal = self._refusal("client", client, by_client, now) or self._refusal("user", user, by_user, now)
            if refusal is not None:
                return refusal
            by_client.pending += 1
            by_user.pending += 1
        return Ticket(client, user)

    def finished(self, ticket: Ticket, ok: bool) -> None:
        now = self.clock()
        with self._lock:
            for kind, key in (("client", ticket.client), ("user", ticket.user)):
                entry = self._entry(kind, key, now)
                entry.pending = max(0, entry.pending - 1)
                if ok:
                    entry.failures, entry.refused = 0, 0
                else:
                    entry.failures += 1
                    entry.last_failure = now


class RateLimitedAudit:
    """One audit row per key and window; later ones in the window are counted into the next row."""

    def __init__(self, db: Database, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.window_s = window_s
        self.clock = clock
        self._last: dict[str, tuple[float, int]] = {}  # key -> (time of last row, suppressed since)
        self._lock = threading.Lock()

    def admit(self, key: str) -> int | None:
        """None: this key had its row in the window; else how many were suppressed since the last row."""
        now = self.clock()
        with self._lock:
            last, suppressed = self._last.get(key, (-math.inf, 0))
            if now - last < self.window_s:
                self._last[key] = (last, suppressed + 1)
                return None
            if len(self._last) >= MAX_TRACKED:
                self._last.clear()
            self._last[key] = (now, 0)
        return suppressed

    def write(self, code: EventCode, message: str, details: dict, suppressed: int) -> None:
        if suppressed:
            message += f" ({suppressed} more like it in the previous {self.window_s:.0f} s not recorded one by one)"
        with self.db.session() as s:
            record_event(s, code, message, details={**details, "suppressed_before": suppressed})

    def record(self, key: str, code: EventCode, message: str, details: dict) -> bool:
        """Blocking (a DB write): call from a worker thread, or use admit() then write() in a thread."""
        suppressed = self.admit(key)
        if suppressed is None:
            return False
        self.write(code, message, details, suppressed)
        return True
