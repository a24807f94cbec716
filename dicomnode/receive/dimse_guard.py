"""A guard between an association's DUL and its DIMSE decoder: data sets over the instance cap are not
buffered, and a C-STORE-RQ whose data set never comes is answered."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from io import BytesIO

from pynetdicom.association import Association as PynetAssociation
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.pdu_primitives import P_DATA

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 64 * 1024


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
