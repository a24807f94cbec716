"""C-STORE requests served in the connection's own thread, past pynetdicom's DIMSE machinery.

For every PDU pynetdicom builds PDU and primitive objects, runs its state machine, assembles the
message in its DIMSE decoder, decodes the command set with pydicom into a primitive, queues it for
the association's second thread, runs its service class and event dispatch, and queues the response
back to the first thread: under six associations that was about half a receiver's CPU per CT slice
(`py-spy --gil`), where dcmtk's storescp spends about 1 ms on the whole instance.

Here a P-DATA-TF PDU that carries a C-STORE-RQ (its command set in one PDV, as dcmtk, pynetdicom and
Orthanc send it) or the data set of one is taken as it is read (core.reactor.WakeableDUL.pdata_sink):
the command set's fixed fields are read directly (PS3.7 9.3.1.1; command sets are Implicit VR Little
Endian, PS3.7 6.3.1), the data-set fragments are kept as read and joined once behind the file meta,
the instance goes through the same intake as before (fsync, audit row, dedupe), and the response goes
out packed (store_response). Everything else stays with pynetdicom: C-ECHO, N-ACTION, a C-STORE whose
command set is split or whose values this does not read, one without a data set, an unaccepted
context, a message pynetdicom has already begun; and whole associations whose PDU or DIMSE events
are watched (pynetdicom's debug log).

The guards of the pynetdicom path hold here too: a data set over the instance cap is not buffered
and gets 0xA700; a C-STORE-RQ whose data set does not come (another command comes instead, or nothing
within node.dataset_timeout_s: expire()) gets 0xC000.
"""
from __future__ import annotations

import re
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from pynetdicom import evt
from pynetdicom.association import Association as PynetAssociation
from pynetdicom.dimse_primitives import C_STORE

from dicomnode.core.dimse import SUCCESS
from dicomnode.receive.ingest import StoreOutcome
from dicomnode.receive.store_response import (
    NO_DATA_SET, PDV_OVERHEAD, command_pdu, error_comment, store_response_command,
)


C_STORE_RQ_FIELD = 0x0001
_COMMAND, _LAST = 0x01, 0x02  # message control header bits (PS3.8 E.2)
_UID = re.compile(r"[0-9.]{1,64}")
# pynetdicom events whose handlers expect its own objects: an association with any bound stays on its path
WATCHED_EVENTS = (evt.EVT_PDU_RECV, evt.EVT_PDU_SENT, evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT,
                  evt.EVT_DATA_RECV, evt.EVT_DATA_SENT, evt.EVT_FSM_TRANSITION)


@dataclass(frozen=True)
class StoreRequest:
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str


@dataclass
class _Message:
    context_id: int
    request: StoreRequest
    transfer_syntax: str
    started: float
    fragments: list[memoryview] = field(default_factory=list)
    size: int = 0
    data_seen: bool = False
    oversize: bool = False


class StoreService(Protocol):
    """What the SCP does with a request this path has taken (dicomnode.receive.scp.StorageSCP)."""

    def ready(self, assoc: PynetAssociation) -> bool:
        """The association is accepted and its intake session open."""

    def store_fragments(self, assoc: PynetAssociation, request: StoreRequest, transfer_syntax: str,
                        fragments: list[memoryview]) -> StoreOutcome: ...

    def refuse_too_large(self, assoc: PynetAssociation) -> StoreOutcome: ...

    def refuse_no_dataset(self, assoc: PynetAssociation, sop_instance_uid: str) -> StoreOutcome: ...


