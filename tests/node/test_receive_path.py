"""The receive path's fast pieces keep what they replace: the Part 10 file meta bytes, whole PDU
reads, spool confinement, and pynetdicom's reactor loops (woken early, never later than before)."""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.core import reactor
from dicomnode.receive.part10 import file_meta, part10_file
from dicomnode.receive.scp import read_exactly
from dicomnode.receive.spool import OutsideRoot, Spool


@pytest.mark.parametrize(("sop_class", "sop_instance", "syntax"), [
    ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1"),      # even, odd lengths mixed
    ("1.2.840.10008.5.1.4.1.1.88.22", "1.2.33.4", "1.2.840.10008.1.2"),
    ("1.2.840.10008.5.1.4.1.1.2", "2.25." + "9" * 59, "1.2.840.10008.1.2.4.50"),  # 64 characters
])
def test_file_meta_is_byte_identical_to_pynetdicoms(sop_class: str, sop_instance: str, syntax: str) -> None:
    expected = b"\x00" * 128 + b"DICM" + encode_file_meta(
        create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax))
    assert file_meta(sop_class, sop_instance, syntax) == expected
    assert part10_file(sop_class, sop_instance, syntax, memoryview(b"\x08\x00")) == expected + b"\x08\x00"


def test_file_meta_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError, match="not ASCII"):
        file_meta("1.2.3", "1.2.\u00e9", "1.2.840.10008.1.2")
    with pytest.raises(ValueError, match="16-bit length"):
        file_meta("1.2.3", "1" * 70000, "1.2.840.10008.1.2")


def test_pdu_reads_are_whole_or_short_when_the_peer_closes() -> None:
    ours, peer = socket.socketpair()
    payload = os.urandom(300_000)

    def send_in_pieces() -> None:
        for start in range(0, len(payload), 7000):
            peer.sendall(payload[start:start + 7000])
        peer.close()

    sender = threading.Thread(target=send_in_pieces)
    sender.start()
    try:
        assert read_exactly(ours, 200_000) == payload[:200_000]
        rest = read_exactly(ours, 200_000)  # only 100 000 bytes left before the close
        assert bytes(rest) == payload[200_000:]
        assert read_exactly(None, 10) == bytearray()
    finally:
        sender.join()
        ours.close()


def test_spool_fast_path_keeps_confinement(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 0)
    spool.ensure_writable()
    stored = spool.store("1.2/3.4/5.6.dcm", b"first")
    assert stored == (tmp_path / "spool" / "1.2" / "3.4" / "5.6.dcm").resolve()
    assert spool.store("1.2/3.4/5.7.dcm", b"second").read_bytes() == b"second"  # the cached directory
    for relative in ("1.2/..", "1.2/3.4/../../..", "../x.dcm", "x/../../y.dcm"):
        with pytest.raises(OutsideRoot):
            spool.store(relative, b"x")
    with pytest.raises(IsADirectoryError):  # a directory's own name is no file name
        spool.store("1.2/3.4/.", b"x")
    # a link planted at the temporary name is not written through
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    planted = stored.parent / f".5.8.dcm.{os.getpid()}.{threading.get_ident()}.tmp"
    planted.symlink_to(victim)
    with pytest.raises(OSError):
        spool.store("1.2/3.4/5.8.dcm", b"evil")
    assert victim.read_bytes() == b"untouched"
    assert not (stored.parent / "5.8.dcm").exists()


def test_pynetdicoms_reactor_loops_are_where_the_wakeup_expects_them() -> None:
    """Fails on a pynetdicom whose loops changed: the node would silently poll again."""
    assert reactor.expected_loops_present()


def test_installed_associations_work_and_use_the_waking_dul() -> None:
    reactor.install()
    reactor.install()  # idempotent
    assert reactor.installed()
    seen: list[object] = []
    scp = AE(ae_title="WAKE")
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", 0), block=False,
                              evt_handlers=[(evt.EVT_C_ECHO, lambda event: seen.append(event.assoc.dul) or 0x0000)])
    try:
        scu = AE(ae_title="CALLER")
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="WAKE")
        assert assoc.is_established
        assert isinstance(assoc.dul, reactor.WakeableDUL)
        statuses = [assoc.send_c_echo().Status for _ in range(20)]
        assoc.release()
        assert statuses == [0x0000] * 20
        assert len(seen) == 20 and all(isinstance(d, reactor.WakeableDUL) for d in seen)
    finally:
        server.shutdown()


