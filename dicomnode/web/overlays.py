"""The overlay images of a series for the console and the report: the secondary captures in the outbox, or each
finding drawn on its key slice from the spool (and beside its prior's) when there are none."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import SecondaryCaptureImageStorage
from sqlalchemy import select, text

from dicomnode.web.views import NotFound, finding_json, series_detail
from inference.findings import lesion_type_words
from storage.models import Delivery, Instance
from storage.queries import AuditFilter, run_query

if TYPE_CHECKING:
    from dicomnode.node import Node


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
    # no SC objects (overlays switched off): draw each finding on its key slice from the spool, and each
    # nodule matched with a prior nodule side by side with it
    images = [OverlayImage(f"finding-{f['index']}", finding_caption(f), f["index"]) for f in detail["findings"]]
    prior_date = (detail.get("comparison") or {}).get("prior_study_date")
    return images + [OverlayImage(f"compare-{f['index']}", comparison_caption(f, prior_date), len(images) + f["index"])
                     for f in detail["findings"] if ((f.get("comparison") or {}).get("prior") or {}).get("finding_id")]


def dicom_date(value: Any) -> str:
    """YYYYMMDD as YYYY-MM-DD; anything else as it is ('' for none)."""
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:]}" if len(text) == 8 and text.isdigit() else text


def comparison_caption(f: dict[str, Any], prior_date: Any) -> str:
    """`nodule 1, growing: prior 2024-01-15 (left) and current (right)`."""
    when = f" {dicom_date(prior_date)}" if prior_date else ""
    return f"nodule {f['index']}, {f['comparison']['status']}: prior{when} (left) and current (right)"


def finding_caption(f: dict[str, Any]) -> str:
    """`nodule 1: part-solid 9.5 mm, Lung-RADS 4A, Brock risk 12%` (type and risk only where recorded)."""
    size = f["mean_diameter_mm"] if f.get("mean_diameter_mm") is not None else f["diameter_mm"]
    kind = f"{lesion_type_words(f['type'], f.get('cyst'), f.get('airway'))} " if f.get("type") else ""
    risk = f", Brock risk {f['brock_risk'] * 100:.0f}%" if f.get("brock_risk") is not None else ""
    return f"nodule {f['index']}: {kind}{size:.1f} mm, Lung-RADS {f['lung_rads']}{risk}"


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
    if key.startswith("compare-"):
        return _render_comparison(node, detail, key[len("compare-"):])
    raise NotFound(f"unknown overlay {key!r}")


def _spool_slice(node: Node, sop_instance_uid: str) -> Any:
    """A key slice read from the spool; NotFound saying why when it is gone."""
    with node.db.session() as s:
        row = s.execute(select(Instance.path, Instance.deleted_at)
                        .where(Instance.sop_instance_uid == sop_instance_uid)).first()
    if row is None:
        raise NotFound("the key slice of this finding is no longer in the spool")
    if row.deleted_at is not None:
        raise NotFound(f"the key slice of this finding was removed by retention on {row.deleted_at:%Y-%m-%d}")
    try:
        return dcmread(node.spool.path(row.path))
    except FileNotFoundError:
        raise NotFound("the key slice of this finding is no longer in the spool") from None


def _finding(f: dict[str, Any], sop_class_uid: str) -> Any:
    """The inference Finding of a finding_json dict (what the overlay drawing needs)."""
    from inference.findings import Finding, KeySlice, NoduleLocation

    location = NoduleLocation(lung=f["location"]["lung"], zone=f["location"]["zone"],
                              juxtapleural=bool(f["location"]["juxtapleural"]),
                              perifissural=bool(f["location"].get("perifissural")))
    return Finding(center_mm=(f["center_x_mm"], f["center_y_mm"], f["center_z_mm"]),
                   diameter_mm=f["mean_diameter_mm"] if f["mean_diameter_mm"] is not None else f["diameter_mm"],
                   volume_mm3=f["volume_mm3"], probability=f["probability"], model_score=f["model_score"],
                   lung_rads=f["lung_rads"], nodule_type=f["type"] or "solid", calcified=bool(f["calcified"]),
                   margin=f["margin"], location=location, brock_risk=f["brock_risk"],
                   solid_component_mm=f["solid_component_mm"],
                   key_slice=KeySlice(f["sop_instance_uid"], sop_class_uid, f["row"], f["column"]))


def _one_finding(detail: dict[str, Any], index_text: str) -> dict[str, Any]:
    match = [f for f in detail["findings"] if str(f["index"]) == index_text]
    if not match:
        raise NotFound(f"no finding {index_text}")
    return match[0]


def _render_finding(node: Node, detail: dict[str, Any], index_text: str) -> bytes:
    from dicomnode.results.overlay import render_overlay_png

    f = _one_finding(detail, index_text)
    ct = _spool_slice(node, f["sop_instance_uid"])
    return render_overlay_png(ct, [_finding(f, str(ct.SOPClassUID))], numbers=[f["index"]])


def _render_comparison(node: Node, detail: dict[str, Any], index_text: str) -> bytes:
    """The prior and current key slices of a matched nodule side by side (results.overlay.draw_comparison)."""
    from PIL import Image

    from dicomnode.results.overlay import change_line, draw_comparison

    f = _one_finding(detail, index_text)
    comparison = f.get("comparison") or {}
    prior_id = (comparison.get("prior") or {}).get("finding_id")
    if prior_id is None:
        raise NotFound(f"finding {index_text} has no matched prior finding")
    with node.db.session() as s:
        prior_rows = [finding_json(r) for r in run_query(s, "findings", AuditFilter(row_id=int(prior_id), limit=1))]
    if not prior_rows:
        raise NotFound(f"the prior finding {prior_id} is no longer in the database")
    current_ct, prior_ct = _spool_slice(node, f["sop_instance_uid"]), _spool_slice(node, prior_rows[0]["sop_instance_uid"])
    current, prior = _finding(f, str(current_ct.SOPClassUID)), _finding(prior_rows[0], str(prior_ct.SOPClassUID))
    change = change_line(prior, current, comparison.get("doubling_time_days"), str(comparison.get("status")))
    try:
        rgb = draw_comparison(current_ct, prior_ct, current, prior, f["index"], change)
    except ValueError as exc:  # another patient's slice, or not the key slice: never drawn side by side
        raise NotFound(str(exc)) from None
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()
