"""What the console shows, as plain dicts: shared by the pages, the API, the report and /health."""
from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, aliased

from dicomnode.process.pipelines import MODEL_PIPELINES, model_identity, model_manifest
from dicomnode.web.story import is_job_or_delivery
from inference.findings import CoronaryCalciumSummary, s_modifier_words
from storage.models import Association, Delivery, FindingRow, Instance, Job, Series, Study
from storage.queries import AuditFilter, counts_by, destination_health, run_query, series_events
from storage.states import DeliveryState, JobState

if TYPE_CHECKING:
    from dicomnode.node import Node

LUNG_RADS_ORDER = ["1", "2", "3", "4A", "4B", "4X"]
NOT_FOR_CLINICAL_USE = ("Research use only - not for clinical use. The findings come from an automated "
                        "algorithm, are not a diagnosis and must be reviewed by a qualified radiologist.")


BROCK_METHOD = ("Brock University (PanCan) full model with spiculation (McWilliams et al., N Engl J Med "
                "2013;369:910-919): probability of cancer from age, sex, family history, emphysema, nodule size, "
                "type, upper-zone location, spiculation and nodule count")
MODEL_SCORE_LABEL = "model score (phantom-trained weights)"
VALIDATED_MODEL_SCORE_LABEL = "model score (weights validated on real data)"
ZONE_NOTE = ("Location: the zone is the upper, middle or lower third of that lung's height and approximates the "
             "lobe; fissures are not detected.")


def model_score_label(exam: dict[str, Any] | None) -> str:
    """What the DeepLung score is: phantom-trained unless the weights manifest declared it validated."""
    return VALIDATED_MODEL_SCORE_LABEL if (exam or {}).get("headline") == "model" else MODEL_SCORE_LABEL


class NotFound(LookupError):
    pass


def _today_start() -> datetime:
    now = datetime.now(UTC)
    # SQLite stores naive UTC; compare naive to naive as storage.queries does
    return now.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)


def spool_free_bytes(node: Node) -> int:
    return shutil.disk_usage(node.settings.spool_dir).free


# -- model and engine ---------------------------------------------------------------
def model_info(node: Node) -> dict[str, Any]:
    """Configured engine, what the running pipelines say they use, and the last job's model."""
    cfg = node.settings.inference
    required = sorted({r.pipeline for r in node.settings.routes if r.pipeline in MODEL_PIPELINES})
    loaded = node.runner.loaded_pipelines()
    info: dict[str, Any] = {
        "configured_engine": cfg.engine, "mode": cfg.mode,
        "weights": str(cfg.weights) if cfg.weights else "packaged demo weights",
        "pipelines": sorted({r.pipeline for r in node.settings.routes}),
        "required": required, "loaded": sorted(loaded), "model": None,
        "warmup_error": node.runner.warmup_error,
    }
    for pipeline in loaded.values():
        identity = model_identity(pipeline)
        if identity:
            info["model"] = identity
            break
    if info["model"] is None:
        with node.db.session() as s:
            summaries = s.execute(select(Job.summary).where(Job.state == JobState.DONE).order_by(Job.id.desc()).limit(20)).scalars()
            for summary in summaries:
                if isinstance(summary, dict) and isinstance(summary.get("model"), dict):
                    info["model"] = {**summary["model"], "source": "last finished job"}
                    break
    return info


def _manifest_warning(weights: Path) -> str | None:
    manifest = (weights if weights.is_dir() else weights.parent) / "manifest.json"
    try:
        value = json.loads(manifest.read_text(encoding="utf-8")).get("warning")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def model_warning(node: Node, summary: dict[str, Any] | None = None) -> str:
    """The model card's warning (job summary, loaded weights, or the configured weights' manifest.json),
    followed by the console's own not-for-clinical-use statement."""
    card: str | None = None
    if summary and summary.get("warning"):
        card = str(summary["warning"])
    for pipeline in node.runner.loaded_pipelines().values():
        manifest = model_manifest(pipeline)
        if card is None and manifest is not None and manifest.get("warning"):
            card = str(manifest["warning"])
    if card is None:
        import inference.weights

        card = _manifest_warning(Path(node.settings.inference.weights or Path(inference.weights.__file__).parent))
    return f"{card.rstrip('.')}. {NOT_FOR_CLINICAL_USE}" if card else NOT_FOR_CLINICAL_USE


