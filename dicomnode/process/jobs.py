"""The persistent job queue and its workers.

Jobs live in the database (queued -> running -> done | failed), so a restart resumes them:
jobs found `running` at start-up were interrupted and go back to `queued`.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from datetime import timedelta
from collections.abc import Callable
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dicomnode.config import Route, Settings
from dicomnode.core.loops import PeriodicWorker
from dicomnode.deliver.outbox import Outbox
from dicomnode.process.pipelines import Pipeline, PipelineContext, PipelineOutput, PriorProvider, resolve_pipeline
from dicomnode.receive.spool import Spool
from storage.audit import record_event
from storage.db import Database, rows_changed
from storage.events import EventCode
from storage.models import Delivery, FindingRow, Instance, Job, Series, utcnow
from inference.findings import ExamSummary, Finding, lesion_type_words
from inference.remote_engine import EngineUnreachable
from storage.states import DeliveryKind, DeliveryState, JobState

log = logging.getLogger(__name__)

DEFER_PIXELS_BYTES = 64 * 1024  # elements larger than this (pixel data) are read from the spool file when used
PRIOR_ROUTE = "prior"  # the route name of a prior series' own analysis: no destinations, no comparison of its own


def enqueue_job(s: Session, series: Series, route: Route) -> int:
    return queue_job(s, series, route.pipeline, route.name, list(route.destinations))


def queue_job(s: Session, series: Series, pipeline: str, route_name: str, destinations: list[str],
              supersedes_job_id: int | None = None) -> int:
    """A queued job row (and its JOB_QUEUED event) in the caller's transaction; the workers claim it."""
    job = Job(
        series_id=series.id,
        series_generation=series.generation,
        pipeline=pipeline,
        route_name=route_name,
        destinations=destinations,
        state=JobState.QUEUED,
        supersedes_job_id=supersedes_job_id,
    )
    s.add(job)
    s.flush()
    record_event(s, EventCode.JOB_QUEUED, f"pipeline {pipeline!r} for {series.instance_count} instances",
                 series_instance_uid=series.series_instance_uid, job_id=job.id)
    return job.id


class LeaseLost(Exception):
    """Another node took this job over (this one was presumed dead): its result must not be kept."""


class SourceFilesRemoved(Exception):
    """Some instances of the series were removed by retention: analysing the rest would report on a
    partial series as if it were whole."""


def load_series_datasets(db: Database, spool: Spool, series_id: int) -> list[Dataset]:
    with db.session() as s:
        rows = s.execute(select(Instance.path, Instance.deleted_at).where(Instance.series_id == series_id)).all()
    removed = [at for _, at in rows if at is not None]
    if removed:
        raise SourceFilesRemoved(
            f"{len(removed)} of {len(rows)} instances of this series were removed by retention "
            f"(last on {max(removed):%Y-%m-%d}); send the whole series again to analyse it")
    # pixel data left on disk until used: the volume is decoded from the files, so the datasets the job
    # keeps for its results do not hold every slice's pixel bytes through detection (the overlays read
    # their few key slices when they draw them)
    return [dcmread(spool.path(p), defer_size=DEFER_PIXELS_BYTES) for p, _ in rows]


