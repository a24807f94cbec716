"""The receivers' connection loads (dicomnode.receive.balance): who lets whom accept first."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from dicomnode.receive.balance import DEFER_MAX_S, ConnectionLoads, wait_for_turn


def _loads(tmp_path: Path, processes: int = 3) -> list[ConnectionLoads]:
    path = tmp_path / "receivers-x.loads"
    ConnectionLoads.create(path, processes)
    return [ConnectionLoads(path, i) for i in range(processes)]


def test_a_receiver_defers_only_to_a_listening_one_with_fewer_connections(tmp_path: Path) -> None:
    a, b, c = _loads(tmp_path)
    assert a.loads() == [None, None, None]  # none listening yet
    assert not a.lighter_elsewhere(5)  # absent receivers take nothing
    a.publish(2)
    b.publish(1)
    assert a.loads() == [2, 1, None]
    assert a.lighter_elsewhere(2) and not b.lighter_elsewhere(1)
    assert not a.lighter_elsewhere(1)  # equal loads: both may accept, the first wins
    ConnectionLoads.mark_absent(tmp_path / "receivers-x.loads", 1)  # b died
    assert not a.lighter_elsewhere(2) and a.loads() == [2, None, None]
    c.publish(0)
    assert a.lighter_elsewhere(1)


def test_a_loaded_receiver_leaves_a_waiting_connection_to_the_lighter_one(tmp_path: Path) -> None:
    heavy, light, _ = _loads(tmp_path)
    light.publish(0)
    with socket.create_server(("127.0.0.1", 0)) as listening:
        listening.setblocking(False)
        client = socket.create_connection(listening.getsockname())
        # the lighter receiver takes it a little later: the heavy one sees it gone and does not accept
        taker = threading.Timer(0.01, lambda: listening.accept()[0].close())
        taker.start()
        started = time.monotonic()
        assert wait_for_turn(listening, heavy, 3) is False
        assert time.monotonic() - started < DEFER_MAX_S + 0.5
        taker.join()
        client.close()
        # nobody takes it: after DEFER_MAX_S the loaded receiver accepts after all (a stuck or dying peer)
        client = socket.create_connection(listening.getsockname())
        started = time.monotonic()
        assert wait_for_turn(listening, heavy, 3) is True
        assert time.monotonic() - started >= DEFER_MAX_S
        assert heavy.loads()[0] == 3  # published while it waited
        # the least loaded accepts at once
        assert wait_for_turn(listening, light, 0) is True
        listening.accept()[0].close()
        client.close()
