"""The completion checker: a background loop that asks the series lifecycle which series' clocks
ran out (dicomnode.receive.lifecycle) and hands each newly complete series to routing. It looks
every poll_seconds, and also as soon as an evidence grace (series.evidence_grace_seconds) ends."""
from __future__ import annotations

from collections.abc import Callable

from dicomnode.core.loops import PeriodicWorker
from dicomnode.receive.lifecycle import SeriesLifecycle


class CompletionChecker(PeriodicWorker):
    """Background loop that completes series and passes them to routing."""

    def __init__(self, lifecycle: SeriesLifecycle, stable_seconds: float, poll_seconds: float,
                 on_complete: Callable[[int], None]) -> None:
        super().__init__("series-completion", poll_seconds)
        self.lifecycle = lifecycle
        self.stable_seconds = stable_seconds
        self.on_complete = on_complete

    def step(self) -> bool:
        self.lifecycle.complete_due(self.stable_seconds, self.on_complete)
        return False

    def next_wait(self) -> float:
        """poll_seconds, or less when a series the evidence shows whole is due sooner."""
        due_in = self.lifecycle.seconds_to_next_evidence()
        return self.interval_seconds if due_in is None else min(self.interval_seconds, due_in + 0.01)
