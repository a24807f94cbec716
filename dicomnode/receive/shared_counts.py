"""One 32-bit count per receiver process in a small shared file (mmap): what the node's receiver
processes tell each other (their associations: slots.SharedSlots; their connections: balance.ConnectionLoads).
Each process writes only its own count; the node creates the file before any receiver starts."""
from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Self

_WIDTH = 4


class SharedCounts:
    """Receiver process `index`'s view of every receiver's count."""

    def __init__(self, path: Path, index: int) -> None:
        self.index = index
        self._fd = os.open(path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, os.fstat(self._fd).st_size)

    @staticmethod
    def create(path: Path, processes: int, initial: int = 0) -> None:
        """The shared file with every count at `initial` (by the node)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, initial.to_bytes(_WIDTH, "little") * processes)
        finally:
            os.close(fd)

    def counts(self) -> list[int]:
        return [int.from_bytes(self._map[i:i + _WIDTH], "little") for i in range(0, len(self._map), _WIDTH)]

    def publish(self, mine: int) -> None:
        self._map[_WIDTH * self.index:_WIDTH * (self.index + 1)] = mine.to_bytes(_WIDTH, "little")

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
