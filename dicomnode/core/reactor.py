"""pynetdicom's reactors wake on events instead of polling every millisecond.

pynetdicom 3 runs two threads per association, and both poll: the DUL thread sleeps
`_run_loop_delay` (1 ms) whenever a loop found nothing to do, the acceptor's association thread
sleeps 1 ms before every look at its DIMSE queue. A C-STORE of a 512x512 CT slice arrives as several
PDUs, and the sender waits for our response before it sends the next instance, so those sleeps add
up to 2-3 ms per instance: more than dcmtk's storescp needs for the whole instance (measured with
`benchmarks/ingest.py`: the gap between two instances' handlers went from 3.5 to about 1.6 ms).

`install()` keeps pynetdicom's loops and their timeouts but lets each wait end early:
- the DUL thread waits in select() on its socket and on a wake-up socket that every outgoing PDU
  (our C-STORE response, an A-RELEASE-RP) signals, so it reads a PDU the moment it arrives and sends a
  response the moment it is queued;
- the association thread waits on its DIMSE queue's condition, so a complete message is served at
  once.
Idle associations still wake once per millisecond, as before; nothing busy-loops. Every wait still
returns after at most its original timeout, so each loop re-checks everything it checked before, except
an acceptor's association thread: it pauses up to 20 ms, and is also woken when the DUL hands it the
peer's release or abort (`to_user_queue`) or ends; its loop has nothing else to notice sooner.

The DUL also offers each P-DATA-TF PDU of an established association to `pdata_sink` before pynetdicom
decodes it (dicomnode.receive.fast_store serves C-STORE requests there); pynetdicom decodes what it leaves.

This replaces module-level names in pynetdicom (`time` in pynetdicom.dul and pynetdicom.association,
`DULServiceProvider` in pynetdicom.association): `expected_loops_present()` checks that the sleeps
this relies on are still where pynetdicom had them (tests/core/test_reactor.py), so an upgrade that
changes them fails a test instead of silently polling again.
"""
from __future__ import annotations

import inspect
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pynetdicom.association as pyn_association
import pynetdicom.dul as pyn_dul
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider

log = logging.getLogger(__name__)
_install_lock = threading.Lock()
_PDU_TYPES = range(0x01, 0x08)
P_DATA_TF = 0x04
_REACTOR_PAUSE_S = 0.001  # Association._run_reactor's time.sleep(0.001)
# An acceptor's association thread is woken for all it serves (a DIMSE message, the peer's release or
# abort, the DUL's end): between those its loop only re-checks the network timeout, so it may pause longer.
# A requestor's stays at 1 ms: a user thread's send_c_*() waits for its reactor to reach the pause.
_ACCEPTOR_PAUSE_S = 0.02


class WakeableDUL(DULServiceProvider):
    """A DUL provider whose idle wait ends when its peer sends or when a PDU is queued to send."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        # offered the body of a P-DATA-TF PDU before pynetdicom decodes it, returns how many of its bytes
        # (whole PDVs from the start) it took; pynetdicom gets the rest (receive.fast_store)
        self.pdata_sink: Callable[[bytearray], int] | None = None
        # the peer's release and abort reach the association thread through this queue: wake it for them
        self.to_user_queue = _WakingQueue(self.wake_association)

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        try:
            self._wake_write.send(b"\0")
        except OSError:  # buffer full (a wake-up is pending anyway) or closed at the end
            pass

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        finally:
            self._wake_read.close()
            self._wake_write.close()
            self.wake_association()  # it checks whether this thread is still alive

    def wake_association(self) -> None:
        """End the association thread's pause now (see _association_wait)."""
        pending = self.assoc.dimse.msg_queue
        with pending.not_empty:
            pending.not_empty.notify_all()

    def _read_pdu_data(self) -> None:
        """pynetdicom's own PDU read (DULServiceProvider._read_pdu_data, the same events on the same
        faults), except that a P-DATA-TF PDU arriving on an established association with nothing
        else pending is first offered to `pdata_sink`, and pynetdicom decodes only what it left."""
        sink = self.pdata_sink
        transport = self.socket
        if sink is None or transport is None or self.state_machine.current_state != "Sta6" \
                or not self.event_queue.empty():
            super()._read_pdu_data()
            return
        try:
            header = transport.recv(6)
            pdu_type, _, pdu_length = struct.unpack(">BBL", header)
        except (OSError, TimeoutError, struct.error):  # closed, or closed mid-header
            self.event_queue.put("Evt17")
            return
        if pdu_type not in _PDU_TYPES:
            log.error("unknown PDU type received: 0x%02X", pdu_type)
            self.event_queue.put("Evt19")
            return
        try:
            body = transport.recv(pdu_length)
        except (OSError, TimeoutError):
            self.event_queue.put("Evt17")
            return
        if len(body) != pdu_length:
            self.event_queue.put("Evt17")
            return
        if pdu_type == P_DATA_TF:
            taken = sink(body)
            if taken >= pdu_length:
                return
            if taken:  # the PDVs after those taken, as a P-DATA-TF of their own (a copy: fragments view the body)
                body = body[taken:]
                header = bytearray(struct.pack(">BBL", P_DATA_TF, 0, len(body)))
        try:
            pdu, event = self._decode_pdu(bytearray(header) + body)
        except Exception:
            log.exception("cannot decode a received PDU")
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def idle_wait(self, seconds: float) -> None:
        """Up to `seconds`, ending as soon as the peer's data or a PDU to send is waiting."""
        transport = self.socket
        peer = transport.socket if transport is not None else None
        if isinstance(peer, ssl.SSLSocket) and peer.pending():
            return  # decrypted bytes already buffered: select() would not see them
        watched: list[Any] = [self._wake_read]
        if peer is not None:
            watched.append(peer)
        try:
            ready, _, _ = select.select(watched, [], [], seconds)
        except (OSError, ValueError):  # a socket closed under us: pynetdicom's loop notices it next
            time.sleep(seconds)
            return
        if self._wake_read in ready:
            try:
                while self._wake_read.recv(4096):
                    pass
            except OSError:  # drained (BlockingIOError) or closed
                pass


class ReactorSafeDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, except that the association's own reactor thread leaves a response
    on the queue while a user thread is inside send_*() waiting for it.

    pynetdicom's send_*() pauses the reactor by clearing `_reactor_checkpoint` and waiting for
    `_is_paused`; that flag is still True from the previous pause until the reactor thread runs again,
    so a user thread sending at once can have its response arrive before the reactor's next
    `get_msg(block=False)`, which then takes it and drops it as an unexpected message: the user waits
    for its DIMSE timeout (a lost C-ECHO in 1 of about 1000 in a loop; a lost C-STORE response would make
    the sender retry). A response is never the reactor's to serve (it drops every one), so while the
    checkpoint is clear it stays for the user thread."""

    def get_msg(self, block: bool = False) -> Any:
        assoc = self.assoc
        if not block and threading.current_thread() is assoc and not assoc._reactor_checkpoint.is_set():
            with self.msg_queue.mutex:
                head = self.msg_queue.queue[0] if self.msg_queue.queue else None
            if head is not None and not getattr(head[1], "is_valid_request", False):
                return None, None
        return super().get_msg(block)


class _WakingQueue(queue.Queue[Any]):
    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


def _association_wait(assoc: Association, seconds: float) -> None:
    """The acceptor reactor's pause: up to `seconds`, ending when a DIMSE message is complete."""
    pending = assoc.dimse.msg_queue
    with pending.not_empty:
        if not pending.queue:
            pending.not_empty.wait(seconds)
        if pending.queue:
            # put() wakes one waiter: when it woke us, pass it on, or a user thread blocked in
            # get_msg (a requestor's C-ECHO, C-STORE) would sleep until its DIMSE timeout
            pending.not_empty.notify()


class _WakingTime:
    """Stands in for the `time` module inside pynetdicom.dul and pynetdicom.association: `sleep`
    called by a reactor thread becomes an event wait with the same timeout; everything else, and
    every other thread's sleep, is the real `time`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        me = threading.current_thread()
        if isinstance(me, WakeableDUL):
            me.idle_wait(seconds)
        elif isinstance(me, Association) and 0 < seconds <= _REACTOR_PAUSE_S:
            # only the reactor's pause: abort's 0.1 s settle stays a sleep
            _association_wait(me, _ACCEPTOR_PAUSE_S if me.is_acceptor and isinstance(me.dul, WakeableDUL) else seconds)
        else:
            time.sleep(seconds)


def expected_loops_present() -> bool:
    """pynetdicom's reactors still pause where this module expects them to."""
    dul_loop = inspect.getsource(DULServiceProvider.run_reactor)
    assoc_loop = inspect.getsource(Association._run_reactor)
    assoc_init = inspect.getsource(Association.__init__)
    pdu_read = inspect.getsource(DULServiceProvider._read_pdu_data)
    return ("time.sleep(self._run_loop_delay)" in dul_loop and "time.sleep(0.001)" in assoc_loop
            and "self.dimse.get_msg(block=False)" in assoc_loop and "DULServiceProvider(self)" in assoc_init
            and "DIMSEServiceProvider(self)" in assoc_init and "self._reactor_checkpoint.wait()" in assoc_loop
            and "self._decode_pdu(bytestream)" in pdu_read and "self._recv_pdu.put(pdu)" in pdu_read
            and "self.socket.recv(6)" in pdu_read)


def install() -> None:
    """Make every association created from now on in this process wake on events (idempotent)."""
    with _install_lock:
        if isinstance(pyn_dul.time, _WakingTime):
            return
        waking = _WakingTime()
        pyn_dul.time = waking  # type: ignore[assignment]  # module stand-in, see the docstring
        pyn_association.time = waking  # type: ignore[assignment]
        pyn_association.DULServiceProvider = WakeableDUL  # type: ignore[misc]
        pyn_association.DIMSEServiceProvider = ReactorSafeDIMSE  # type: ignore[misc]


def installed() -> bool:
    return (isinstance(pyn_dul.time, _WakingTime) and pyn_association.DULServiceProvider is WakeableDUL
            and pyn_association.DIMSEServiceProvider is ReactorSafeDIMSE)
