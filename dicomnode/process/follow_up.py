"""The comparison of a current series with its prior exam, inside the lung pipeline's job (issue 12).

The node's PriorProvider (dicomnode.priors.provider, given to the job runner when [priors] is enabled)
finds the prior, retrieves it and analyses it once; here the two analyses are compared
(inference.compare: registration, matching, growth, Lung-RADS follow-up categories) and turned into what
the job keeps and sends: the result with the follow-up categories, the SR's follow-up content, each
finding row's tracking UID and comparison columns, and job.summary["comparison"].
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from pydicom.dataset import Dataset

from dicomnode.process.pipelines import AnalyseSeries, PipelineContext, PriorExam
from dicomnode.results.options import ResultOptions
from dicomnode.results.overlay import build_comparison_overlay, change_line
from dicomnode.results.sr_follow_up import FollowUp, NoduleFollowUp, derived_tracking_uid
from inference.clinical.lungrads import prior_not_compared_caveat
from inference.compare import Comparison, ExamInput, FindingComparison, compare_exams, lung_masks
from inference.findings import ExamSummary, Finding, OtherFinding, SeriesResult

log = logging.getLogger(__name__)


@dataclass
class FollowUpOutcome:
    result: SeriesResult  # findings and exam with the follow-up Lung-RADS when a comparison was performed
    sr: FollowUp
    summary: dict[str, Any]  # job.summary["comparison"]
    columns: list[dict[str, Any]]  # per finding: its findings row's tracking_uid and comparison columns
    matched: list[tuple[int, Finding]] = field(default_factory=list)  # (current index, its prior finding)
    prior_datasets: list[Dataset] = field(default_factory=list)  # the prior series, for side-by-side images


def follow_up(datasets: list[Dataset], result: SeriesResult, context: PipelineContext, options: ResultOptions,
              analyse: AnalyseSeries) -> FollowUpOutcome | None:
    """The comparison with the prior, or why there is none; None when priors are off or the current
    series was not analysed (nothing to compare)."""
    if context.prior is None or context.series_id is None or not result.analysed:
        return None
    context.progress("looking for the prior exam")
    prior = context.prior(context.series_id, analyse)
    derived = [derived_tracking_uid(i, result.series_instance_uid, result.model.version, options)
               for i in range(len(result.findings))]
    if not prior.available or prior.result is None:
        return not_compared(result, derived, prior.summary, prior, exists=prior.not_compared)
    context.progress("comparing with the prior (registration, matching, growth)")
    label = prior.summary.removeprefix("prior: ")
    try:
        comparison = compare(datasets, result, prior)
    except Exception as exc:  # a volume that cannot be loaded, a registration that fails: said, not fatal
        log.exception("comparison of %s with its prior failed", result.series_instance_uid)
        return not_compared(result, derived, f"prior not available: the comparison failed: "
                                             f"{type(exc).__name__}: {str(exc)[:200]}", prior, exists=label)
    if not comparison.performed:  # the prior's own analysis failed: it is there for the reader to compare
        return not_compared(result, derived, f"prior not available: {comparison.reason}", prior, comparison,
                            exists=None if prior.result.analysed else label)
    return compared(result, derived, prior, comparison)


def own_tracking_columns(result: SeriesResult, options: ResultOptions) -> list[dict[str, Any]]:
    """Without a comparison, each finding row still keeps its SR Tracking UID: a later exam follows it."""
    return [{"tracking_uid": derived_tracking_uid(i, result.series_instance_uid, result.model.version, options)}
            for i in range(len(result.findings))]


def _header(datasets: list[Dataset]) -> Dataset:
    return next((ds for ds in datasets if "SOPInstanceUID" in ds), datasets[0])


def compare(datasets: list[Dataset], result: SeriesResult, prior: PriorExam) -> Comparison:
    from inference.volume import load_volume

    assert prior.result is not None
    volume, prior_volume = load_volume(datasets), load_volume(prior.datasets)
    return compare_exams(ExamInput(result, _header(datasets), volume, lung_masks(volume)),
                         ExamInput(prior.result, _header(prior.datasets), prior_volume, lung_masks(prior_volume)))


def not_compared(result: SeriesResult, derived: list[str], statement: str, prior: PriorExam,
                 comparison: Comparison | None = None, exists: str | None = None) -> FollowUpOutcome:
    """Delivered without comparison: the SR and the summary say why; each nodule keeps its own UID. `exists`: the
    patient's earlier chest CT that was found and not compared, which the exam's statement names (Lung-RADS 0)."""
    summary: dict[str, Any] = ({**comparison.summary_json(), "reason": statement} if comparison is not None
                               else {"performed": False, "reason": statement})
    summary.update(prior_refs(prior))
    if exists:
        summary["prior_not_compared"] = exists
    nodules = tuple(NoduleFollowUp(uid) for uid in derived)
    sr = FollowUp(with_others(statement, prior), nodules, prior.study_instance_uid if prior.available else None,
                  prior.sr_sop_instance_uid if prior.available else None)
    reported = with_known_on_prior(result, prior)
    if exists and reported.exam is not None:
        reported = replace(reported, exam=reported.exam.with_caveat(prior_not_compared_caveat(exists)))
    return FollowUpOutcome(reported, sr, summary, [{"tracking_uid": uid} for uid in derived])


def prior_refs(prior: PriorExam) -> dict[str, Any]:
    return {"prior_job_id": prior.job_id, "prior_sr_sop_instance_uid": prior.sr_sop_instance_uid,
            "other_priors": list(prior.others)}


def with_others(text: str, prior: PriorExam) -> str:
    """The SR's comparison statement names the earlier studies that were not the one compared."""
    return text if not prior.others else f"{text}; other earlier studies not compared: {', '.join(prior.others)}"


