"""The application entity: association policy, C-ECHO and C-STORE for every storage SOP class."""
from __future__ import annotations

import copy
import fcntl
import gc
import ipaddress
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.association import Association as PynetAssociation
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import A_RELEASE, P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # pynetdicom makes its SOP class names at import time
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import Settings
from dicomnode.core import reactor
from dicomnode.core.dimse import REJECT_CALLED_AE, REJECT_CALLING_AE, REJECT_LIMIT, REJECT_NO_REASON, SUCCESS
from dicomnode.core.loops import PeriodicWorker
from dicomnode.receive.balance import ConnectionLoads, wait_for_turn
from dicomnode.receive.commitment_reports import CommitmentReports
from dicomnode.receive.fast_store import FastStore, StoreRequest, eligible
from dicomnode.receive.intake import Intake, IntakeSession, Origin, StoreOutcome
from dicomnode.receive.part10 import file_meta, part10_file
from dicomnode.receive.shared_counts import SharedCounts
from dicomnode.receive.store_response import error_comment, send_store_responses_directly
from storage.audit import record_event
from storage.db import Database
from storage.events import EventCode
from storage.models import Association, utcnow
from storage.states import AssociationState

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

# pynetdicom counts every connection, even one that has not sent its A-ASSOCIATE-RQ yet, against
# AE.maximum_associations. We enforce node.max_associations ourselves on associations only (in
# _on_requested), so idle connections cannot lock peers out; pynetdicom's limit stays as a backstop
# (per receiver process: with node.receive_processes > 1 the node-wide backstop is that many times it).
CONNECTION_HEADROOM = 64
MAX_COMMAND_BYTES = 64 * 1024
PDU_ALLOWANCE = 2**20  # a PDU may carry a whole data set (max_pdu_size 0) plus headers
GC_INTERVAL_S = 30.0
LISTEN_BACKLOG = 512  # the kernel caps it at net.core.somaxconn


