"""The completion checker: a background loop that asks the series lifecycle which series' clocks
ran out (dicomnode.receive.lifecycle) and hands each newly complete series to routing. It looks
every poll_seconds, and also as soon as an evidence grace (series.evidence_grace_seconds) ends."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dicomnode.receive.lifecycle import SeriesLifecycle

log = logging.getLogger(__name__)


class CompletionChecker(threading.Thread):
    """Background loop that completes series and passes them to routing."""

    def __init__(self, lifecycle: SeriesLifecycle, stable_seconds: float, poll_seconds: float,
                 on_complete: Callable[[int], None]) -> None:
        super().__init__(name="series-completion", daemon=True)
        self.lifecycle = lifecycle
        self.stable_seconds = stable_seconds
        self.poll_seconds = poll_seconds
        self.on_complete = on_complete
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self._next_wait()):
            try:
                self.lifecycle.complete_due(self.stable_seconds, self.on_complete)
            except Exception:  # keep checking; the next pass retries
                log.exception("series completion check failed")

    def _next_wait(self) -> float:
        """poll_seconds, or less when a series the evidence shows whole is due sooner."""
        due_in = self.lifecycle.seconds_to_next_evidence()
        return self.poll_seconds if due_in is None else min(self.poll_seconds, due_in + 0.01)

    def stop(self) -> None:
        self.stopping.set()