def compared(result: SeriesResult, derived: list[str], prior: PriorExam, comparison: Comparison) -> FollowUpOutcome:
    columns = [finding_columns(fc, derived[i], prior, comparison.interval_days)
               for i, fc in enumerate(comparison.findings)]
    nodules = tuple(NoduleFollowUp(
        c["tracking_uid"], c.get("comparison_status"), c.get("prior_mean_diameter_mm"), c.get("prior_volume_mm3"),
        c.get("interval_days"), c.get("volume_change_pct"), c.get("doubling_time_days"), c.get("diameter_change_mm"),
        c.get("lung_rads_growth")) for c in columns)
    resolved = comparison.resolved_json()
    for entry in resolved:  # the resolved nodule's identity, for whoever follows it
        entry["tracking_uid"] = prior_uid(prior, int(entry["prior_index"]))
    summary = {**comparison.summary_json(), "resolved": resolved, **prior_refs(prior)}
    sr = FollowUp(with_others(statement(prior, comparison, columns), prior), nodules, prior.study_instance_uid, prior.sr_sop_instance_uid,
                  tuple(resolved_line(entry) for entry in resolved))
    matched = [(i, fc.prior) for i, fc in enumerate(comparison.findings) if fc is not None and fc.prior is not None]
    reported = with_known_on_prior(follow_up_result(result, comparison), prior)
    return FollowUpOutcome(reported, sr, summary, columns, matched, list(prior.datasets))


def comparison_overlays(datasets: list[Dataset], outcome: FollowUpOutcome, options: ResultOptions) -> list[Dataset]:
    """Per matched nodule, its prior and current key slices side by side (one secondary-capture image,
    in the overlay series after the per-nodule images). A pair whose key slice cannot be found is skipped
    and logged: the SR already carries the comparison."""
    by_uid = {str(ds.get("SOPInstanceUID", "")): ds for ds in datasets}
    prior_by_uid = {str(ds.get("SOPInstanceUID", "")): ds for ds in outcome.prior_datasets}
    images = []
    for i, prior_finding in outcome.matched:
        current = outcome.result.findings[i]
        current_slice = by_uid.get(current.key_slice.sop_instance_uid)
        prior_slice = prior_by_uid.get(prior_finding.key_slice.sop_instance_uid)
        if current_slice is None or prior_slice is None:
            log.warning("series %s nodule %d: no side-by-side image, a key slice is missing",
                        outcome.result.series_instance_uid, i + 1)
            continue
        columns = outcome.columns[i]
        change = change_line(prior_finding, current, columns.get("doubling_time_days"),
                             str(columns.get("comparison_status") or ""))
        try:
            images.append(build_comparison_overlay(current_slice, prior_slice, current, prior_finding,
                                                   outcome.result, i + 1, change, options))
        except ValueError as exc:  # another patient, same study, a later prior: the checks of the overlay
            log.warning("series %s nodule %d: no side-by-side image: %s", outcome.result.series_instance_uid, i + 1, exc)
    return images


def prior_uid(prior: PriorExam, index: int) -> str | None:
    return prior.tracking_uids[index] if index < len(prior.tracking_uids) else None


