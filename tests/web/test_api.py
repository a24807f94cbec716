"""REST API and /health against a real node (loopback, no login) that analysed an uploaded series."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.web import pipelines
from tests.web.conftest import WebNode


@pytest.fixture
def client(open_node: WebNode) -> httpx.Client:
    with open_node.client() as c:
        yield c


def csrf(client: httpx.Client) -> dict[str, str]:
    return {"X-CSRF-Token": client.get("/api/session").json()["csrf_token"]}


def events(client: httpx.Client, name: str) -> list[dict[str, Any]]:
    response = client.get("/api/events", params={"status": name, "limit": 1000})
    assert response.status_code == 200
    return response.json()


def test_session_is_open_on_loopback(client: httpx.Client) -> None:
    body = client.get("/api/session").json()
    assert body["user"] == "local" and body["via"] == "open" and len(body["csrf_token"]) > 20


def test_stats(client: httpx.Client, open_series: dict[str, Any]) -> None:
    stats = client.get("/api/stats").json()
    assert stats["instances_today"] >= 20
    assert stats["series_today"] >= 1
    assert stats["jobs_by_state"]["done"] >= 1
    assert stats["queue_depth"] == stats["jobs_by_state"].get("queued", 0)
    assert stats["spool_free_bytes"] > 0
    assert stats["model"]["configured_engine"] == "auto"
    assert stats["model"]["model"]["name"] == "test-nodule-model"


def test_series_list_and_filters(client: httpx.Client, open_series: dict[str, Any]) -> None:
    rows = client.get("/api/series").json()
    row = next(r for r in rows if r["series_instance_uid"] == open_series["uid"])
    assert (row["status"], row["job_state"], row["verdict"]) == ("routed", "done", "suspicious")
    assert row["calling_ae"] == "WEB-UPLOAD" and row["instance_count"] == 20
    assert open_series["uid"] in {r["series_instance_uid"] for r in client.get("/api/series", params={"status": "routed"}).json()}
    assert client.get("/api/series", params={"status": "ignored"}).json() == []
    assert client.get("/api/series", params={"series": open_series["uid"][:20]}).json()
    assert client.get("/api/series", params={"since": "yesterday-ish"}).status_code == 422


def test_series_detail(client: httpx.Client, open_series: dict[str, Any]) -> None:
    detail = client.get(f"/api/series/{open_series['uid']}").json()
    assert detail["series"]["modality"] == "CT"
    assert detail["latest_done_job"]["pipeline"] == "tests.web.pipelines:findings_pipeline"
    (finding,) = detail["findings"]
    assert finding["lung_rads"] == "4A" and finding["diameter_mm"] == pytest.approx(9.5)
    assert detail["lung_rads"] == "4A"
    _assert_issue11_finding(finding)
    _assert_exam(detail["exam"])
    assert detail["latest_done_job"]["exam"]["lung_rads"] == "4A"
    assert detail["model_score_label"] == "model score (phantom-trained weights)"
    # SR + one overlay per nodule + a summary overlay, each to the (closed) PACS
    assert len(detail["deliveries"]) == 3
    assert any(e["name"] == "JOB_DONE" for e in detail["events"])
    assert client.get("/api/series/1.2.3.4.5.404").status_code == 404


def test_lists(client: httpx.Client, open_series: dict[str, Any]) -> None:
    uid = open_series["uid"]
    jobs = client.get("/api/jobs", params={"series": uid}).json()
    assert jobs and jobs[0]["state"] == "done"
    assert [f["lung_rads"] for f in client.get("/api/findings", params={"status": "4A", "series": uid}).json()] == ["4A"]
    (listed,) = client.get("/api/findings", params={"series": uid}).json()
    _assert_issue11_finding(listed)
    _assert_exam(jobs[0]["exam"])
    recorded = [e["message"] for e in events(client, "FINDING_RECORDED") if e["series_instance_uid"] == uid]
    assert recorded == ["nodule 1: part-solid cavitary 9.5 mm, Lung-RADS 4A, Brock risk 8.3%, model score 0.62"]
    assert client.get("/api/findings", params={"status": "2", "series": uid}).json() == []
    deliveries = client.get("/api/deliveries", params={"series": uid}).json()
    assert {d["destination"] for d in deliveries} == {"PACS"}
    dead = client.get("/api/dead-letters").json()
    assert dead and all(d["state"] == "dead" for d in dead)
    assert events(client, "UPLOAD_RECEIVED")[-1]["message"].startswith("local uploaded 20 instance(s)")
    assert client.get("/api/jobs", params={"limit": 0}).status_code == 422


def _assert_issue11_finding(finding: dict[str, Any]) -> None:
    """The fields and shape `analyze --json` has (issue 11), rounded to their precision."""
    assert finding["type"] == "part_solid" and finding["calcified"] is False and finding["margin"] == "lobulated"
    assert finding["location"] == {"lung": "right", "zone": "upper", "juxtapleural": False, "perifissural": True}
    assert finding["mean_diameter_mm"] == pytest.approx(pipelines.DIAMETER_MM)
    assert finding["solid_component_mm"] == pytest.approx(pipelines.SOLID_MM)
    assert (finding["long_axis_mm"], finding["short_axis_mm"]) == (10.6, 8.4)
    assert finding["brock_risk"] == pytest.approx(pipelines.BROCK_RISK)
    assert finding["model_score"] == pytest.approx(pipelines.MODEL_SCORE) and "malignancy" not in finding
    assert finding["cyst"] == "cavity"  # an air-filled lumen, through the audit row (migration 0017)
    assert finding["airway"] is None  # in the lung, not in an airway's lumen (migration 0018)
    assert finding["lung_rads"] == "4A" and finding["lung_rads_reasons"] == [
        "part-solid >= 6 mm with a solid component of 6 to < 8 mm"]
    assert finding["volume_mm3"] == 449.0 and len(finding["center_mm"]) == 3


def _assert_exam(exam: dict[str, Any]) -> None:
    assert exam["lung_rads"] == "4A" and exam["recommendation"] == pipelines.RECOMMENDATION
    assert exam["laa950_pct"] == pytest.approx(3.24) and exam["lung_volume_ml"] == pytest.approx(4870.4)
    assert exam["risk_inputs"]["sex"] == "female" and exam["risk_inputs"]["age_years"] is None
    assert exam["risk_inputs"]["missing"] == ["age", "family_history"]
    # the coronary calcium and the S modifier it suggests, as the pipeline stored them
    assert exam["coronary_calcium"] == {"agatston": 154, "grade": "moderate", "lesions": 4, "volume_mm3": 61.8,
                                        "threshold_hu": 130.0, "note": None}
    assert exam["s_modifier"] is True and exam["lung_rads_label"] == "4AS"
    assert exam["significant_findings"] == [{"kind": "coronary_calcium", "text": pipelines.CALCIUM_TEXT}]


def test_retry_needs_csrf_and_is_audited(client: httpx.Client, open_series: dict[str, Any]) -> None:
    dead = client.get("/api/dead-letters").json()[0]
    assert client.post(f"/api/dead-letters/{dead['id']}/retry").status_code == 403
    assert client.post(f"/api/dead-letters/{dead['id']}/retry", headers={"X-CSRF-Token": "forged"}).status_code == 403
    response = client.post(f"/api/dead-letters/{dead['id']}/retry", headers=csrf(client))
    assert response.status_code == 200 and response.json() == {"requeued": [dead["id"]]}
    actions = [e for e in events(client, "ADMIN_ACTION") if e["delivery_id"] == dead["id"]]
    assert actions and "re-queued delivery" in actions[0]["message"]
    assert any(e["delivery_id"] == dead["id"] for e in events(client, "DELIVERY_RETRY_REQUESTED"))
    assert client.post("/api/dead-letters/999999/retry", headers=csrf(client)).status_code == 404


def test_retry_all(client: httpx.Client, open_series: dict[str, Any]) -> None:
    response = client.post("/api/dead-letters/retry", headers=csrf(client))
    assert response.status_code == 200
    assert isinstance(response.json()["requeued"], list)


def test_upload_refuses_non_dicom_and_reads_zips(client: httpx.Client, open_series: dict[str, Any],
                                                 phantom_files: list[Path]) -> None:
    response = client.post("/api/upload", headers=csrf(client),
                           files=[("files", ("notes.txt", b"not a DICOM file", "text/plain"))])
    body = response.json()
    assert response.status_code == 200 and body["stored"] == 0
    assert body["failed"][0]["name"] == "notes.txt" and "cannot parse" in body["failed"][0]["reason"]
    assert events(client, "INSTANCE_REJECTED_UNPARSEABLE")

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for p in phantom_files[:5]:
            z.write(p, f"study/{p.name}")
        z.writestr("study/", "")
    response = client.post("/api/upload", headers=csrf(client),
                           files=[("files", ("study.zip", archive.getvalue(), "application/zip"))])
    body = response.json()
    # the same instances again: accepted as duplicates, nothing re-opened
    assert (body["stored"], body["duplicates"], body["failed"]) == (0, 5, [])
    assert body["series"] == {open_series["uid"]: 5}


def test_upload_needs_csrf(client: httpx.Client, phantom_files: list[Path]) -> None:
    response = client.post("/api/upload", files=[("files", ("a.dcm", phantom_files[0].read_bytes(), "application/dicom"))])
    assert response.status_code == 403


def test_health(client: httpx.Client) -> None:
    body = client.get("/health").json()
    assert body["ready"] is True
    assert body["checks"]["database"]["ok"] and body["checks"]["disk"]["ok"]
    # the test pipeline needs no model engine
    assert body["checks"]["engine"]["ok"] is True and body["checks"]["engine"]["required"] == []
    assert client.get("/health/live").json() == {"live": True}


def test_health_not_ready_when_disk_is_short(open_node: WebNode, client: httpx.Client) -> None:
    web = open_node.node.settings.web
    before = web.min_free_disk_mb
    web.min_free_disk_mb = 10**9  # a petabyte: no disk has that free
    try:
        response = client.get("/health")
        assert response.status_code == 503
        assert response.json()["checks"]["disk"]["ok"] is False
    finally:
        web.min_free_disk_mb = before
    assert client.get("/health").status_code == 200


def test_openapi(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/api/series", "/api/series/{series_uid}", "/api/jobs", "/api/findings", "/api/deliveries",
                  "/api/dead-letters", "/api/dead-letters/{delivery_id}/retry", "/api/events", "/api/stats", "/health"):
        assert route in paths
    assert "swagger" in client.get("/docs").text.lower()


def test_model_identity_of_a_loaded_pipeline() -> None:
    from types import SimpleNamespace

    from dicomnode.process.pipelines import model_identity as _identity
    from inference.findings import ModelIdentity

    identity = ModelIdentity("deeplung-dpn26", "1.2", "ab" * 32, "tensorrt-fp16")
    # the node's lung pipeline holds the inference pipeline as .model, which carries .identity
    assert _identity(SimpleNamespace(model=SimpleNamespace(identity=identity, detector=object()))) == identity.to_json()
    assert _identity(SimpleNamespace(identity=identity)) == identity.to_json()
    assert _identity(lambda datasets, context: None) is None  # a plain function pipeline has none
