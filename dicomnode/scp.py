"""The application entity: association policy, C-ECHO and C-STORE for every storage SOP class."""
from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.config import Settings
from dicomnode.ingest import Ingestor, Sender, SUCCESS
from dicomnode.series import CompletionTracker
from storage.audit import record_event
from storage.db import Database
from storage.events import EventCode
from storage.models import Association, utcnow

log = logging.getLogger(__name__)

# What we accept (DICOM conformance, docs/conformance.md is generated from these lists).
ACCEPTED_TRANSFER_SYNTAXES: list[tuple[str, str]] = [
    ("1.2.840.10008.1.2", "Implicit VR Little Endian"),
    ("1.2.840.10008.1.2.1", "Explicit VR Little Endian"),
    ("1.2.840.10008.1.2.1.99", "Deflated Explicit VR Little Endian"),
    ("1.2.840.10008.1.2.2", "Explicit VR Big Endian (retired)"),
    ("1.2.840.10008.1.2.5", "RLE Lossless"),
    ("1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)"),
    ("1.2.840.10008.1.2.4.51", "JPEG Extended (Process 2 & 4)"),
    ("1.2.840.10008.1.2.4.53", "JPEG Extended (Process 6 & 8, retired): stored, not decoded"),
    ("1.2.840.10008.1.2.4.55", "JPEG Full Progression (Process 10 & 12, retired): stored, not decoded"),
    ("1.2.840.10008.1.2.4.57", "JPEG Lossless (Process 14)"),
    ("1.2.840.10008.1.2.4.70", "JPEG Lossless, First-Order Prediction (Process 14 SV1)"),
    ("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless"),
    ("1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless"),
    ("1.2.840.10008.1.2.4.90", "JPEG 2000 Lossless Only"),
    ("1.2.840.10008.1.2.4.91", "JPEG 2000"),
    ("1.2.840.10008.1.2.4.201", "High-Throughput JPEG 2000 Lossless Only"),
    ("1.2.840.10008.1.2.4.202", "High-Throughput JPEG 2000 with RPCL Lossless Only"),
    ("1.2.840.10008.1.2.4.203", "High-Throughput JPEG 2000"),
]
LOSSY_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.55",
    "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203",
}
UNCOMPRESSED = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"]


def negotiation_order() -> list[str]:
    """pynetdicom accepts the first of *our* syntaxes that a context proposes. We never transcode,
    so keep what the sender has: lossless compressed first, then uncompressed, and a lossy
    syntax only when the sender offers nothing lossless."""
    uids = [uid for uid, _ in ACCEPTED_TRANSFER_SYNTAXES]
    lossless = [u for u in uids if u not in LOSSY_TRANSFER_SYNTAXES and u not in UNCOMPRESSED]
    return lossless + UNCOMPRESSED + [u for u in uids if u in LOSSY_TRANSFER_SYNTAXES]


STORAGE_SOP_CLASSES: list[str] = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]

# A-ASSOCIATE-RJ (result, source, reason) per PS3.8 9.3.4
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # rejected-permanent, service-user, called AE not recognised
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE not recognised
REJECT_NO_REASON = (0x01, 0x01, 0x01)  # rejected-permanent, service-user, no reason given


@dataclass
class AssociationState:
    db_id: int
    calling_ae: str
    peer_host: str
    instances: int = 0
    bytes: int = 0
    end_state: str = "aborted"  # until a proper A-RELEASE is seen


class AssociationPolicy:
    def __init__(self, settings: Settings) -> None:
        self.called_ae = settings.node.ae_title
        self.calling_aes = set(settings.security.allowed_calling_aes)  # validated and stripped by the settings
        self.networks = settings.security.networks  # parsed by the settings: a bad entry never gets here

    def refusal(self, called: str, calling: str, host: str) -> tuple[EventCode, tuple[int, int, int], str] | None:
        if called.strip() != self.called_ae:
            return (EventCode.ASSOCIATION_REJECTED_CALLED_AE, REJECT_CALLED_AE,
                    f"called AE title {called.strip()!r} is not this node's ({self.called_ae!r})")
        if self.calling_aes and calling.strip() not in self.calling_aes:
            return (EventCode.ASSOCIATION_REJECTED_CALLING_AE, REJECT_CALLING_AE,
                    f"calling AE title {calling.strip()!r} is not on the allow-list")
        if self.networks:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                address = None
            if address is None or not any(address in net for net in self.networks):
                return (EventCode.ASSOCIATION_REJECTED_HOST, REJECT_NO_REASON,
                        f"host {host} is not on the allow-list")
        return None


def server_ssl_context(settings: Settings) -> ssl.SSLContext:
    tls = settings.tls
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.ca_file:
        context.load_verify_locations(str(tls.ca_file))
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return context


