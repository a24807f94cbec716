"""A series' story (dicomnode.web.story): repeated events collapse into one line, the job and delivery
events are kept apart from the paged rest, pages run newest first. Pure functions: no node needed."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from dicomnode.web.story import collapse_events, page_of, series_story, time_span

T0 = datetime(2026, 11, 21, 8, 33, 49, tzinfo=timezone.utc)


def event(i: int, name: str, code: int, seconds: float, ae: str | None = None, level: str = "info",
          delivery_id: int | None = None, message: str = "") -> dict[str, Any]:
    return {"id": i, "at": (T0 + timedelta(seconds=seconds)).isoformat(timespec="seconds"), "name": name, "code": code,
            "level": level, "calling_ae": ae, "delivery_id": delivery_id, "message": message or f"{name} {i}"}


def routed_twice() -> list[dict[str, Any]]:
    """The issue's case: a study routed twice from the PACS (207 duplicates), then the job and deliveries."""
    events = [event(1, "SERIES_OPENED", 400, 0, "ORTHANC"), event(2, "SERIES_COMPLETE", 401, 1),
              event(3, "JOB_QUEUED", 500, 1), event(4, "JOB_DONE", 502, 2)]
    events += [event(5 + i, "DELIVERY_QUEUED", 600, 2, delivery_id=i + 1) for i in range(3)]
    events += [event(10 + i, "INSTANCE_DUPLICATE", 301, 3 * i / 206, "ORTHANC", "info") for i in range(207)]
    return events


def test_a_run_of_duplicates_is_one_line_with_count_source_and_span() -> None:
    runs = collapse_events(e for e in routed_twice() if e["name"] == "INSTANCE_DUPLICATE")
    assert len(runs) == 1
    (run,) = runs
    assert (run.count, run.calling_ae, run.first_id, run.last_id) == (207, "ORTHANC", 10, 216)
    assert run.summary == "207 duplicate instances from ORTHANC, 08:33:49-08:33:52"


def test_runs_break_on_another_event_or_another_calling_ae() -> None:
    events = [event(1, "INSTANCE_DUPLICATE", 301, 0, "ORTHANC"), event(2, "INSTANCE_DUPLICATE", 301, 1, "ORTHANC"),
              event(3, "INSTANCE_DUPLICATE", 301, 2, "CT01"), event(4, "SERIES_REOPENED", 402, 3, "CT01"),
              event(5, "INSTANCE_DUPLICATE", 301, 4, "CT01"),
              event(6, "DELIVERY_ATTEMPT_FAILED", 602, 5, level="warning", message="attempt 1 to PACS failed")]
    runs = collapse_events(events)
    assert [(r.name, r.calling_ae, r.count) for r in runs] == [
        ("INSTANCE_DUPLICATE", "ORTHANC", 2), ("INSTANCE_DUPLICATE", "CT01", 1), ("SERIES_REOPENED", "CT01", 1),
        ("INSTANCE_DUPLICATE", "CT01", 1), ("DELIVERY_ATTEMPT_FAILED", None, 1)]
    # a single event reads as its own message, not as "1 ... events"
    assert runs[-1].summary == "attempt 1 to PACS failed"


def test_a_run_keeps_its_worst_level_and_names_unknown_events() -> None:
    events = [event(1, "DELIVERY_ATTEMPT_FAILED", 602, 0, level="warning"),
              event(2, "DELIVERY_ATTEMPT_FAILED", 602, 1, level="warning"),
              event(3, "SOMETHING_NEW", 999, 2), event(4, "SOMETHING_NEW", 999, 2, level="error")]
    first, second = collapse_events(events)
    assert first.level == "warning" and first.summary == "2 failed delivery attempts, 08:33:49-08:33:50"
    assert second.level == "error" and second.summary == "2 SOMETHING_NEW events, 08:33:51"


def test_time_span_over_midnight_names_the_days() -> None:
    assert time_span("2026-11-21T23:59:58+00:00", "2026-11-22T00:00:03+00:00") == \
        "2026-11-21 23:59:58 - 2026-11-22 00:00:03"


def test_job_and_delivery_events_stay_out_of_the_paged_part() -> None:
    story = series_story(routed_twice(), page=1, per_page=1)
    # the 207 duplicates do not push the job and its deliveries away: they have their own section
    assert [(r.name, r.count) for r in story.job_and_deliveries] == [
        ("DELIVERY_QUEUED", 3), ("JOB_DONE", 1), ("JOB_QUEUED", 1)]  # newest first
    assert story.other.total_events == 209 and story.other.pages == 3
    assert [(r.name, r.count) for r in story.other.runs] == [("INSTANCE_DUPLICATE", 207)]
    oldest = series_story(routed_twice(), page=3, per_page=1).other
    assert [r.name for r in oldest.runs] == ["SERIES_OPENED"]


def test_pages_run_newest_first_and_out_of_range_pages_are_clamped() -> None:
    runs = collapse_events(event(i, "SERIES_REOPENED" if i % 2 else "SERIES_COMPLETE", 401, i) for i in range(1, 121))
    assert len(runs) == 120
    first = page_of(runs, 1, per_page=50)
    assert (first.page, first.pages, first.runs[0].first_id, first.runs[-1].first_id) == (1, 3, 120, 71)
    last = page_of(runs, 99, per_page=50)
    assert (last.page, [r.first_id for r in last.runs]) == (3, list(range(20, 0, -1)))
    assert page_of([], 0).pages == 1 and page_of([], 0).runs == []
