"""What the console shows, as plain dicts: shared by the pages, the API, the report and /health."""
from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import SecondaryCaptureImageStorage
from sqlalchemy import func, select, text

from dicomnode.process.pipelines import MODEL_PIPELINES, model_identity, model_manifest

from storage.models import Association, Delivery, FindingRow, Instance, Job, Series, Study
from storage.states import DeliveryState, JobState
from storage.queries import AuditFilter, counts_by, run_query

if TYPE_CHECKING:
    from dicomnode.node import Node

# pipelines that need the model (and so an inference engine) loaded to be ready
LUNG_RADS_ORDER = ["1", "2", "3", "4A", "4B", "4X"]
NOT_FOR_CLINICAL_USE = ("Research use only - not for clinical use. The findings come from an automated "
                        "algorithm, are not a diagnosis and must be reviewed by a qualified radiologist.")


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
    return stats


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
        findings = []
        if done is not None:
            findings = [{c: getattr(x, c) for c in ("index", "center_x_mm", "center_y_mm", "center_z_mm", "diameter_mm",
                                                     "volume_mm3", "probability", "malignancy", "lung_rads",
                                                     "sop_instance_uid", "row", "column")}
                        for x in s.execute(select(FindingRow).where(FindingRow.job_id == done["id"]).order_by(FindingRow.index)).scalars()]
        deliveries = [d for d in run_query(s, "deliveries", f) if d["series_instance_uid"] == series_uid]
        events = run_query(s, "events", AuditFilter(series=series_uid, limit=100))
        info = {
            "series_instance_uid": series.series_instance_uid, "study_instance_uid": study.study_instance_uid,
            "patient_id": study.patient_id, "patient_name": study.patient_name,
            "accession_number": study.accession_number, "study_date": study.study_date,
            "study_description": study.study_description, "modality": series.modality,
            "series_number": series.series_number, "series_description": series.series_description,
            "slice_thickness": series.slice_thickness, "instance_count": series.instance_count,
            "calling_ae": series.calling_ae, "peer_host": series.peer_host, "status": series.status,
            "status_reason": series.status_reason, "route_name": series.route_name, "generation": series.generation,
        }
    # a series the model refused (not_analysed) has no Lung-RADS category, not "1"
    analysed = done is not None and done.get("verdict") != "not_analysed"
    return {"series": info, "jobs": jobs, "latest_done_job": done, "findings": findings,
            "lung_rads": lung_rads_overall([x["lung_rads"] for x in findings]) if analysed else None,
            "deliveries": deliveries, "events": events}


# -- overlay images -------------------------------------------------------------------
@dataclass(frozen=True)
class OverlayImage:
    key: str  # "sc-<SOP Instance UID>" or "finding-<index>"
    caption: str
    order: int


def _outbox_sc_files(node: Node, series_uid: str, job_id: int) -> dict[str, tuple[Path, Any]]:
    """SC result objects of this series in the outbox: {sop uid: (path, header)}."""
    outbox = Path(node.settings.outbox_dir).resolve()
    folder = (outbox / series_uid).resolve()
    # a UID from the database, but it came from a DICOM file: it must not lead out of the outbox
    if not folder.is_relative_to(outbox) or folder == outbox or not folder.is_dir():
        return {}
    with node.db.session() as s:
        delivered = set(s.execute(select(Delivery.sop_instance_uid).where(Delivery.job_id == job_id)).scalars())
    found: dict[str, tuple[Path, Any]] = {}
    for path in sorted(folder.glob("*.dcm")):
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue
        if ds.get("SOPClassUID") != SecondaryCaptureImageStorage:
            continue
        # when the job queued deliveries, only its own objects count (older model versions may linger)
        if delivered and str(ds.SOPInstanceUID) not in delivered:
            continue
        found[str(ds.SOPInstanceUID)] = (path, ds)
    return found


def overlay_images(node: Node, series_uid: str, detail: dict[str, Any] | None = None) -> list[OverlayImage]:
    detail = detail or series_detail(node, series_uid)
    done = detail["latest_done_job"]
    if done is None:
        return []
    images = [OverlayImage(f"sc-{uid}", str(ds.get("ImageComments", "") or f"image {ds.get('InstanceNumber', '')}"),
                           int(ds.get("InstanceNumber", 0) or 0))
              for uid, (_, ds) in _outbox_sc_files(node, series_uid, done["id"]).items()]
    if images:
        return sorted(images, key=lambda i: i.order)
    # no SC objects (overlays switched off): draw each finding on its key slice from the spool
    return [OverlayImage(f"finding-{f['index']}", f"nodule {f['index']}: {f['diameter_mm']:.1f} mm, Lung-RADS {f['lung_rads']}",
                         f["index"]) for f in detail["findings"]]


def overlay_png(node: Node, series_uid: str, key: str) -> bytes:
    from PIL import Image

    detail = series_detail(node, series_uid)
    done = detail["latest_done_job"]
    if done is None:
        raise NotFound("the series has no finished job")
    if key.startswith("sc-"):
        files = _outbox_sc_files(node, series_uid, done["id"])
        if key[3:] not in files:
            raise NotFound(f"no overlay image {key[3:]} for this series")
        pixels = dcmread(files[key[3:]][0]).pixel_array
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return buffer.getvalue()
    if key.startswith("finding-"):
        return _render_finding(node, detail, key[len("finding-"):])
    raise NotFound(f"unknown overlay {key!r}")


def _render_finding(node: Node, detail: dict[str, Any], index_text: str) -> bytes:
    from dicomnode.results.overlay import render_overlay_png
    from inference.findings import Finding, KeySlice

    match = [f for f in detail["findings"] if str(f["index"]) == index_text]
    if not match:
        raise NotFound(f"no finding {index_text}")
    f = match[0]
    with node.db.session() as s:
        path = s.execute(select(Instance.path).where(Instance.sop_instance_uid == f["sop_instance_uid"])).scalar()
    if path is None:
        raise NotFound("the key slice of this finding is no longer in the spool")
    ct = dcmread(node.spool.path(path))
    finding = Finding(center_mm=(f["center_x_mm"], f["center_y_mm"], f["center_z_mm"]), diameter_mm=f["diameter_mm"],
                      volume_mm3=f["volume_mm3"], probability=f["probability"], malignancy=f["malignancy"],
                      lung_rads=f["lung_rads"],
                      key_slice=KeySlice(f["sop_instance_uid"], str(ct.SOPClassUID), f["row"], f["column"]))
    return render_overlay_png(ct, [finding], numbers=[f["index"]])