def safe_text(value: str, limit: int = 16) -> str:
    """A peer-supplied AE title fit for one log line and a String(16) column: control characters
    escaped, then cut to `limit`."""
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in value)
    return text[:limit]


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's acceptor with three fixes for connection floods:

    - listen backlog LISTEN_BACKLOG instead of socketserver's 5: a burst overflowed it and the
      kernel dropped SYNs, which peers retry only after 1 s, 3 s, 7 s;
    - the TLS handshake runs in the connection's own thread (on its first read) instead of in the
      accept loop, where one silent client blocked every later connection indefinitely;
    - supported contexts copied cheaply per connection (ContextList).
    """

    request_queue_size = LISTEN_BACKLOG

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contexts = ContextList(self.contexts)
        self._collected = time.monotonic()

    def service_actions(self) -> None:
        """pynetdicom runs a full gc.collect() at every 60th turn of the accept loop (dead
        associations' reference cycles); a turn comes at least every poll interval, so with a short
        one that was every few seconds, under load a tenth of a receiver's CPU: at most every GC_INTERVAL_S."""
        now = time.monotonic()
        if now - self._collected >= GC_INTERVAL_S:
            gc.collect()
            self._collected = now

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        listening = self.socket
        if listening is None:  # closed by server_close(): fail as accept() on a closed socket does
            raise OSError("the listening socket is closed")
        client, address = listening.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address


class SharedSocketServer(GuardedServer):
    """GuardedServer on the node's listening socket, which all its receiver processes inherit: one
    accept queue for all, and a receiver serving more connections than another lets that one
    accept first (dicomnode.receive.balance), so associations spread evenly over the processes.

    The shared socket is never shut down here (that would stop every receiver listening), only
    this process's descriptor closed; it is non-blocking, so a receiver that loses the race for a
    connection goes back to waiting (socketserver drops the OSError of get_request)."""

    def __init__(self, *args: Any, listen_fd: int, loads: ConnectionLoads, **kwargs: Any) -> None:
        self._listen_fd = listen_fd
        self.loads = loads
        self._in_flight = 0  # accepted, association thread not started yet
        self._count_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self.socket is not None:
            self.socket.close()  # the one socketserver made: the node's is used instead
        self.socket = socket.socket(fileno=self._listen_fd)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        self.loads.publish(0)  # the node already listens on it; this receiver now takes connections

    def connections(self) -> int:
        """Connections this process serves now (accepted ones whose association has not started count too)."""
        return self._in_flight + len(self.active_associations)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        listening = self.socket
        if listening is None:
            raise OSError("the listening socket is closed")
        if not wait_for_turn(listening, self.loads, self.connections()):
            raise BlockingIOError("the connection went to a less loaded receiver")
        client, address = super().get_request()  # BlockingIOError: another receiver took it first
        client.setblocking(True)
        with self._count_lock:
            self._in_flight += 1
        self.loads.publish(self.connections())
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:  # the association thread, when there is one, is running and counted by now
            with self._count_lock:
                self._in_flight -= 1

    def service_actions(self) -> None:
        super().service_actions()
        self.loads.publish(self.connections())  # ended associations, at every turn of the accept loop

    def server_close(self) -> None:
        if self.socket is not None:
            self.socket.close()


class SlotLedger:
    """How many associations the node serves: node.max_associations holds for the whole node. A
    single process counts only its own (others() is 0)."""

    def others(self) -> int:
        """Associations held by the node's other receiver processes."""
        return 0

    def publish(self, mine: int) -> None:
        """Tell the other processes how many associations this one holds now."""

    @property
    def lock(self) -> "threading.Lock | _FileLock":
        return _NO_LOCK


class SharedSlots(SharedCounts, SlotLedger):
    """Receiver process `index`'s view of the node-wide association count: one count per process in
    a small shared file, read and written under flock on that file, so "count and take a slot" is
    one step across processes. The kernel drops a dead process's flock, and the node zeroes its
    count (clear), so a kill -9 never leaves a slot or the lock held."""

    def __init__(self, path: Path, index: int) -> None:
        super().__init__(path, index)
        self._lock = _FileLock(self._fd)

    @staticmethod
    def clear(path: Path, index: int) -> None:
        """Receiver `index` died: its associations went with it (by the node)."""
        with SharedSlots(path, index) as slots, slots.lock:
            slots.publish(0)

    def others(self) -> int:
        counts = self.counts()
        return sum(counts) - counts[self.index]

    @property
    def lock(self) -> "_FileLock":
        return self._lock


class _FileLock:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)


_NO_LOCK = threading.Lock()  # SlotLedger: nothing to share, the SCP's own lock already serialises


class ContextList(list[PresentationContext]):
    """Our supported presentation contexts, cheap to copy.

    pynetdicom deep-copies them for every connection (_create_association). With ~170 storage
    classes that costs ~15 ms of CPU a connection: a burst of 50 connections spent over a second
    on it, ahead of a monitor's C-ECHO. A context's only mutable part is its transfer-syntax list
    (UIDs are immutable strings), so copying that list is the whole deep copy."""

    def __deepcopy__(self, memo: dict[int, object]) -> list[PresentationContext]:
        copies = []
        for context in self:
            clone = copy.copy(context)
            clone._transfer_syntax = list(context._transfer_syntax)
            copies.append(clone)
        return copies


@dataclass
class OpenAssociation:
    db_id: int
    calling_ae: str
    peer_host: str
    intake: IntakeSession  # the instances of this association enter through it
    instances: int = 0
    bytes: int = 0
    end_state: AssociationState = AssociationState.ABORTED  # until a proper A-RELEASE is seen
    guard: "DimseGuard | None" = None


@dataclass
class Connection:
    """A TCP connection that has not sent its A-ASSOCIATE-RQ yet."""
    host: str
    port: int
    opened: float = field(default_factory=time.monotonic)


