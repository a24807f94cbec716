"""The node's background loops (completion checker, job workers, sender, retention) in one shape:
do a step, and wait for the next unless the step says more work is waiting; a failed step is logged
and tried again at the next turn, so one bad pass never stops a loop."""
from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class PeriodicWorker(threading.Thread):
    def __init__(self, name: str, interval_seconds: float) -> None:
        super().__init__(name=name, daemon=True)
        self.interval_seconds = interval_seconds
        self.stopping = threading.Event()
        self._wake = threading.Event()

    def step(self) -> bool:
        """One pass; True when more work is waiting and the next pass should start at once."""
        raise NotImplementedError

    def next_wait(self) -> float:
        """Seconds until the next pass (a subclass may wake earlier for work it knows is due)."""
        return self.interval_seconds

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                again = self.step()
            except Exception:
                log.exception("%s: pass failed; trying again", self.name)
                again = False
            if not again:
                self._wake.wait(self.next_wait())
                self._wake.clear()

    def wake_up(self) -> None:
        """Start the next pass now instead of after the wait."""
        self._wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()