class JobRunner:
    """Claims and runs jobs; one instance is shared by all worker threads."""

    def __init__(self, db: Database, spool: Spool, outbox: Outbox, settings: Settings,
                 pipeline_resolver: Callable[[str, Settings], Pipeline] = resolve_pipeline,
                 on_delivery_queued: Callable[[], None] = lambda: None,
                 prior_provider: PriorProvider | None = None) -> None:
        self.db = db
        self.prior_provider = prior_provider  # [priors] enabled: the pipeline compares with the prior exam
        # called once a finished job's deliveries are committed (the node wakes its sender with it)
        self.on_delivery_queued = on_delivery_queued
        self.spool = spool
        self.outbox = outbox
        self.settings = settings
        self._resolve = pipeline_resolver
        self._pipelines: dict[str, Pipeline] = {}
        self._pipeline_lock = threading.Lock()
        self.warmup_error: str | None = None  # why a warm-up load failed (reported by /health)
        self.engine_wait = EngineWait(settings.inference.unreachable_retry_s, settings.inference.unreachable_retry_max_s)
        # the claim's owner and lease (several nodes on one database: dicomnode.process.cluster)
        self.node_id = settings.node.identity()
        self.lease = timedelta(seconds=settings.node.lease_s)

    def pipeline(self, name: str) -> Pipeline:
        with self._pipeline_lock:
            if name not in self._pipelines:
                self._pipelines[name] = self._resolve(name, self.settings)
            return self._pipelines[name]

    def loaded_pipelines(self) -> dict[str, Pipeline]:
        """The pipelines loaded so far, by name; loads nothing and never waits for a load in
        progress (the lock is held while a model loads; copying a dict is atomic under the GIL)."""
        return dict(self._pipelines)

    def warm_up(self, names: list[str]) -> threading.Thread | None:
        """Load these pipelines now in a background thread, so the first series does not wait for
        the model; a failure is kept in `warmup_error` (the job that needs it fails with it too)."""
        if not names:
            return None

        def load() -> None:
            for name in names:
                try:
                    self.pipeline(name)
                except Exception as exc:
                    self.warmup_error = f"pipeline {name!r} failed to load: {exc}"
                    log.error("%s", self.warmup_error)

        thread = threading.Thread(target=load, name="model-warmup", daemon=True)
        thread.start()
        return thread

    def claim(self) -> int | None:
        """The oldest queued job, now running under this node's lease. PostgreSQL: the row locked with
        SKIP LOCKED, so nodes claiming at once take different jobs; SQLite (one node) ignores the lock
        and the compare-and-set on the state decides."""
        if self.engine_wait.waiting():  # the inference server is unreachable: no job could run now
            return None
        with self.db.session() as s:
            candidates = s.execute(select(Job.id).where(Job.state == JobState.QUEUED).order_by(Job.queued_at, Job.id)
                                   .limit(4).with_for_update(skip_locked=True)).scalars().all()
            for job_id in candidates:
                claimed = rows_changed(s,
                    update(Job).where(Job.id == job_id, Job.state == JobState.QUEUED)
                    .values(state=JobState.RUNNING, started_at=utcnow(), attempts=Job.attempts + 1, error=None,
                            claimed_by=self.node_id, lease_expires_at=utcnow() + self.lease)
                )
                if claimed:
                    return job_id
        return None

    def _still_mine(self, s: Session, job_id: int) -> bool:
        """Compare-and-set on the claim, first in the transaction that ends the job: on PostgreSQL it
        locks the row, so a takeover waits for this commit and then finds the job no longer running."""
        return rows_changed(s, update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING,
                                                 Job.claimed_by == self.node_id)
                            .values(lease_expires_at=utcnow() + self.lease)) == 1

    def _lease_lost(self, job_id: int, series_uid: str) -> None:
        log.warning("job %s was taken over by another node while this one ran it: result discarded", job_id)
        with self.db.session() as s:
            record_event(s, EventCode.NODE_LEASE_LOST,
                         f"node {self.node_id} lost its lease on the job (taken over, presumed dead): "
                         "its result is discarded, the job is another node's now",
                         series_instance_uid=series_uid, job_id=job_id, details={"node_id": self.node_id})

    def run_one(self) -> bool:
        job_id = self.claim()
        if job_id is None:
            return False
        self.run(job_id)
        return True

    def run(self, job_id: int) -> None:
        with self.db.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
            series = job.series
            series_uid, series_id, pipeline_name = series.series_instance_uid, series.id, job.pipeline
            is_prior = job.route_name == PRIOR_ROUTE
            record_event(s, EventCode.JOB_STARTED, f"attempt {job.attempts} of pipeline {pipeline_name!r}",
                         series_instance_uid=series_uid, job_id=job_id)
        context = PipelineContext(job_id, series_uid, self.settings, progress=self._progress_writer(job_id),
                                  series_id=series_id, prior=None if is_prior else self.prior_provider)
        started = time.perf_counter()
        try:
            datasets = load_series_datasets(self.db, self.spool, series_id)
            output = self.pipeline(pipeline_name)(datasets, context)
            del datasets  # the source images are not needed to write the outbox: free them before it
            queued = self._finish(job_id, output, time.perf_counter() - started)
        except LeaseLost:
            self._lease_lost(job_id, series_uid)
            return
        except EngineUnreachable as exc:  # not the job's fault: it waits for the server, not failed
            self._engine_unreachable(job_id, series_uid, exc)
            return
        except Exception as exc:
            log.error("job %s failed: %s", job_id, exc, extra={"context": {"job": job_id, "series": series_uid}})
            self._fail(job_id, series_uid, exc)
            return
        self._engine_back(job_id, series_uid)
        if queued:
            self.on_delivery_queued()

    def _progress_writer(self, job_id: int) -> Callable[[str], None]:
        def write(message: str) -> None:
            with self.db.session() as s:
                s.execute(update(Job).where(Job.id == job_id, Job.claimed_by == self.node_id).values(progress=message[:128]))
        return write

    def _finish(self, job_id: int, output: PipelineOutput, seconds: float) -> int:
        """Outbox files, finding rows and the job's end in one transaction; the deliveries queued."""
        with self.db.session() as s:
            if not self._still_mine(s, job_id):
                raise LeaseLost(job_id)
            job = s.get(Job, job_id)
            assert job is not None
            series = job.series
            # files first (fsynced), then the rows that point at them, in one transaction
            deliveries = self.outbox.enqueue(s, job, series, output.datasets)
            superseded = None if job.supersedes_job_id is None else supersede_job_deliveries(s, job.supersedes_job_id, job.id)
            for i, f in enumerate(output.findings, start=1):
                columns = output.finding_columns[i - 1] if i <= len(output.finding_columns) else {}
                s.add(finding_row(job.id, series.id, i, f, columns))
                record_event(s, EventCode.FINDING_RECORDED, finding_message(i, f),
                             series_instance_uid=series.series_instance_uid, job_id=job.id)
            job.state, job.finished_at, job.verdict, job.progress = JobState.DONE, utcnow(), output.verdict, None
            job.lease_expires_at = None  # claimed_by stays: the node that ran it
            summary = {**output.summary, "seconds": round(seconds, 3), "objects": len(output.datasets),
                       "deliveries": deliveries, "findings": len(output.findings)}
            exam = exam_json(output)
            if exam is not None:  # JSON, not the dataclass: the column is JSON
                summary["exam"] = exam
            if superseded is not None:
                summary["supersedes_job"] = job.supersedes_job_id
                summary["superseded_deliveries"] = superseded
            job.summary = summary
            comparison_event(s, job, series.series_instance_uid, summary.get("comparison"),
                             [str(c.get("comparison_status")) for c in output.finding_columns])
            if output.verdict == "not_analysed":
                record_event(s, EventCode.SERIES_NOT_ANALYSED, str(output.summary.get("reason", "not analysed")),
                             series_instance_uid=series.series_instance_uid, job_id=job.id)
            replaces = "" if superseded is None else (
                f"; supersedes job {job.supersedes_job_id} ({superseded} of its objects not yet sent will not be)")
            record_event(s, EventCode.JOB_DONE,
                         f"{len(output.findings)} finding(s), verdict {output.verdict}, {len(output.datasets)} object(s) in {seconds:.1f} s{replaces}",
                         series_instance_uid=series.series_instance_uid, job_id=job.id)
        return deliveries

    def _engine_unreachable(self, job_id: int, series_uid: str, exc: EngineUnreachable) -> None:
        """Queue the job again without counting the attempt; no job is claimed until the backoff ends."""
        delay = self.engine_wait.failed()
        log.warning("job %s: %s; retry in %.1f s", job_id, exc, delay)
        with self.db.session() as s:
            if not self._still_mine(s, job_id):
                return  # taken over meanwhile: the other node decides
            job = s.get(Job, job_id)
            assert job is not None
            job.claimed_by, job.lease_expires_at = None, None
            job.state, job.progress, job.error = JobState.QUEUED, None, f"{type(exc).__name__}: {exc}"
            job.attempts = max(0, job.attempts - 1)  # waiting for the server is not an attempt
            record_event(s, EventCode.ENGINE_UNAVAILABLE,
                         f"{exc}; job queued again, retry in {delay:.1f} s (not counted as an attempt)",
                         series_instance_uid=series_uid, job_id=job_id)

    def _engine_back(self, job_id: int, series_uid: str) -> None:
        down = self.engine_wait.succeeded()
        if down is not None:
            with self.db.session() as s:
                record_event(s, EventCode.ENGINE_RESTORED,
                             f"inference server reachable again after {down:.0f} s; job {job_id} done",
                             series_instance_uid=series_uid, job_id=job_id)

    def _fail(self, job_id: int, series_uid: str, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        with self.db.session() as s:
            if not self._still_mine(s, job_id):
                return  # taken over meanwhile: the other node decides
            job = s.get(Job, job_id)
            assert job is not None
            job.lease_expires_at = None
            job.error = message + "\n" + "".join(traceback.format_exception(exc))[-4000:]
            job.progress = None
            if job.attempts < self.settings.jobs.max_attempts:
                job.state, job.claimed_by = JobState.QUEUED, None
                record_event(s, EventCode.JOB_REQUEUED, f"attempt {job.attempts} failed ({message}); queued again",
                             series_instance_uid=series_uid, job_id=job_id)
            else:
                job.state, job.finished_at = JobState.FAILED, utcnow()
                record_event(s, EventCode.JOB_FAILED, f"failed after {job.attempts} attempt(s): {message}",
                             series_instance_uid=series_uid, job_id=job_id)


def supersede_job_deliveries(s: Session, old_job_id: int, new_job_id: int) -> int:
    """A re-run's result is in the outbox: what the old job still had to send never goes out (with
    other UIDs, after a model or settings change, the outbox's per-UID supersede would miss it)."""
    return rows_changed(s,
        update(Delivery)
        .where(Delivery.job_id == old_job_id, Delivery.kind == DeliveryKind.RESULT,
               Delivery.state.in_((DeliveryState.PENDING, DeliveryState.DEAD)))
        .values(state=DeliveryState.SUPERSEDED, last_error=f"superseded by job {new_job_id}")
    )


def comparison_event(s: Session, job: Job, series_uid: str, comparison: Any, statuses: list[str]) -> None:
    """The audit of the comparison with the prior (when the pipeline looked for one): compared, or why not."""
    if not isinstance(comparison, dict):
        return
    if comparison.get("performed"):
        counts = "".join(f"{statuses.count(k)} {k}, " for k in ("growing", "stable", "shrinking", "new"))
        resolved = comparison.get("resolved") or []
        record_event(s, EventCode.PRIOR_COMPARED,
                     f"compared with the prior of {comparison.get('prior_study_date') or '?'} "
                     f"({comparison.get('interval_days')} days): {counts}"
                     f"{len(resolved)} resolved; follow-up Lung-RADS {comparison.get('lung_rads')}",
                     series_instance_uid=series_uid, job_id=job.id,
                     details={"prior_study_instance_uid": comparison.get("prior_study_instance_uid"),
                              "prior_series_instance_uid": comparison.get("prior_series_instance_uid"),
                              "prior_job_id": comparison.get("prior_job_id"), "lung_rads": comparison.get("lung_rads")})
    else:
        record_event(s, EventCode.PRIOR_NOT_COMPARED, f"result without comparison: {comparison.get('reason')}",
                     series_instance_uid=series_uid, job_id=job.id, details={"reason": comparison.get("reason")})


def finding_row(job_id: int, series_id: int, index: int, f: Finding,
                columns: dict[str, Any] | None = None) -> FindingRow:
    """The audit row of one finding: every field a reader sees in the console, report and API; `columns`:
    its tracking UID and the comparison with the prior (FindingRow column names)."""
    return FindingRow(
        **(columns or {}),
        job_id=job_id, series_id=series_id, index=index,
        center_x_mm=f.center_mm[0], center_y_mm=f.center_mm[1], center_z_mm=f.center_mm[2],
        diameter_mm=f.diameter_mm, volume_mm3=f.volume_mm3, probability=f.probability,
        model_score=f.model_score, lung_rads=f.lung_rads, sop_instance_uid=f.key_slice.sop_instance_uid,
        row=f.key_slice.row, column=f.key_slice.column,
        nodule_type=f.nodule_type, calcified=f.calcified, calcification_pattern=f.calcification_pattern,
        margin=f.margin, lung=f.location.lung, zone=f.location.zone, juxtapleural=f.location.juxtapleural,
        perifissural=f.location.perifissural,
        mean_diameter_mm=round(f.mean_diameter_mm, 1), long_axis_mm=f.long_axis_mm, short_axis_mm=f.short_axis_mm,
        solid_component_mm=f.solid_component_mm, brock_risk=f.brock_risk,
        lung_rads_reasons="\n".join(f.lung_rads_reasons) or None, note=f.note, cyst=f.cyst, airway=f.airway,
    )


def finding_message(index: int, f: Finding) -> str:
    """The FINDING_RECORDED event text: the Brock risk is the risk; the model score is named as such."""
    brock = "n/a" if f.brock_risk is None else f"{f.brock_risk * 100:.1f}%"
    kind = lesion_type_words(f.nodule_type, f.cyst, f.airway)
    return (f"nodule {index}: {kind} {f.mean_diameter_mm:.1f} mm, Lung-RADS {f.lung_rads}, "
            f"Brock risk {brock}, model score {f.model_score:.2f}")


def exam_json(output: PipelineOutput) -> dict[str, Any] | None:
    """The exam summary the pipeline reported (an ExamSummary, or its JSON in summary["exam"]), as JSON."""
    exam = getattr(output, "exam", None) or output.summary.get("exam")
    if isinstance(exam, ExamSummary):
        return exam.to_json()
    return exam if isinstance(exam, dict) else None


class EngineWait:
    """Backoff while the inference server is unreachable: `retry_s`, doubled per failure up to `max_s`."""

    def __init__(self, retry_s: float, max_s: float) -> None:
        self.retry_s, self.max_s = retry_s, max(max_s, retry_s)
        self._lock = threading.Lock()
        self._delay = 0.0
        self._until = 0.0
        self._down_since: float | None = None

    def waiting(self) -> bool:
        return time.monotonic() < self._until

    def failed(self) -> float:
        """One more unreachable try: the seconds to wait before the next."""
        with self._lock:
            now = time.monotonic()
            self._delay = self.retry_s if self._delay == 0.0 else min(self._delay * 2, self.max_s)
            self._until = now + self._delay
            if self._down_since is None:
                self._down_since = now
            return self._delay

    def succeeded(self) -> float | None:
        """A job ran: the seconds the server had been unreachable, or None if it had not been."""
        with self._lock:
            down, self._down_since, self._delay, self._until = self._down_since, None, 0.0, 0.0
            return None if down is None else time.monotonic() - down


class JobWorker(PeriodicWorker):
    def __init__(self, runner: JobRunner, poll_seconds: float, index: int = 0) -> None:
        super().__init__(f"job-worker-{index}", poll_seconds)
        self.runner = runner

    def step(self) -> bool:
        return self.runner.run_one()  # a job ran: look for the next one at once
