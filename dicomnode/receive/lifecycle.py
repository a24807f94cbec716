"""The series lifecycle, in one place: the only code that writes Series.status, status_reason,
generation and completed_at (docs/architecture.md, "Series lifecycle").

    receiving --(evidence grace or idle clock ran out, no intake session open)--> complete --(routing)--> routed
                                                                  \\-> ignored | not_selected
    complete | routed | ignored | not_selected --(a late instance)--> receiving (reopened)
    routed | ignored | not_selected --(an admin asks for a re-run)--> routed (a new job queued)

A series is complete `stable_seconds` after the last intake session (an association, an upload)
that carried it ended, and while no session carrying it is still open. When that last session ends
and the instances are evidence of a whole series (dicomnode.receive.geometry: contiguous evenly
spaced slices, or one multi-frame instance), it is complete after `evidence_grace_seconds` instead.
Which open sessions carry which series lives in the database (`open_intake`, one row per session
and series), so every receiver process (dicomnode.receive.receivers) and the completion checker in
the node's main process see the same thing: a series never completes while a session in any process
still carries it. The rows of a process that died are ended by the node (sessions_died: no
evidence, the timer decides); the release and evidence times live in the database too, so a
restarted node still completes what it had.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.audit import record_event
from storage.db import Database, rows_changed
from storage.events import EventCode
from dicomnode.receive.geometry import InstanceGeometry, Verdict, judge
from storage.models import Instance, OpenIntake, Series, utcnow
from storage.states import SeriesState

log = logging.getLogger(__name__)

# what identifies an open intake session: the association row id, or any other hashable key whose
# str() is unique across the node's processes (dicomnode.receive.intake puts the pid in it)
SessionKey = Hashable

# a finished series may be re-run: not while the completion clock or the routing decision is pending
REPROCESSABLE = frozenset({SeriesState.ROUTED, SeriesState.IGNORED, SeriesState.NOT_SELECTED})


class NotReprocessable(Exception):
    """The series is not in a state that can be analysed again now; the message says why."""


class SeriesLifecycle:
    def __init__(self, db: Database, evidence_grace_seconds: float | None = None, node_id: str | None = None) -> None:
        """`evidence_grace_seconds`: how long after its release a series the evidence shows whole
        completes (series.evidence_grace_seconds); None: only the idle timer completes series.
        `node_id`: the node whose sessions these are (several nodes share `open_intake`)."""
        self.db = db
        self.node_id = node_id
        self.evidence_grace = None if evidence_grace_seconds is None else timedelta(seconds=evidence_grace_seconds)
        self._lock = threading.Lock()
        # this process's share of `open_intake`: lets the ingest hot path skip the insert (and the
        # re-open check) for every instance of a session's series but the first
        self._carried: dict[SessionKey, set[str]] = defaultdict(set)
        self._checked: set[tuple[SessionKey, str]] = set()
        # the earliest evidence due time a release in this process set since the checker last
        # looked: lets it wake for it instead of up to poll_seconds later
        self._next_evidence_due: datetime | None = None

    # -- receiving ---------------------------------------------------------------------------
    def instance_arriving(self, series_uid: str, session: SessionKey) -> None:
        """Before an instance is written: its session now carries the series (committed to
        `open_intake`), so the series cannot complete under it, whichever process completes it."""
        with self._lock:
            if series_uid in self._carried.get(session, ()):
                return
        try:
            with self.db.session() as s:
                s.execute(insert(OpenIntake).values(session_key=_key(session), series_instance_uid=series_uid,
                                                    pid=os.getpid(), opened_at=utcnow(), node_id=self.node_id))
        except IntegrityError:
            pass  # another thread of this session wrote the row first: it is there, which is all we need
        with self._lock:
            self._carried[session].add(series_uid)

    def instance_recorded(self, series_id: int, series_uid: str, created: bool, association_id: int | None,
                          session: SessionKey = None) -> None:
        """An instance row is about to be written for the series: a series that had finished
        (complete, routed, ignored, not selected) is receiving again and will be analysed again.
        Checked once per session and series: from then on the session's open_intake row keeps
        the series receiving."""
        with self._lock:
            known = created or (session, series_uid) in self._checked
        if not known:
            self._reopen(series_id, series_uid, association_id)
        with self._lock:
            if series_uid in self._carried.get(session, ()):
                self._checked.add((session, series_uid))

    def _reopen(self, series_id: int, series_uid: str, association_id: int | None) -> None:
        # also after a restart, when the cache is cold but the series exists and may be finished
        with self.db.session() as s:
            reopened = rows_changed(s,
                update(Series)
                .where(Series.id == series_id, Series.status != SeriesState.RECEIVING)
                .values(status=SeriesState.RECEIVING, status_reason=None, last_released_at=None, completed_at=None,
                        evidence_due_at=None)
            )
            if reopened:
                record_event(
                    s, EventCode.SERIES_REOPENED, "a new instance arrived after completion; the series will be analysed again",
                    association_id=association_id, series_instance_uid=series_uid,
                )

    def session_ended(self, session: SessionKey, orderly: bool = True) -> list[str]:
        """Start the completion clock of every series this session carried and no other open
        session (in any process) still carries, and set its evidence due time where the evidence
        holds. An aborted session (`orderly` False: the sender may have been cut off mid-series)
        is no evidence. Returns those series."""
        with self._lock:
            carried = self._carried.pop(session, set())
            self._checked -= {(session, uid) for uid in carried}
        if not carried:
            return []
        return self._end(_key(session), carried, orderly)

    def sessions_died(self, pid: int) -> list[str]:
        """The process `pid` died (or stopped) with sessions open: end each, not orderly (it may
        have been cut off mid-series), so their series complete on the idle timer."""
        with self.db.session() as s:
            rows = s.execute(select(OpenIntake.session_key, OpenIntake.series_instance_uid)
                             .where(OpenIntake.pid == pid, OpenIntake.node_id.is_not_distinct_from(self.node_id))).all()
        return self._end_all(rows)

    def sessions_of_dead_node(self, node_id: str) -> list[str]:
        """Another node died (its heartbeat stopped) with sessions open: end them, not orderly, so
        their series complete on the idle timer instead of staying open for ever."""
        with self.db.session() as s:
            rows = s.execute(select(OpenIntake.session_key, OpenIntake.series_instance_uid)
                             .where(OpenIntake.node_id == node_id)).all()
        return self._end_all(rows)

    def _end_all(self, rows: Iterable[tuple[str, str]]) -> list[str]:
        by_session: dict[str, set[str]] = defaultdict(set)
        for key, uid in rows:
            by_session[key].add(uid)
        released: list[str] = []
        for key, uids in by_session.items():
            released += self._end(key, uids, orderly=False)
        return released

    def _end(self, key: str, carried: Iterable[str], orderly: bool) -> list[str]:
        uids = sorted(carried)
        with self.db.session() as s:
            # the DELETE first: on SQLite it takes the write lock, so "no other session carries it"
            # below is read and acted on in one serialised step; on PostgreSQL the series rows are
            # locked for the same reason (two sessions of one series ending at once on two processes)
            s.execute(delete(OpenIntake).where(OpenIntake.session_key == key, OpenIntake.series_instance_uid.in_(uids)))
            s.execute(select(Series.id).where(Series.series_instance_uid.in_(uids))
                      .order_by(Series.id).with_for_update())
            still = set(s.execute(select(OpenIntake.series_instance_uid)
                                  .where(OpenIntake.series_instance_uid.in_(uids))).scalars())
            released = [uid for uid in uids if uid not in still]
            # taken inside the write transaction: releases are ordered, so a stale one never
            # overwrites a newer one
            now = utcnow()
            for uid in released:
                self._release(s, uid, now, orderly)
        return released

    def _release(self, s: Session, uid: str, now: datetime, orderly: bool) -> None:
        verdict: Verdict | None = None
        if self.evidence_grace is not None:
            verdict = self._evidence(s, uid) if orderly else Verdict(False, "the association was aborted")
        due = now + self.evidence_grace if verdict is not None and verdict.complete and self.evidence_grace is not None else None
        reason = None if verdict is None or verdict.complete else (
            f"no evidence the series is whole ({verdict.reason}): it completes when series.stable_seconds pass "
            "with no new instance")
        count = select(func.count(Instance.id)).where(Instance.series_id == Series.id).scalar_subquery()
        # a release computed before a later one (another session's) must not overwrite it
        newest = Series.last_released_at.is_(None) | (Series.last_released_at <= now)
        s.execute(update(Series).where(Series.series_instance_uid == uid, newest)
                  .values(last_released_at=now, last_received_at=now, instance_count=count))
        if verdict is None:
            return
        # only a receiving series waits for completion; a finished one keeps its reason (ignored: why)
        s.execute(update(Series).where(Series.series_instance_uid == uid, Series.status == SeriesState.RECEIVING, newest)
                  .values(evidence_due_at=due, status_reason=reason))
        if due is not None:
            with self._lock:
                if self._next_evidence_due is None or due < self._next_evidence_due:
                    self._next_evidence_due = due
        log.info("series %s released: %s", uid, verdict.reason)

    @staticmethod
    def _evidence(s: Session, uid: str) -> Verdict:
        """Whether the series' recorded instances show a whole series (dicomnode.receive.geometry)."""
        thickness = s.execute(select(Series.slice_thickness).where(Series.series_instance_uid == uid)).scalar()
        rows = s.execute(
            select(Instance.slice_position_mm, Instance.orientation, Instance.images_in_acquisition,
                   Instance.number_of_frames)
            .join(Series, Series.id == Instance.series_id).where(Series.series_instance_uid == uid)
        ).all()
        return judge([InstanceGeometry(*row) for row in rows], thickness)

    def seconds_to_next_evidence(self, now: datetime | None = None) -> float | None:
        """How long until the earliest evidence due time of a receiving series (set by a release in
        any process), or None when none is pending."""
        now = now or utcnow()
        with self._lock:
            due = self._next_evidence_due
        with self.db.engine.connect() as conn:
            # only future ones: one already due but held open by another session is not waited for
            # in a busy loop (the next poll looks again)
            stored = conn.execute(select(func.min(Series.evidence_due_at))
                                  .where(Series.status == SeriesState.RECEIVING, Series.evidence_due_at > now)).scalar()
        if stored is not None:
            due = _aware(stored) if due is None else min(due, _aware(stored))
        if due is None:
            return None
        return max(0.0, (due - now).total_seconds())

    def is_open(self, series_uid: str) -> bool:
        """Whether an intake session in any of the node's processes still carries the series."""
        with self.db.engine.connect() as conn:
            return conn.execute(select(exists().where(OpenIntake.series_instance_uid == series_uid))).scalar() is True

    # -- complete ----------------------------------------------------------------------------
    def complete_due(self, stable_seconds: float, on_complete: Callable[[int], None]) -> int:
        """Mark every series whose evidence grace or idle clock ran out complete and hand its id to
        `on_complete`."""
        now = utcnow()
        cutoff = now - timedelta(seconds=stable_seconds)
        with self._lock:
            if self._next_evidence_due is not None and self._next_evidence_due <= now:
                self._next_evidence_due = None  # this pass completes it (or finds it re-opened)
        with self.db.session() as s:
            due = s.execute(
                select(Series.id, Series.series_instance_uid, Series.evidence_due_at)
                .where(Series.status == SeriesState.RECEIVING,
                       (Series.last_released_at.is_not(None) & (Series.last_released_at <= cutoff))
                       | (Series.evidence_due_at.is_not(None) & (Series.evidence_due_at <= now)))
            ).all()
        completed = 0
        for series_id, uid, evidence_due in due:
            how = "on evidence" if evidence_due is not None and _aware(evidence_due) <= now else "after the idle timer"
            # one statement decides "no session open" and "complete" together: a receiver process
            # that registers the series (open_intake) either does so first, and the series stays
            # receiving, or after, and its first instance re-opens the series
            open_session = exists().where(OpenIntake.series_instance_uid == uid)
            with self.db.session() as s:
                count = s.execute(select(func.count(Instance.id)).where(Instance.series_id == series_id)).scalar_one()
                changed = rows_changed(s,
                    update(Series)
                    .where(Series.id == series_id, Series.status == SeriesState.RECEIVING, ~open_session)
                    .values(status=SeriesState.COMPLETE, status_reason=None, completed_at=utcnow(),
                            generation=Series.generation + 1, instance_count=count)
                )
                if changed:
                    record_event(s, EventCode.SERIES_COMPLETE, f"series complete with {count} instances {how}",
                                 series_instance_uid=uid)
            if changed:
                completed += 1
                on_complete(series_id)
        return completed

    def adopt_orphans(self, started_at: datetime) -> int:
        """After a restart, series still receiving lost their sessions with the old process: start
        their clocks now so they complete instead of waiting forever. Their evidence is dropped: a
        session the crash cut off may have been adding to a released series, so the timer decides."""
        with self.db.session() as s:
            # every session of this node's previous run ended with it (the receivers start after
            # this); other nodes' sessions are theirs (NULL: rows from before node ids, one node)
            s.execute(delete(OpenIntake).where(OpenIntake.node_id.is_(None) | (OpenIntake.node_id == self.node_id)))
            adopted = rows_changed(s,
                update(Series)
                .where(Series.status == SeriesState.RECEIVING, Series.last_released_at.is_(None))
                .values(last_released_at=started_at)
            )
            s.execute(update(Series).where(Series.status == SeriesState.RECEIVING, Series.evidence_due_at.is_not(None))
                      .values(evidence_due_at=None))
            return adopted

    # -- routing decisions (made by dicomnode.process.routing, written here) -----------------
    @staticmethod
    def ignore(s: Session, series: Series, reason: str) -> None:
        series.status, series.status_reason = SeriesState.IGNORED, reason
        record_event(s, EventCode.SERIES_IGNORED, f"no route matched: {reason}",
                     series_instance_uid=series.series_instance_uid)

    @staticmethod
    def hold_prior(s: Session, series: Series) -> None:
        """A complete prior series (series.role "prior", dicomnode.priors): held for comparison, never
        routed: it starts no job of its own and is never delivered."""
        series.status = SeriesState.IGNORED
        series.status_reason = "a prior retrieved for comparison with a follow-up: no job of its own, never delivered"
        record_event(s, EventCode.PRIOR_SERIES_HELD, f"prior series complete with {series.instance_count} instances: "
                     "held for comparison", series_instance_uid=series.series_instance_uid)

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


def _key(session: SessionKey) -> str:
    """The session as stored in open_intake."""
    return str(session)[:96]


def _aware(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
