"""A printable per-series report: key images, findings table, Lung-RADS, the model's warning.

The HTML version is a template (pages.py); this module builds the same content as a PDF with
fpdf2 (pure Python, no system libraries).
"""
from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fpdf import FPDF

from dicomnode.web.views import (
    OverlayImage,
    model_info,
    model_warning,
    overlay_images,
    overlay_png,
    series_detail,
)

if TYPE_CHECKING:
    from dicomnode.node import Node

FINDING_COLUMNS = [("#", 8), ("Diameter mm", 24), ("Volume mm3", 24), ("Detection %", 24), ("p(cancer) %", 24),
                   ("Lung-RADS", 20), ("Centre x, y, z (mm, LPS)", 56)]
MAX_KEY_IMAGES = 6


def report_context(node: Node, series_uid: str) -> dict[str, Any]:
    detail = series_detail(node, series_uid)
    images = overlay_images(node, series_uid, detail)[:MAX_KEY_IMAGES]
    model = model_info(node)["model"] or {}
    job = detail["latest_done_job"] or {}
    summary = job.get("summary") or {}
    if isinstance(summary.get("model"), dict):
        model = summary["model"]  # the model that produced *these* findings
    warning = model_warning(node, summary)
    return {**detail, "images": images, "model": model, "warning": warning,
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds")}


def _latin1(text: Any) -> str:
    # the core PDF fonts are Latin-1; replace what they cannot show instead of failing
    return str(text).encode("latin-1", "replace").decode("latin-1")


def build_pdf(node: Node, series_uid: str) -> bytes:
    ctx = report_context(node, series_uid)
    series, job = ctx["series"], ctx["latest_done_job"]
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 15)
    pdf.cell(0, 9, "Lung nodule analysis report", new_x="LMARGIN", new_y="NEXT")
    pdf.set_fill_color(255, 235, 200)
    pdf.set_font("Helvetica", "B", 9)
    pdf.multi_cell(0, 5, _latin1(ctx["warning"]), border=1, fill=True, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("Helvetica", "", 9)
    rows = [
        ("Patient", f"{series['patient_name']} ({series['patient_id']})"),
        ("Study", f"{series['study_date']} {series['study_description']}  accession {series['accession_number']}"),
        ("Series", (f"{series['series_number']} {series['series_description']} - {series['modality']}, "
                    f"{series['instance_count']} images")),
        ("Series UID", series["series_instance_uid"]),
        ("Model", " ".join(str(ctx["model"].get(k, "")) for k in ("name", "version", "engine")).strip() or "unknown"),
        ("Analysed", (job or {}).get("finished_at") or "not analysed yet"),
        ("Verdict", (job or {}).get("verdict") or "-"),
        ("Lung-RADS", ctx["lung_rads"] or "-"),
    ]
    for label, value in rows:
        pdf.set_font("Helvetica", "B", 9)
        pdf.cell(28, 5, label)
        pdf.set_font("Helvetica", "", 9)
        pdf.multi_cell(0, 5, _latin1(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 7, f"Findings ({len(ctx['findings'])})", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "B", 8)
    for title, width in FINDING_COLUMNS:
        pdf.cell(width, 6, title, border=1)
    pdf.ln()
    pdf.set_font("Helvetica", "", 8)
    for f in ctx["findings"]:
        values = [f["index"], f"{f['diameter_mm']:.1f}", f"{f['volume_mm3']:.0f}", f"{f['probability'] * 100:.0f}",
                  f"{f['malignancy'] * 100:.0f}", f["lung_rads"],
                  f"{f['center_x_mm']:.1f}, {f['center_y_mm']:.1f}, {f['center_z_mm']:.1f}"]
        for (_, width), value in zip(FINDING_COLUMNS, values):
            pdf.cell(width, 6, _latin1(value), border=1)
        pdf.ln()
    if not ctx["findings"]:
        pdf.cell(0, 6, "No lung nodules reported." if job else "The series has not been analysed.", new_x="LMARGIN", new_y="NEXT")
    _key_images(pdf, node, series_uid, ctx["images"])
    return bytes(pdf.output())


def _key_images(pdf: FPDF, node: Node, series_uid: str, images: list[OverlayImage]) -> None:
    if not images:
        return
    pdf.ln(4)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 7, "Key images", new_x="LMARGIN", new_y="NEXT")
    size = 85.0  # mm; two images per row on A4
    for i, image in enumerate(images):
        if i % 2 == 0 and pdf.get_y() + size + 10 > pdf.h - pdf.b_margin:
            pdf.add_page()
        x = pdf.l_margin + (i % 2) * (size + 5)
        y = pdf.get_y()
        pdf.image(io.BytesIO(overlay_png(node, series_uid, image.key)), x=x, y=y, w=size, h=size, keep_aspect_ratio=True)
        pdf.set_xy(x, y + size + 1)
        pdf.set_font("Helvetica", "", 7)
        pdf.multi_cell(size, 3.5, _latin1(image.caption))
        if i % 2 == 0 and i + 1 < len(images):
            pdf.set_xy(x + size + 5, y)
        else:
            pdf.set_xy(pdf.l_margin, y + size + 10)