class StorageSCP:
    def __init__(self, settings: Settings, db: Database, ingestor: Ingestor, tracker: CompletionTracker) -> None:
        self.settings = settings
        self.db = db
        self.ingestor = ingestor
        self.tracker = tracker
        self.policy = AssociationPolicy(settings)
        self._states: dict[int, AssociationState] = {}
        self._lock = threading.Lock()
        self.server = None
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        cfg = self.settings.node
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_pdu_size = cfg.max_pdu_size
        ae.maximum_associations = cfg.max_associations
        ae.network_timeout = cfg.network_timeout_s
        ae.require_called_aet = False  # checked in _on_requested so the refusal is audited
        syntaxes = negotiation_order()
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(Verification, UNCOMPRESSED)
        return ae

    def handlers(self) -> list[tuple]:
        return [
            (evt.EVT_CONN_OPEN, self._on_connected),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]

    def start(self) -> None:
        cfg = self.settings.node
        ssl_context = server_ssl_context(self.settings) if self.settings.tls.enabled else None
        self.server = self.ae.start_server((cfg.host, cfg.port), block=False, evt_handlers=self.handlers(),
                                           ssl_context=ssl_context)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    # -- handlers ---------------------------------------------------------------------
    @staticmethod
    def _peer(event: evt.Event) -> tuple[str, str, str, int]:
        """(calling AE, called AE, host, port) from the A-ASSOCIATE request."""
        rq = event.assoc.requestor
        primitive = rq.primitive
        return str(primitive.calling_ae_title).strip(), str(primitive.called_ae_title).strip(), str(rq.address), int(rq.port)

    @staticmethod
    def _on_connected(event: evt.Event) -> None:
        # C-STORE is request/response: small responses must not wait on Nagle's algorithm
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_requested(self, event: evt.Event) -> None:
        calling, called, host, port = self._peer(event)
        refusal = self.policy.refusal(called, calling, host)
        if refusal is None:
            return
        code, rsd, reason = refusal
        with self.db.session() as s:
            row = Association(calling_ae=calling[:16], called_ae=called[:16], peer_host=host, peer_port=port,
                              tls=self.settings.tls.enabled, state="rejected", reject_reason=reason, ended_at=utcnow())
            s.add(row)
            s.flush()
            record_event(s, code, f"refused {calling}@{host}: {reason}", association_id=row.id)
        event.assoc.acse.send_reject(*rsd)
        event.assoc.kill()

    def _on_accepted(self, event: evt.Event) -> None:
        calling, called, host, port = self._peer(event)
        with self.db.session() as s:
            row = Association(calling_ae=calling[:16], called_ae=called[:16], peer_host=host, peer_port=port,
                              tls=self.settings.tls.enabled, state="accepted")
            s.add(row)
            s.flush()
            record_event(s, EventCode.ASSOCIATION_ACCEPTED, f"{calling}@{host}:{port} -> {called}", association_id=row.id)
            db_id = row.id
        with self._lock:
            self._states[id(event.assoc)] = AssociationState(db_id, calling, host)

    def _state(self, event: evt.Event) -> AssociationState | None:
        return self._states.get(id(event.assoc))

    def _on_echo(self, event: evt.Event) -> int:
        state = self._state(event)
        with self.db.session() as s:
            record_event(s, EventCode.ECHO_RECEIVED, "C-ECHO answered",
                         association_id=state.db_id if state else None)
        return SUCCESS

    def _on_store(self, event: evt.Event) -> Dataset | int:
        state = self._state(event)
        data = event.encoded_dataset(include_meta=True)
        sender = Sender(state.db_id if state else None, state.calling_ae if state else "", state.peer_host if state else "")
        outcome = self.ingestor.store(data, sender)
        if state is not None and outcome.status == SUCCESS:
            state.instances += 1
            state.bytes += len(data)
        if outcome.status == SUCCESS or not outcome.comment:
            return outcome.status
        rsp = Dataset()
        rsp.Status = outcome.status
        rsp.ErrorComment = outcome.comment[:64]
        return rsp

    def _on_released(self, event: evt.Event) -> None:
        state = self._state(event)
        if state is not None:
            state.end_state = "released"

    def _on_aborted(self, event: evt.Event) -> None:
        state = self._state(event)
        if state is not None:
            state.end_state = "aborted"

    def _on_closed(self, event: evt.Event) -> None:
        with self._lock:
            state = self._states.pop(id(event.assoc), None)
        if state is None:
            return  # rejected or never negotiated
        with self.db.session() as s:
            row = s.get(Association, state.db_id)
            if row is not None:
                row.state, row.ended_at = state.end_state, utcnow()
                row.instances_received, row.bytes_received = state.instances, state.bytes
                code = EventCode.ASSOCIATION_RELEASED if state.end_state == "released" else EventCode.ASSOCIATION_ABORTED
                record_event(s, code, f"{state.instances} instance(s), {state.bytes} bytes", association_id=state.db_id)
        self.tracker.association_ended(state.db_id)
