"""The facts retention decides on: series rows from the audit database, sizes and disk use from the disk."""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dicomnode.config import Settings
from dicomnode.core.durable import OutsideRoot, confined
from dicomnode.core.sizes import human_bytes
from dicomnode.retention.policy import SeriesFacts
from storage.db import Database
from storage.queries import retention_series, series_with_unsent_deliveries


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive UTC; PostgreSQL aware."""
    return value if value is None or value.tzinfo else value.replace(tzinfo=timezone.utc)


def walk_files(folder: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every file and symlink under `folder` with its lstat, never following a symlink."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from walk_files(Path(entry.path))
        else:
            try:
                yield Path(entry.path), entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue


def outbox_folder(outbox_root: Path, series_uid: str) -> Path | None:
    """<outbox>/<series>, or None where the UID (from the network) would lead out of the outbox."""
    try:
        return confined(outbox_root, series_uid)
    except OutsideRoot:
        return None


def _outbox_size(outbox_root: Path, series_uid: str) -> tuple[int, int]:
    folder = outbox_folder(outbox_root, series_uid)
    if folder is None:
        return 0, 0
    sizes = [st.st_size for _, st in walk_files(folder)]
    return len(sizes), sum(sizes)


def _settled_at(row: dict[str, Any]) -> datetime | None:
    times = [aware(row[k]) for k in ("completed_at", "job_finished_at", "last_delivered_at") if row[k] is not None]
    return max(t for t in times if t is not None) if times else None


def series_facts(db: Database, settings: Settings, busy: Callable[[str], bool] | None = None) -> list[SeriesFacts]:
    """One SeriesFacts per series that may still have files; `busy`: the node's open intake sessions."""
    with db.session() as s:
        rows = retention_series(s)
        unsent = series_with_unsent_deliveries(s)
    facts = []
    for row in rows:
        uid = row["series_instance_uid"]
        outbox_files, outbox_bytes = _outbox_size(settings.outbox_dir, uid)
        facts.append(SeriesFacts(
            series_id=row["id"], series_uid=uid, status=row["status"], generation=row["generation"],
            settled_at=_settled_at(row), active_jobs=int(row["active_jobs"] or 0),
            latest_job_state=row["latest_job_state"], unsent_deliveries=row["id"] in unsent,
            busy=bool(busy and busy(uid)), source_files=int(row["source_files"]),
            source_bytes=int(row["source_bytes"]), outbox_files=outbox_files, outbox_bytes=outbox_bytes))
    return facts


@dataclass(frozen=True)
class Pressure:
    """Use of one capacity (the spool's filesystem, or the max_spool_gb cap) against the marks."""

    what: str
    used: int
    capacity: int
    high_percent: float
    low_percent: float

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.capacity if self.capacity else 0.0

    @property
    def need_bytes(self) -> int:
        """Bytes to free to get below the low-water mark; 0 while at or below the high-water mark."""
        if self.percent <= self.high_percent:
            return 0
        return self.used - int(self.capacity * self.low_percent / 100)

    def describe(self) -> str:
        return (f"{self.what}: {self.percent:.1f}% used ({human_bytes(self.used)} of {human_bytes(self.capacity)}), "
                f"high-water {self.high_percent:g}%, low-water {self.low_percent:g}%")


def data_bytes(settings: Settings) -> int:
    """Bytes in the spool and the outbox (what max_spool_gb caps)."""
    return sum(st.st_size for root in (settings.spool_dir, settings.outbox_dir) for _, st in walk_files(Path(root)))


def pressure(settings: Settings) -> Pressure:
    """The tighter of the filesystem holding the spool and the max_spool_gb cap."""
    r = settings.retention
    existing = Path(settings.spool_dir).resolve()
    while not existing.exists():  # a spool not made yet: the filesystem it will be on
        existing = existing.parent
    usage = shutil.disk_usage(existing)
    # like df: percent of what is usable (used + available to us), not of the raw size
    disk = Pressure(f"filesystem of {Path(settings.spool_dir).resolve()}", usage.used, usage.used + usage.free,
                    r.high_water_percent, r.low_water_percent)
    if not r.max_spool_gb:
        return disk
    cap = Pressure("spool and outbox (retention.max_spool_gb)", data_bytes(settings), int(r.max_spool_gb * 2**30),
                   r.high_water_percent, r.low_water_percent)
    return cap if cap.need_bytes >= disk.need_bytes else disk
