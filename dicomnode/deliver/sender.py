"""C-STORE SCU for the outbox: exponential backoff and dead letters (replay: dicomnode.deliver.retry).

Deliveries to one destination share an association. A destination that is down costs an
attempt to each due delivery; after `max_attempts` a delivery is a dead letter and stays on disk.
Forwards (kind "forward") are source instances read from the spool and proposed in their own
transfer syntax, so they go out as received (a compressed instance stays compressed).
"""
from __future__ import annotations

import ssl
import threading
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.presentation import build_context
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dicomnode.config import DICOMWEB_AE, Destination, Settings
from dicomnode.deliver import dicomweb
from dicomnode.deliver.commitment import StorageCommitment
from dicomnode.deliver.outbox import Target
from dicomnode.core import reactor
from dicomnode.core.dimse import STORED_STATUSES
from dicomnode.core.loops import PeriodicWorker
from dicomnode.core.durable import OutsideRoot, confined
from storage.audit import record_event
from storage.db import Database, rows_changed
from storage.events import EventCode
from storage.models import Delivery, Series, utcnow
from storage.states import DeliveryKind, DeliveryState



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
        reactor.install()  # result associations wake on the peer's responses instead of polling
        self.db = db
        self.outbox_root = outbox_root
        self.settings = settings
        self.spool_root = settings.spool_dir  # forwards send the spooled source files
        self.commitment = StorageCommitment(db, settings)
        # the claim's owner and lease (several nodes on one database: dicomnode.process.cluster)
        self.node_id = settings.node.identity()
        self.lease = timedelta(seconds=settings.node.lease_s)

    def file_of(self, d: Delivery) -> Path:
        """The file a delivery sends: a result in the outbox, a forward in the spool; never outside them."""
        return confined(self.spool_root if d.kind == DeliveryKind.FORWARD else self.outbox_root, d.path)

    def _contexts(self, items: list[Delivery]) -> list[tuple[str, list[str]]]:
        """(SOP class, transfer syntaxes) to propose: results in Explicit/Implicit VR Little Endian,
        forwards also in the syntax of their file alone, so they are sent as received."""
        plain: list[str] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        wanted: dict[tuple[str, str], None] = {}
        for d in items:
            wanted[(d.sop_class_uid, "")] = None
            if d.kind == DeliveryKind.FORWARD:
                try:
                    syntax = str(read_file_meta_info(self.file_of(d)).TransferSyntaxUID)
                except (OSError, ValueError, AttributeError, OutsideRoot):
                    continue  # the send fails with the reason below
                # a context of its own: an accepted exact match wins over a conversion (pynetdicom)
                wanted[(d.sop_class_uid, syntax)] = None
        contexts = [(sop, [syntax] if syntax else plain) for sop, syntax in wanted]
        return sorted(contexts)[:128]  # PS3.8: at most 128 presentation contexts

    def recover(self) -> int:
        """This node's deliveries caught mid-send by a crash go back to pending (the peer de-duplicates
        by UID); another live node's are its own (rows claimed before node ids: this node's)."""
        with self.db.session() as s:
            return rows_changed(s, update(Delivery)
                                .where(Delivery.state == DeliveryState.SENDING,
                                       (Delivery.claimed_by == self.node_id) | Delivery.claimed_by.is_(None))
                                .values(state=DeliveryState.PENDING, claimed_by=None, lease_expires_at=None))

    def send_due(self, only_ids: list[int] | None = None) -> int:
        """Send every due pending delivery (or just `only_ids`); returns how many were delivered."""
        with self.db.session() as s:
            query = select(Delivery).where(Delivery.state == DeliveryState.PENDING)
            if only_ids is not None:
                query = query.where(Delivery.id.in_(only_ids))
            else:
                query = query.where(Delivery.next_attempt_at <= utcnow())
            # PostgreSQL: rows another node is claiming now are skipped, not waited for; SQLite ignores
            # the lock and the compare-and-set on the state decides
            due = s.execute(query.order_by(Delivery.id).with_for_update(skip_locked=True)).scalars().all()
            claimed: list[Delivery] = []
            until = utcnow() + self.lease
            for d in due:
                if rows_changed(s, update(Delivery).where(Delivery.id == d.id, Delivery.state == DeliveryState.PENDING)
                                .values(state=DeliveryState.SENDING, claimed_by=self.node_id, lease_expires_at=until)):
                    claimed.append(d)
        groups: dict[Target, list[Delivery]] = defaultdict(list)
        for d in claimed:
            groups[Target(d.destination, d.ae_title, d.host, d.port, d.tls)].append(d)
        return sum(self._send_group(target, items) for target, items in groups.items())

    def _send_group(self, target: Target, items: list[Delivery]) -> int:
        dest = self.settings.destinations.get(target.name)
        if dest is not None and dest.type == "dicomweb":
            return self._send_web(dest, items)
        if target.ae_title == DICOMWEB_AE and dest is None:
            return self._fail_all(items, target, f"destination {target.name!r} is no longer in [destinations]")
        ae = AE(ae_title=self.settings.node.ae_title)
        ae.acse_timeout = ae.dimse_timeout = self.settings.sender.connect_timeout_s
        ae.network_timeout = self.settings.node.network_timeout_s
        ae.requested_contexts = [build_context(sop_class, syntaxes) for sop_class, syntaxes in self._contexts(items)]
        commit = self.commitment.wanted(target.name)  # storage commitment: one more context, and its report
        reported = threading.Event()
        if commit:
            ae.requested_contexts = ae.requested_contexts[:127] + [self.commitment.context()]
        tls_args = (client_ssl_context(self.settings), None) if target.tls else None
        try:
            assoc = ae.associate(target.host, target.port, ae_title=target.ae_title, tls_args=tls_args,  # type: ignore[arg-type]  # pynetdicom types server_hostname as str; ssl takes None (no SNI)
                                 evt_handlers=self.commitment.handlers(target, reported) if commit else None)
        except Exception as exc:  # DNS failures, refused TLS handshakes
            return self._fail_all(items, target, f"cannot connect: {exc}")
        if not assoc.is_established:
            why = "association rejected" if assoc.is_rejected else "no association (peer down or unreachable)"
            return self._fail_all(items, target, why)
        delivered = 0
        stored: list[Delivery] = []
        try:
            for d in items:
                try:
                    status = assoc.send_c_store(dcmread(self.file_of(d)))
                    code = getattr(status, "Status", None)
                    if code in STORED_STATUSES:
                        self._mark_delivered(d, target)
                        delivered += 1
                        stored.append(d)
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
            if commit:  # also after a lost association: what was stored is then failed, not left waiting
                self.commitment.request(assoc, target, stored, reported)
            if assoc.is_established:
                assoc.release()
        return delivered

    def _send_web(self, dest: Destination, items: list[Delivery]) -> int:
        """STOW-RS (dicomnode.deliver.dicomweb); each delivery's outcome from the server's answer."""
        where = dicomweb.stow_url(dest)
        sendable: list[dicomweb.Item] = []
        for d in items:
            try:
                sendable.append(dicomweb.Item(d.id, d.sop_instance_uid, self.file_of(d)))
            except OutsideRoot as exc:
                self._mark_failed(d, where, f"cannot send {d.path!r}: {exc}")
        outcome = dicomweb.send(dest, sendable, self.settings.sender.connect_timeout_s, self.settings.tls.ca_file)
        delivered = 0
        for d in items:
            if d.id not in outcome:
                continue
            why = outcome[d.id]
            if why is None:
                self._mark_delivered(d, where)
                delivered += 1
            else:
                self._mark_failed(d, where, why)
        return delivered

    def _fail_all(self, items: list[Delivery], target: Target, why: str) -> int:
        for d in items:
            self._mark_failed(d, target, why)
        return 0

    def _mark_delivered(self, d: Delivery, target: Target | str) -> None:
        # with storage commitment, stored is not yet delivered: the PACS's report decides
        state = DeliveryState.AWAITING_COMMITMENT if self.commitment.wanted(d.destination) else DeliveryState.DELIVERED
        with self.db.session() as s:
            s.execute(update(Delivery).where(Delivery.id == d.id)
                      .values(state=state, delivered_at=utcnow(), attempts=Delivery.attempts + 1, last_error=None,
                              lease_expires_at=None))
            record_event(s, EventCode.DELIVERY_SENT, f"{_what(d)}{d.sop_instance_uid} delivered to {target}",
                         series_instance_uid=_forwarded_series(s, d), job_id=d.job_id, delivery_id=d.id)

    def _mark_failed(self, d: Delivery, target: Target | str, why: str) -> None:
        cfg = self.settings.sender
        with self.db.session() as s:
            row = s.get(Delivery, d.id)
            assert row is not None
            row.attempts += 1
            row.last_error = why
            row.lease_expires_at = None  # claimed_by stays: the node that tried last
            if row.attempts >= cfg.max_attempts:
                row.state = DeliveryState.DEAD
                record_event(s, EventCode.DELIVERY_DEAD_LETTER,
                             f"{_what(d)}gave up on {target} after {row.attempts} attempts: {why}; `dicomnode retry --delivery {row.id}` sends it again",
                             series_instance_uid=_forwarded_series(s, d), job_id=row.job_id, delivery_id=row.id)
            else:
                delay = backoff_seconds(row.attempts, cfg.backoff_initial_s, cfg.backoff_max_s)
                row.state = DeliveryState.PENDING
                row.next_attempt_at = utcnow() + timedelta(seconds=delay)
                record_event(s, EventCode.DELIVERY_ATTEMPT_FAILED,
                             f"{_what(d)}attempt {row.attempts} to {target} failed: {why}; next in {delay:.0f} s",
                             series_instance_uid=_forwarded_series(s, d), job_id=row.job_id, delivery_id=row.id)


def _what(d: Delivery) -> str:
    return "forward of source instance " if d.kind == DeliveryKind.FORWARD else ""


def _forwarded_series(s: Session, d: Delivery) -> str | None:
    """A forward has no job to tie its events to its series: name the series on the event."""
    if d.kind != DeliveryKind.FORWARD or d.series_id is None:
        return None
    return s.execute(select(Series.series_instance_uid).where(Series.id == d.series_id)).scalar_one_or_none()


class DeliveryLoop(PeriodicWorker):
    """Sends due deliveries every poll_seconds; `wake_up` (after a retry request) sends at once."""

    def __init__(self, sender: ResultSender, poll_seconds: float) -> None:
        super().__init__("sender", poll_seconds)
        self.sender = sender

    def step(self) -> bool:
        self.sender.send_due()
        self.sender.commitment.expire_overdue()  # storage commitment reports that did not come in time
        return False