class DimseGuard:
    """Sits between one association's DUL and its DIMSE decoder (pynetdicom has no hook there).

    - A data set over `max_bytes` is not buffered further: its fragments are passed on empty, so
      the message still completes, and the handler refuses it (see take_oversize).
    - A C-STORE-RQ that announced a data set which never comes (the peer sends the next command,
      or nothing for `timeout_s`) is answered by `on_missing` instead of hanging the association.
    """

    def __init__(self, assoc: PynetAssociation, max_bytes: int, timeout_s: float,
                 on_missing: Callable[[DIMSEMessage, int], None]) -> None:
        self.dimse = assoc.dimse
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.on_missing = on_missing
        self._inner = assoc.dimse.receive_primitive
        self._lock = threading.Lock()
        self._received = 0  # data-set bytes of the message being decoded
        self._data_seen = False
        self._oversize: set[int] = set()  # message ids whose data set went over max_bytes
        self._timer: threading.Timer | None = None
        assoc.dimse.receive_primitive = self.receive  # type: ignore[method-assign]  # pynetdicom has no hook here: wrap its method

    def receive(self, primitive: P_DATA) -> None:
        # one PDV at a time: pynetdicom drops the PDVs after the one that completes a message
        with self._lock:
            for context_id, data in primitive.presentation_data_value_list:
                self._one(context_id, data)

    def _one(self, context_id: int, data: bytes) -> None:
        message = self.dimse.message
        is_command = bool(data[0] & 1) if data else True
        if message is not None and self._awaiting_dataset(message) and is_command:
            self._answer_missing(message)  # a new command came instead of the announced data set
            message = None
        has_command = message is not None and "CommandField" in message.command_set
        if is_command:
            self._received += len(data)
            if self._received > MAX_COMMAND_BYTES:
                data = data[:1]  # a command set is a few hundred bytes: stop buffering; it fails to decode
        elif message is None or not has_command:  # has_command implies a message
            data = data[:1]  # a data set with no command before it: pynetdicom aborts, buffer nothing
        else:
            self._data_seen = True
            self._cancel_timer()
            self._received += len(data) - 1
            if self._received > self.max_bytes:
                self._oversize.add(int(message.command_set.get("MessageID", -1)))
                message.data_set = BytesIO()  # free what was buffered; keep only the last-fragment bit
                data = data[:1]
        single = P_DATA()
        single.presentation_data_value_list = [[context_id, data]]  # type: ignore[list-item]  # pynetdicom annotates tuples, its setter takes only lists
        self._inner(single)
        current = self.dimse.message
        if current is None:
            self._received, self._data_seen = 0, False
            return
        if is_command and "CommandField" in current.command_set:
            self._received = 0  # the command set is complete: from here on, count the data set
        if self._awaiting_dataset(current) and self._timer is None:
            self._timer = threading.Timer(self.timeout_s, self._timed_out, args=(current,))
            self._timer.daemon = True
            self._timer.start()

    def _awaiting_dataset(self, message: DIMSEMessage) -> bool:
        """The command set is complete, announced a data set, and no data fragment came yet."""
        return "CommandField" in message.command_set and not self._data_seen

    def _timed_out(self, message: DIMSEMessage) -> None:
        with self._lock:
            self._timer = None
            if self.dimse.message is message and self._awaiting_dataset(message):
                self._answer_missing(message)

    def _answer_missing(self, message: DIMSEMessage) -> None:
        self._cancel_timer()
        self.dimse.message = None
        self._received, self._data_seen = 0, False
        if isinstance(message, C_STORE_RQ):
            self.on_missing(message, int(message.context_id or 0))
        else:
            log.warning("dropped a DIMSE request that announced a data set and sent none")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def take_oversize(self, message_id: int) -> bool:
        """True once for a message whose data set went over the limit."""
        with self._lock:
            if message_id in self._oversize:
                self._oversize.discard(message_id)
                return True
            return False

    def close(self) -> None:
        with self._lock:
            self._cancel_timer()


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


