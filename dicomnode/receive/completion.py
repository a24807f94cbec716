"""Series completion: a series is complete `stable_seconds` after the association that carried
its last instance was released, and no association carrying it is still open.

Which associations carry which series lives in memory (associations do not survive a restart);
the release time lives in the database, so a restarted node still completes what it had.
"""
from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from storage.audit import record_event
from storage.db import Database
from storage.events import EventCode
from storage.models import Instance, Series, utcnow

log = logging.getLogger(__name__)


class CompletionTracker:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._series_by_assoc: dict[int | None, set[str]] = defaultdict(set)
        self._open_by_series: dict[str, set[int | None]] = defaultdict(set)
        # series known to be in state "receiving" in the database: lets the ingest hot path
        # skip the re-open update for every instance but the first
        self._receiving: set[str] = set()

    def instance_arrived(self, series_uid: str, association_id: int | None) -> bool:
        """Register the instance's association; True when the series is known to be receiving."""
        with self._lock:
            self._series_by_assoc[association_id].add(series_uid)
            self._open_by_series[series_uid].add(association_id)
            return series_uid in self._receiving

    def mark_receiving(self, series_uid: str) -> None:
        with self._lock:
            self._receiving.add(series_uid)

    def association_ended(self, association_id: int | None) -> list[str]:
        """Start the completion clock of every series this association carried and no other
        open association still carries. Returns those series."""
        with self._lock:
            carried = self._series_by_assoc.pop(association_id, set())
            released: list[str] = []
            for uid in carried:
                still = self._open_by_series.get(uid, set())
                still.discard(association_id)
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

    def complete_due(self, stable_seconds: float, on_complete: Callable[[int], None]) -> int:
        """Mark every series whose clock ran out complete and hand its id to `on_complete`."""
        cutoff = utcnow() - timedelta(seconds=stable_seconds)
        with self.db.session() as s:
            due = s.execute(
                select(Series.id, Series.series_instance_uid)
                .where(Series.status == "receiving", Series.last_released_at.is_not(None), Series.last_released_at <= cutoff)
            ).all()
        completed = 0
        for series_id, uid in due:
            # the lock makes "not open" and "mark complete" one step against instance_arrived
            with self._lock:
                if self.is_open(uid):
                    continue
                with self.db.session() as s:
                    count = s.execute(select(func.count(Instance.id)).where(Instance.series_id == series_id)).scalar_one()
                    changed = s.execute(
                        update(Series)
                        .where(Series.id == series_id, Series.status == "receiving")
                        .values(status="complete", completed_at=utcnow(), generation=Series.generation + 1, instance_count=count)
                    ).rowcount
                    self._receiving.discard(uid)
                    if changed:
                        record_event(s, EventCode.SERIES_COMPLETE, f"series complete with {count} instances", series_instance_uid=uid)
            if changed:
                completed += 1
                on_complete(series_id)
        return completed

    def adopt_orphans(self, started_at: datetime) -> int:
        """After a restart, series still receiving lost their associations with the old
        process: start their clocks now so they complete instead of waiting forever."""
        with self.db.session() as s:
            return s.execute(
                update(Series)
                .where(Series.status == "receiving", Series.last_released_at.is_(None))
                .values(last_released_at=started_at)
            ).rowcount


class CompletionChecker(threading.Thread):
    """Background loop that completes series and passes them to routing."""

    def __init__(self, tracker: CompletionTracker, stable_seconds: float, poll_seconds: float,
                 on_complete: Callable[[int], None]) -> None:
        super().__init__(name="series-completion", daemon=True)
        self.tracker = tracker
        self.stable_seconds = stable_seconds
        self.poll_seconds = poll_seconds
        self.on_complete = on_complete
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.poll_seconds):
            try:
                self.tracker.complete_due(self.stable_seconds, self.on_complete)
            except Exception:  # keep checking; the next pass retries
                log.exception("series completion check failed")

    def stop(self) -> None:
        self.stopping.set()
