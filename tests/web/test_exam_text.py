"""What the console and the printable report say about an exam the model could not fully read (issue 11,
"Bad input"): category 0 with its reason, and which risk-model inputs were missing and what replaced them."""
from __future__ import annotations

from html import unescape

from dicomnode.web.pages import TEMPLATES
from dicomnode.web.report import exam_rows, finding_cells
from dicomnode.web.views import exam_view, finding_json
from inference.findings import CoronaryCalciumSummary, ExamSummary, OtherFinding, RiskInputs

INCOMPLETE = ExamSummary(
    lung_rads="0", recommendation="Incomplete: additional lung cancer screening CT images are needed.",
    lungs_fully_covered=False, reason="the lung apices are outside the field of view",
    risk_inputs=RiskInputs(age_years=None, sex=None, family_history="unknown", emphysema=False,
                           missing=("age", "sex", "family_history")),
).to_json()


def test_incomplete_exam_without_age_and_sex_is_stated_in_console_and_report() -> None:
    exam = exam_view(INCOMPLETE)
    assert exam is not None
    html = unescape(TEMPLATES.get_template("_exam.html").render(exam=exam))
    assert "<b>0</b> - the lung apices are outside the field of view" in html
    assert "LAA-950 not measured" in html and "age missing" in html and "sex missing" in html
    assert ("Missing from the DICOM header: age, sex. The Brock risk was computed with the model's reference value "
            "instead: age 62 years (the model's centring value); male (the reference category).") in html
    assert "Family history of lung cancer: unknown (not configured), counted as no." in html
    rows = dict(exam_rows(exam))
    assert rows["Lung-RADS (exam)"] == "0 - the lung apices are outside the field of view"
    assert rows["Emphysema"] == "LAA-950 not measured"
    assert "Missing from the DICOM header: age, sex." in rows["Risk inputs"]
    assert "Highest Brock risk" not in rows  # no nodule, no risk: nothing invented


def test_all_inputs_present_says_so() -> None:
    present = {**INCOMPLETE, "risk_inputs": {"age_years": 64.0, "sex": "male", "family_history": "no",
                                             "emphysema": True, "missing": []}}
    assert exam_view(present)["missing_inputs_text"] == "All risk-model inputs were present."  # type: ignore[index]
    assert exam_view(None) is None


def test_finding_recorded_before_issue_11_shows_dashes_not_errors() -> None:
    """A row migrated from 0003 has a model score but no type, axes or Brock risk: shown as '-'."""
    old = {"id": 1, "job_id": 1, "series_instance_uid": "1.2", "index": 1, "type": None, "mean_diameter_mm": None,
           "solid_component_mm": None, "lung_rads": "3", "brock_risk": None, "model_score": 0.41, "calcified": None,
           "calcification_pattern": None, "margin": None, "lung": None, "zone": None, "juxtapleural": None, "perifissural": None,
           "long_axis_mm": None, "short_axis_mm": None, "diameter_mm": 7.2, "volume_mm3": 190.0, "probability": 0.9,
           "center_x_mm": 1.0, "center_y_mm": 2.0, "center_z_mm": 3.0, "sop_instance_uid": "1.2.3", "row": 1.0,
           "column": 2.0, "lung_rads_reasons": None, "note": None, "finished_at": None}
    f = finding_json(old)
    assert f["location"] == {"lung": None, "zone": None, "juxtapleural": None, "perifissural": None} and f["lung_rads_reasons"] == []
    # its margin was never assessed: "n/a" in the report (with a footnote), "not assessed" in the console
    assert finding_cells(f) == ["1", "-", "7.2", "-", "3", "-", "0.41", "n/a", "-", "190", "90"]
    html = TEMPLATES.get_template("_findings.html").render(findings=[f], latest_done_job={"id": 1},
                                                           model_score_label="model score (phantom-trained weights)")
    assert '<td class="f-type">-</td>' in html and '<td class="f-brock">-</td>' in html
    assert "<td>not assessed</td>" in html


