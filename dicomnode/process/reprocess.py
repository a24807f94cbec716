"""Re-running a series: `dicomnode reprocess`, POST /api/series/{uid}/reprocess, the series page's button.

A re-run is a new job row, queued in the audit database like any other: the running node's workers
claim it (a stopped node's workers claim it when it starts). The new job names the job it supersedes
(`jobs.supersedes_job_id`). Its results get the deterministic UIDs of dicomnode.results.uids:

- same model and result settings: the same SOP Instance UIDs, so the PACS receives replacements of
  the objects it holds, never a second copy; deliveries of the old result that have not gone out
  are marked superseded as soon as the new result is in the outbox (deliver/outbox.py);
- a different model version or result settings: different UIDs (the content differs, so re-using
  the UIDs would be wrong). The PACS then keeps the old objects next to the new ones (DICOM C-STORE
  cannot delete); in the audit database the new job names the old one in supersedes_job_id, the
  console and API show the newest finished job, and every delivery of the old job that had not gone
  out is marked superseded ("superseded by job N"), so nothing of the old result is sent any more.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomnode.config import Route, Settings
from dicomnode.core.uids import printable
from dicomnode.process.jobs import queue_job
from dicomnode.process.pipelines import BUILT_IN, known_pipeline
from dicomnode.receive.lifecycle import NotReprocessable, SeriesLifecycle
from dicomnode.receive.spool import Spool, SpoolError
from storage.audit import record_event
from storage.db import Database
from storage.events import EventCode
from storage.models import Instance, Job, Series
from storage.states import JobState


class ReprocessError(Exception):
    """A re-run that cannot be queued; `status` is the HTTP status the API answers with."""

    status = 409


class SeriesNotFound(ReprocessError):
    status = 404


class BadPipeline(ReprocessError):
    status = 422


class SourceGone(ReprocessError):
    status = 409


class SeriesBusy(ReprocessError):
    status = 409


@dataclass(frozen=True)
class ReprocessRequest:
    series_uid: str
    pipeline: str | None  # None: the pipeline of the series' last job (or of its route)
    user: str  # who asked: a console user, an API token's name, the OS user of the CLI
    client: str  # from where: the client address, or "cli on HOST"
    via: str  # "cli", "api" or "console"


@dataclass
class ReprocessResult:
    job_id: int
    series_uid: str
    pipeline: str
    destinations: list[str]
    supersedes_job_id: int | None
    instances: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job_id, "series_instance_uid": self.series_uid, "pipeline": self.pipeline,
                "destinations": self.destinations, "supersedes_job": self.supersedes_job_id,
                "instances": self.instances, "state": JobState.QUEUED.value}


def allowed_pipelines(settings: Settings, previous: list[str]) -> set[str]:
    """What a re-run may ask for: the built-in pipelines, those a configured route names, and those
    the series already ran. Never any importable callable: the API must not let a web user make the
    node import and call code the configuration does not name."""
    return set(BUILT_IN) | {r.pipeline for r in settings.routes} | set(previous)


def check_pipeline_name(name: str, allowed: set[str]) -> str:
    """A pipeline the configuration knows, whose module exists (not imported here: it may load a model)."""
    if name not in allowed or not known_pipeline(name):
        raise BadPipeline(f"pipeline {printable(name, 80)} is not one this node runs; choose from "
                          f"{', '.join(sorted(allowed))} (a route in the configuration names the others)")
    if name in BUILT_IN:
        return name
    module = name.partition(":")[0]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise BadPipeline(f"pipeline {name!r}: there is no module {module!r} to import")
    return name


def _route(settings: Settings, name: str | None) -> Route | None:
    return next((r for r in settings.routes if r.name == name), None)


def _source_check(s: Session, spool: Spool, series: Series) -> int:
    """How many source instances the spool still holds; all of them, or SourceGone."""
    paths = list(s.execute(select(Instance.path).where(Instance.series_id == series.id)).scalars())
    if not paths:
        raise SourceGone(f"series {series.series_instance_uid} has no instances recorded: nothing to analyse")
    missing = []
    for relative in paths:
        try:
            present = spool.path(relative).is_file()
        except SpoolError:
            present = False
        if not present:
            missing.append(relative)
    if missing:
        raise SourceGone(f"the source files of series {series.series_instance_uid} are gone from the spool "
                         f"({len(missing)} of {len(paths)} missing, e.g. {missing[0]}; removed by retention or by "
                         f"hand): send the series again to analyse it")
    return len(paths)


def _refuse_concurrent(s: Session, series: Series, job_id: int) -> None:
    """Two requests at once (a double click) both passed the busy check before either wrote: after
    our insert, holding the write lock, a second pending job means the other request won."""
    other = s.execute(select(Job.id).where(Job.series_id == series.id, Job.id != job_id,
                                           Job.state.in_((JobState.QUEUED, JobState.RUNNING)))).first()
    if other is not None:
        raise SeriesBusy(f"series {series.series_instance_uid} already has job {other[0]} pending: wait for it to finish")


def request_reprocess(db: Database, spool: Spool, settings: Settings, req: ReprocessRequest) -> ReprocessResult:
    """Queue a re-run of a series, audited (SERIES_REPROCESS_REQUESTED), or raise a ReprocessError."""
    with db.session() as s:
        series = s.execute(select(Series).where(Series.series_instance_uid == req.series_uid)).scalar_one_or_none()
        if series is None:
            raise SeriesNotFound(f"no series {req.series_uid} in the audit database")
        jobs = list(s.execute(select(Job).where(Job.series_id == series.id).order_by(Job.id.desc())).scalars())
        busy = [j for j in jobs if j.state in (JobState.QUEUED, JobState.RUNNING)]
        if busy:
            raise SeriesBusy(f"series {req.series_uid} already has job {busy[0].id} {busy[0].state}: "
                             "wait for it to finish")
        last = jobs[0] if jobs else None
        route = _route(settings, series.route_name)
        pipeline = (check_pipeline_name(req.pipeline, allowed_pipelines(settings, [j.pipeline for j in jobs]))
                    if req.pipeline else None)
        pipeline = pipeline or (last.pipeline if last else None) or (route.pipeline if route else None)
        if pipeline is None:
            raise BadPipeline(f"series {req.series_uid} was never analysed and no route names a pipeline for it "
                              "(it was ignored or not selected): name one with --pipeline / ?pipeline=")
        instances = _source_check(s, spool, series)
        # where the old result went gets the replacement; a series never analysed: its route's destinations
        destinations = list(last.destinations) if last else list(route.destinations if route else [])
        route_name = (last.route_name if last else None) or series.route_name or "reprocess"
        try:
            SeriesLifecycle.reprocess(series, series.route_name or route_name,
                                      f"re-run requested by {req.user} ({req.via})")
        except NotReprocessable as exc:
            raise SeriesBusy(str(exc)) from None
        job_id = queue_job(s, series, pipeline, route_name, destinations, supersedes_job_id=last.id if last else None)
        _refuse_concurrent(s, series, job_id)
        supersedes = last.id if last else None
        details = {"user": req.user, "client": req.client, "via": req.via, "pipeline": pipeline,
                   "job": job_id, "supersedes_job": supersedes, "destinations": destinations}
        record_event(s, EventCode.SERIES_REPROCESS_REQUESTED,
                     f"re-run requested by {req.user} from {req.client} ({req.via}): pipeline {pipeline!r}, "
                     f"job {job_id}" + (f" supersedes job {supersedes}" if supersedes else ""),
                     series_instance_uid=req.series_uid, job_id=job_id, details=details)
    return ReprocessResult(job_id, req.series_uid, pipeline, destinations, supersedes, instances, details)
