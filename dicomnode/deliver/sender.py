"""C-STORE SCU for the outbox: exponential backoff and dead letters (replay: dicomnode.deliver.retry).

Deliveries to one destination share an association. A destination that is down costs an
attempt to each due delivery; after `max_attempts` a delivery is a dead letter and stays on disk.
"""
from __future__ import annotations

import logging
import ssl
import threading
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.presentation import build_context
from sqlalchemy import select, update

from dicomnode.config import Settings
from dicomnode.deliver.outbox import Target
from dicomnode.core.dimse import STORED_STATUSES
from dicomnode.core.durable import OutsideRoot, confined
from storage.audit import record_event
from storage.db import Database, rows_changed
from storage.events import EventCode
from storage.models import Delivery, utcnow
from storage.states import DeliveryState

log = logging.getLogger(__name__)


def backoff_seconds(attempts: int, initial: float, maximum: float) -> float:
    return min(initial * 2 ** max(attempts - 1, 0), maximum)


def client_ssl_context(settings: Settings) -> ssl.SSLContext:
    tls = settings.tls
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None)
    context.check_hostname = False  # DICOM peers are addressed by IP; trust comes from the CA
    if tls.cert_file and tls.key_file:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


class ResultSender:
    """Sends results from the outbox to their destinations by C-STORE, one association per target."""

    def __init__(self, db: Database, outbox_root: Path, settings: Settings) -> None:
        self.db = db
        self.outbox_root = outbox_root
        self.settings = settings

    def recover(self) -> int:
        """Deliveries caught mid-send by a crash go back to pending (the peer de-duplicates by UID)."""
        with self.db.session() as s:
            return rows_changed(s, update(Delivery).where(Delivery.state == DeliveryState.SENDING).values(state=DeliveryState.PENDING))

    def send_due(self, only_ids: list[int] | None = None) -> int:
        """Send every due pending delivery (or just `only_ids`); returns how many were delivered."""
        with self.db.session() as s:
            query = select(Delivery).where(Delivery.state == DeliveryState.PENDING)
            if only_ids is not None:
                query = query.where(Delivery.id.in_(only_ids))
            else:
                query = query.where(Delivery.next_attempt_at <= utcnow())
            due = s.execute(query.order_by(Delivery.id)).scalars().all()
            claimed: list[Delivery] = []
            for d in due:
                if rows_changed(s, update(Delivery).where(Delivery.id == d.id, Delivery.state == DeliveryState.PENDING)
                                .values(state=DeliveryState.SENDING)):
                    claimed.append(d)
        groups: dict[Target, list[Delivery]] = defaultdict(list)
        for d in claimed:
            groups[Target(d.destination, d.ae_title, d.host, d.port, d.tls)].append(d)
        return sum(self._send_group(target, items) for target, items in groups.items())

    def _send_group(self, target: Target, items: list[Delivery]) -> int:
        ae = AE(ae_title=self.settings.node.ae_title)
        ae.acse_timeout = ae.dimse_timeout = self.settings.sender.connect_timeout_s
        ae.network_timeout = self.settings.node.network_timeout_s
        for sop_class in sorted({d.sop_class_uid for d in items})[:128]:
            ae.requested_contexts = ae.requested_contexts + [
                build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
            ]
        tls_args = (client_ssl_context(self.settings), None) if target.tls else None
        try:
            assoc = ae.associate(target.host, target.port, ae_title=target.ae_title,
                                 tls_args=tls_args)  # type: ignore[arg-type]  # pynetdicom types server_hostname as str; ssl takes None (no SNI)
        except Exception as exc:  # DNS failures, refused TLS handshakes
            return self._fail_all(items, target, f"cannot connect: {exc}")
        if not assoc.is_established:
            why = "association rejected" if assoc.is_rejected else "no association (peer down or unreachable)"
            return self._fail_all(items, target, why)
        delivered = 0
        try:
            for d in items:
                try:
                    status = assoc.send_c_store(dcmread(confined(self.outbox_root, d.path)))
                    code = getattr(status, "Status", None)
                    if code in STORED_STATUSES:
                        self._mark_delivered(d, target)
                        delivered += 1
                    else:
                        comment = getattr(status, "ErrorComment", "") if status else ""
                        why = f"status 0x{code:04X} {comment}".strip() if code is not None else "no response (timeout or abort)"
                        self._mark_failed(d, target, why)
                except (OSError, ValueError, OutsideRoot) as exc:
                    self._mark_failed(d, target, f"cannot send {d.path!r}: {exc}")
                if not assoc.is_established:
                    rest = [x for x in items if x.id > d.id]
                    self._fail_all(rest, target, "association lost")
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        return delivered

    def _fail_all(self, items: list[Delivery], target: Target, why: str) -> int:
        for d in items:
            self._mark_failed(d, target, why)
        return 0

    def _mark_delivered(self, d: Delivery, target: Target) -> None:
        with self.db.session() as s:
            s.execute(update(Delivery).where(Delivery.id == d.id)
                      .values(state=DeliveryState.DELIVERED, delivered_at=utcnow(), attempts=Delivery.attempts + 1, last_error=None))
            record_event(s, EventCode.DELIVERY_SENT, f"{d.sop_instance_uid} delivered to {target}",
                         job_id=d.job_id, delivery_id=d.id)

    def _mark_failed(self, d: Delivery, target: Target, why: str) -> None:
        cfg = self.settings.sender
        with self.db.session() as s:
            row = s.get(Delivery, d.id)
            assert row is not None
            row.attempts += 1
            row.last_error = why
            if row.attempts >= cfg.max_attempts:
                row.state = DeliveryState.DEAD
                record_event(s, EventCode.DELIVERY_DEAD_LETTER,
                             f"gave up on {target} after {row.attempts} attempts: {why}; `dicomnode retry --delivery {row.id}` sends it again",
                             job_id=row.job_id, delivery_id=row.id)
            else:
                delay = backoff_seconds(row.attempts, cfg.backoff_initial_s, cfg.backoff_max_s)
                row.state = DeliveryState.PENDING
                row.next_attempt_at = utcnow() + timedelta(seconds=delay)
                record_event(s, EventCode.DELIVERY_ATTEMPT_FAILED,
                             f"attempt {row.attempts} to {target} failed: {why}; next in {delay:.0f} s",
                             job_id=row.job_id, delivery_id=row.id)


class DeliveryLoop(threading.Thread):
    def __init__(self, sender: ResultSender, poll_seconds: float) -> None:
        super().__init__(name="sender", daemon=True)
        self.sender = sender
        self.poll_seconds = poll_seconds
        self.stopping = threading.Event()
        self.wake = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.sender.send_due()
            except Exception:
                log.exception("sender loop error")
            self.wake.wait(self.poll_seconds)
            self.wake.clear()

    def wake_up(self) -> None:
        """Look for due deliveries now instead of at the next poll (after a retry request)."""
        self.wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