# -- dashboard ------------------------------------------------------------------------
def dashboard_stats(node: Node) -> dict[str, Any]:
    today = _today_start()
    with node.db.session() as s:
        stats: dict[str, Any] = {
            "associations_today": s.execute(select(func.count(Association.id)).where(Association.started_at >= today)).scalar_one(),
            "instances_today": s.execute(select(func.count(Instance.id)).where(Instance.received_at >= today)).scalar_one(),
            "series_today": s.execute(select(func.count(Series.id)).where(Series.first_received_at >= today)).scalar_one(),
            "series_by_status": counts_by(s, Series.status),
            "jobs_by_state": counts_by(s, Job.state),
            "deliveries_by_state": counts_by(s, Delivery.state),
        }
    stats["queue_depth"] = stats["jobs_by_state"].get(JobState.QUEUED, 0)
    stats["dead_letters"] = stats["deliveries_by_state"].get(DeliveryState.DEAD, 0)
    stats["spool_free_bytes"] = spool_free_bytes(node)
    stats["model"] = model_info(node)
    stats["destinations"] = destinations(node)
    stats["now"] = datetime.now(UTC).isoformat(timespec="seconds")  # when these figures were read
    return stats


def destinations(node: Node) -> list[dict[str, Any]]:
    """Health of each destination (storage.queries.destination_health), configured ones first."""
    with node.db.session() as s:
        return destination_health(s, list(node.settings.destinations), node.settings.web.destination_warn_pending_s)


# -- health -------------------------------------------------------------------------
def health(node: Node) -> dict[str, Any]:
    checks: dict[str, dict[str, Any]] = {}
    try:
        with node.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = {"ok": True}
    except Exception as exc:  # any driver error means "not ready", with the reason
        checks["database"] = {"ok": False, "error": str(exc)[:300]}
    try:
        free = spool_free_bytes(node)
        need = node.settings.web.min_free_disk_mb * 2**20
        checks["disk"] = {"ok": free >= need, "free_bytes": free, "threshold_bytes": need}
    except OSError as exc:
        checks["disk"] = {"ok": False, "error": str(exc)}
    info = model_info(node)
    missing = [p for p in info["required"] if p not in info["loaded"]]
    engine: dict[str, Any] = {"ok": not missing, "required": info["required"], "loaded": info["loaded"]}
    if missing:
        engine["error"] = info["warmup_error"] or f"model pipeline(s) {', '.join(missing)} still loading"
    checks["engine"] = engine
    return {"live": True, "ready": all(c["ok"] for c in checks.values()), "checks": checks}


# -- series ---------------------------------------------------------------------------
def list_series(node: Node, f: AuditFilter) -> list[dict[str, Any]]:
    with node.db.session() as s:
        rows = run_query(s, "series", f)
        ids = [r["id"] for r in rows]
        latest: dict[int, tuple[str, str | None, str | None]] = {}
        if ids:
            newest = select(func.max(Job.id)).where(Job.series_id.in_(ids)).group_by(Job.series_id)
            for series_id, job_state, verdict, progress in s.execute(
                    select(Job.series_id, Job.state, Job.verdict, Job.progress).where(Job.id.in_(newest))):
                latest[series_id] = (job_state, verdict, progress)
    for row in rows:
        state, verdict, progress = latest.get(row["id"], (None, None, None))
        row["job_state"], row["verdict"], row["job_progress"] = state, verdict, progress
    return rows


def lung_rads_overall(categories: list[str]) -> str:
    """The highest category among the nodules; 1 (negative) when there are none."""
    known = [c for c in categories if c in LUNG_RADS_ORDER]
    return max(known, key=LUNG_RADS_ORDER.index) if known else "1"


