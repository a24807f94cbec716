"""Intake sessions: the one way instances enter the node.

An SCP association, a web upload (and a future STOW-RS request) each open one session, which says
who sent the instances (Origin), stores each one (dicomnode.receive.ingest) and, when it ends,
starts the completion clock of the series it carried (dicomnode.receive.lifecycle). A session is
not an association: an upload has no association row, and its series complete on their own clock.
"""
from __future__ import annotations

import itertools
import os
from types import TracebackType

from dicomnode.receive.ingest import Ingestor, Origin, StoreOutcome
from dicomnode.receive.lifecycle import SeriesLifecycle, SessionKey

__all__ = ["Intake", "IntakeSession", "Origin", "StoreOutcome"]

_unique = itertools.count(1)


class IntakeSession:
    def __init__(self, ingestor: Ingestor, lifecycle: SeriesLifecycle, origin: Origin, key: SessionKey) -> None:
        self.origin = origin
        self.key = key
        self._ingestor = ingestor
        self._lifecycle = lifecycle
        self._ended = False

    def store(self, data: bytes) -> StoreOutcome:
        """Store one encoded instance (with file meta); the status is what the sender is told."""
        return self._ingestor.store(data, self.origin, self.key)

    def refuse_too_large(self, size: int | None = None) -> StoreOutcome:
        """0xA700 for a data set over node.max_instance_mb, refused before it is buffered."""
        return self._ingestor.refuse_too_large(size if size is not None else self._ingestor.max_instance_bytes or 0,
                                               self.origin)

    def refuse_no_dataset(self, sop_uid: object) -> StoreOutcome:
        """0xC000 for a C-STORE request that carried no data set."""
        return self._ingestor.refuse_no_dataset(sop_uid, self.origin)

    def end(self, orderly: bool = True) -> list[str]:
        """Nothing more comes in this session: start the completion clock of its series (once).
        `orderly`: the sender said it was done (A-RELEASE); an abort is no evidence of a whole series."""
        if self._ended:
            return []
        self._ended = True
        return self._lifecycle.session_ended(self.key, orderly)

    def __enter__(self) -> IntakeSession:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.end(orderly=kind is None)


class Intake:
    """Opens intake sessions on the node's one ingestor and series lifecycle."""

    def __init__(self, ingestor: Ingestor, lifecycle: SeriesLifecycle) -> None:
        self._ingestor = ingestor
        self._lifecycle = lifecycle

    def open(self, origin: Origin) -> IntakeSession:
        """A session for an association (keyed by its row id) or for anything else (a fresh key)."""
        # the pid keeps keys unique across the node's processes (they meet in the open_intake table)
        key: SessionKey = (origin.association_id if origin.association_id is not None
                           else ("session", os.getpid(), next(_unique)))
        return IntakeSession(self._ingestor, self._lifecycle, origin, key)
