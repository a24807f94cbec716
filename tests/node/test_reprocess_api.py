"""POST /api/series/{uid}/reprocess and the series page's form (issue 13): a real node with its console
in this process, httpx against the running server; the PACS port is closed, so every delivery is a
dead letter the re-run supersedes."""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from dicomnode.process.pipelines import PipelineContext, PipelineOutput
from storage.models import Delivery, Event, Job
from tests.node.helpers import wait_for
from tests.web.conftest import PASSWORD, TOKEN, USER, WebNode, start_node, upload_and_wait
from tests.web.pipelines import findings_pipeline

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def other_model_pipeline(datasets: list[Dataset], context: PipelineContext) -> PipelineOutput:
    """The test pipeline after a model update: same content, but UIDs derived from another model
    version (dicomnode.results.uids puts the version in every UID)."""
    output = findings_pipeline(datasets, context)
    for i, ds in enumerate(output.datasets):
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.9{i}"[:64]
    return output


# the updated model is a pipeline the configuration names (a route that matches nothing else); the
# lines go in at the end of [web], so this [[routes]] entry comes before the "all-ct" route
OTHER_MODEL = "tests.node.test_reprocess_api:other_model_pipeline"
OTHER_MODEL_ROUTE = f"""
[[routes]]
name = "updated-model"
pipeline = "{OTHER_MODEL}"
[routes.match]
modality = ["XX"]
"""


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    node = start_node(tmp_path_factory.mktemp("reprocess-node"), require_login=True, web_extra=OTHER_MODEL_ROUTE)
    yield node
    node.node.stop()


