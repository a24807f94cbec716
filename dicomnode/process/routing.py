"""Which complete series go to which pipeline and destinations.

Every complete series ends up routed, ignored (with the reason) or, for routes that want one
series per study, not selected (with the series that was chosen instead).

A route's `forward_to` forwards the source instances of every series it matches as soon as the
series is complete, in the routing transaction: before and whatever the analysis (a failed job, a
sibling chosen for analysis), like a DICOM router would.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomnode.config import Route
from dicomnode.receive.lifecycle import SeriesLifecycle
from storage.audit import record_event
from storage.db import Database
from storage.events import EventCode
from storage.models import Series, Study
from storage.states import SeriesRole, SeriesState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesFacts:
    modality: str
    body_part: str
    image_type: list[str]
    description: str
    slice_thickness: float | None
    slice_count: int
    calling_ae: str

    @classmethod
    def of(cls, series: Series) -> "SeriesFacts":
        return cls(
            modality=series.modality,
            body_part=series.body_part,
            image_type=[p for p in series.image_type.split("\\") if p],
            description=series.series_description,
            slice_thickness=series.slice_thickness,
            slice_count=series.instance_count,
            calling_ae=series.calling_ae,
        )


def _upper(values: list[str]) -> list[str]:
    return [v.strip().upper() for v in values]


def mismatch(route: Route, facts: SeriesFacts) -> str | None:
    """None when the series matches the route, else the first reason it does not."""
    m = route.match
    if m.modality and facts.modality.upper() not in _upper(m.modality):
        return f"modality {facts.modality or '(none)'} not in {m.modality}"
    if m.body_part and facts.body_part.upper() not in _upper(m.body_part):
        return f"body part {facts.body_part or '(none)'} not in {m.body_part}"
    missing = [t for t in _upper(m.image_type_contains) if t not in _upper(facts.image_type)]
    if missing:
        return f"image type {'/'.join(facts.image_type) or '(none)'} lacks {', '.join(missing)}"
    if m.series_description_regex and not re.search(m.series_description_regex, facts.description, re.IGNORECASE):
        return f"series description {facts.description!r} does not match /{m.series_description_regex}/"
    thickness = facts.slice_thickness
    if m.min_slice_thickness_mm is not None and (thickness is None or thickness < m.min_slice_thickness_mm):
        return f"slice thickness {thickness} mm below {m.min_slice_thickness_mm} mm"
    if m.max_slice_thickness_mm is not None and (thickness is None or thickness > m.max_slice_thickness_mm):
        return f"slice thickness {thickness} mm above {m.max_slice_thickness_mm} mm"
    if m.min_slices is not None and facts.slice_count < m.min_slices:
        return f"{facts.slice_count} slices, fewer than {m.min_slices}"
    if m.max_slices is not None and facts.slice_count > m.max_slices:
        return f"{facts.slice_count} slices, more than {m.max_slices}"
    if m.calling_ae and facts.calling_ae not in [a.strip() for a in m.calling_ae]:
        return f"calling AE {facts.calling_ae!r} not in {m.calling_ae}"
    return None


def first_matching_route(routes: list[Route], facts: SeriesFacts) -> tuple[Route | None, str]:
    reasons = []
    for route in routes:
        why = mismatch(route, facts)
        if why is None:
            return route, ""
        reasons.append(f"route {route.name!r}: {why}")
    return None, "; ".join(reasons) if reasons else "no routes are configured"


def preference_key(facts: SeriesFacts) -> tuple[int, float, int]:
    """Smaller is better: axial first, then thinnest, then most slices."""
    axial = 0 if "AXIAL" in _upper(facts.image_type) else 1
    thickness = facts.slice_thickness if facts.slice_thickness is not None else math.inf
    return axial, thickness, -facts.slice_count


EnqueueJob = Callable[[Session, Series, Route], int]
# (session, series, route name, destination names) -> deliveries queued; deliver.outbox.Outbox.forward
Forward = Callable[[Session, Series, str, list[str]], int]


Notify = Callable[[], None]


def _nothing() -> None:
    pass


class Router:
    """`on_job_queued` / `on_delivery_queued` are called once the routing transaction that queued a job
    / a forward has committed (the node wakes its job workers / sender with them, so work starts now
    rather than at the next poll)."""

    def __init__(self, db: Database, routes: list[Route], enqueue: EnqueueJob, forward: Forward | None = None,
                 on_job_queued: Notify = _nothing, on_delivery_queued: Notify = _nothing) -> None:
        self.db = db
        self.routes = routes
        self.enqueue = enqueue
        self.forward = forward
        self.on_job_queued = on_job_queued
        self.on_delivery_queued = on_delivery_queued

    def on_series_complete(self, series_id: int) -> None:
        queued: set[str] = set()  # what this routing pass queued: "job", "delivery"
        self._route_series(series_id, queued)
        # after the commit: a woken worker must find the row
        if "job" in queued:
            self.on_job_queued()
        if "delivery" in queued:
            self.on_delivery_queued()

    def _route_series(self, series_id: int, queued: set[str]) -> None:
        with self.db.session() as s:
            series = self._lock(s, series_id)
            if series is None or series.status != SeriesState.COMPLETE:
                return
            if series.role == SeriesRole.PRIOR:  # retrieved to compare with (dicomnode.priors): no job, no delivery
                SeriesLifecycle.hold_prior(s, series)
                return
            route, reason = first_matching_route(self.routes, SeriesFacts.of(series))
            if route is None:
                SeriesLifecycle.ignore(s, series, reason)
                return
            series.route_name = route.name
            if route.forward_to and self.forward is not None:
                if self.forward(s, series, route.name, list(route.forward_to)):
                    queued.add("delivery")
            if not route.one_series_per_study:
                self._route(s, series, route, queued)
                return
            SeriesLifecycle.wait_for_study(series, route.name)
            s.flush()
            self._choose_for_study(s, series.study_id, route, queued)

    @staticmethod
    def _lock(s: Session, series_id: int) -> Series | None:
        """The series, read under its study's row lock then its own (PostgreSQL; several nodes): one
        routing decision per series and per study at a time, whichever node completed or recovered
        it; the second waits, then sees the first's outcome. SQLite: one node, no lock needed."""
        study_id = s.execute(select(Series.study_id).where(Series.id == series_id)).scalar()
        if study_id is None:
            return None
        s.execute(select(Study.id).where(Study.id == study_id).with_for_update())
        return s.execute(select(Series).where(Series.id == series_id).with_for_update()
                         .execution_options(populate_existing=True)).scalar_one_or_none()

    def _route(self, s: Session, series: Series, route: Route, queued: set[str]) -> None:
        SeriesLifecycle.routed(series)
        job_id = self.enqueue(s, series, route)
        queued.add("job")
        record_event(s, EventCode.SERIES_ROUTED, f"route {route.name!r} -> pipeline {route.pipeline!r}, job {job_id}",
                     series_instance_uid=series.series_instance_uid, job_id=job_id)

    def _choose_for_study(self, s: Session, study_id: int, route: Route, queued: set[str]) -> None:
        siblings = s.execute(select(Series).where(Series.study_id == study_id)).scalars().all()
        if any(x.status == SeriesState.RECEIVING for x in siblings):
            return  # the last series of the study to complete makes the choice
        candidates = [x for x in siblings if x.route_name == route.name and x.status in (SeriesState.COMPLETE, SeriesState.ROUTED, SeriesState.NOT_SELECTED)]
        best = min(candidates, key=lambda x: preference_key(SeriesFacts.of(x)))
        for other in candidates:
            if other is best:
                continue
            if other.status == SeriesState.COMPLETE:
                SeriesLifecycle.not_selected(s, other, (
                    f"route {route.name!r} analyses one series per study; chose series {best.series_number} "
                    f"({best.slice_thickness} mm, {best.instance_count} slices)"
                ))
        if best.status != SeriesState.ROUTED:
            self._route(s, best, route, queued)

