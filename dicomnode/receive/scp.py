"""The application entity: C-ECHO and C-STORE for every storage SOP class, each association audited from its
request to its close. Who may associate is `policy`, what is accepted `negotiation`, the acceptors `servers`,
the association count `slots`, the DIMSE decoder's guard `dimse_guard`."""
from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from io import BytesIO
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association as PynetAssociation
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # pynetdicom makes its SOP class names at import time
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import Settings
from dicomnode.core import reactor
from dicomnode.core.dimse import REJECT_LIMIT, SUCCESS
from dicomnode.core.loops import PeriodicWorker
from dicomnode.receive.balance import ConnectionLoads
from dicomnode.receive.commitment_reports import CommitmentReports
from dicomnode.receive.dimse_guard import DimseGuard
from dicomnode.receive.fast_store import FastStore, StoreRequest, eligible
from dicomnode.receive.intake import Intake, IntakeSession, Origin, StoreOutcome
from dicomnode.receive.negotiation import STORAGE_SOP_CLASSES, UNCOMPRESSED, negotiation_order
from dicomnode.receive.part10 import file_meta, part10_file
from dicomnode.receive.policy import AssociationPolicy, safe_text
from dicomnode.receive.servers import GuardedServer, SharedSocketServer, server_ssl_context
from dicomnode.receive.slots import SlotLedger
from dicomnode.receive.store_response import error_comment, send_store_responses_directly
from storage.audit import record_event
from storage.db import Database
from storage.events import EventCode
from storage.models import Association, utcnow
from storage.states import AssociationState

log = logging.getLogger(__name__)

# pynetdicom counts every connection, even one that has not sent its A-ASSOCIATE-RQ yet, against
# AE.maximum_associations. We enforce node.max_associations ourselves on associations only (in
# _on_requested), so idle connections cannot lock peers out; pynetdicom's limit stays as a backstop
# (per receiver process: with node.receive_processes > 1 the node-wide backstop is that many times it).
CONNECTION_HEADROOM = 64
PDU_ALLOWANCE = 2**20  # a PDU may carry a whole data set (max_pdu_size 0) plus headers


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
