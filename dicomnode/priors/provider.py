"""The node's PriorProvider (dicomnode.process.pipelines): the prior exam of a current series, analysed.

    NodePriors(db, spool, intake, settings)(current_series_id, analyse) -> PriorExam

PriorService.obtain finds the prior (own database, then C-FIND) and retrieves it, bounded by
priors.max_wait_s. A prior "found" in the node's database brings the findings of the job that analysed
it (and the SOP Instance UID of the SR that job made); a "retrieved" one is analysed here once, with the
current job's own model (`analyse`), and recorded as its own job of the prior series: state done, no
destinations, no deliveries (a prior's results are never sent), findings rows with their Tracking UIDs.
"""
from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select

from dicomnode.config import Settings
from dicomnode.process.jobs import PRIOR_ROUTE, finding_message, finding_row, load_series_datasets
from dicomnode.process.pipelines import LUNG_NODULE, AnalyseSeries, PriorExam
from dicomnode.receive.intake import Intake
from dicomnode.receive.spool import Spool
from dicomnode.priors.service import PriorOutcome, PriorService, printable_error
from inference.findings import Finding, KeySlice, ModelIdentity, NoduleLocation, SeriesResult, Verdict
from inference.remote_engine import EngineUnreachable
from storage.audit import record_event
from storage.db import Database
from storage.events import EventCode
from storage.models import Delivery, FindingRow, Job, Series, utcnow
from storage.queries import prior_job
from storage.states import JobState

log = logging.getLogger(__name__)


def derived_tracking_uid(index: int, series_uid: str, model_version: str, options: Any) -> str:
    """dicomnode.results.sr_follow_up's, imported on use: the node's main process need not load highdicom at start."""
    from dicomnode.results.sr_follow_up import derived_tracking_uid as derived

    return derived(index, series_uid, model_version, options)

SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."  # the Structured Report storage SOP classes


