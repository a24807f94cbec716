"""The ATNA exporter: tails the audit events table and sends each security-relevant event to the
audit repository as a DICOM audit message (dicomnode.atna.messages) over syslog.

The events table is the persistent queue: a cursor row (atna_export) holds the id of the last
event the repository took, and moves only after the batch was written. A repository that is down,
or a node restart, loses nothing; a crash between the write and the cursor's commit sends that
batch again (at-least-once, docs/conformance.md).
"""
from __future__ import annotations

import base64
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicomnode.atna import messages as m
from dicomnode.atna.syslog import NOTICE, WARNING, SyslogError, SyslogSender, frame
from dicomnode.config import Settings
from dicomnode.core.loops import PeriodicWorker
from storage.audit import record_event
from storage.db import Database
from storage.events import EventCode
from storage.models import Association, AtnaCursor, Delivery, Event, Instance, Series, Study, utcnow

log = logging.getLogger(__name__)

# an id gap younger than this may be a transaction that has not committed yet (PostgreSQL hands
# out ids before commit): wait for it rather than skip past it
GAP_SETTLE = timedelta(seconds=5)


@dataclass(frozen=True)
class Outgoing:
    xml: bytes
    ok: bool


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _peer(ae: str, host: str, requestor: bool, role: m.Code | None = None) -> m.Participant:
    return m.Participant(ae or "unknown", role, requestor, host, alternative_user_id=f"AETITLES={ae}" if ae else "")


def _user(details: dict[str, Any] | None) -> m.Participant:
    d = details or {}
    return m.Participant(str(d.get("user") or "unknown"), None, True, str(d.get("client") or ""))


def _study(study: Study, sop_classes: dict[str, int]) -> m.Study:
    return m.Study(study.study_instance_uid, study.patient_id, study.patient_name, study.accession_number,
                   sop_classes)


# What the repository receives, for the conformance statement (dicomnode.conformance); a test
# checks that it names exactly the events the Mapper turns into messages.
CATALOGUE: list[tuple[tuple[EventCode, ...], m.Code, str, str]] = [
    ((EventCode.NODE_STARTED, EventCode.NODE_STOPPED), m.APPLICATION_ACTIVITY, "E",
     "Application Start / Application Stop; the node (AE title, host) as Application"),
    ((EventCode.ASSOCIATION_ACCEPTED,), m.USER_AUTHENTICATION, "E",
     "Login, success: the calling AE and its address"),
    ((EventCode.ASSOCIATION_REJECTED_CALLED_AE, EventCode.ASSOCIATION_REJECTED_CALLING_AE,
      EventCode.ASSOCIATION_REJECTED_HOST, EventCode.ASSOCIATION_REFUSED_LIMIT, EventCode.TLS_HANDSHAKE_FAILED),
     m.SECURITY_ALERT, "E", "Node Authentication, minor failure: the refused peer and the reason"),
    ((EventCode.ASSOCIATION_RELEASED, EventCode.ASSOCIATION_ABORTED), m.INSTANCES_TRANSFERRED, "C",
     "instances received: one message per association and study, SOP classes with counts, patient"),
    ((EventCode.UPLOAD_RECEIVED, EventCode.STOW_RECEIVED), m.INSTANCES_TRANSFERRED, "C",
     "instances uploaded through the console, the API or STOW-RS: one message per study, the user and their "
     "address as source"),
    ((EventCode.DELIVERY_SENT,), m.INSTANCES_TRANSFERRED, "R",
     "a result (or forwarded instance) stored at a destination: node as source, destination AE, study, patient"),
    ((EventCode.ADMIN_LOGIN, EventCode.ADMIN_LOGIN_FAILED, EventCode.ADMIN_LOGIN_THROTTLED, EventCode.ADMIN_LOGOUT),
     m.USER_AUTHENTICATION, "E", "console Login / Logout; failed or throttled logins as minor failures"),
    ((EventCode.ADMIN_ACTION, EventCode.SERIES_REPROCESS_REQUESTED), m.SECURITY_ALERT, "E",
     "Use of Restricted Function: the console user or API caller, what was changed"),
    ((EventCode.RETENTION_DELETED,), m.STUDY_DELETED, "D", "received instances removed by the retention policy"),
    ((EventCode.SETTINGS_CHANGED,), m.SECURITY_ALERT, "E",
     "Security Configuration (security, TLS, console access, ATNA keys) or Software Configuration: the changed "
     "setting keys, never their values, found at start"),
    ((EventCode.USERS_CHANGED,), m.SECURITY_ALERT, "E",
     "User security Attributes Changed: console users added, removed or given a new password, found at start"),
    ((EventCode.PRIOR_QUERY,), m.QUERY, "E",
     "a C-FIND for a patient's priors (dicomnode.priors): node as requestor, the peer, the query data set"),
]


