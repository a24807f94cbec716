"""The series lifecycle, in one place: the only code that writes Series.status, status_reason,
generation and completed_at (docs/architecture.md, "Series lifecycle").

    receiving --(clock ran out, no intake session open)--> complete --(routing)--> routed
                                                                  \\-> ignored | not_selected
    complete | routed | ignored | not_selected --(a late instance)--> receiving (reopened)
    routed | ignored | not_selected --(an admin asks for a re-run)--> routed (a new job queued)

A series is complete `stable_seconds` after the last intake session (an association, an upload)
that carried it ended, and while no session carrying it is still open. Which sessions carry which
series lives in memory (sessions do not survive a restart); the release time lives in the
database, so a restarted node still completes what it had.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Hashable
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from storage.audit import record_event
from storage.db import Database, rows_changed
from storage.events import EventCode
from storage.models import Instance, Series, utcnow
from storage.states import SeriesState

# what identifies an open intake session: the association row id, or any other hashable key
SessionKey = Hashable

# a finished series may be re-run: not while the completion clock or the routing decision is pending
REPROCESSABLE = frozenset({SeriesState.ROUTED, SeriesState.IGNORED, SeriesState.NOT_SELECTED})


class NotReprocessable(Exception):
    """The series is not in a state that can be analysed again now; the message says why."""


class SeriesLifecycle:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._series_by_session: dict[SessionKey, set[str]] = defaultdict(set)
        self._open_by_series: dict[str, set[SessionKey]] = defaultdict(set)
        # series known to be receiving in the database: lets the ingest hot path skip the re-open
        # update for every instance but the first
        self._receiving: set[str] = set()

    # -- receiving ---------------------------------------------------------------------------
    def instance_arriving(self, series_uid: str, session: SessionKey) -> None:
        """Before an instance is written: its session now carries the series, so the series cannot
        complete under it."""
        with self._lock:
            self._series_by_session[session].add(series_uid)
            self._open_by_series[series_uid].add(session)

    def instance_recorded(self, series_id: int, series_uid: str, created: bool, association_id: int | None) -> None:
        """An instance row is about to be written for the series: a series that had finished
        (complete, routed, ignored, not selected) is receiving again and will be analysed again."""
        with self._lock:
            known = created or series_uid in self._receiving
        if not known:
            self._reopen(series_id, series_uid, association_id)
        with self._lock:
            self._receiving.add(series_uid)

    def _reopen(self, series_id: int, series_uid: str, association_id: int | None) -> None:
        # also after a restart, when the cache is cold but the series exists and may be finished
        with self.db.session() as s:
            reopened = rows_changed(s,
                update(Series)
                .where(Series.id == series_id, Series.status != SeriesState.RECEIVING)
                .values(status=SeriesState.RECEIVING, status_reason=None, last_released_at=None, completed_at=None)
            )
            if reopened:
                record_event(
                    s, EventCode.SERIES_REOPENED, "a new instance arrived after completion; the series will be analysed again",
                    association_id=association_id, series_instance_uid=series_uid,
                )

    def session_ended(self, session: SessionKey) -> list[str]:
        """Start the completion clock of every series this session carried and no other open
        session still carries. Returns those series."""
        with self._lock:
            carried = self._series_by_session.pop(session, set())
            released: list[str] = []
            for uid in carried:
                still = self._open_by_series.get(uid, set())
                still.discard(session)
                if not still:
                    self._open_by_series.pop(uid, None)
                    released.append(uid)
        if released:
            now = utcnow()
            with self.db.session() as s:
                for uid in released:
                    count = select(func.count(Instance.id)).where(Instance.series_id == Series.id).scalar_subquery()
                    s.execute(
                        update(Series)
                        .where(Series.series_instance_uid == uid)
                        .values(last_released_at=now, last_received_at=now, instance_count=count)
                    )
        return released

    def is_open(self, series_uid: str) -> bool:
        return bool(self._open_by_series.get(series_uid))

    # -- complete ----------------------------------------------------------------------------
    def complete_due(self, stable_seconds: float, on_complete: Callable[[int], None]) -> int:
        """Mark every series whose clock ran out complete and hand its id to `on_complete`."""
        cutoff = utcnow() - timedelta(seconds=stable_seconds)
        with self.db.session() as s:
            due = s.execute(
                select(Series.id, Series.series_instance_uid)
                .where(Series.status == SeriesState.RECEIVING, Series.last_released_at.is_not(None),
                       Series.last_released_at <= cutoff)
            ).all()
        completed = 0
        for series_id, uid in due:
            # the lock makes "not open" and "mark complete" one step against instance_arriving
            with self._lock:
                if self.is_open(uid):
                    continue
                with self.db.session() as s:
                    count = s.execute(select(func.count(Instance.id)).where(Instance.series_id == series_id)).scalar_one()
                    changed = rows_changed(s,
                        update(Series)
                        .where(Series.id == series_id, Series.status == SeriesState.RECEIVING)
                        .values(status=SeriesState.COMPLETE, completed_at=utcnow(), generation=Series.generation + 1,
                                instance_count=count)
                    )
                    self._receiving.discard(uid)
                    if changed:
                        record_event(s, EventCode.SERIES_COMPLETE, f"series complete with {count} instances", series_instance_uid=uid)
            if changed:
                completed += 1
                on_complete(series_id)
        return completed

    def adopt_orphans(self, started_at: datetime) -> int:
        """After a restart, series still receiving lost their sessions with the old process: start
        their clocks now so they complete instead of waiting forever."""
        with self.db.session() as s:
            return rows_changed(s,
                update(Series)
                .where(Series.status == SeriesState.RECEIVING, Series.last_released_at.is_(None))
                .values(last_released_at=started_at)
            )

    # -- routing decisions (made by dicomnode.process.routing, written here) -----------------
    @staticmethod
    def ignore(s: Session, series: Series, reason: str) -> None:
        series.status, series.status_reason = SeriesState.IGNORED, reason
        record_event(s, EventCode.SERIES_IGNORED, f"no route matched: {reason}",
                     series_instance_uid=series.series_instance_uid)

    @staticmethod
    def wait_for_study(series: Series, route_name: str) -> None:
        """Complete, but a one-series-per-study route chooses only when the whole study is in."""
        series.status_reason = f"waiting for the rest of the study to choose one series for route {route_name!r}"

    @staticmethod
    def routed(series: Series) -> None:
        series.status, series.status_reason = SeriesState.ROUTED, None

    @staticmethod
    def not_selected(s: Session, series: Series, reason: str) -> None:
        series.status, series.status_reason = SeriesState.NOT_SELECTED, reason
        record_event(s, EventCode.SERIES_NOT_SELECTED, reason, series_instance_uid=series.series_instance_uid)

    # -- re-runs (requested by dicomnode.process.reprocess, written here) ---------------------
    @staticmethod
    def reprocess(series: Series, route_name: str | None, reason: str) -> None:
        """An admin asked for the series to be analysed again: it is routed (the caller queues the
        job in the same transaction) whatever routing decided before."""
        if series.status not in REPROCESSABLE:
            why = ("it is still receiving instances" if series.status == SeriesState.RECEIVING
                   else "it is complete and waiting for routing, which will analyse it")
            raise NotReprocessable(f"series {series.series_instance_uid} cannot be re-run now: {why}")
        series.status, series.status_reason = SeriesState.ROUTED, reason
        if route_name is not None:
            series.route_name = route_name