def _returns_early(wait: object, trigger: object, timeout: float = 30.0) -> float:
    """Seconds `wait(timeout)` took when `trigger()` runs 0.2 s after it started."""
    timer = threading.Timer(0.2, trigger)  # type: ignore[arg-type]
    started = time.monotonic()
    timer.start()
    wait(timeout)  # type: ignore[operator]
    timer.join()
    return time.monotonic() - started


def test_waits_end_on_data_and_on_queued_pdus_not_on_their_timeout() -> None:
    """The wake-ups themselves: each wait would last 30 s, and returns once its event happens."""
    assoc = Association(AE(ae_title="WAKE"), "requestor")
    dul = reactor.WakeableDUL(assoc)
    ours, peer = socket.socketpair()
    dul.socket = SimpleNamespace(socket=ours)  # type: ignore[assignment]  # only .socket is read
    try:
        assert _returns_early(dul.idle_wait, lambda: peer.send(b"x")) < 10  # the peer sent
        ours.recv(1)
        assert _returns_early(dul.idle_wait, lambda: dul.send_pdu(A_RELEASE())) < 10  # a PDU to send
        assert dul.to_provider_queue.qsize() == 1
        # the association thread's pause ends when a DIMSE message is complete
        assert _returns_early(lambda t: reactor._association_wait(assoc, t),
                              lambda: assoc.dimse.msg_queue.put((1, object()))) < 10
    finally:
        ours.close()
        peer.close()


def test_a_woken_reactor_passes_the_wakeup_on_to_a_thread_blocked_in_get_msg() -> None:
    """queue.put() wakes one waiter; the reactor's pause waits first (Condition wakes in FIFO order),
    so without passing it on the requestor's blocked get_msg would sleep out its timeout."""
    assoc = Association(AE(ae_title="WAKE"), "requestor")
    pending = assoc.dimse.msg_queue
    pause = threading.Thread(target=reactor._association_wait, args=(assoc, 30.0))
    pause.start()
    time.sleep(0.2)
    got: list[object] = []
    getter = threading.Thread(target=lambda: got.append(pending.get(timeout=30.0)))
    getter.start()
    time.sleep(0.2)
    started = time.monotonic()
    pending.put((1, "response"))
    getter.join()
    pause.join()
    assert got == [(1, "response")]
    assert time.monotonic() - started < 10  # woken by the put, not by its 30 s timeout


def test_the_reactor_leaves_a_response_to_the_user_thread_waiting_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom's reactor took a response that arrived while a user thread was inside send_c_*()
    (its pause handshake reads a stale flag) and dropped it: a lost C-ECHO about once in 1000 echoes
    in a loop, a lost C-STORE response for the result sender."""
    reactor.install()
    assoc = Association(AE(ae_title="WAKE"), "requestor")
    assert isinstance(assoc.dimse, reactor.ReactorSafeDIMSE)
    rsp = C_ECHO()
    rsp.MessageIDBeingRespondedTo, rsp.Status = 1, 0x0000
    assoc.dimse.msg_queue.put((1, rsp))
    monkeypatch.setattr(reactor.threading, "current_thread", lambda: assoc)  # as if in its reactor thread
    assoc._reactor_checkpoint.clear()  # a user thread is inside send_c_echo() and will take it
    assert assoc.dimse.get_msg(block=False) == (None, None)
    assoc._reactor_checkpoint.set()  # nobody is waiting for it: the reactor takes it, as before
    assert assoc.dimse.get_msg(block=False) == (1, rsp)
    request = C_ECHO()
    request.MessageID, request.AffectedSOPClassUID = 2, Verification
    assoc.dimse.msg_queue.put((1, request))
    assoc._reactor_checkpoint.clear()
    assert assoc.dimse.get_msg(block=False) == (1, request)  # requests are the reactor's to serve


_SCU_IN_A_FRESH_PROCESS = """
from pynetdicom import AE, association
from pynetdicom.sop_class import Verification
from dicomnode.core.dicom_address import DicomAddress
from dicomnode.deliver import scu
peer = AE(ae_title="PEER")
peer.add_supported_context(Verification)
server = peer.start_server(("127.0.0.1", 0), block=False)
try:
    status = scu.echo(DicomAddress("PEER", "127.0.0.1", server.server_address[1]), "ADMIN")
finally:
    server.shutdown()
print(hex(status), association.DIMSEServiceProvider.__name__)
"""


def test_the_admin_scu_uses_the_reactor_that_keeps_responses_for_their_sender() -> None:
    """`dicomnode send` and `echo` run in a process of their own, where no receiver installed the
    reactor: pynetdicom's own dropped a C-STORE response under load (the sender waited out its 30 s
    and aborted after the node had stored the instance), so the SCU installs it too."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _SCU_IN_A_FRESH_PROCESS], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0x0", "ReactorSafeDIMSE"]
