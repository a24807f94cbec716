"""A series' story for its page: audit events collapsed into runs, split and paged.

Pure functions over event rows (dicts from storage.queries.series_events), so they are tested
without a node: a study routed twice makes hundreds of INSTANCE_DUPLICATE events, which must
read as one line and must not push the job and delivery events off the page.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# what N events of one name are called in a collapsed line ("207 duplicate instances")
PLURALS = {
    "INSTANCE_DUPLICATE": "duplicate instances",
    "INSTANCE_REJECTED_UNPARSEABLE": "unparseable instances refused",
    "INSTANCE_REJECTED_DISK_FULL": "instances refused (disk full)",
    "INSTANCE_REJECTED_MISSING_UIDS": "instances refused (missing UIDs)",
    "INSTANCE_REJECTED_INVALID_UID": "instances refused (invalid UID)",
    "INSTANCE_REJECTED_TOO_LARGE": "instances refused (too large)",
    "INSTANCE_STORE_FAILED": "instances that could not be stored",
    "FINDING_RECORDED": "findings recorded",
    "DELIVERY_QUEUED": "deliveries queued",
    "DELIVERY_SENT": "deliveries sent",
    "DELIVERY_ATTEMPT_FAILED": "failed delivery attempts",
    "DELIVERY_DEAD_LETTER": "deliveries given up (dead letters)",
    "DELIVERY_RETRY_REQUESTED": "re-sends requested",
    "FORWARD_QUEUED": "source instances queued for forwarding",
    "DELIVERY_COMMIT_REQUESTED": "storage commitments requested",
    "DELIVERY_COMMITTED": "deliveries committed by the PACS",
    "DELIVERY_COMMIT_FAILED": "storage commitments failed (sent again)",
    "DELIVERY_COMMIT_REPORT_REFUSED": "storage commitment reports refused",
}
LEVEL_RANK = {"info": 0, "warning": 1, "error": 2}
# 5xx jobs, 6xx deliveries: the section of the page that is never paged away
JOB_AND_DELIVERY_CODES = range(500, 700)
EVENTS_PER_PAGE = 50  # collapsed lines per page of the series' other events


@dataclass(frozen=True)
class EventRun:
    """Consecutive events with the same name from the same calling AE; one line on the page."""

    name: str
    code: int
    level: str  # the most severe level in the run
    calling_ae: str | None
    count: int
    first_at: str
    last_at: str
    first_id: int
    last_id: int
    message: str  # the first event's message (all of it when the run is one event)

    @property
    def summary(self) -> str:
        if self.count == 1:
            return self.message
        what = PLURALS.get(self.name, f"{self.name} events")
        source = f" from {self.calling_ae}" if self.calling_ae else ""
        return f"{self.count} {what}{source}, {time_span(self.first_at, self.last_at)}"


def _parse(at: Any) -> datetime | None:
    if isinstance(at, datetime):
        return at
    try:
        return datetime.fromisoformat(str(at))
    except ValueError:
        return None


def time_span(first: str, last: str) -> str:
    """'08:33:49-08:33:52' within a day; full dates when the run spans days; one time when equal."""
    a, b = _parse(first), _parse(last)
    if a is None or b is None:
        return f"{first}-{last}"
    if a.date() != b.date():
        return f"{a:%Y-%m-%d %H:%M:%S} - {b:%Y-%m-%d %H:%M:%S}"
    return f"{a:%H:%M:%S}" if a.replace(microsecond=0) == b.replace(microsecond=0) else f"{a:%H:%M:%S}-{b:%H:%M:%S}"


def collapse_events(events: Iterable[Mapping[str, Any]]) -> list[EventRun]:
    """Events in the order they happened -> runs in the same order; a run is broken by any other event."""
    runs: list[EventRun] = []
    for e in events:
        name, ae, level = str(e["name"]), e.get("calling_ae"), str(e.get("level") or "info")
        last = runs[-1] if runs else None
        if last is not None and last.name == name and last.calling_ae == ae:
            worst = max(last.level, level, key=lambda lv: LEVEL_RANK.get(lv, 0))
            runs[-1] = EventRun(name, last.code, worst, ae, last.count + 1, last.first_at, str(e["at"]),
                                last.first_id, int(e["id"]), last.message)
        else:
            runs.append(EventRun(name, int(e["code"]), level, ae, 1, str(e["at"]), str(e["at"]), int(e["id"]),
                                 int(e["id"]), str(e.get("message") or "")))
    return runs


def is_job_or_delivery(event: Mapping[str, Any]) -> bool:
    return int(event["code"]) in JOB_AND_DELIVERY_CODES or event.get("delivery_id") is not None


@dataclass(frozen=True)
class EventPage:
    runs: list[EventRun]  # newest first
    page: int  # 1 = the newest
    pages: int
    total_events: int


def page_of(runs: Sequence[EventRun], page: int, per_page: int = EVENTS_PER_PAGE) -> EventPage:
    """Page `page` (1 = newest) of runs given oldest first; a page past the end shows the last one."""
    pages = max(1, math.ceil(len(runs) / per_page))
    page = min(max(page, 1), pages)
    newest_first = list(reversed(runs))
    return EventPage(newest_first[(page - 1) * per_page: page * per_page], page, pages, sum(r.count for r in runs))


@dataclass(frozen=True)
class SeriesStory:
    job_and_deliveries: list[EventRun]  # newest first, never paged
    other: EventPage  # reception and routing: associations, instances, series events


def series_story(events: Sequence[Mapping[str, Any]], page: int, per_page: int = EVENTS_PER_PAGE) -> SeriesStory:
    """Split the series' events (oldest first) into the job/delivery story and the paged rest."""
    jobs = collapse_events(e for e in events if is_job_or_delivery(e))
    rest = collapse_events(e for e in events if not is_job_or_delivery(e))
    return SeriesStory(list(reversed(jobs)), page_of(rest, page, per_page))
