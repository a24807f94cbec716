"""A printable per-series report: key images, findings table, Lung-RADS, the model's warning.

The HTML version is a template (pages.py); this module builds the same content as a PDF with
fpdf2 (pure Python, no system libraries).
"""
from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fpdf import FPDF

from dicomnode.web.overlays import OverlayImage, dicom_date, overlay_images, overlay_png
from dicomnode.web.views import NotFound, model_info, model_warning, series_detail
from inference.findings import lesion_type_words

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
    if ctx["comparison"]:
        _comparison(pdf, ctx)
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
    kind = lesion_type_words(f.get("type"), f.get("cyst"), f.get("airway"))
    kind += ", calcified" if f.get("calcified") else ""
    loc = f.get("location") or {}
    where = f"{loc.get('lung') or ''} {loc.get('zone') or ''}".strip() or "-"
    if loc.get("juxtapleural"):
        where += ", juxtapl."
    if loc.get("perifissural"):
        where += ", perifiss."
    return [str(f["index"]), kind, f"{size:.1f}", _opt(f.get("solid_component_mm"), "{:.1f}"), f["lung_rads"],
            _opt(f.get("brock_risk"), "{:.0%}"), f"{f['model_score']:.2f}", f.get("margin") or "n/a", where,
            f"{f['volume_mm3']:.0f}", f"{f['probability'] * 100:.0f}"]


# the comparison with the prior exam (issue 12), in the same A4 width
COMPARISON_COLUMNS = [("#", 7), ("Status", 17), ("Prior Ø mm", 17), ("Mean Ø mm", 17), ("Ø change", 14),
                      ("Prior vol. mm³", 22), ("Vol. mm³", 16), ("Vol. change", 17), ("Doubling time", 23),
                      ("Growth flag", 18), ("Lung-RADS", 22)]
RESOLVED_COLUMNS = [("Prior #", 14), ("Type", 26), ("Prior Ø mm", 20), ("Prior vol. mm³", 24), ("Prior Lung-RADS", 26),
                    ("Centre x, y, z mm (prior exam)", 80)]
DAYS_PER_MONTH = 365.25 / 12


def interval_text(days: Any) -> str:
    return "unknown" if days is None else f"{days} days ({days / DAYS_PER_MONTH:.1f} months)"


def doubling_text(c: dict[str, Any]) -> str:
    """Days, or "not growing" for a matched nodule without one (shrinking or within measurement error)."""
    if c.get("status") == "new":
        return "-"  # nothing to grow from
    days = c.get("doubling_time_days")
    return "not growing" if days is None else f"{days:.0f} days"


def comparison_cells(f: dict[str, Any]) -> list[str]:
    """One comparison-table row as text, in COMPARISON_COLUMNS order ('-' where there is nothing to compare)."""
    c = f.get("comparison") or {}
    prior = c.get("prior") or {}
    size = f["mean_diameter_mm"] if f.get("mean_diameter_mm") is not None else f["diameter_mm"]
    growth = c.get("lung_rads_growth")
    return [str(f["index"]), c.get("status") or "not compared", _opt(prior.get("mean_diameter_mm"), "{:.1f}"),
            f"{size:.1f}", _opt(c.get("diameter_change_mm"), "{:+.1f}"), _opt(prior.get("volume_mm3"), "{:.0f}"),
            f"{f['volume_mm3']:.0f}", _opt(c.get("volume_change_pct"), "{:+.0f}%"),
            doubling_text(c) if c else "-", "-" if growth is None else ("yes" if growth else "no"), f["lung_rads"]]


def resolved_cells(r: dict[str, Any]) -> list[str]:
    center = r.get("center_mm") or []
    where = ", ".join(f"{v:.1f}" for v in center) if len(center) == 3 else "-"
    return [str(r.get("prior_index", "-")), (r.get("type") or "-").replace("_", "-"),
            _opt(r.get("mean_diameter_mm"), "{:.1f}"), _opt(r.get("volume_mm3"), "{:.0f}"), str(r.get("lung_rads") or "-"),
            where]


