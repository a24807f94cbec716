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

# short columns that fit A4 portrait (190 mm): risks as whole %, sizes to 0.1 mm
FINDING_COLUMNS = [("#", 7), ("Type", 24), ("Mean Ø mm", 17), ("Solid mm", 15), ("Lung-RADS", 17),
                   ("Brock risk*", 18), ("Model score", 18), ("Margin", 18), ("Location", 30), ("Vol. mm³", 14),
                   ("Det. %", 12)]
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
    if ctx["exam"]:
        _exam(pdf, ctx["exam"])
    pdf.ln(3)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 7, f"Findings ({len(ctx['findings'])})", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "B", 8)
    for title, width in FINDING_COLUMNS:
        _fit_cell(pdf, width, _latin1(title))
    pdf.ln()
    pdf.set_font("Helvetica", "", 8)
    for f in ctx["findings"]:
        for (_, width), value in zip(FINDING_COLUMNS, finding_cells(f)):
            _fit_cell(pdf, width, _latin1(value))
        pdf.ln()
    if not ctx["findings"]:
        pdf.cell(0, 6, "No lung nodules reported." if job else "The series has not been analysed.", new_x="LMARGIN", new_y="NEXT")
    else:
        _footnotes(pdf, ctx)
    _key_images(pdf, node, series_uid, ctx["images"])
    return bytes(pdf.output())


def finding_cells(f: dict[str, Any]) -> list[str]:
    """One findings-table row as text, in FINDING_COLUMNS order."""
    size = f["mean_diameter_mm"] if f.get("mean_diameter_mm") is not None else f["diameter_mm"]
    kind = (f.get("type") or "-").replace("_", "-") + (", calcified" if f.get("calcified") else "")
    loc = f.get("location") or {}
    where = f"{loc.get('lung') or ''} {loc.get('zone') or ''}".strip() or "-"
    if loc.get("juxtapleural"):
        where += ", juxtapl."
    if loc.get("perifissural"):
        where += ", perifiss."
    return [str(f["index"]), kind, f"{size:.1f}", _opt(f.get("solid_component_mm"), "{:.1f}"), f["lung_rads"],
            _opt(f.get("brock_risk"), "{:.0%}"), f"{f['model_score']:.2f}", f.get("margin") or "-", where,
            f"{f['volume_mm3']:.0f}", f"{f['probability'] * 100:.0f}"]


def _fit_cell(pdf: FPDF, width: float, text: str, size: float = 8.0) -> None:
    """A bordered cell whose text shrinks (down to 5 pt) rather than run into the next column."""
    while size > 5.0 and pdf.get_string_width(text) > width - 2.0:
        size -= 0.5
        pdf.set_font_size(size)
    pdf.cell(width, 6, text, border=1)
    pdf.set_font_size(8.0)


def _opt(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def exam_rows(exam: dict[str, Any]) -> list[tuple[str, str]]:
    """The exam statement: category (with the reason for a 0), management, emphysema, the risk inputs."""
    inputs = exam.get("risk_inputs") or {}
    category = exam["lung_rads"] + (f" - {exam['reason']}" if exam.get("reason") else "")
    emphysema = (f"LAA-950 {exam['laa950_pct']:.1f}% of lung volume" if exam.get("laa950_pct") is not None
                 else "LAA-950 not measured")
    if exam.get("lung_volume_ml") is not None:
        emphysema += f"; lung volume {exam['lung_volume_ml']:.0f} ml"
    age = "missing" if inputs.get("age_years") is None else f"{inputs['age_years']:.0f}"
    given = (f"age {age}, sex {inputs.get('sex') or 'missing'}, family history {inputs.get('family_history') or 'unknown'}, "
             f"emphysema {'yes' if inputs.get('emphysema') else 'no'}. {exam['missing_inputs_text']}")
    rows = [("Lung-RADS (exam)", category), ("Recommendation", exam["recommendation"]), ("Emphysema", emphysema),
            ("Risk inputs", given)]
    if exam.get("highest_brock_risk") is not None:
        rows.append(("Highest Brock risk", f"{exam['highest_brock_risk']:.0%}"))
    return rows


def _exam(pdf: FPDF, exam: dict[str, Any]) -> None:
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 7, "Exam", new_x="LMARGIN", new_y="NEXT")
    for label, value in exam_rows(exam):
        pdf.set_font("Helvetica", "B", 9)
        pdf.cell(34, 5, label)
        pdf.set_font("Helvetica", "", 9)
        pdf.multi_cell(0, 5, _latin1(value), new_x="LMARGIN", new_y="NEXT")


def _footnotes(pdf: FPDF, ctx: dict[str, Any]) -> None:
    notes = [f"* Brock risk: {ctx['brock_method']}.",
             (f"Model score: {ctx['model_score_label']}; the DeepLung classifier trained on synthetic phantoms, "
              "not a probability of cancer." if not ctx["model_score_validated"] else f"Model score: {ctx['model_score_label']}."),
             ctx["zone_note"]]
    notes += [f"Nodule {f['index']}: {f['note']}." for f in ctx["findings"] if f.get("note")]
    pdf.ln(1)
    pdf.set_font("Helvetica", "", 7)
    for note in notes:
        pdf.multi_cell(0, 3.5, _latin1(note), new_x="LMARGIN", new_y="NEXT")


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