def series_detail(node: Node, series_uid: str) -> dict[str, Any]:
    with node.db.session() as s:
        row = s.execute(select(Series, Study).join(Study, Series.study_id == Study.id)
                        .where(Series.series_instance_uid == series_uid)).first()
        if row is None:
            raise NotFound(f"no series {series_uid}")
        series, study = row
        f = AuditFilter(series=series_uid, limit=200)
        jobs = [j for j in run_query(s, "jobs", f) if j["series_instance_uid"] == series_uid]
        done = next((j for j in jobs if j["state"] == JobState.DONE), None)
        findings: list[dict[str, Any]] = []
        if done is not None:
            rows = run_query(s, "findings", AuditFilter(series=series_uid, limit=1000))
            findings = sorted((finding_json(r) for r in rows
                               if r["job_id"] == done["id"] and r["series_instance_uid"] == series_uid),
                              key=lambda r: r["index"])
            attach_comparisons(s, findings)
        jobs = [job_json(j) for j in jobs]
        comparison, resolved = job_comparison((done or {}).get("summary"))
        if comparison is not None and comparison.get("performed"):
            comparison["prior_series_known"] = _series_known(s, comparison.get("prior_series_instance_uid"))
        deliveries = [d for d in run_query(s, "deliveries", f) if d["series_instance_uid"] == series_uid]
        events = api_series_events(series_events(s, series_uid))
        info = {
            "series_instance_uid": series.series_instance_uid, "study_instance_uid": study.study_instance_uid,
            "patient_id": study.patient_id, "patient_name": study.patient_name,
            "accession_number": study.accession_number, "study_date": study.study_date,
            "study_description": study.study_description, "modality": series.modality,
            "series_number": series.series_number, "series_description": series.series_description,
            "slice_thickness": series.slice_thickness, "instance_count": series.instance_count,
            "issuer_of_patient_id": study.issuer_of_patient_id or "", "role": series.role,
            "calling_ae": series.calling_ae, "peer_host": series.peer_host, "status": series.status,
            "status_reason": series.status_reason, "route_name": series.route_name, "generation": series.generation,
        }
    # a series the model refused (not_analysed) has no Lung-RADS category, not "1"
    analysed = done is not None and done.get("verdict") != "not_analysed"
    exam = (done or {}).get("exam") if analysed else None
    # the exam's own category (0 when the lungs are not covered) wins over the highest nodule category
    lung_rads = (exam or {}).get("lung_rads") or lung_rads_overall([x["lung_rads"] for x in findings])
    if comparison is not None and comparison.get("performed") and comparison.get("lung_rads"):
        lung_rads = comparison["lung_rads"]  # with a prior, the v2022 follow-up category is the exam's category
    return {"series": info, "jobs": jobs, "latest_done_job": done, "findings": findings,
            "lung_rads": lung_rads if analysed else None, "exam": exam_view(exam),
            "model_score_label": model_score_label(exam), "model_score_validated": (exam or {}).get("headline") == "model",
            "brock_method": BROCK_METHOD, "zone_note": ZONE_NOTE,
            "comparison": comparison, "resolved": resolved, "deliveries": deliveries, "events": events}


# events of a series in /api/series/{uid} besides its job and delivery events (those are all there)
API_OTHER_EVENTS = 100


def api_series_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Newest first: every job and delivery event of the series, and its newest other events (a
    resent study's hundreds of duplicate-instance events must not push the job's story out)."""
    story = [e for e in events if is_job_or_delivery(e)]
    other = [e for e in events if not is_job_or_delivery(e)][-API_OTHER_EVENTS:]
    return sorted(story + other, key=lambda e: int(e["id"]), reverse=True)


def finding_json(row: dict[str, Any]) -> dict[str, Any]:
    """A findings query row in the shape of `analyze --json`: `type`, `location` {lung, zone, ...}, reasons as a list."""
    out = {k: v for k, v in row.items() if k not in ("lung", "zone", "juxtapleural", "perifissural", "lung_rads_reasons")}
    out["location"] = {"lung": row.get("lung"), "zone": row.get("zone"), "juxtapleural": row.get("juxtapleural"),
                       "perifissural": row.get("perifissural")}
    out["lung_rads_reasons"] = (row.get("lung_rads_reasons") or "").splitlines()
    out["center_mm"] = [row.get("center_x_mm"), row.get("center_y_mm"), row.get("center_z_mm")]
    return out


# -- comparison with the prior exam (issue 12) ---------------------------------------------------
# FindingRow columns (migration 0014) that the job fills when it compared the exam with a prior
_PRIOR = aliased(FindingRow)
_COMPARISON_COLUMNS = (FindingRow.id, FindingRow.tracking_uid, FindingRow.comparison_status, FindingRow.prior_finding_id,
                       FindingRow.prior_mean_diameter_mm, FindingRow.prior_volume_mm3, FindingRow.interval_days,
                       FindingRow.volume_change_pct, FindingRow.doubling_time_days, FindingRow.diameter_change_mm,
                       FindingRow.lung_rads_growth, _PRIOR.index.label("prior_index"),
                       _PRIOR.center_x_mm.label("prior_x"), _PRIOR.center_y_mm.label("prior_y"),
                       _PRIOR.center_z_mm.label("prior_z"), _PRIOR.nodule_type.label("prior_type"),
                       _PRIOR.lung_rads.label("prior_lung_rads"))
ID_CHUNK = 500  # ids per IN (...): well under every driver's limit on bound parameters


def _round(value: float | None, decimals: int) -> float | None:
    return None if value is None else round(float(value), decimals)


def comparison_json(row: Any) -> dict[str, Any] | None:
    """One finding's `comparison` in the shape of `analyze --json` (FindingComparison.to_json), from its
    0014 columns and its prior finding's row; None when the job made no comparison."""
    if row.comparison_status is None:
        return None
    prior = None
    if row.prior_finding_id is not None or row.prior_mean_diameter_mm is not None:
        center = None if row.prior_x is None else [round(c, 1) for c in (row.prior_x, row.prior_y, row.prior_z)]
        prior = {"finding_id": row.prior_finding_id, "index": row.prior_index,  # None: the prior's row is gone
                 "center_mm": center, "mean_diameter_mm": _round(row.prior_mean_diameter_mm, 1),
                 "volume_mm3": _round(row.prior_volume_mm3, 2), "type": row.prior_type,
                 "lung_rads": row.prior_lung_rads}
    return {"status": row.comparison_status, "prior": prior, "interval_days": row.interval_days,
            "volume_change_pct": _round(row.volume_change_pct, 1),
            "doubling_time_days": _round(row.doubling_time_days, 1),  # None: not growing (or new)
            "diameter_change_mm": _round(row.diameter_change_mm, 1),
            "lung_rads_growth": None if row.lung_rads_growth is None else bool(row.lung_rads_growth)}


