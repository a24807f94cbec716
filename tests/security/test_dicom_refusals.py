"""Issue 9, defect 5: every refused association is audited, and TCP connections that never send
an A-ASSOCIATE-RQ are closed soon, audited, and never keep a real peer out."""
from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from pynetdicom import AE

from tests.security.dicom_helpers import (  # noqa: F401  (make_node is a fixture)
    Audit, associate, eventually, make_node, quiet_config,
)


@contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` TCP connections to the node that send nothing."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=30)) for _ in range(count)]
        yield socks


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except OSError:
        return True


def test_idle_connections_do_not_lock_out_a_peer_and_are_closed_and_audited(make_node) -> None:
    """Default limits (16 associations): 20 silent connections, then a real peer."""
    node = make_node()
    audit = Audit(node)
    with idle_connections(node.port, 20) as socks:
        assoc = associate(node.port, calling="REALPEER")
        try:
            assert assoc.is_established, "a real peer was refused because of idle connections"
            assert assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()
        # the node closes each one after node.idle_connection_timeout_s (5 s by default)
        assert all(_closed_by_peer(s) for s in socks), "an idle connection was left open"
        ports = {s.getsockname()[1] for s in socks}
    events = eventually(lambda: len(audit.events("CONNECTION_CLOSED_IDLE")) >= 20 and audit.events("CONNECTION_CLOSED_IDLE"))
    assert len(events) == 20
    assert {int(message.split("127.0.0.1:")[1].split()[0]) for message, _ in events} == ports
    assert audit.count("ASSOCIATION_REFUSED_LIMIT") == 0


def test_refusal_by_the_association_limit_is_audited_once(make_node) -> None:
    node = make_node(quiet_config("max_associations = 2"))
    audit = Audit(node)
    held = [associate(node.port, calling=f"HOLD{i}") for i in range(2)]
    try:
        assert all(a.is_established for a in held)
        refused = associate(node.port, calling="THIRD")
        assert refused.is_rejected, "the third association must be refused"
    finally:
        for a in held:
            a.release()
    rows = eventually(lambda: audit.rows("SELECT calling_ae, state, reject_reason FROM associations WHERE state = 'rejected'"))
    assert len(rows) == 1
    calling, _, reason = rows[0]
    assert calling == "THIRD" and "limit" in reason
    assert audit.count("ASSOCIATION_REFUSED_LIMIT") == 1
    again = associate(node.port)
    assert again.is_established, "slots are given back when associations end"
    again.release()  # an open association would hold the node's shutdown until the network timeout


def test_policy_refusal_is_audited_once(make_node) -> None:
    """A refusal our policy records in _on_requested is not audited a second time as a limit."""
    node = make_node()
    audit = Audit(node)
    ae = AE(ae_title="WRONGCALLED")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="NOTTHENODE")
    assert assoc.is_rejected
    assert eventually(lambda: audit.count("ASSOCIATION_REJECTED_CALLED_AE") == 1)
    assert audit.rows("SELECT count(*) FROM associations WHERE state = 'rejected'")[0][0] == 1
    assert audit.count("ASSOCIATION_REFUSED_LIMIT") == 0


def test_refusal_by_the_dicom_stack_itself_is_audited(make_node) -> None:
    """pynetdicom's own limit (EVT_REJECTED) counts connections too; with max_associations = 1 it
    is 65 connections: past that, its refusal is audited like ours. That backstop is per receiver
    process (the kernel spreads connections over them), so one process here."""
    node = make_node(quiet_config("max_associations = 1\nidle_connection_timeout_s = 30\nreceive_processes = 1"))
    audit = Audit(node)
    with idle_connections(node.port, 65):
        refused = associate(node.port, calling="LATE")
        assert refused.is_rejected
    rows = eventually(lambda: audit.rows("SELECT calling_ae, reject_reason FROM associations WHERE state = 'rejected'"))
    assert [r[0] for r in rows] == ["LATE"] and "limit" in rows[0][1]
    assert audit.count("ASSOCIATION_REFUSED_LIMIT") == 1