class Mapper:
    """Audit event -> the audit messages it becomes (none for events a repository need not see)."""

    def __init__(self, source: m.Source) -> None:
        self.src = source
        self._by_code: dict[int, Callable[[Session, Event], list[Outgoing]]] = {
            EventCode.NODE_STARTED: lambda s, e: self._activity(e, True),
            EventCode.NODE_STOPPED: lambda s, e: self._activity(e, False),
            EventCode.ASSOCIATION_ACCEPTED: self._association_accepted,
            EventCode.ASSOCIATION_REJECTED_CALLED_AE: self._association_refused,
            EventCode.ASSOCIATION_REJECTED_CALLING_AE: self._association_refused,
            EventCode.ASSOCIATION_REJECTED_HOST: self._association_refused,
            EventCode.ASSOCIATION_REFUSED_LIMIT: self._association_refused,
            EventCode.TLS_HANDSHAKE_FAILED: self._association_refused,
            EventCode.ASSOCIATION_RELEASED: self._instances_received,
            EventCode.ASSOCIATION_ABORTED: self._instances_received,
            EventCode.DELIVERY_SENT: self._exported,
            EventCode.UPLOAD_RECEIVED: self._uploaded,
            EventCode.STOW_RECEIVED: self._uploaded,
            EventCode.ADMIN_LOGIN: lambda s, e: self._login(e, ok=True),
            EventCode.ADMIN_LOGIN_FAILED: lambda s, e: self._login(e, ok=False),
            EventCode.ADMIN_LOGIN_THROTTLED: lambda s, e: self._login(e, ok=False),
            EventCode.ADMIN_LOGOUT: lambda s, e: self._login(e, ok=True, logout=True),
            EventCode.ADMIN_ACTION: self._admin_action,
            EventCode.SERIES_REPROCESS_REQUESTED: self._admin_action,
            EventCode.RETENTION_DELETED: self._deleted,
            EventCode.SETTINGS_CHANGED: self._settings_changed,
            EventCode.USERS_CHANGED: self._settings_changed,
            EventCode.PRIOR_QUERY: self._prior_query,
        }

    def messages(self, s: Session, event: Event) -> list[Outgoing]:
        build = self._by_code.get(event.code)
        return build(s, event) if build is not None else []

    def _activity(self, e: Event, started: bool) -> list[Outgoing]:
        return [Outgoing(m.application_activity(self.src, e.at, started, e.message), True)]

    def _association(self, s: Session, e: Event) -> tuple[str, str]:
        row = s.get(Association, e.association_id) if e.association_id is not None else None
        if row is not None:
            return row.calling_ae, row.peer_host
        return "", str((e.details or {}).get("peer_host", ""))

    def _association_accepted(self, s: Session, e: Event) -> list[Outgoing]:
        calling, host = self._association(s, e)
        xml = m.user_authentication(self.src, e.at, _peer(calling, host, True), ok=True,
                                    description=f"DICOM association accepted: {e.message}")
        return [Outgoing(xml, True)]

    def _association_refused(self, s: Session, e: Event) -> list[Outgoing]:
        calling, host = self._association(s, e)
        subject = f"{calling}@{host}" if calling else host or "unknown"
        xml = m.security_alert(self.src, e.at, m.NODE_AUTHENTICATION, _peer(calling, host, True), subject, m.ID_NODE,
                               ok=False, description=f"{EventCode(e.code).name}: {e.message}")
        return [Outgoing(xml, False)]

    def _instances_received(self, s: Session, e: Event) -> list[Outgoing]:
        """One message per study the association carried (PS3.15 A.5.3.7: one patient, one study)."""
        if e.association_id is None:
            return []
        calling, host = self._association(s, e)
        rows = s.execute(
            select(Study, Instance.sop_class_uid, func.count(Instance.id))
            .join(Series, Series.study_id == Study.id).join(Instance, Instance.series_id == Series.id)
            .where(Instance.association_id == e.association_id)
            .group_by(Study.id, Instance.sop_class_uid).order_by(Study.id)
        ).all()
        per_study: dict[int, tuple[Study, dict[str, int]]] = {}
        for study, sop_class, count in rows:
            per_study.setdefault(study.id, (study, {}))[1][sop_class] = count
        ok = e.code == EventCode.ASSOCIATION_RELEASED
        return [Outgoing(m.instances_transferred(
            self.src, e.at, _peer(calling, host, True, m.ROLE_SOURCE), self.src.participant(m.ROLE_DESTINATION),
            [_study(study, classes)], created=True, ok=ok,
            description="" if ok else "association aborted; the instances listed were stored"), ok)
            for study, classes in per_study.values()]

    def _prior_query(self, s: Session, e: Event) -> list[Outgoing]:
        """A C-FIND for priors (PS3.15 A.5.3.10): the node asked, the peer answered (or not)."""
        d = e.details or {}
        ok = bool(d.get("ok"))
        return [Outgoing(m.query(self.src, e.at, self.src.participant(m.ROLE_SOURCE, requestor=True),
                                 _peer(str(d.get("peer", "")), str(d.get("host", "")), False, m.ROLE_DESTINATION),
                                 str(d.get("sop_class_uid", "")), base64.b64decode(str(d.get("query", ""))),
                                 str(d.get("transfer_syntax_uid", "")), ok=ok), ok)]

    def _uploaded(self, s: Session, e: Event) -> list[Outgoing]:
        """A console or API upload: one message per study, the user at their address as the source."""
        accepted: dict[str, int] = (e.details or {}).get("series") or {}
        per_study: dict[int, tuple[Study, Counter[str]]] = {}
        for series_uid, count in accepted.items():
            series = s.execute(select(Series).where(Series.series_instance_uid == series_uid)).scalar_one_or_none()
            if series is None or not count:
                continue
            classes = list(s.execute(select(Instance.sop_class_uid).where(Instance.series_id == series.id)
                                     .distinct()).scalars())
            # a series is almost always one SOP class; otherwise count its uploaded (association-less) rows
            found = Counter({classes[0]: count}) if len(classes) == 1 else Counter(s.execute(
                select(Instance.sop_class_uid).where(Instance.series_id == series.id,
                                                     Instance.association_id.is_(None))).scalars())
            per_study.setdefault(series.study_id, (series.study, Counter()))[1].update(found)
        user = _user(e.details)
        sender = m.Participant(user.user_id, m.ROLE_SOURCE, True, user.network_access_point)
        return [Outgoing(m.instances_transferred(self.src, e.at, sender, self.src.participant(m.ROLE_DESTINATION),
                                                 [_study(study, dict(classes))], created=True,
                                                 description=_upload_description(e)), True)
                for study, classes in per_study.values()]

    def _exported(self, s: Session, e: Event) -> list[Outgoing]:
        d = s.get(Delivery, e.delivery_id) if e.delivery_id is not None else None
        if d is None:
            return []
        series = s.get(Series, d.series_id) if d.series_id is not None else None
        studies = [_study(series.study, {d.sop_class_uid: 1})] if series is not None else []
        xml = m.instances_transferred(self.src, e.at, self.src.participant(m.ROLE_SOURCE, requestor=True),
                                      _peer(d.ae_title, d.host, False, m.ROLE_DESTINATION), studies, created=False,
                                      description=f"{d.kind} to {d.destination}")
        return [Outgoing(xml, True)]

    def _login(self, e: Event, ok: bool, logout: bool = False) -> list[Outgoing]:
        xml = m.user_authentication(self.src, e.at, _user(e.details), ok=ok, logout=logout,
                                    description="" if ok else e.message)
        return [Outgoing(xml, ok)]

    def _admin_action(self, s: Session, e: Event) -> list[Outgoing]:
        subject = (f"dicomnode:series/{e.series_instance_uid}" if e.series_instance_uid
                   else f"dicomnode:deliveries/{e.delivery_id or 'dead-letters'}")
        xml = m.security_alert(self.src, e.at, m.RESTRICTED_FUNCTION, _user(e.details), subject, m.ID_URI, ok=True,
                               description=e.message)
        return [Outgoing(xml, True)]

    def _settings_changed(self, s: Session, e: Event) -> list[Outgoing]:
        if e.code == EventCode.USERS_CHANGED:
            kind, subject = m.USER_SECURITY_ATTRIBUTES_CHANGED, "dicomnode:settings/web.users"
        else:
            security = bool((e.details or {}).get("security"))
            kind, subject = (m.SECURITY_CONFIGURATION if security else m.SOFTWARE_CONFIGURATION), "dicomnode:settings"
        # who edited the file is not known to the node: the node reports, no performer
        return [Outgoing(m.security_alert(self.src, e.at, kind, None, subject, m.ID_URI, ok=True,
                                          description=e.message), True)]

    def _deleted(self, s: Session, e: Event) -> list[Outgoing]:
        if not e.series_instance_uid or (e.details or {}).get("what") != "source":
            return []  # results and outbox copies are the node's own objects, not the study's
        series = s.execute(select(Series).where(Series.series_instance_uid == e.series_instance_uid)).scalar_one_or_none()
        if series is None:
            return []
        classes = dict(Counter(s.execute(select(Instance.sop_class_uid).where(Instance.series_id == series.id)).scalars()))
        return [Outgoing(m.study_deleted(self.src, e.at, [_study(series.study, classes)], e.message), True)]


