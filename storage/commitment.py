"""Storage commitment of deliveries, as database transitions (the DICOM side: dicomnode.core.commitment,
dicomnode.deliver.commitment, dicomnode.receive.commitment_reports).

A delivery to a destination with storage commitment goes delivered -> awaiting_commitment (C-STORE
accepted) -> committed once the destination's N-EVENT-REPORT names it among the stored instances of
the transaction it was asked in. A failure (the report lists it as failed or leaves it out, no
report within the timeout, the N-ACTION refused) sends it back to pending with the delivery
backoff, or makes it a dead letter after the last attempt: the C-STORE and the request are
repeated under a new Transaction UID. A report is refused, and changes nothing, when its
Transaction UID is unknown or already settled, when it comes from another AE (or host) than the
destination the transaction was sent to, or when it names an instance not in the transaction.
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, select, update
from sqlalchemy.orm import Session

from storage.audit import record_event
from storage.events import EventCode
from storage.models import Delivery, utcnow
from storage.states import DeliveryState

# N-EVENT-REPORT event types of the Storage Commitment Push Model (PS3.4 J.3.3)
ALL_COMMITTED = 1
SOME_FAILED = 2
# N-EVENT-REPORT-RSP statuses (PS3.7 10.1.1.1.8): refused, and an event type we do not know
REPORT_REFUSED = 0x0110  # processing failure
NO_SUCH_EVENT_TYPE = 0x0113
REPORT_ACCEPTED = 0x0000

# Failure Reason (0008,1197) values, PS3.4 J.3.3.1.1
FAILURE_REASONS = {0x0110: "processing failure", 0x0112: "no such object instance", 0x0213: "resource limitation",
                   0x0122: "referenced SOP class not supported", 0x0119: "class / instance conflict",
                   0x0131: "duplicate transaction UID"}


@dataclass(frozen=True)
class RetryPolicy:
    """The delivery backoff ([sender] max_attempts, backoff_initial_s, backoff_max_s)."""
    max_attempts: int
    backoff_initial_s: float
    backoff_max_s: float

    def delay(self, attempts: int) -> float:
        # the same curve as a failed C-STORE (dicomnode.deliver.sender.backoff_seconds)
        return min(self.backoff_initial_s * 2 ** max(attempts - 1, 0), self.backoff_max_s)


@dataclass(frozen=True)
class CommitmentReport:
    """What an N-EVENT-REPORT says, and who sent it."""
    transaction_uid: str
    event_type: int
    committed: Sequence[tuple[str, str]]  # (SOP class, SOP instance) from Referenced SOP Sequence
    failed: Sequence[tuple[str, str, int | None]]  # ... and Failure Reason from Failed SOP Sequence
    calling_ae: str
    peer_host: str
    same_association: bool  # on the association that carried the N-ACTION (the peer is the destination)


@dataclass
class Outcome:
    """How a report was taken: the N-EVENT-REPORT-RSP status, and what it changed."""
    status: int
    reason: str = ""
    committed: list[int] = field(default_factory=list)  # delivery ids
    failed: list[int] = field(default_factory=list)


def open_transaction(s: Session, delivery_ids: Sequence[int], transaction_uid: str) -> list[Delivery]:
    """Ask for commitment of these awaiting deliveries under one new Transaction UID, before the
    N-ACTION goes out (a report may arrive on another association before its response)."""
    now = utcnow()
    s.execute(update(Delivery).where(Delivery.id.in_(delivery_ids), Delivery.state == DeliveryState.AWAITING_COMMITMENT)
              .values(commit_transaction_uid=transaction_uid, commit_requested_at=now))
    rows = list(s.execute(select(Delivery).where(Delivery.commit_transaction_uid == transaction_uid,
                                                 Delivery.state == DeliveryState.AWAITING_COMMITMENT)
                          .order_by(Delivery.id)).scalars())
    for row in rows:
        record_event(s, EventCode.DELIVERY_COMMIT_REQUESTED,
                     f"storage commitment of {row.sop_instance_uid} asked of {_target(row)} (transaction {transaction_uid})",
                     job_id=row.job_id, delivery_id=row.id, details={"transaction_uid": transaction_uid})
    return rows


def fail_transaction(s: Session, transaction_uid: str, why: str, policy: RetryPolicy) -> list[int]:
    """Every delivery still awaiting this transaction: not committed, retried (or dead). Ids returned."""
    rows = s.execute(select(Delivery).where(Delivery.commit_transaction_uid == transaction_uid,
                                            Delivery.state == DeliveryState.AWAITING_COMMITMENT)).scalars().all()
    for row in rows:
        fail_delivery(s, row, why, policy)
    return [row.id for row in rows]


def fail_delivery(s: Session, row: Delivery, why: str, policy: RetryPolicy) -> None:
    """Not committed: pending again after the backoff, or a dead letter after the last attempt. The
    attempt was counted when its C-STORE went out, so it is not counted twice."""
    row.last_error = f"not committed: {why}"
    what = f"storage commitment of {row.sop_instance_uid} by {_target(row)} failed: {why}"
    if row.attempts >= policy.max_attempts:
        row.state = DeliveryState.DEAD
        record_event(s, EventCode.DELIVERY_DEAD_LETTER,
                     f"{what}; gave up after {row.attempts} attempts; `dicomnode retry --delivery {row.id}` sends it again",
                     job_id=row.job_id, delivery_id=row.id, details={"transaction_uid": row.commit_transaction_uid})
        return
    delay = policy.delay(row.attempts)
    row.state = DeliveryState.PENDING
    row.next_attempt_at = utcnow() + timedelta(seconds=delay)
    record_event(s, EventCode.DELIVERY_COMMIT_FAILED, f"{what}; sent again in {delay:.0f} s",
                 job_id=row.job_id, delivery_id=row.id, details={"transaction_uid": row.commit_transaction_uid})


def _overdue(cutoff: datetime) -> ColumnElement[bool]:
    """Awaiting commitment since before `cutoff` (the request; the C-STORE when never asked)."""
    asked_at = func.coalesce(Delivery.commit_requested_at, Delivery.delivered_at)
    return and_(Delivery.state == DeliveryState.AWAITING_COMMITMENT, asked_at < cutoff)


def overdue_transactions(s: Session, timeout_s: float, now: datetime | None = None) -> list[str | None]:
    """Transactions (None: a delivery stored but never asked, e.g. a crash before the N-ACTION) whose
    report has not come within timeout_s of the request (of the C-STORE when never asked)."""
    cutoff = (now or utcnow()) - timedelta(seconds=timeout_s)
    return list(s.execute(select(Delivery.commit_transaction_uid).distinct().where(_overdue(cutoff))).scalars())


def expire_overdue(s: Session, timeout_s: float, policy: RetryPolicy) -> list[int]:
    """Fail every awaiting delivery whose report is overdue; returns their ids."""
    failed: list[int] = []
    now = utcnow()
    cutoff = now - timedelta(seconds=timeout_s)
    # several nodes on one PostgreSQL run this pass: lock the overdue rows first, so a second node
    # waits here and then (its next statements see the first node's commit) finds them failed already
    # instead of failing them twice; no-op on SQLite (one node)
    s.execute(select(Delivery.id).where(_overdue(cutoff)).with_for_update()).all()
    for uid in overdue_transactions(s, timeout_s, now):
        if uid is None:
            rows = s.execute(select(Delivery).where(Delivery.state == DeliveryState.AWAITING_COMMITMENT,
                                                    Delivery.commit_transaction_uid.is_(None),
                                                    Delivery.delivered_at < cutoff)).scalars().all()
            for row in rows:
                fail_delivery(s, row, f"never asked (no N-ACTION within {timeout_s:g} s of the C-STORE)", policy)
                failed.append(row.id)
        else:
            failed += fail_transaction(s, uid, f"no N-EVENT-REPORT for transaction {uid} within {timeout_s:g} s", policy)
    return failed


def settle_report(s: Session, report: CommitmentReport, policy: RetryPolicy) -> Outcome:
    """Take an N-EVENT-REPORT: check it, then mark each awaiting delivery of its transaction committed
    or failed. A refused report is audited and changes no delivery."""
    rows = s.execute(select(Delivery).where(Delivery.commit_transaction_uid == report.transaction_uid)
                     .order_by(Delivery.id)).scalars().all()
    refusal = _refusal(report, rows)
    if refusal is not None:
        status, reason = refusal
        refuse_report(s, report.calling_ae, report.peer_host, reason, rows[0] if rows else None,
                      {"transaction_uid": report.transaction_uid, "event_type": report.event_type})
        return Outcome(status, reason)
    committed = {uid for _, uid in report.committed}
    failed = {uid: why for _, uid, why in report.failed}
    outcome = Outcome(REPORT_ACCEPTED)
    now = utcnow()
    for row in rows:
        if row.state != DeliveryState.AWAITING_COMMITMENT:
            continue
        if row.sop_instance_uid in committed:
            row.state, row.committed_at, row.last_error = DeliveryState.COMMITTED, now, None
            record_event(s, EventCode.DELIVERY_COMMITTED,
                         f"{row.sop_instance_uid} committed by {_target(row)} (transaction {report.transaction_uid})",
                         job_id=row.job_id, delivery_id=row.id, details={"transaction_uid": report.transaction_uid})
            outcome.committed.append(row.id)
        else:
            why = (f"the report lists it as failed ({failure_reason(failed[row.sop_instance_uid])})"
                   if row.sop_instance_uid in failed else "the report does not name it")
            fail_delivery(s, row, f"{why}, transaction {report.transaction_uid}", policy)
            outcome.failed.append(row.id)
    return outcome


def refuse_report(s: Session, calling_ae: str, peer_host: str, reason: str, row: Delivery | None = None,
                  details: dict[str, object] | None = None) -> None:
    """Audit a refused N-EVENT-REPORT (on the delivery it named, when it named one)."""
    record_event(s, EventCode.DELIVERY_COMMIT_REPORT_REFUSED,
                 f"refused a storage commitment report from {calling_ae}@{peer_host}: {reason}",
                 delivery_id=row.id if row else None, job_id=row.job_id if row else None,
                 details={**(details or {}), "calling_ae": calling_ae, "peer_host": peer_host, "reason": reason})


def failure_reason(code: int | None) -> str:
    if code is None:
        return "no Failure Reason given"
    return f"Failure Reason 0x{code:04X} {FAILURE_REASONS.get(code, 'unknown reason')}"


def _refusal(report: CommitmentReport, rows: Sequence[Delivery]) -> tuple[int, str] | None:
    """Why a report must not be taken (status, reason), or None."""
    if report.event_type not in (ALL_COMMITTED, SOME_FAILED):
        return NO_SUCH_EVENT_TYPE, f"event type {report.event_type} is not 1 (all committed) or 2 (some failed)"
    if not rows:
        return REPORT_REFUSED, f"unknown Transaction UID {report.transaction_uid!r}"
    if not any(r.state == DeliveryState.AWAITING_COMMITMENT for r in rows):
        return REPORT_REFUSED, f"transaction {report.transaction_uid} is already settled (or was sent again)"
    destination = rows[0]
    if report.calling_ae != destination.ae_title:
        return REPORT_REFUSED, (f"calling AE {report.calling_ae!r} is not {destination.ae_title!r}, the destination "
                                f"{destination.destination!r} the transaction was sent to")
    if not report.same_association and not same_host(report.peer_host, destination.host):
        return REPORT_REFUSED, (f"host {report.peer_host} is not {destination.host}, the destination "
                                f"{destination.destination!r} the transaction was sent to")
    if report.event_type == ALL_COMMITTED and report.failed:
        return REPORT_REFUSED, "event type 1 (all committed) with a Failed SOP Sequence"
    asked = {r.sop_instance_uid: r.sop_class_uid for r in rows}
    named = [(c, u) for c, u in report.committed] + [(c, u) for c, u, _ in report.failed]
    if not named:
        return REPORT_REFUSED, "the report names no instance"
    for sop_class, uid in named:
        if asked.get(uid) != sop_class:
            return REPORT_REFUSED, f"instance {uid} ({sop_class}) is not in transaction {report.transaction_uid}"
    if set(report.committed) & {(c, u) for c, u, _ in report.failed}:
        return REPORT_REFUSED, "an instance is listed both as committed and as failed"
    return None


def same_host(peer: str, configured: str) -> bool:
    """The peer address is the destination's host: the same IP, or one its name resolves to."""
    try:
        return ipaddress.ip_address(peer) == ipaddress.ip_address(configured)
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(configured, None)}
    except OSError:
        return False
    return peer in addresses


def _target(row: Delivery) -> str:
    return f"{row.ae_title}@{row.host}:{row.port}"
