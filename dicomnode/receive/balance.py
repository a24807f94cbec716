"""Spreading new connections evenly over the node's receiver processes (node.receive_processes).

The receivers share one listening socket (the node's, inherited) and so one accept queue. Each
publishes how many connections it serves in a small shared file (one 32-bit count per receiver,
mmap, no lock: each writes only its own count, and a stale read costs only a less even spread).
A receiver that serves more connections than another live receiver lets that one take a new
connection first; it takes it itself if the connection is still waiting after DEFER_MAX_S (the
other may be busy, stuck or dying). Without this the kernel's choice (SO_REUSEPORT hashes each
connection to one socket) put 4 or all 6 of six associations on one of two processes in most
runs, where one core's worth of Python served them while the other core idled.
"""
from __future__ import annotations

import select
import socket
import time
from pathlib import Path

from dicomnode.receive.shared_counts import SharedCounts

ABSENT = 0xFFFFFFFF  # no receiver listening at this index (not started, died, stopped)
# A connection waits at most this long for a less loaded receiver to take it. 50 ms was too short on a
# loaded 2-core machine: a receiver descheduled that long lost its turn (six associations landed 4+2 in
# one CI run). The wait is paid only when the lighter receiver does not accept (busy, stuck or dying).
DEFER_MAX_S = 0.25
_RECHECK_S = 0.002


def loads_path(slots_file: Path) -> Path:
    """The loads file beside a node's association-slots file (one per node id)."""
    return slots_file.with_suffix(".loads")


class ConnectionLoads(SharedCounts):
    """Receiver `index`'s view of every receiver's connection count (ABSENT: not listening)."""

    @staticmethod
    def create(path: Path, processes: int, initial: int = ABSENT) -> None:
        """The shared file with every receiver absent (by the node, before any receiver starts)."""
        SharedCounts.create(path, processes, initial)

    @staticmethod
    def mark_absent(path: Path, index: int) -> None:
        """Receiver `index` ended (by the node): nobody waits for it to take a connection."""
        with ConnectionLoads(path, index) as loads:
            loads.publish(ABSENT)

    def publish(self, mine: int) -> None:
        super().publish(min(mine, ABSENT))

    def loads(self) -> list[int | None]:
        """Every receiver's connection count, None for one that is not listening."""
        return [None if c == ABSENT else c for c in self.counts()]

    def lighter_elsewhere(self, mine: int) -> bool:
        """Whether another listening receiver serves fewer connections than `mine`."""
        return any(load is not None and load < mine
                   for i, load in enumerate(self.loads()) if i != self.index)


def wait_for_turn(listening: socket.socket, loads: ConnectionLoads, mine: int) -> bool:
    """Before accepting: while a less loaded receiver may take the waiting connection, let it (up
    to DEFER_MAX_S). False when it did (nothing is waiting any more), True when this one should accept."""
    loads.publish(mine)
    deadline = time.monotonic() + DEFER_MAX_S
    while loads.lighter_elsewhere(mine) and time.monotonic() < deadline:
        time.sleep(_RECHECK_S)
        if not select.select([listening], [], [], 0)[0]:
            return False
    return True