class AtnaExporter(PeriodicWorker):
    """The background loop; node.py starts it when [atna] is enabled."""

    def __init__(self, db: Database, settings: Settings) -> None:
        cfg = settings.atna
        super().__init__("atna-exporter", cfg.poll_seconds)
        assert cfg.host is not None  # AtnaSettings refuses enabled without a host
        self.db, self.cfg = db, cfg
        self.source = m.Source(cfg.audit_source_id or settings.node.ae_title, settings.node.ae_title,
                               socket.gethostname(), os.getpid(), cfg.enterprise_site_id)
        self.mapper = Mapper(self.source)
        self.sender = SyslogSender(cfg.host, cfg.port, cfg.transport, cfg.connect_timeout_s, cfg.ca_file,
                                   cfg.cert_file, cfg.key_file)
        if cfg.transport != "tls":  # audit messages carry patient IDs and names
            log.warning("atna.transport is %s: audit messages (patient IDs and names among them) go to %s "
                        "unencrypted; use tls outside a trusted network", cfg.transport, self.sender.target)
        self._backoff = 0.0  # > 0 while the repository is down
        self._failures = 0
        self._ensure_cursor()

    def _ensure_cursor(self) -> None:
        """First start with ATNA on: the queue begins here, not with the node's whole history."""
        try:
            with self.db.session() as s:
                if s.get(AtnaCursor, 1) is None:
                    last = s.execute(select(func.max(Event.id))).scalar() or 0
                    s.add(AtnaCursor(id=1, last_event_id=last, messages_sent=0))
        except IntegrityError:  # another node on the same database made it at the same moment
            pass

    def next_wait(self) -> float:
        return self._backoff or self.interval_seconds

    def step(self) -> bool:
        return self.export_batch(flush=False)

    def _settled(self, events: list[Event], after: int, flush: bool) -> list[Event]:
        """Events up to the first young id gap (see GAP_SETTLE); all of them when flushing at stop."""
        if flush:
            return events
        now, expected = utcnow(), after + 1
        for i, e in enumerate(events):
            if e.id != expected and now - _aware(e.at) < GAP_SETTLE:
                return events[:i]
            expected = e.id + 1
        return events

    def export_batch(self, flush: bool) -> bool:
        """Send the next batch; True when more events wait. The cursor moves only after the send.

        The cursor row is locked (SELECT ... FOR UPDATE on PostgreSQL) from the read to its update, so
        that several nodes on one database send each batch once: another node's exporter waits for the
        lock and then reads the moved cursor."""
        with self.db.session() as s:
            cursor = s.get(AtnaCursor, 1, with_for_update=True)
            assert cursor is not None
            start = cursor.last_event_id
            events = list(s.execute(select(Event).where(Event.id > start).order_by(Event.id)
                                    .limit(self.cfg.batch_size)).scalars())
            events = self._settled(events, start, flush)
            if not events:
                return False
            frames = [frame(o.xml, _aware(e.at), self.source.host_name, self.source.process_id,
                            NOTICE if o.ok else WARNING)
                      for e in events for o in self._messages(s, e)]
            try:
                if frames:
                    self.sender.send(frames)
            except SyslogError as exc:
                s.rollback()  # the lock goes with it; the cursor stays where it was
                self._unreachable(exc, len(frames))
                return False
            cursor.last_event_id, cursor.updated_at = events[-1].id, utcnow()
            cursor.messages_sent += len(frames)
            if self._failures and frames:  # only a batch that went out shows the repository is back
                record_event(s, EventCode.ATNA_REPOSITORY_RESTORED,
                             f"audit repository {self.sender.target} reachable again after {self._failures} failed "
                             f"attempt(s); sending the queued audit messages")
        if frames:
            self._failures, self._backoff = 0, 0.0
        return len(events) == self.cfg.batch_size

    def _messages(self, s: Session, e: Event) -> list[Outgoing]:
        """One event's messages; an event that cannot be mapped (a bug, odd data) is logged and
        passed over: it must not hold up every audit message after it."""
        try:
            return self.mapper.messages(s, e)
        except Exception:
            log.exception("audit event %d (%s) could not be made into an audit message; not sent", e.id, e.name)
            return []

    def _unreachable(self, exc: SyslogError, pending: int) -> None:
        self._failures += 1
        self._backoff = min(self.cfg.backoff_max_s, self.cfg.backoff_initial_s * 2 ** (self._failures - 1))
        log.warning("%s; %d audit message(s) wait, next try in %.1f s", exc, pending, self._backoff)
        if self._failures == 1:  # once per outage: an outage must not flood the audit trail
            with self.db.session() as s:
                record_event(s, EventCode.ATNA_REPOSITORY_UNREACHABLE,
                             f"{exc}; audit messages are kept in the queue and sent when it is back",
                             details={"target": self.sender.target, "error": str(exc)[:500]})

    def flush_and_stop(self, timeout_s: float) -> None:
        """At node stop: end the loop, then send what is left (the stop event too) while the
        repository answers, within timeout_s; the rest waits for the next start."""
        self.stop()
        self.join(timeout_s)
        if self.is_alive():  # still inside a send (a repository that does not answer): it owns the sender
            log.warning("audit repository %s did not answer in %.0f s; the rest is sent at the next start",
                        self.sender.target, timeout_s)
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.export_batch(flush=True):
            pass
        self.sender.close()


def _upload_description(e: Event) -> str:
    return "received by STOW-RS" if e.code == EventCode.STOW_RECEIVED else "uploaded through the web console or API"
