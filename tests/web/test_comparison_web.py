"""The comparison with the prior exam as the console, the printable report and the REST API show it
(issue 12): a follow-up exam whose findings carry the 0014 comparison columns and whose job summary has
the exam-level comparison, its prior exam, a later exam where the prior was not available, and exams of
other patients that must never appear in this patient's timeline."""
from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest

from pydicom.dataset import Dataset
from sqlalchemy import select

from storage.models import FindingRow, Instance, Job, Series, Study
from storage.states import JobState, SeriesState
from tests.web.conftest import WebNode, start_node
from tests.results.test_comparison_overlay import CURRENT, PRIOR, _ring_fraction
from tests.web.test_pages import _pdf_text

HTML = {"Accept": "text/html"}
PATIENT = {"patient_id": "P-12", "issuer_of_patient_id": "HOSP", "patient_name": "DOE^JANE", "patient_birth_date": "19600101"}
UNAVAILABLE = "prior not available: C-FIND to PACS@127.0.0.1:9 failed: connection refused"
RESOLVED = [{"prior_index": 3, "center_mm": [-80.5, 10.25, -120.0], "mean_diameter_mm": 4.2, "volume_mm3": 38.8,
             "type": "solid", "lung_rads": "2", "status": "resolved"}]


class Exams:
    """Rows of analysed exams in the node's audit database, as the job records them."""

    def __init__(self, web: WebNode) -> None:
        self.db = web.node.db
        self._n = 0
        self._at = datetime(2026, 1, 1, 12, 0)

    def add(self, study_date: str, findings: list[dict[str, Any]], summary: dict[str, Any] | None = None,
            patient: dict[str, Any] = PATIENT, role: str | None = None) -> tuple[str, str, list[int]]:
        """A study with one CT series and a finished job; returns (study UID, series UID, finding ids)."""
        self._n += 1
        self._at += timedelta(minutes=1)
        with self.db.session() as s:
            study = Study(study_instance_uid=f"1.2.826.0.1.12.{self._n}", study_date=study_date,
                          accession_number=f"ACC{self._n}", study_description="CT chest LDCT", **patient)
            series = Series(series_instance_uid=f"1.2.826.0.1.12.{self._n}.1", study=study, modality="CT",
                            series_number=self._n, series_description=f"exam {self._n}", role=role,
                            status=SeriesState.ROUTED, route_name="all-ct", instance_count=120)
            s.add_all([study, series])
            s.flush()
            job = Job(series_id=series.id, pipeline="lung-nodule", state=JobState.DONE, verdict="findings",
                      summary=summary or {}, finished_at=self._at)
            s.add(job)
            s.flush()
            rows = [FindingRow(job_id=job.id, series_id=series.id, index=i + 1,
                               **{"sop_instance_uid": "1.2.9", "row": 10.0, "column": 10.0, "probability": 0.9,
                                  "model_score": 0.2, "nodule_type": "solid",
                                  "diameter_mm": f.get("mean_diameter_mm", 6.0), **f})
                    for i, f in enumerate(findings)]
            s.add_all(rows)
            s.flush()
            return study.study_instance_uid, series.series_instance_uid, [r.id for r in rows]

    def key_slice(self, web: WebNode, series_uid: str, ds: Dataset, finding_id: int, row: float, column: float) -> None:
        """Store a CT slice in the node's spool as an instance of the series, the key slice of a finding."""
        relative = f"test-comparison/{ds.SOPInstanceUID}.dcm"
        path = web.node.spool.path(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        with self.db.session() as s:
            series_id = s.execute(select(Series.id).where(Series.series_instance_uid == series_uid)).scalar_one()
            s.add(Instance(sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID, series_id=series_id,
                           transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, path=relative,
                           size_bytes=path.stat().st_size))
            finding = s.get(FindingRow, finding_id)
            assert finding is not None
            finding.sop_instance_uid, finding.row, finding.column = ds.SOPInstanceUID, row, column


def _finding(x: float, mean: float, volume: float, lung_rads: str, **more: Any) -> dict[str, Any]:
    return {"center_x_mm": x, "center_y_mm": 20.0, "center_z_mm": -100.0, "mean_diameter_mm": mean,
            "volume_mm3": volume, "lung_rads": lung_rads, **more}


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    node = start_node(tmp_path_factory.mktemp("comparison-node"), require_login=False)
    yield node
    node.node.stop()


@pytest.fixture(scope="module")
def exams(web: WebNode) -> dict[str, Any]:
    """Inserted out of date order: the timeline must sort them."""
    e = Exams(web)
    later_study, later, _ = e.add("20250801", [_finding(30.0, 8.0, 270.0, "4A")],
                                  {"comparison": {"performed": False, "reason": UNAVAILABLE,
                                                  "other_priors": ["1.2.3.9 (20230101, PACS)"]}})
    prior_study, prior, prior_ids = e.add("20240115", [_finding(50.0, 6.0, 113.1, "3"), _finding(-40.0, 5.0, 65.4, "2"),
                                                       _finding(-80.5, 4.2, 38.8, "2")])
    comparison = {"performed": True, "reason": None, "prior_study_instance_uid": prior_study,
                  "prior_series_instance_uid": prior, "prior_study_date": "20240115", "interval_days": 371,
                  "registration": {"kind": "rigid"}, "lung_rads": "4B",
                  "recommendation": "Chest CT with or without contrast, PET/CT and/or tissue sampling",
                  "lung_rads_reason": "nodule 1: solid, growing, 7.9 mm", "resolved": RESOLVED}
    current_study, current, current_ids = e.add("20250121", [
        _finding(51.0, 7.9, 195.8, "4B", tracking_uid="2.25.1001", comparison_status="growing",
                 prior_finding_id=prior_ids[0], prior_mean_diameter_mm=6.0, prior_volume_mm3=113.1, interval_days=371,
                 volume_change_pct=73.12, doubling_time_days=470.24, diameter_change_mm=1.9, lung_rads_growth=True),
        _finding(-39.0, 5.1, 63.4, "2", tracking_uid="2.25.1002", comparison_status="stable",
                 prior_finding_id=prior_ids[1], prior_mean_diameter_mm=5.0, prior_volume_mm3=65.4, interval_days=371,
                 volume_change_pct=-3.06, doubling_time_days=None, diameter_change_mm=0.1, lung_rads_growth=False),
        _finding(10.0, 4.0, 33.5, "3", tracking_uid="2.25.1003", comparison_status="new", interval_days=371),
    ], {"comparison": comparison})
    # the growing nodule's key slices (tests/results/test_comparison_overlay) in the spool: drawn side by side
    e.key_slice(web, prior, PRIOR, prior_ids[0], 100.0, 60.0)
    e.key_slice(web, current, CURRENT, current_ids[0], 150.0, 170.0)
    # the same PatientID from another issuer, and another patient: never in this patient's timeline
    other_issuer = e.add("20230301", [], patient={**PATIENT, "issuer_of_patient_id": "OTHER"})[1]
    other_patient = e.add("20230302", [], patient={**PATIENT, "patient_id": "P-99"})[1]
    anonymous = [e.add(d, [], patient={"patient_id": "", "issuer_of_patient_id": None, "patient_name": ""})[1]
                 for d in ("20220101", "20220202")]
    # the same PatientID and issuer but another birth date: listed (the ID says it is the patient's), flagged
    odd = e.add("20230601", [], patient={**PATIENT, "patient_birth_date": "19590101"})[1]
    return {"prior": prior, "prior_ids": prior_ids, "current": current, "current_ids": current_ids, "later": later,
            "later_study": later_study, "prior_study": prior_study, "current_study": current_study,
            "others": [other_issuer, other_patient], "anonymous": anonymous, "odd": odd}


@pytest.fixture
def client(web: WebNode) -> Iterator[httpx.Client]:
    with web.client(headers=HTML) as c:
        yield c


def _table(html: str, table_id: str) -> list[list[str]]:
    """The text of each body row's cells of one table."""
    body = html.split(f'id="{table_id}"')[1].split("</table>")[0]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body.split("<tbody>")[-1], re.S)
    return [[unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
            for r in rows]


EXPECTED_ROWS = [
    ["1", "growing", "6.0", "7.9", "+1.9", "113", "196", "+73%", "470 days", "yes", "4B"],
    ["2", "stable", "5.0", "5.1", "+0.1", "65", "63", "-3%", "not growing", "no", "2"],
    ["3", "new", "-", "4.0", "-", "-", "34", "-", "-", "-", "3"],
]


def test_series_page_shows_the_comparison_with_the_prior(client: httpx.Client, exams: dict[str, Any]) -> None:
    page = client.get(f"/series/{exams['current']}")
    assert page.status_code == 200
    html = page.text
    assert 'id="lung-rads"><b>4B</b>' in html  # the follow-up category is the exam's category
    exam = _table(html, "comparison-exam")
    assert exam[0] == ["2024-01-15, study UID " + exams["prior_study"] + " · prior series"]
    assert exam[1] == ["371 days (12.2 months)"] and exam[2] == ["4B - nodule 1: solid, growing, 7.9 mm"]
    assert f'id="prior-series-link" href="/series/{exams["prior"]}"' in html
    assert _table(html, "comparison-findings") == EXPECTED_ROWS
    assert 'title="tracking UID 2.25.1001"' in html
    assert _table(html, "resolved") == [["3", "solid", "4.2", "39", "2", "-80.5, 10.2, -120.0"]]


def test_prior_not_available_is_said_with_its_reason(client: httpx.Client, exams: dict[str, Any]) -> None:
    html = client.get(f"/series/{exams['later']}").text
    assert re.search(r'id="comparison-unavailable">([^<]*)<', html).group(1) == UNAVAILABLE  # type: ignore[union-attr]
    assert 'id="comparison-findings"' not in html and 'id="resolved"' not in html
    assert 'id="lung-rads"><b>4A</b>' in html  # no follow-up category without a prior: the baseline one
    assert "<th>Other earlier studies (not compared)</th><td>1.2.3.9 (20230101, PACS)</td>" in html
    # a series whose job looked for no prior has no comparison section, only the timeline
    prior_page = client.get(f"/series/{exams['prior']}").text
    assert 'id="comparison"' not in prior_page and 'id="timeline"' in prior_page


def test_patient_timeline_lists_every_analysed_exam_of_the_patient_in_date_order(client: httpx.Client,
                                                                                  exams: dict[str, Any]) -> None:
    html = client.get(f"/series/{exams['current']}").text
    rows = _table(html, "timeline")
    assert [r[0] for r in rows] == ["2023-06-01", "2024-01-15", "2025-01-21", "2025-08-01"]
    assert [r[3] for r in rows] == ["1", "3", "4B", "4A"]  # exam Lung-RADS: baseline, follow-up, baseline
    assert rows[2][2] == "this series" and rows[2][5] == "1 growing, 1 new, 1 resolved, 1 stable"
    assert rows[3][5] == UNAVAILABLE and rows[1][5] == "-"
    assert rows[0][2].endswith("PatientBirthDate differs from this exam")
    assert "differs" not in "".join(rows[1][2] + rows[3][2])
    for uid in (exams["prior"], exams["later"]):
        assert f'href="/series/{uid}"' in html  # each other exam links to its series page
    for uid in exams["others"] + exams["anonymous"]:
        assert uid not in html  # another issuer's or patient's exam is never shown
    # without a PatientID nothing identifies the patient: only the series itself
    lone = _table(client.get(f"/series/{exams['anonymous'][0]}").text, "timeline")
    assert [r[0] for r in lone] == ["2022-01-01"] and lone[0][2] == "this series"


def test_printable_report_has_the_comparison_table(client: httpx.Client, exams: dict[str, Any]) -> None:
    html = client.get(f"/series/{exams['current']}/report").text
    assert _table(html, "comparison-findings") == EXPECTED_ROWS
    assert _table(html, "resolved")[0][0] == "3"
    pdf = client.get(f"/series/{exams['current']}/report.pdf")
    assert pdf.status_code == 200
    text = _pdf_text(pdf.content)
    for shown in ("Comparison with the prior exam", "2024-01-15", "371 days (12.2 months)", "growing", "470 days",
                  "not growing", "+73%", "Resolved prior nodules (1)", "-80.5, 10.2, -120.0",
                  "4B - nodule 1: solid, growing, 7.9 mm"):
        assert shown in text, f"{shown!r} missing from the PDF report"
    later = _pdf_text(client.get(f"/series/{exams['later']}/report.pdf").content)
    assert UNAVAILABLE in later and "Resolved prior nodules" not in later
    # key images: nodule 1 alone and side by side with its prior are drawn; the other key slices are not in
    # this node's spool (as after retention): the report says so for each, it does not fail
    assert pdf.content.count(b"/Subtype /Image") == 2
    assert len(re.findall(r"image ?not ?available", text)) == 3


# -- REST API -------------------------------------------------------------------------------------
def test_api_findings_carry_their_comparison_like_analyze_json(web: WebNode, exams: dict[str, Any]) -> None:
    with web.client() as api:
        detail = api.get(f"/api/series/{exams['current']}").json()
        listed = api.get("/api/findings", params={"series": exams["current"]}).json()
    growing, stable, new = detail["findings"]
    assert growing["tracking_uid"] == "2.25.1001"
    assert growing["comparison"] == {
        "status": "growing", "interval_days": 371, "volume_change_pct": 73.1, "doubling_time_days": 470.2,
        "diameter_change_mm": 1.9, "lung_rads_growth": True, "lung_rads": "4B", "lung_rads_reasons": [],
        "prior": {"finding_id": exams["prior_ids"][0], "index": 1, "center_mm": [50.0, 20.0, -100.0],
                  "mean_diameter_mm": 6.0, "volume_mm3": 113.1, "type": "solid", "lung_rads": "3"}}
    assert stable["comparison"]["status"] == "stable" and stable["comparison"]["doubling_time_days"] is None
    assert stable["comparison"]["prior"]["index"] == 2
    assert new["comparison"]["status"] == "new" and new["comparison"]["prior"] is None
    assert {f["id"]: f["comparison"] for f in listed} == {f["id"]: f["comparison"] for f in detail["findings"]}
    # the exam-level comparison and the resolved prior nodules, on the series and on its job
    assert detail["resolved"] == RESOLVED and detail["jobs"][0]["resolved"] == RESOLVED
    comparison = detail["comparison"]
    assert (comparison["performed"], comparison["interval_days"], comparison["lung_rads"]) == (True, 371, "4B")
    assert comparison["prior_series_instance_uid"] == exams["prior"] and comparison["prior_series_known"] is True
    assert detail["jobs"][0]["comparison"]["prior_study_date"] == "20240115" and detail["lung_rads"] == "4B"


def test_api_series_without_a_prior_says_why(web: WebNode, exams: dict[str, Any]) -> None:
    with web.client() as api:
        later = api.get(f"/api/series/{exams['later']}").json()
        prior = api.get(f"/api/series/{exams['prior']}").json()
        jobs = {j["series_instance_uid"]: j for j in api.get("/api/jobs").json()}
    assert later["comparison"] == {"performed": False, "reason": UNAVAILABLE,
                                   "other_priors": ["1.2.3.9 (20230101, PACS)"]} and later["resolved"] == []
    assert later["findings"][0]["comparison"] is None and later["findings"][0]["tracking_uid"] is None
    assert prior["comparison"] is None and prior["resolved"] == []
    assert jobs[exams["current"]]["resolved"] == RESOLVED and jobs[exams["later"]]["comparison"]["performed"] is False


def test_api_patient_timeline(web: WebNode, exams: dict[str, Any]) -> None:
    with web.client() as api:
        by_series = api.get(f"/api/series/{exams['current']}/timeline").json()
        by_patient = api.get("/api/timeline", params={"patient_id": "P-12", "issuer": "HOSP"}).json()
        other_issuer = api.get("/api/timeline", params={"patient_id": "P-12", "issuer": "OTHER"}).json()
        assert api.get("/api/timeline", params={"patient_id": "P-12"}).status_code == 404  # no exam without issuer
        assert api.get("/api/timeline", params={"patient_id": ""}).status_code == 422
        assert api.get("/api/series/1.2.3.404/timeline").status_code == 404
    exams_seen = by_series["exams"]
    assert [e["series_instance_uid"] for e in exams_seen] == [exams["odd"], exams["prior"], exams["current"], exams["later"]]
    assert [e["study_date"] for e in exams_seen] == ["20230601", "20240115", "20250121", "20250801"]
    assert [e["lung_rads"] for e in exams_seen] == ["1", "3", "4B", "4A"]
    assert [e["current"] for e in exams_seen] == [False, False, True, False]
    assert [e["identity_mismatch"] for e in exams_seen] == [["PatientBirthDate differs"], [], [], []]
    assert exams_seen[2]["comparison"]["statuses"] == {"growing": 1, "stable": 1, "new": 1, "resolved": 1}
    assert exams_seen[3]["comparison"] == {"performed": False, "reason": UNAVAILABLE, "prior_study_instance_uid": None,
                                           "statuses": {}}
    assert (by_series["patient_id"], by_series["issuer_of_patient_id"]) == ("P-12", "HOSP")
    assert [e["series_instance_uid"] for e in by_patient["exams"]] == [e["series_instance_uid"] for e in exams_seen]
    assert [e["series_instance_uid"] for e in other_issuer["exams"]] == [exams["others"][0]]


def test_openapi_documents_the_comparison_and_the_timeline(web: WebNode) -> None:
    with web.client() as api:
        paths = api.get("/openapi.json").json()["paths"]
    assert "`doubling_time_days` (null" in paths["/api/findings"]["get"]["description"]
    assert "`resolved`" in paths["/api/series/{series_uid}"]["get"]["description"]
    assert {"/api/timeline", "/api/series/{series_uid}/timeline"} <= set(paths)


def test_console_draws_a_matched_nodule_side_by_side_from_the_spool(client: httpx.Client, exams: dict[str, Any]) -> None:
    """No SC overlays in the outbox: the page draws each matched nodule's prior and current key slices."""
    import io

    import numpy as np
    from PIL import Image

    html = client.get(f"/series/{exams['current']}").text
    assert "/overlay/compare-1.png" in html and "nodule 1, growing: prior 2024-01-15 (left) and current (right)" in html
    assert "/overlay/compare-3.png" not in html  # a new nodule has nothing to be compared with
    png = client.get(f"/series/{exams['current']}/overlay/compare-1.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
    left, right = pixels[:, :256], pixels[:, -256:]
    # the prior's 6 mm nodule at the current one's place on the left, the current 7.9 mm one on the right
    assert _ring_fraction(left, 150, 170, 6.0 / 2 / 0.6 + 4) > 0.8
    assert _ring_fraction(right, 150, 170, 7.9 / 2 / 0.6 + 4) > 0.8
    # the stable nodule's key slices are not in the spool: said so, not a server error
    missing = client.get(f"/series/{exams['current']}/overlay/compare-2.png")
    assert missing.status_code == 404 and "no longer in the spool" in missing.text