def comparison_rows(comparison: dict[str, Any]) -> list[tuple[str, str]]:
    """The exam-level comparison: the prior study, the interval, the follow-up category; or why none was made."""
    others = [("Other earlier studies (not compared)", ", ".join(map(str, comparison["other_priors"])))] \
        if comparison.get("other_priors") else []
    if not comparison.get("performed"):
        return [("Prior", str(comparison.get("reason") or "prior not available")), *others]
    study = f"{dicom_date(comparison.get('prior_study_date')) or 'date unknown'}, study UID " \
            f"{comparison.get('prior_study_instance_uid') or 'unknown'}"
    category = str(comparison.get("lung_rads") or "-")
    if comparison.get("lung_rads_reason"):
        category += f" - {comparison['lung_rads_reason']}"
    rows = [("Prior study", study), ("Interval", interval_text(comparison.get("interval_days"))),
            ("Lung-RADS (follow-up)", category)]
    if comparison.get("recommendation"):
        rows.append(("Recommendation", str(comparison["recommendation"])))
    if comparison.get("reason"):
        rows.append(("Note", str(comparison["reason"])))
    return rows + others


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
    """The exam statement (`views.exam_view`'s, which fills in the label and texts of an exam stored before them):
    category (with the reason for a 0), management, emphysema, coronary calcium and S, the risk inputs."""
    inputs = exam.get("risk_inputs") or {}
    category = exam["lung_rads_label"]
    category += f" - {exam['reason']}" if exam.get("reason") else ""
    emphysema = (f"LAA-950 {exam['laa950_pct']:.1f}% of lung volume" if exam.get("laa950_pct") is not None
                 else "LAA-950 not measured")
    if exam.get("lung_volume_ml") is not None:
        emphysema += f"; lung volume {exam['lung_volume_ml']:.0f} ml"
    if exam.get("image_noise_hu") is not None:
        emphysema += f"; image noise {exam['image_noise_hu']:.0f} HU"
    age = "missing" if inputs.get("age_years") is None else f"{inputs['age_years']:.0f}"
    given = (f"age {age}, sex {inputs.get('sex') or 'missing'}, family history {inputs.get('family_history') or 'unknown'}, "
             f"emphysema {'yes' if inputs.get('emphysema') else 'no'}. {exam['missing_inputs_text']}")
    rows = [("Lung-RADS (exam)", category), ("Recommendation", exam["recommendation"]), ("Emphysema", emphysema)]
    rows += [(label, exam[key]) for label, key in (("Coronary calcium", "coronary_calcium_text"),
                                                   ("Modifier S", "s_modifier_text")) if exam.get(key)]
    rows.append(("Risk inputs", given))
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


def _table(pdf: FPDF, columns: list[tuple[str, int]], rows: list[list[str]]) -> None:
    pdf.set_font("Helvetica", "B", 8)
    for title, width in columns:
        _fit_cell(pdf, width, _latin1(title))
    pdf.ln()
    pdf.set_font("Helvetica", "", 8)
    for row in rows:
        for (_, width), value in zip(columns, row):
            _fit_cell(pdf, width, _latin1(value))
        pdf.ln()


def _comparison(pdf: FPDF, ctx: dict[str, Any]) -> None:
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 7, "Comparison with the prior exam", new_x="LMARGIN", new_y="NEXT")
    for label, value in comparison_rows(ctx["comparison"]):
        pdf.set_font("Helvetica", "B", 9)
        pdf.cell(38, 5, _latin1(label))
        pdf.set_font("Helvetica", "", 9)
        pdf.multi_cell(0, 5, _latin1(value), new_x="LMARGIN", new_y="NEXT")
    if not ctx["comparison"].get("performed"):
        return
    if ctx["findings"]:
        _table(pdf, COMPARISON_COLUMNS, [comparison_cells(f) for f in ctx["findings"]])
    pdf.set_font("Helvetica", "B", 9)
    pdf.cell(0, 6, f"Resolved prior nodules ({len(ctx['resolved'])})", new_x="LMARGIN", new_y="NEXT")
    if ctx["resolved"]:
        _table(pdf, RESOLVED_COLUMNS, [resolved_cells(r) for r in ctx["resolved"]])


def _footnotes(pdf: FPDF, ctx: dict[str, Any]) -> None:
    notes = [f"* Brock risk: {ctx['brock_method']}.",
             (f"Model score: {ctx['model_score_label']}; the DeepLung classifier trained on synthetic phantoms, "
              "not a probability of cancer." if not ctx["model_score_validated"] else f"Model score: {ctx['model_score_label']}."),
             ctx["zone_note"]]
    if any(f.get("margin") is None for f in ctx["findings"]):
        notes.append("Margin n/a: not assessed (too little of the outline is free of adjacent tissue to judge it).")
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
        caption = image.caption
        try:
            pdf.image(io.BytesIO(overlay_png(node, series_uid, image.key)), x=x, y=y, w=size, h=size,
                      keep_aspect_ratio=True)
        except NotFound as exc:  # e.g. retention removed the key slice: the report is still printed
            caption += f" - image not available: {exc}"
        pdf.set_xy(x, y + size + 1)
        pdf.set_font("Helvetica", "", 7)
        pdf.multi_cell(size, 3.5, _latin1(caption))
        if i % 2 == 0 and i + 1 < len(images):
            pdf.set_xy(x + size + 5, y)
        else:
            pdf.set_xy(pdf.l_margin, y + size + 10)