def _encoded_file(event: evt.Event, request: C_STORE) -> bytes:
    """The received data set as a Part 10 file (dicomnode.receive.part10), or pynetdicom's own
    encoding when a command value cannot be written that way (not ASCII, too long)."""
    try:
        return part10_file(str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID),
                           str(event.context.transfer_syntax), cast(BytesIO, request.DataSet).getbuffer())
    except ValueError:
        return event.encoded_dataset(include_meta=True)


def read_exactly(sock: socket.socket | None, nr_bytes: int) -> bytearray:
    """`nr_bytes` from the socket into one buffer; fewer when the peer closes first (what
    pynetdicom's AssociationSocket.recv returns then, and the DUL takes as the connection closing)."""
    if sock is None:
        return bytearray()
    buffer = bytearray(nr_bytes)
    with memoryview(buffer) as view:
        received = 0
        while received < nr_bytes:
            count = sock.recv_into(view[received:], nr_bytes - received)
            if not count:
                break
            received += count
    if received < nr_bytes:
        del buffer[received:]
    return buffer


class StorageSCP:
    def __init__(self, settings: Settings, db: Database, intake: Intake, slots: SlotLedger | None = None,
                 shared: "tuple[int, ConnectionLoads] | None" = None) -> None:
        """`slots`: the node-wide association count (SharedSlots in a receiver process);
        `shared`: (the node's listening socket, the receivers' connection loads) in a receiver process."""
        self.settings = settings
        self.db = db
        self.intake = intake
        self.slots = slots or SlotLedger()
        self.shared = shared
        self.pid = os.getpid()
        self.policy = AssociationPolicy(settings)
        self._states: dict[int, OpenAssociation] = {}
        self._lock = threading.Lock()
        # associations past their A-ASSOCIATE-RQ that hold one of node.max_associations slots
        self._slots: dict[int, PynetAssociation] = {}
        self._guards: dict[int, DimseGuard] = {}
        self._fast: dict[int, FastStore] = {}  # associations whose C-STORE requests take the fast path
        self._deadlines = _DatasetDeadlines(self)
        self._storage_classes = frozenset(STORAGE_SOP_CLASSES)
        # connections that have not sent an A-ASSOCIATE-RQ yet (audited if closed for idling)
        self._connections: dict[int, Connection] = {}
        self.server: ThreadedAssociationServer | None = None
        # storage commitment reports on new associations, when a destination asks for commitment
        self.commitment = CommitmentReports(settings, db) if any(
            d.storage_commitment for d in settings.destinations.values()) else None
        reactor.install()  # associations wake on data instead of polling each millisecond
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        cfg = self.settings.node
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_pdu_size = cfg.max_pdu_size
        ae.maximum_associations = cfg.max_associations + CONNECTION_HEADROOM  # backstop, see above
        ae.network_timeout = cfg.network_timeout_s
        # an acceptor waits this long for the A-ASSOCIATE-RQ (and ARTIM uses it), default 30 s
        ae.acse_timeout = cfg.idle_connection_timeout_s
        ae.require_called_aet = False  # checked in _on_requested so the refusal is audited
        syntaxes = negotiation_order()
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(Verification, UNCOMPRESSED)
        if self.commitment is not None:
            self.commitment.accept_context(ae, UNCOMPRESSED)
        return ae

    def handlers(self) -> list[tuple]:
        return [
            (evt.EVT_CONN_OPEN, self._on_connected),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ACSE_RECV, self._on_acse_received),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            *([self.commitment.handler()] if self.commitment is not None else []),
        ]

    def start(self) -> None:
        cfg = self.settings.node
        ssl_context = server_ssl_context(self.settings) if self.settings.tls.enabled else None
        # AE.start_server(block=False), with our server class
        if self.shared is None:
            server: ThreadedAssociationServer = self.ae.make_server(
                (cfg.host, cfg.port), evt_handlers=self.handlers(), ssl_context=ssl_context, server_class=GuardedServer)
            poll = 0.5
        else:
            listen_fd, loads = self.shared
            server = self.ae.make_server((cfg.host, cfg.port), evt_handlers=self.handlers(), ssl_context=ssl_context,
                                         server_class=SharedSocketServer, listen_fd=listen_fd, loads=loads)
            poll = 0.1  # how soon the other receivers see this one's ended associations (service_actions)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": poll}, name="dicom-acceptor",
                                  daemon=True)
        thread.start()
        self.ae._servers.append(server)
        self.server = server
        self._deadlines.start()

    def stop(self) -> None:
        self._deadlines.stop()
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def expire_waiting_requests(self) -> None:
        """Answer fast-path C-STORE requests whose data set is overdue (node.dataset_timeout_s)."""
        now = time.monotonic()
        with self._lock:
            waiting = list(self._fast.values())
        for fast in waiting:
            fast.expire(now)

    # -- handlers ---------------------------------------------------------------------
    @staticmethod
    def _peer(event: evt.Event) -> tuple[str, str, str, int]:
        """(calling AE, called AE, host, port) from the A-ASSOCIATE request, AE titles log-safe."""
        rq = event.assoc.requestor
        primitive = rq.primitive
        if primitive is None:  # pynetdicom sets it before any event that reaches here
            raise RuntimeError("no A-ASSOCIATE request on this association")
        return (safe_text(str(primitive.calling_ae_title).strip()), safe_text(str(primitive.called_ae_title).strip()),
                str(rq.address), int(rq.port))

    def _on_connected(self, event: evt.Event) -> None:
        # C-STORE is request/response: small responses must not wait on Nagle's algorithm
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rq = event.assoc.requestor
        self._bound_pdu_reads(event.assoc, str(rq.address), int(rq.port))
        send_store_responses_directly(event.assoc.dimse)
        if isinstance(sock, ssl.SSLSocket) and not self._tls_handshake(sock, str(rq.address), int(rq.port)):
            return
        with self._lock:
            self._connections[id(event.assoc)] = Connection(str(rq.address), int(rq.port))

    def _bound_pdu_reads(self, assoc: PynetAssociation, host: str, port: int) -> None:
        """pynetdicom reads a whole PDU, of the length its header claims, into memory before
        anything else sees it. A length over the instance cap ends the connection instead (the
        DUL treats the error as the connection closing) and is audited. Reads go straight into one
        buffer of the PDU's size (pynetdicom's own reader appends 4 KiB pieces: 128 calls for a CT slice)."""
        transport = assoc.dul.socket
        if transport is None:
            return
        limit = self.settings.node.max_instance_mb * 2**20 + PDU_ALLOWANCE

        def bounded(nr_bytes: int) -> bytearray:
            if nr_bytes > limit:
                with self.db.session() as s:
                    record_event(s, EventCode.INSTANCE_REJECTED_TOO_LARGE,
                                 f"a PDU of {nr_bytes} bytes from {host}:{port}, over node.max_instance_mb; connection closed",
                                 association_id=self._states[id(assoc)].db_id if id(assoc) in self._states else None,
                                 details={"peer_host": host, "peer_port": port})
                raise OSError(f"PDU of {nr_bytes} bytes refused")
            return read_exactly(transport.socket, nr_bytes)

        transport.recv = bounded  # type: ignore[method-assign]  # pynetdicom has no PDU-length hook: wrap its method

    def _tls_handshake(self, sock: ssl.SSLSocket, host: str, port: int) -> bool:
        """The TLS handshake, in this connection's thread and bounded by the idle timeout (GuardedServer
        defers it from the accept loop). A failure is audited and the connection shut down; a peer
        that hangs up first (a port probe, a health check) is not, as for plain TCP."""
        timeout = self.settings.node.idle_connection_timeout_s
        sock.settimeout(timeout)
        try:
            sock.do_handshake()
            return True
        except (ssl.SSLError, OSError) as exc:
            details = {"peer_host": host, "peer_port": port}
            if isinstance(exc, TimeoutError):
                code, message = EventCode.CONNECTION_CLOSED_IDLE, f"closed a connection from {host}:{port} that did not complete the TLS handshake in {timeout:g} s"
            elif isinstance(exc, ssl.SSLEOFError) or isinstance(exc, ConnectionResetError):
                code, message = None, ""
            else:
                code, message = EventCode.TLS_HANDSHAKE_FAILED, f"TLS handshake with {host}:{port} failed: {exc}"
            if code is not None:
                with self.db.session() as s:
                    record_event(s, code, message, details=details)
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the association then sees the connection closed
            except OSError:
                pass
            return False
        finally:
            sock.settimeout(None)

    def _on_requested(self, event: evt.Event) -> None:
        with self._lock:
            self._connections.pop(id(event.assoc), None)
        calling, called, host, port = self._peer(event)
        refusal = self.policy.refusal(called, calling, host) or self._limit_refusal(event.assoc)
        if refusal is None:
            self._guard(event.assoc)
            return
        code, rsd, reason = refusal
        # answer first: under a burst the audit writes queue up on the database, and a refused
        # peer (a monitor's C-ECHO) must not wait for them; the row follows in this same thread
        event.assoc.acse.send_reject(*rsd)
        self._record_refusal(code, reason, calling, called, host, port)
        event.assoc.kill()

    def _limit_refusal(self, assoc: PynetAssociation) -> tuple[EventCode, tuple[int, int, int], str] | None:
        """Take one of node.max_associations slots for this association, or say why not."""
        limit = self.settings.node.max_associations
        with self._lock, self.slots.lock:
            # a thread that ended without EVT_CONN_CLOSE must not hold its slot forever
            for key in [k for k, a in self._slots.items() if not a.is_alive()]:
                del self._slots[key]
            in_use = len(self._slots) + self.slots.others()  # the node's, over all receiver processes
            if in_use >= limit:
                self.slots.publish(len(self._slots))
                return (EventCode.ASSOCIATION_REFUSED_LIMIT, REJECT_LIMIT,
                        f"local limit exceeded: {in_use} of {limit} associations in use (node.max_associations)")
            self._slots[id(assoc)] = assoc
            self.slots.publish(len(self._slots))
        return None

    def _guard(self, assoc: PynetAssociation) -> None:
        """Installed before the A-ASSOCIATE-AC goes out, so it sees the first P-DATA."""
        cfg = self.settings.node
        guard = DimseGuard(assoc, cfg.max_instance_mb * 2**20, cfg.dataset_timeout_s,
                           lambda message, cx: self._answer_no_dataset(assoc, message, cx))
        fast = None
        if eligible(assoc) and isinstance(assoc.dul, reactor.WakeableDUL):
            fast = FastStore(assoc, self, cfg.max_instance_mb * 2**20, cfg.dataset_timeout_s, self._storage_classes)
            assoc.dul.pdata_sink = fast.feed
        with self._lock:
            self._guards[id(assoc)] = guard
            if fast is not None:
                self._fast[id(assoc)] = fast

    def _record_refusal(self, code: EventCode, reason: str, calling: str, called: str, host: str, port: int) -> None:
        with self.db.session() as s:
            row = Association(calling_ae=calling[:16], called_ae=called[:16], peer_host=host[:64], peer_port=port,
                              tls=self.settings.tls.enabled, state=AssociationState.REJECTED, reject_reason=reason, ended_at=utcnow())
            s.add(row)
            s.flush()
            record_event(s, code, f"refused {calling}@{host}: {reason}", association_id=row.id)

    def _on_rejected(self, event: evt.Event) -> None:
        """pynetdicom's own refusals (its association limit, the backstop): the ones our policy
        sends in _on_requested do not come here, so nothing is audited twice."""
        if not event.assoc.is_acceptor or event.assoc.requestor.primitive is None:
            return
        calling, called, host, port = self._peer(event)
        sent = event.assoc.acceptor.primitive
        rsd = (sent.result, sent.result_source, sent.diagnostic) if sent is not None else None
        if rsd == REJECT_LIMIT:
            code, reason = EventCode.ASSOCIATION_REFUSED_LIMIT, "local limit exceeded (connections in use)"
        else:
            code, reason = EventCode.ASSOCIATION_REJECTED_CALLING_AE, f"refused by the DICOM stack, A-ASSOCIATE-RJ {rsd}"
        self._record_refusal(code, reason, calling, called, host, port)

    def _answer_no_dataset(self, assoc: PynetAssociation, message: DIMSEMessage, context_id: int) -> None:
        """C-STORE-RSP 0xC000 to a C-STORE-RQ whose data set never came (called by the DimseGuard)."""
        command = message.command_set
        outcome = self._session(assoc).refuse_no_dataset(command.get("AffectedSOPInstanceUID"))
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = command.MessageID
        for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID"):
            try:
                setattr(rsp, keyword, command.get(keyword))
            except Exception:  # a hostile UID pynetdicom will not encode: the response goes without it
                pass
        rsp.Status = outcome.status
        rsp.ErrorComment = error_comment(outcome.comment or "")  # type: ignore[assignment]  # pynetdicom: unannotated `= None`
        assoc.dimse.send_msg(rsp, context_id)

    def _session(self, assoc: PynetAssociation) -> IntakeSession:
        """The association's intake session; one that stores nothing when it was never accepted."""
        state = self._states.get(id(assoc))
        return state.intake if state is not None else self.intake.open(Origin(None, "", ""))

    def _on_accepted(self, event: evt.Event) -> None:
        calling, called, host, port = self._peer(event)
        with self.db.session() as s:
            row = Association(calling_ae=calling[:16], called_ae=called[:16], peer_host=host, peer_port=port,
                              tls=self.settings.tls.enabled, state=AssociationState.ACCEPTED, receiver_pid=self.pid)
            s.add(row)
            s.flush()
            record_event(s, EventCode.ASSOCIATION_ACCEPTED, f"{calling}@{host}:{port} -> {called}", association_id=row.id)
            db_id = row.id
        with self._lock:
            self._states[id(event.assoc)] = OpenAssociation(db_id, calling, host, self.intake.open(Origin(db_id, calling, host)),
                                                            guard=self._guards.get(id(event.assoc)))

    def _state(self, event: evt.Event) -> OpenAssociation | None:
        return self._states.get(id(event.assoc))

    def _on_echo(self, event: evt.Event) -> int:
        state = self._state(event)
        with self.db.session() as s:
            record_event(s, EventCode.ECHO_RECEIVED, "C-ECHO answered",
                         association_id=state.db_id if state else None)
        return SUCCESS

    def _on_store(self, event: evt.Event) -> Dataset | int:
        state = self._state(event)
        request = cast(C_STORE, event.request)  # EVT_C_STORE's request (pynetdicom casts it the same way)
        session = self._session(event.assoc)
        if (state is not None and state.guard is not None and request.MessageID is not None
                and state.guard.take_oversize(request.MessageID)):
            return response(session.refuse_too_large())
        if request.DataSet is None or not request.DataSet.getbuffer().nbytes:
            # CommandDataSetType 0x0101 (or an empty data set): pynetdicom would hand us only file meta
            return response(session.refuse_no_dataset(request.AffectedSOPInstanceUID))
        return response(self._store(event.assoc, _encoded_file(event, request)))

    def _store(self, assoc: PynetAssociation, data: bytes) -> StoreOutcome:
        """Store one encoded instance received on `assoc` and count it on the association."""
        outcome = self._session(assoc).store(data)
        state = self._states.get(id(assoc))
        if state is not None and outcome.status == SUCCESS:
            state.instances += 1
            state.bytes += len(data)
        return outcome

    # -- the fast path's StoreService (dicomnode.receive.fast_store) ------------------------
    def ready(self, assoc: PynetAssociation) -> bool:
        return id(assoc) in self._states

    def store_fragments(self, assoc: PynetAssociation, request: StoreRequest, transfer_syntax: str,
                        fragments: list[memoryview]) -> StoreOutcome:
        # parse_store_request admitted only ASCII UIDs of at most 64 characters: the file meta can hold them
        data = b"".join((file_meta(request.sop_class_uid, request.sop_instance_uid, transfer_syntax), *fragments))
        return self._store(assoc, data)

    def refuse_too_large(self, assoc: PynetAssociation) -> StoreOutcome:
        return self._session(assoc).refuse_too_large()

    def refuse_no_dataset(self, assoc: PynetAssociation, sop_instance_uid: str) -> StoreOutcome:
        return self._session(assoc).refuse_no_dataset(sop_instance_uid)

    def _on_acse_received(self, event: evt.Event) -> None:
        """The peer's A-RELEASE-RQ, taken off the queue by the association thread before it queues
        our A-RELEASE-RP: the sender said it was done. EVT_RELEASED comes only after the RP is queued,
        and the DUL thread may send it, see the peer close and fire EVT_CONN_CLOSE before that."""
        primitive = getattr(event, "primitive", None)
        if isinstance(primitive, A_RELEASE) and primitive.result is None:
            self._on_released(event)

    def _on_released(self, event: evt.Event) -> None:
        state = self._state(event)
        if state is not None:
            state.end_state = AssociationState.RELEASED

    def _on_aborted(self, event: evt.Event) -> None:
        state = self._state(event)
        if state is not None:
            state.end_state = AssociationState.ABORTED

    def _on_closed(self, event: evt.Event) -> None:
        key = id(event.assoc)
        with self._lock:
            state = self._states.pop(key, None)
            connection = self._connections.pop(key, None)
            guard = self._guards.pop(key, None)
            self._fast.pop(key, None)
            if self._slots.pop(key, None) is not None:
                with self.slots.lock:
                    self.slots.publish(len(self._slots))
        if guard is not None:
            guard.close()
        if connection is not None:
            self._audit_idle(connection)
        if state is None:
            return  # rejected or never negotiated
        with self.db.session() as s:
            row = s.get(Association, state.db_id)
            if row is not None:
                row.state, row.ended_at = state.end_state, utcnow()
                row.instances_received, row.bytes_received = state.instances, state.bytes
                code = EventCode.ASSOCIATION_RELEASED if state.end_state == AssociationState.RELEASED else EventCode.ASSOCIATION_ABORTED
                record_event(s, code, f"{state.instances} instance(s), {state.bytes} bytes", association_id=state.db_id)
        state.intake.end(orderly=state.end_state == AssociationState.RELEASED)

    def _audit_idle(self, connection: Connection) -> None:
        """A connection closed before its A-ASSOCIATE-RQ: audited when we closed it for idling
        (pynetdicom ends the wait after acse_timeout), not when the peer hung up first."""
        timeout = self.settings.node.idle_connection_timeout_s
        waited = time.monotonic() - connection.opened
        if waited < timeout * 0.9:
            return
        with self.db.session() as s:
            record_event(s, EventCode.CONNECTION_CLOSED_IDLE,
                         f"closed a connection from {connection.host}:{connection.port} that sent no A-ASSOCIATE-RQ "
                         f"in {timeout:g} s", details={"peer_host": connection.host, "peer_port": connection.port})


class _DatasetDeadlines(PeriodicWorker):
    """Answers fast-path requests whose data set never came; one thread for all associations
    (a timer per request would start a thread per instance)."""

    def __init__(self, scp: StorageSCP) -> None:
        super().__init__("dataset-deadlines", min(0.5, scp.settings.node.dataset_timeout_s / 4))
        self.scp = scp

    def step(self) -> bool:
        self.scp.expire_waiting_requests()
        return False


def response(outcome: StoreOutcome) -> Dataset | int:
    """The C-STORE response: a bare status, or a status with its Error Comment."""
    if outcome.status == SUCCESS or not outcome.comment:
        return outcome.status
    rsp = Dataset()
    rsp.Status = outcome.status
    rsp.ErrorComment = error_comment(outcome.comment)
    return rsp