def attach_comparisons(s: Session, findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set `tracking_uid` and `comparison` on finding_json dicts (by their `id`), in place."""
    ids = [f["id"] for f in findings]
    found: dict[int, Any] = {}
    for start in range(0, len(ids), ID_CHUNK):
        query = (select(*_COMPARISON_COLUMNS).outerjoin(_PRIOR, _PRIOR.id == FindingRow.prior_finding_id)
                 .where(FindingRow.id.in_(ids[start:start + ID_CHUNK])))
        found.update({row[0]: row for row in s.execute(query)})
    for f in findings:
        row = found.get(f["id"])
        f["tracking_uid"] = None if row is None else row.tracking_uid
        f["comparison"] = None if row is None else comparison_json(row)
        if f["comparison"] is not None:  # as in analyze --json: the category the comparison gave, and why
            f["comparison"]["lung_rads"], f["comparison"]["lung_rads_reasons"] = f["lung_rads"], f["lung_rads_reasons"]
    return findings


def job_json(row: dict[str, Any]) -> dict[str, Any]:
    """A jobs query row with its `comparison` and `resolved` (job_comparison) beside the summary."""
    row["comparison"], row["resolved"] = job_comparison(row.get("summary"))
    return row


def job_comparison(summary: Any) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the exam-level comparison, the resolved prior nodules) of a job summary: summary["comparison"] is
    Comparison.summary_json() plus "resolved", or {"performed": false, "reason": ...}; (None, []) for a
    job that looked for no prior."""
    comparison = summary.get("comparison") if isinstance(summary, dict) else None
    if not isinstance(comparison, dict):
        return None, []
    resolved = comparison.get("resolved")
    return ({k: v for k, v in comparison.items() if k != "resolved"},
            [r for r in resolved if isinstance(r, dict)] if isinstance(resolved, list) else [])


def _series_known(s: Session, series_uid: Any) -> bool:
    if not isinstance(series_uid, str) or not series_uid:
        return False
    return s.execute(select(Series.id).where(Series.series_instance_uid == series_uid)).first() is not None


# what the Brock model substitutes for a missing input (inference.clinical.brock.brock_risk)
REFERENCE_VALUES = {"age": "age 62 years (the model's centring value)", "sex": "male (the reference category)"}


def _calcium_words(stored: object) -> str | None:
    try:
        return CoronaryCalciumSummary(**stored).words if isinstance(stored, dict) else None
    except TypeError:  # not the fields this version writes
        return None


def exam_view(exam: dict[str, Any] | None) -> dict[str, Any] | None:
    """The job's exam summary plus `missing_inputs_text`: the sentence the console and report print."""
    if not isinstance(exam, dict):
        return None
    inputs = exam.get("risk_inputs") or {}
    missing = [str(m) for m in inputs.get("missing") or []]
    from_header = [m for m in missing if m in REFERENCE_VALUES]
    parts = []
    if from_header:
        used = "; ".join(REFERENCE_VALUES[m] for m in from_header)
        parts.append(f"Missing from the DICOM header: {', '.join(from_header)}. The Brock risk was computed with "
                     f"the model's reference value instead: {used}.")
    others = [m.replace("_", " ") for m in missing if m not in REFERENCE_VALUES and m != "family_history"]
    if others:
        parts.append(f"Also missing: {', '.join(others)}.")
    if "family_history" in missing or inputs.get("family_history", "unknown") == "unknown":
        parts.append("Family history of lung cancer: unknown (not configured), counted as no.")
    text = " ".join(parts) or "All risk-model inputs were present."
    calcium = exam.get("coronary_calcium")
    significant = [str(f.get("text")) for f in exam.get("significant_findings") or [] if isinstance(f, dict)]
    return {**exam, "missing_inputs_text": text,
            # an exam stored before the S modifier and coronary calcium (2026-12) has neither
            "lung_rads_label": exam.get("lung_rads_label") or exam.get("lung_rads"),
            "coronary_calcium_text": _calcium_words(calcium),
            "s_modifier_text": s_modifier_words(significant)}
