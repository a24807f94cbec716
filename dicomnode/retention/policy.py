"""What retention may remove: a pure function of the facts (no database, no disk, no clock).

A series' files may go only when the series is finished: not receiving, routed with its latest job
done and every delivery sent (delivered or superseded), or ignored / not selected; never while a
job is queued or running. Then by age (N days after it settled) and, under disk pressure, oldest
first until the low-water mark is reached.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from dicomnode.config import RetentionSettings
from storage.states import JobState, SeriesState

SOURCE, OUTBOX = "source", "outbox"
AGE, HIGH_WATER = "age", "high_water"
# final: nothing more will happen to the series unless a late instance re-opens it
_FINAL = (SeriesState.ROUTED, SeriesState.IGNORED, SeriesState.NOT_SELECTED)


@dataclass(frozen=True)
class SeriesFacts:
    series_id: int
    series_uid: str
    status: str
    generation: int
    # the last of: completed, latest job finished, last delivery sent (None: unknown, kept)
    settled_at: datetime | None
    active_jobs: int = 0
    latest_job_state: str | None = None
    unsent_deliveries: bool = False
    # an intake session (association, upload) still carries the series (known inside the node only)
    busy: bool = False
    source_files: int = 0
    source_bytes: int = 0
    outbox_files: int = 0
    outbox_bytes: int = 0


@dataclass(frozen=True)
class Removal:
    series_id: int
    series_uid: str
    generation: int
    what: str  # SOURCE | OUTBOX
    files: int
    bytes: int
    reason: str  # AGE | HIGH_WATER
    settled_at: datetime


@dataclass
class Plan:
    removals: list[Removal] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)  # why series with files must stay -> how many
    need_bytes: int = 0  # to free to get below the low-water mark (0: no pressure)
    shortfall_bytes: int = 0  # of need_bytes, what nothing deletable could cover


def keep_reason(f: SeriesFacts) -> str | None:
    """Why this series' files must stay, or None when they may go."""
    if f.status == SeriesState.RECEIVING or f.busy:
        return "still receiving"
    if f.status == SeriesState.COMPLETE:
        return "waiting for routing"
    if f.status not in _FINAL:
        return f"status {f.status}"
    if f.active_jobs:
        return "job queued or running"
    if f.status == SeriesState.ROUTED and f.latest_job_state != JobState.DONE:
        return "not analysed (job failed)" if f.latest_job_state == JobState.FAILED else "no finished job"
    if f.unsent_deliveries:
        return "delivery not sent (pending, failed or dead letter)"
    if f.settled_at is None:
        return "no completion time"
    return None


def _items(f: SeriesFacts, settled: datetime, reason: str, kinds: tuple[str, ...]) -> list[Removal]:
    sizes = {SOURCE: (f.source_files, f.source_bytes), OUTBOX: (f.outbox_files, f.outbox_bytes)}
    return [Removal(f.series_id, f.series_uid, f.generation, what, sizes[what][0], sizes[what][1], reason, settled)
            for what in kinds if sizes[what][0]]


def plan(facts: list[SeriesFacts], settings: RetentionSettings, now: datetime, need_bytes: int = 0) -> Plan:
    """Removals by age, then (while need_bytes is not covered) the oldest remaining deletable files."""
    result = Plan(need_bytes=need_bytes)
    spare: list[Removal] = []  # deletable, not yet old enough: what disk pressure may take
    for f in facts:
        why = keep_reason(f)
        if why is not None:
            result.kept[why] = result.kept.get(why, 0) + 1
            continue
        assert f.settled_at is not None  # keep_reason keeps a series without one
        age = now - f.settled_at
        old = tuple(k for k, days in ((SOURCE, settings.source_days), (OUTBOX, settings.results_days))
                    if age >= timedelta(days=days))
        result.removals += _items(f, f.settled_at, AGE, old)
        spare += _items(f, f.settled_at, HIGH_WATER, tuple(k for k in (SOURCE, OUTBOX) if k not in old))
    remaining = need_bytes - sum(r.bytes for r in result.removals)
    # oldest first; results before source of the same series (the images are what a re-run needs)
    for item in sorted(spare, key=lambda r: (r.settled_at, r.series_id, r.what != OUTBOX)):
        if remaining <= 0:
            break
        result.removals.append(item)
        remaining -= item.bytes
    result.shortfall_bytes = max(0, remaining) if need_bytes > 0 else 0
    return result
