"""How many associations the node serves: node.max_associations counted for one process, or across the
node's receiver processes in a shared file."""
from __future__ import annotations

import fcntl
import threading
from pathlib import Path

from dicomnode.receive.shared_counts import SharedCounts

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