@pytest.fixture(scope="module")
def analysed(web: WebNode, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from inference.phantom import write_phantom_series

    case = write_phantom_series(tmp_path_factory.mktemp("phantom"), 12, matrix=64, n_slices=20, n_nodules=1)
    with web.client(headers=AUTH) as client:
        return upload_and_wait(client, case.files)


def _deliveries(web: WebNode, job_id: int) -> list[tuple[str, str, str | None]]:
    with web.node.db.session() as s:
        rows = s.execute(select(Delivery.sop_instance_uid, Delivery.state, Delivery.last_error)
                         .where(Delivery.job_id == job_id).order_by(Delivery.id)).all()
    return [tuple(r) for r in rows]


def _job_settled(web: WebNode, job_id: int) -> bool:
    """Done, and its deliveries given up on (the PACS is closed, one attempt)."""
    with web.node.db.session() as s:
        job = s.get(Job, job_id)
        state = job.state if job else None
    return state == "done" and bool(_deliveries(web, job_id)) and all(d[1] == "dead" for d in _deliveries(web, job_id))


def test_api_refuses_without_auth_and_names_what_is_wrong(web: WebNode, analysed: dict[str, Any]) -> None:
    uid = analysed["uid"]
    with web.client() as anonymous:
        refused = anonymous.post(f"/api/series/{uid}/reprocess")
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    with web.client(headers=AUTH) as client:
        missing = client.post("/api/series/1.2.3.999/reprocess")
        assert missing.status_code == 404 and missing.json()["detail"] == "no series 1.2.3.999 in the audit database"
        # a web user never makes the node import and call what the configuration does not name
        for name in ("os:system", "no_such_package.module:run"):
            bad = client.post(f"/api/series/{uid}/reprocess", params={"pipeline": name})
            assert bad.status_code == 422
            assert bad.json()["detail"].startswith(f"pipeline {name!r} is not one this node runs; choose from lung-nodule, "
                                                   f"{OTHER_MODEL}, tests.web.pipelines:findings_pipeline")
    with web.node.db.session() as s:
        assert s.execute(select(Job.id).where(Job.supersedes_job_id.is_not(None))).first() is None
        assert s.execute(select(Event.id).where(Event.code == 507)).first() is None


def test_api_rerun_supersedes_the_old_result_with_the_same_uids(web: WebNode, analysed: dict[str, Any]) -> None:
    uid = analysed["uid"]
    first = analysed["detail"]["jobs"][0]["id"]
    old = _deliveries(web, first)
    with web.client(headers=AUTH) as client:
        queued = client.post(f"/api/series/{uid}/reprocess")
        assert queued.status_code == 202, queued.text
        body = queued.json()
        assert body["supersedes_job"] == first and body["state"] == "queued" and body["destinations"] == ["PACS"]
        wait_for(lambda: _job_settled(web, body["job"]), 60, "the re-run to finish")
        detail = client.get(f"/api/series/{uid}").json()
        page = client.get(f"/series/{uid}").text
    assert f'data-supersedes="{first}">(re-run of {first})' in page  # the series page's jobs table says so
    # the old result's dead letters will never go out; the replacement has the same SOP Instance UIDs
    assert [(u, s, e) for u, s, e in _deliveries(web, first)] == [(u, "superseded", f"superseded by job {body['job']}")
                                                                  for u, _, _ in old]
    assert [u for u, _, _ in _deliveries(web, body["job"])] == [u for u, _, _ in old]
    assert [j["id"] for j in detail["jobs"]][:2] == [body["job"], first]
    assert detail["jobs"][0]["supersedes_job_id"] == first and detail["findings"][0]["job_id"] == body["job"]
    with web.node.db.session() as s:
        event = s.execute(select(Event).where(Event.code == 507, Event.job_id == body["job"])).scalar_one()
        assert event.details is not None
        assert (event.details["via"], event.details["client"], event.details["pipeline"]) == (
            "api", "127.0.0.1", "tests.web.pipelines:findings_pipeline")
        assert event.series_instance_uid == uid and event.details["user"] in event.message


def test_a_model_update_gives_new_uids_and_marks_the_old_result_superseded(web: WebNode, analysed: dict[str, Any]) -> None:
    uid = analysed["uid"]
    with web.client(headers=AUTH) as client:
        before = client.get(f"/api/series/{uid}").json()["jobs"][0]["id"]
        old = _deliveries(web, before)
        # make the old result undelivered again (as if the PACS had been down all along)
        with web.node.db.session() as s:
            for d in s.execute(select(Delivery).where(Delivery.job_id == before)).scalars():
                d.state, d.last_error = "dead", "test: never delivered"
        queued = client.post(f"/api/series/{uid}/reprocess",
                             params={"pipeline": OTHER_MODEL})
        assert queued.status_code == 202, queued.text
        new = queued.json()["job"]
        wait_for(lambda: _job_settled(web, new), 60, "the re-run with the updated model")
    new_uids = [u for u, _, _ in _deliveries(web, new)]
    assert not set(new_uids) & {u for u, _, _ in old}, "another model: other UIDs"
    # other UIDs: the outbox's per-UID supersede cannot see the old objects; the job link does
    assert _deliveries(web, before) == [(u, "superseded", f"superseded by job {new}") for u, _, _ in old]
    with web.node.db.session() as s:
        job = s.get(Job, new)
        assert job is not None and job.supersedes_job_id == before
        assert job.summary is not None and job.summary["superseded_deliveries"] == len(old)


def test_console_form_needs_the_csrf_token(web: WebNode, analysed: dict[str, Any]) -> None:
    uid = analysed["uid"]
    with web.client() as browser:
        form = browser.get("/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert token is not None
        logged_in = browser.post("/login", data={"username": USER, "password": PASSWORD, "csrf_token": token.group(1),
                                                 "next": "/"})
        assert logged_in.status_code == 303
        page = browser.get(f"/series/{uid}").text
        assert 'id="reprocess-button"' in page and f'action="/series/{uid}/reprocess"' in page
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert csrf is not None
        forged = browser.post(f"/series/{uid}/reprocess", data={"pipeline": ""}, headers={"Accept": "text/html"})
        assert forged.status_code == 403 and "CSRF" in forged.text
        api_forged = browser.post(f"/api/series/{uid}/reprocess")
        assert api_forged.status_code == 403
        with web.node.db.session() as s:
            jobs_before = len(s.execute(select(Job.id)).all())
        sent = browser.post(f"/series/{uid}/reprocess", data={"pipeline": "", "csrf_token": csrf.group(1)})
        assert sent.status_code == 303
        job_id = int(httpx.URL(sent.headers["location"]).params["reprocessed"])
        shown = browser.get(sent.headers["location"]).text
        assert f"Re-run queued as job {job_id}" in shown
        wait_for(lambda: _job_settled(web, job_id), 60, "the console's re-run")
    with web.node.db.session() as s:
        assert len(s.execute(select(Job.id)).all()) == jobs_before + 1
        event = s.execute(select(Event).where(Event.code == 507, Event.job_id == job_id)).scalar_one()
        assert event.details is not None and (event.details["user"], event.details["via"]) == (USER, "console")


def test_source_gone_is_a_conflict(web: WebNode, analysed: dict[str, Any]) -> None:
    uid = analysed["uid"]
    spool: Path = web.node.settings.spool_dir
    with web.node.db.session() as s:
        from storage.models import Instance, Series

        paths = s.execute(select(Instance.path).join(Series).where(Series.series_instance_uid == uid)).scalars().all()
    (spool / paths[0]).unlink()
    with web.client(headers=AUTH) as client:
        gone = client.post(f"/api/series/{uid}/reprocess")
    assert gone.status_code == 409
    assert f"source files of series {uid} are gone from the spool (1 of {len(paths)} missing" in gone.json()["detail"]