def finding_columns(fc: FindingComparison | None, derived: str, prior: PriorExam,
                    interval_days: int | None) -> dict[str, Any]:
    """A current finding's row columns (storage.models.FindingRow); a matched nodule keeps the prior's UID."""
    if fc is None:
        return {"tracking_uid": derived}
    j = fc.prior_index
    kept = prior_uid(prior, j) if j is not None else None
    columns: dict[str, Any] = {"tracking_uid": kept or derived, "comparison_status": fc.status}
    if fc.prior is None or fc.growth is None or j is None:
        return columns
    g = fc.growth
    columns.update(
        prior_finding_id=prior.finding_ids[j] if j < len(prior.finding_ids) else None,
        prior_mean_diameter_mm=round(fc.prior.diameter_mm, 1), prior_volume_mm3=round(fc.prior.volume_mm3, 2),
        interval_days=interval_days, volume_change_pct=round(g.volume_change_pct, 1),
        doubling_time_days=None if g.doubling_time_days is None else round(g.doubling_time_days, 1),
        diameter_change_mm=g.diameter_change_mm, lung_rads_growth=g.lung_rads_growth)
    return columns


def follow_up_result(result: SeriesResult, comparison: Comparison) -> SeriesResult:
    """The result as reported: each nodule's and the exam's Lung-RADS are the follow-up categories."""
    findings: list[Finding] = [
        f if fc is None else replace(f, lung_rads=fc.lung_rads, lung_rads_reasons=fc.lung_rads_reasons)
        for f, fc in zip(result.findings, comparison.findings)]
    exam = result.exam
    if exam is not None and comparison.lung_rads is not None:
        exam = replace(exam, lung_rads=comparison.lung_rads, recommendation=comparison.recommendation or exam.recommendation)
    return replace(result, findings=findings, exam=exam)


def with_known_on_prior(result: SeriesResult, prior: PriorExam) -> SeriesResult:
    return result if result.exam is None else replace(result, exam=known_on_prior(result.exam, prior.exam))


def known_on_prior(exam: ExamSummary, prior_exam: dict[str, Any] | None) -> ExamSummary:
    """Each finding S is suggested for that the prior exam had too says so, with the prior's calcium score: v2022
    needs no S for a finding already known, and only the reader knows whether it is (a prior stored before the S
    modifier has none to compare)."""
    if not exam.significant_findings or not isinstance(prior_exam, dict):
        return exam
    before = {str(f.get("kind")) for f in prior_exam.get("significant_findings") or [] if isinstance(f, dict)}
    calcium = prior_exam.get("coronary_calcium")
    score = calcium.get("agatston") if isinstance(calcium, dict) else None
    then = {"coronary_calcium": f", Agatston-equivalent {score:.0f} there"} if isinstance(score, (int, float)) else {}

    def marked(f: OtherFinding) -> OtherFinding:
        if f.kind not in before:
            return f
        return replace(f, text=f"{f.text}; on the prior exam too{then.get(f.kind, '')}, so it may be known")

    return replace(exam, significant_findings=tuple(marked(f) for f in exam.significant_findings))


def statement(prior: PriorExam, comparison: Comparison, columns: list[dict[str, Any]]) -> str:
    statuses = [c.get("comparison_status") for c in columns]
    counts = ", ".join(f"{statuses.count(k)} {k}" for k in ("growing", "stable", "shrinking", "new"))
    interval = "unknown interval" if comparison.interval_days is None else f"{comparison.interval_days} days earlier"
    return (f"compared with {prior.summary.removeprefix('prior: ')} ({interval}): {counts}, "
            f"{len(comparison.resolved)} resolved; follow-up Lung-RADS {comparison.lung_rads}"
            + (f"; {comparison.reason}" if comparison.reason else ""))


def resolved_line(entry: dict[str, Any]) -> str:
    centre = ", ".join(f"{v:.1f}" for v in entry["center_mm"])
    uid = f", Tracking UID {entry['tracking_uid']}" if entry.get("tracking_uid") else ""
    return (f"prior nodule {int(entry['prior_index']) + 1} ({entry['mean_diameter_mm']:.1f} mm, "
            f"{entry['volume_mm3']:.0f} mm3 at {centre} in the prior's coordinates{uid}) not seen on this exam")


def exam_summary_json(result: SeriesResult, baseline: SeriesResult, outcome: FollowUpOutcome | None) -> dict[str, Any] | None:
    """The exam summary of the job: the follow-up category replaces the baseline one (kept beside it)."""
    if result.exam is None:
        return None
    exam = result.exam.to_json()
    if outcome is not None and outcome.summary.get("performed") and baseline.exam is not None:
        exam["baseline_lung_rads"] = baseline.exam.lung_rads
    return exam
