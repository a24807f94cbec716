"""One retention pass (survey, plan, remove, audit), and the node's background loop."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dicomnode.config import Settings
from dicomnode.core.loops import PeriodicWorker
from dicomnode.retention.executor import Executor, Finished
from dicomnode.core.sizes import human_bytes
from dicomnode.retention.policy import Plan, Removal, plan
from dicomnode.retention.survey import Pressure, pressure, series_facts
from storage.audit import record_event
from storage.db import Database
from storage.events import EventCode
from storage.models import utcnow



@dataclass
class PassReport:
    dry_run: bool
    pressure: Pressure
    plan: Plan
    removed: list[Finished] = field(default_factory=list)
    resumed: int = 0  # half-done removals of an earlier pass finished now

    def rows(self) -> list[dict[str, Any]]:
        """What would go (dry run) or what the plan chose, one row per series and kind of files."""
        return [removal_row(r) for r in self.plan.removals]

    def to_json(self) -> dict[str, Any]:
        p = self.pressure
        return {"dry_run": self.dry_run, "removals": self.rows(), "kept": self.plan.kept,
                "removed": [{"series_instance_uid": f.series_uid, "what": f.what, "bytes": f.bytes, "files": f.files}
                            for f in self.removed],
                "resumed": self.resumed,
                "pressure": {"what": p.what, "used_bytes": p.used, "capacity_bytes": p.capacity,
                             "percent": round(p.percent, 1), "high_water_percent": p.high_percent,
                             "low_water_percent": p.low_percent, "need_bytes": self.plan.need_bytes,
                             "shortfall_bytes": self.plan.shortfall_bytes}}


def removal_row(r: Removal) -> dict[str, Any]:
    return {"series_instance_uid": r.series_uid, "what": r.what, "files": r.files, "bytes": r.bytes,
            "reason": r.reason, "settled_at": r.settled_at.isoformat(timespec="seconds")}


def run_pass(db: Database, settings: Settings, *, dry_run: bool = False, now: datetime | None = None,
             busy: Callable[[str], bool] | None = None) -> PassReport:
    """Finish what a crash left half-done, then decide and (unless dry_run) remove, audited."""
    executor = Executor(db, settings)
    resumed = 0 if dry_run else executor.finish_pending()
    load = pressure(settings)
    decided = plan(series_facts(db, settings, busy), settings.retention, now or utcnow(), load.need_bytes)
    report = PassReport(dry_run, load, decided, resumed=resumed)
    if dry_run:
        return report
    if decided.need_bytes:
        _record(db, EventCode.RETENTION_HIGH_WATER,
                f"{load.describe()}: removing the oldest deletable files first, {human_bytes(decided.need_bytes)} to free",
                {"used_bytes": load.used, "capacity_bytes": load.capacity, "need_bytes": decided.need_bytes})
    for removal in decided.removals:
        purge_id = executor.mark(removal)
        finished = executor.finish(purge_id) if purge_id is not None else None
        if finished is not None:
            report.removed.append(finished)
    if decided.shortfall_bytes:
        kept = ", ".join(f"{n} {why}" for why, n in sorted(decided.kept.items())) or "none"
        _record(db, EventCode.RETENTION_SKIPPED,
                f"{load.describe()}: {human_bytes(decided.shortfall_bytes)} more must go but nothing else may be deleted "
                f"(series kept: {kept}); an admin must act (deliveries, failed jobs, disk) before the node refuses data",
                {"shortfall_bytes": decided.shortfall_bytes, "kept": decided.kept})
    return report


def _record(db: Database, code: EventCode, message: str, details: dict[str, Any]) -> None:
    with db.session() as s:
        record_event(s, code, message, details=details)


class RetentionLoop(PeriodicWorker):
    """A pass at start (finishing what a crash left) and every retention.interval_seconds."""

    def __init__(self, db: Database, settings: Settings, busy: Callable[[str], bool] | None = None) -> None:
        super().__init__("retention", settings.retention.interval_seconds)
        self.db = db
        self.settings = settings
        self.busy = busy

    def step(self) -> bool:
        run_pass(self.db, self.settings, busy=self.busy)
        return False

    def stop(self) -> None:
        super().stop()
        if self.is_alive():
            self.join(10)  # mid-removal at exit is safe: the journal finishes it at the next start