def _text_uid(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        text = value.decode("ascii").rstrip("\0 ")
    except UnicodeDecodeError:
        return None
    return text if _UID.fullmatch(text) else None


def parse_store_request(command: bytes | memoryview) -> StoreRequest | None:
    """The C-STORE-RQ in an encoded command set, or None: another message, one announcing no data set,
    or a value read differently by pynetdicom (which then decides)."""
    values: dict[int, bytes] = {}
    offset, end = 0, len(command)
    while offset < end:
        if offset + 8 > end:
            return None
        group, element, length = struct.unpack_from("<HHI", command, offset)
        offset += 8
        if group != 0x0000 or offset + length > end:
            return None
        values[element] = bytes(command[offset:offset + length])
        offset += length

    def unsigned_short(element: int) -> int | None:
        value = values.get(element)
        return struct.unpack("<H", value)[0] if value is not None and len(value) == 2 else None

    message_id = unsigned_short(0x0110)
    dataset_type = unsigned_short(0x0800)
    sop_class, sop_instance = _text_uid(values.get(0x0002)), _text_uid(values.get(0x1000))
    if (unsigned_short(0x0100) != C_STORE_RQ_FIELD or message_id is None or dataset_type is None
            or dataset_type == NO_DATA_SET or sop_class is None or sop_instance is None):
        return None
    return StoreRequest(message_id, sop_class, sop_instance)


def split_pdvs(body: bytearray) -> list[tuple[int, int, int, memoryview]] | None:
    """(offset, context ID, message control header, value) of each PDV in a P-DATA-TF PDU's body
    (PS3.8 9.3.5), or None when the items do not fill it exactly or a control header has unknown bits."""
    items: list[tuple[int, int, int, memoryview]] = []
    view = memoryview(body)
    offset, end = 0, len(body)
    while offset < end:
        if offset + 6 > end:
            return None
        (length,) = struct.unpack_from(">I", body, offset)
        if length < 2 or offset + 4 + length > end:
            return None
        context_id, control = body[offset + 4], body[offset + 5]
        if control & ~(_COMMAND | _LAST):
            return None
        items.append((offset, context_id, control, view[offset + 6:offset + 4 + length]))
        offset += 4 + length
    return items


def eligible(assoc: PynetAssociation) -> bool:
    """Whether this association may use the fast path: nothing watches pynetdicom's own events."""
    return not any(assoc.get_handlers(event) for event in WATCHED_EVENTS)


class FastStore:
    """One association's C-STORE requests, taken from its DUL thread (see the module docstring)."""

    def __init__(self, assoc: PynetAssociation, service: StoreService, max_bytes: int, timeout_s: float,
                 storage_classes: frozenset[str]) -> None:
        self.assoc = assoc
        self.service = service
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.storage_classes = storage_classes
        self._lock = threading.Lock()
        self._current: _Message | None = None

    # -- the DUL thread -----------------------------------------------------------------
    def feed(self, body: bytearray) -> int:
        """Take one P-DATA-TF PDU's body, PDV by PDV, up to the first PDV this path does not take;
        returns the bytes taken (the rest is pynetdicom's: len(body) when all, 0 when none)."""
        items = split_pdvs(body)
        if items is None:
            return 0  # malformed: pynetdicom decodes it and aborts as it always has
        with self._lock:
            for offset, context_id, control, value in items:
                if control & _COMMAND:
                    if self._current is not None:  # a command came where our request's data set should
                        self._answer_missing(self._current, queued=False)
                    request = self._request(context_id, control, value)
                    if request is None:
                        return offset
                    syntax = str(self.assoc._accepted_cx[context_id].transfer_syntax[0])
                    self._current = _Message(context_id, request, syntax, time.monotonic())
                elif self._current is None:
                    return offset  # data of a message pynetdicom is assembling, or of none
                else:
                    self._take_fragment(control, value)
        return len(body)

    def _request(self, context_id: int, control: int, value: memoryview) -> StoreRequest | None:
        """The C-STORE-RQ this command PDV carries, when this path can serve it."""
        if control != _COMMAND | _LAST or not self._pynetdicom_idle():
            return None
        request = parse_store_request(value)
        context = self.assoc._accepted_cx.get(context_id)
        if (request is None or context is None or request.sop_class_uid not in self.storage_classes
                or not context.transfer_syntax or not self.service.ready(self.assoc)):
            return None
        return request

    def _pynetdicom_idle(self) -> bool:
        dimse = self.assoc.dimse
        return dimse.message is None and dimse.msg_queue.empty()

    def _take_fragment(self, control: int, value: memoryview) -> None:
        message = self._current
        assert message is not None  # feed takes a data PDV only with a message under way
        message.data_seen = True
        if not message.oversize:
            message.size += len(value)
            if message.size > self.max_bytes:
                message.oversize = True
                message.fragments.clear()  # stop buffering; the request is answered 0xA700
            else:
                message.fragments.append(value)
        if control & _LAST:
            self._current = None
            self._finish(message)

    def _finish(self, message: _Message) -> None:
        request = message.request
        if message.oversize:
            outcome = self.service.refuse_too_large(self.assoc)
        elif not message.size:
            outcome = self.service.refuse_no_dataset(self.assoc, request.sop_instance_uid)
        else:
            outcome = self.service.store_fragments(self.assoc, request, message.transfer_syntax, message.fragments)
        self._respond(message, outcome)

    def _respond(self, message: _Message, outcome: StoreOutcome, queued: bool = False) -> None:
        """Send the response from the DUL thread, packed; `queued` (from any other thread), what cannot
        be packed or does not fit the peer's PDU: through pynetdicom, which the DUL thread sends."""
        request = message.request
        comment = error_comment(outcome.comment) if outcome.status != SUCCESS and outcome.comment else None
        command = store_response_command(request.sop_class_uid, request.sop_instance_uid, request.message_id,
                                         outcome.status, comment)
        peer_limit = self.assoc.dimse.maximum_pdu_size  # the peer's maximum PDU length, 0: unlimited
        if queued or command is None or (peer_limit and len(command) + PDV_OVERHEAD > peer_limit):
            self.assoc.dimse.send_msg(_primitive(request, outcome.status, comment), message.context_id)
            return
        transport = self.assoc.dul.socket
        if transport is not None:
            transport.send(command_pdu(message.context_id, command))  # a failure queues Evt17 (closed)

    # -- any thread ---------------------------------------------------------------------
    def _answer_missing(self, message: _Message, queued: bool) -> None:
        """0xC000 for a request whose data set never came: sent at once from the DUL thread (ahead
        of the response to whatever came instead), `queued` for the DUL thread from any other."""
        self._current = None
        self._respond(message, self.service.refuse_no_dataset(self.assoc, message.request.sop_instance_uid), queued)

    def expire(self, now: float) -> None:
        """Answer a request that announced a data set and sent none for node.dataset_timeout_s."""
        if not self._lock.acquire(blocking=False):
            return  # the DUL thread is taking a PDU: data is flowing, and a blocked sweep would stall the others
        try:
            message = self._current
            if message is not None and not message.data_seen and now - message.started > self.timeout_s:
                self._answer_missing(message, queued=True)
        finally:
            self._lock.release()


def _primitive(request: StoreRequest, status: int, comment: str | None) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = request.message_id
    rsp.AffectedSOPClassUID = request.sop_class_uid
    rsp.AffectedSOPInstanceUID = request.sop_instance_uid
    rsp.Status = status
    if comment:
        rsp.ErrorComment = comment  # type: ignore[assignment]  # pynetdicom: unannotated `= None`
    return rsp