def test_job_summary_gets_the_exam_as_json_whichever_way_the_pipeline_hands_it_over() -> None:
    """lung.py may put the ExamSummary itself or its JSON in summary["exam"]: the JSON column gets JSON."""
    from dicomnode.process.jobs import exam_json
    from dicomnode.process.pipelines import PipelineOutput
    from tests.web.pipelines import EXAM

    assert exam_json(PipelineOutput([], summary={"exam": EXAM})) == EXAM.to_json()
    assert exam_json(PipelineOutput([], summary={"exam": EXAM.to_json()})) == EXAM.to_json()
    assert exam_json(PipelineOutput([], verdict="not_analysed", summary={"reason": "not a chest CT"})) is None


def test_coronary_calcium_and_the_s_modifier_are_stated_in_console_and_report() -> None:
    exam = ExamSummary(
        lung_rads="2", recommendation="Continue annual screening with LDCT in 12 months.", lungs_fully_covered=True,
        risk_inputs=RiskInputs(age_years=67.0, sex="male", family_history="no", emphysema=True),
        laa950_pct=8.1, coronary_calcium=CoronaryCalciumSummary(412, "severe", 7, 96.4, 130.0),
        significant_findings=(OtherFinding("coronary_calcium", "severe coronary artery calcification"),
                              OtherFinding("emphysema", "emphysema (LAA-950 8.1 %)")),
    ).to_json()
    view = exam_view(exam)
    assert view is not None
    html = unescape(TEMPLATES.get_template("_exam.html").render(exam=view))
    assert "<b>2S</b>" in html
    rows = dict(exam_rows(view))
    assert rows["Lung-RADS (exam)"] == "2S"
    assert rows["Coronary calcium"] == "severe, Agatston-equivalent 412 (non-gated CT; 7 lesions)"
    assert rows["Modifier S"].startswith(
        "Lung-RADS S suggested for severe coronary artery calcification; emphysema (LAA-950 8.1 %) (the reader decides")
    assert rows["Modifier S"] in html


def test_calcium_not_measured_says_why_and_an_older_exam_shows_neither_row() -> None:
    contrast = {**INCOMPLETE, "coronary_calcium": CoronaryCalciumSummary(
        None, note="not measured: intravenous contrast (OMNIPAQUE) makes blood read as calcium").to_json()}
    rows = dict(exam_rows(exam_view(contrast)))  # type: ignore[arg-type]
    assert rows["Coronary calcium"] == "not measured: intravenous contrast (OMNIPAQUE) makes blood read as calcium"
    assert "Modifier S" not in rows and rows["Lung-RADS (exam)"].startswith("0 - ")
    # an exam stored before coronary calcium and the S modifier (no such keys): the category alone, no new rows
    older = {k: v for k, v in INCOMPLETE.items()
             if k not in ("coronary_calcium", "significant_findings", "s_modifier", "lung_rads_label")}
    rows = dict(exam_rows(exam_view(older)))  # type: ignore[arg-type]
    assert "Coronary calcium" not in rows and "Modifier S" not in rows
    assert rows["Lung-RADS (exam)"] == "0 - the lung apices are outside the field of view"
    # fields another version wrote: no crash, no calcium row
    odd = {**INCOMPLETE, "coronary_calcium": {"score": 3}}
    assert "Coronary calcium" not in dict(exam_rows(exam_view(odd)))  # type: ignore[arg-type]


def test_coronary_calcium_words() -> None:
    assert CoronaryCalciumSummary(0, "none").words == "none, Agatston-equivalent 0 (non-gated CT)"
    noisy = CoronaryCalciumSummary(24, "mild", 1, 9.5, 136.0, "image noise 40 HU: calcium read above 136 HU")
    assert noisy.words == "mild, Agatston-equivalent 24 (non-gated CT; 1 lesion); image noise 40 HU: calcium read above 136 HU"