class NodePriors:
    def __init__(self, db: Database, spool: Spool, intake: Intake, settings: Settings) -> None:
        self.db = db
        self.spool = spool
        self.settings = settings
        self.service = PriorService(db, spool, intake, settings)

    def __call__(self, series_id: int, analyse: AnalyseSeries) -> PriorExam:
        outcome = self.service.obtain(series_id)
        if not outcome.available or outcome.series_id is None:
            exists = None if outcome.unretrieved is None else outcome.unretrieved.label()
            return PriorExam(False, outcome.summary(), others=list(outcome.others), not_compared=exists)
        try:
            job_id = outcome.job_id if outcome.status == "found" else self._analysed_job(outcome.series_id)
            if job_id is None:
                job_id = self._analyse(outcome, analyse)
            return self._exam(outcome, job_id)
        except EngineUnreachable:  # the job waits for the inference server, as for its own series
            raise
        except Exception as exc:  # files removed by retention, an unreadable prior: no comparison, said so
            log.exception("the prior of series %s could not be analysed", series_id)
            reason = f"the prior {outcome.summary().removeprefix('prior: ')} could not be read or analysed: {printable_error(exc)}"
            return PriorExam(False, f"prior not available: {reason}", others=list(outcome.others),
                             not_compared=None if outcome.prior is None else outcome.prior.label())

    def _analysed_job(self, prior_series_id: int) -> int | None:
        """A retrieved prior analysed before (for another exam): its done job; it is analysed once."""
        with self.db.session() as s:
            job_id = prior_job(s, prior_series_id)
            job = None if job_id is None else s.get(Job, job_id)
            return job_id if job is not None and job.state == JobState.DONE else None

    def _analyse(self, outcome: PriorOutcome, analyse: AnalyseSeries) -> int:
        """The retrieved prior analysed now, recorded as its own done job (never delivered)."""
        assert outcome.series_id is not None
        started = utcnow()
        datasets = load_series_datasets(self.db, self.spool, outcome.series_id)
        result = analyse(datasets)
        del datasets
        options = self.settings.results
        with self.db.session() as s:
            series = s.get(Series, outcome.series_id)
            assert series is not None
            job = Job(series_id=series.id, series_generation=series.generation, pipeline=LUNG_NODULE,
                      route_name=PRIOR_ROUTE, destinations=[], state=JobState.DONE, attempts=1, verdict=result.verdict.value,
                      started_at=started, finished_at=utcnow(),
                      summary={"prior": True, "verdict_probability": result.verdict_probability,
                               "exam": None if result.exam is None else result.exam.to_json(),
                               "model": result.model.to_json(), "findings": len(result.findings), "objects": 0,
                               "deliveries": 0, **({"reason": result.not_analysed_reason} if result.not_analysed_reason else {})})
            s.add(job)
            s.flush()
            for i, f in enumerate(result.findings):
                uid = derived_tracking_uid(i, result.series_instance_uid, result.model.version, options)
                s.add(finding_row(job.id, series.id, i + 1, f, {"tracking_uid": uid}))
                record_event(s, EventCode.FINDING_RECORDED, finding_message(i + 1, f),
                             series_instance_uid=series.series_instance_uid, job_id=job.id)
            record_event(s, EventCode.PRIOR_ANALYSED,
                         f"prior {outcome.summary().removeprefix('prior: ')} analysed for the comparison: "
                         f"{len(result.findings)} finding(s), verdict {result.verdict.value}; never delivered",
                         series_instance_uid=series.series_instance_uid, job_id=job.id,
                         details={"prior_series_id": series.id, "findings": len(result.findings)})
            return job.id

    def _exam(self, outcome: PriorOutcome, job_id: int) -> PriorExam:
        """The prior as the comparison reads it: the job's findings (rows), its images, its SR."""
        assert outcome.series_id is not None and outcome.prior is not None
        options = self.settings.results
        with self.db.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
            series = s.get(Series, outcome.series_id)
            assert series is not None
            rows = list(s.execute(select(FindingRow).where(FindingRow.job_id == job_id).order_by(FindingRow.index)).scalars())
            model = model_of(job.summary or {})
            findings = [row_finding(r) for r in rows]
            uids = [r.tracking_uid or derived_tracking_uid(i, series.series_instance_uid, model.version, options)
                    for i, r in enumerate(rows)]
            ids = [r.id for r in rows]
            sr_uid = s.execute(select(Delivery.sop_instance_uid).where(
                Delivery.job_id == job_id, Delivery.sop_class_uid.startswith(SR_CLASS_PREFIX)).limit(1)).scalar()
            verdict = Verdict(job.verdict) if job.verdict else Verdict.NOT_ANALYSED
            reason = (job.summary or {}).get("reason")
            exam = (job.summary or {}).get("exam")
            series_uid = series.series_instance_uid
        result = SeriesResult(series_uid, verdict, 0.0, model, findings, not_analysed_reason=reason)
        datasets = load_series_datasets(self.db, self.spool, outcome.series_id)
        return PriorExam(True, outcome.summary(), outcome.prior.study_uid, series_uid, sr_uid, job_id, result,
                         datasets, uids, ids, list(outcome.others), exam if isinstance(exam, dict) else None)


def model_of(summary: dict[str, Any]) -> ModelIdentity:
    m = summary.get("model") or {}
    return ModelIdentity(str(m.get("name", "")), str(m.get("version", "")), str(m.get("weights_sha256", "")),
                         str(m.get("engine", "")), str(m.get("bundle_sha256", "")))


def row_finding(r: FindingRow) -> Finding:
    """A prior's finding as the comparison reads it, from its audit row."""
    return Finding(
        center_mm=(r.center_x_mm, r.center_y_mm, r.center_z_mm), diameter_mm=r.diameter_mm, volume_mm3=r.volume_mm3,
        probability=r.probability, model_score=r.model_score, lung_rads=r.lung_rads,
        key_slice=KeySlice(r.sop_instance_uid or "", "", r.row or 0.0, r.column or 0.0),
        nodule_type=r.nodule_type or "solid", calcified=bool(r.calcified), calcification_pattern=r.calcification_pattern,
        margin=r.margin,
        location=NoduleLocation(r.lung, r.zone, bool(r.juxtapleural), bool(r.perifissural)),
        long_axis_mm=r.long_axis_mm or 0.0, short_axis_mm=r.short_axis_mm or 0.0,
        solid_component_mm=r.solid_component_mm, brock_risk=r.brock_risk,
        lung_rads_reasons=tuple((r.lung_rads_reasons or "").splitlines()), note=r.note, cyst=r.cyst, airway=r.airway)
