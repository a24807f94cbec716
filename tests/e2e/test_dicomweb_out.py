"""DICOMweb with a real Orthanc and its DICOMweb plugin (issue 15).

Out: a `type = "dicomweb"` destination STOWs the node's results to Orthanc, through the outbox: with
Orthanc down the deliveries fail and are retried, then delivered once it is up; Orthanc's REST then
holds each result under its SOP Instance UID. In: Orthanc's own DICOMweb client STOWs a study to the
node (POST /dicom-web/servers/NODE/stow), with the node's API token in its Authorization header.
One node (in this process, a fast test pipeline) and one Orthanc for the module.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicomnode.cli.served import ServedNode
from dicomnode.config import load_settings
from storage.models import Delivery, Event, Instance, Series
from tests.node.helpers import free_port, wait_for
from tests.peers.orthanc import OrthancProcess, orthanc_binary
from tests.web.conftest import PIPELINE, TOKEN
from tests.web.test_stow import multipart, variant

pytestmark = [pytest.mark.skipif(orthanc_binary() is None, reason="Debian package orthanc is not installed (.ci/run installs it)"),
              pytest.mark.one_receiver]  # receiving is not this file's subject (tests/conftest.py)

AUTH_SECRET = "Bearer do-not-log-this-secret-0123456789"


@dataclass
class Setup:
    node: ServedNode
    base: str  # the node's console
    orthanc: OrthancProcess  # not started until a test starts it (it is "down" before)


def node_config(orthanc: OrthancProcess, auth_file: Path) -> str:
    return f"""
[series]
stable_seconds = 0.3
poll_seconds = 0.1
[jobs]
poll_seconds = 0.1
[sender]
max_attempts = 30
poll_seconds = 0.2
backoff_initial_s = 0.3
backoff_max_s = 1
connect_timeout_s = 2
[web]
host = "127.0.0.1"
port = 0
require_login = true
api_tokens = ["{TOKEN}"]
[[routes]]
name = "all-ct"
pipeline = "{PIPELINE}"
destinations = ["ORTHANC_WEB"]
[routes.match]
modality = ["CT"]
[destinations.ORTHANC_WEB]
type = "dicomweb"
url = "{orthanc.dicomweb_url}/"
auth_header_file = "{auth_file}"
"""


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from inference.phantom import write_phantom_series

    return write_phantom_series(tmp_path_factory.mktemp("phantom"), 15, matrix=64, n_slices=20, n_nodules=1).files


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("dicomweb")
    orthanc = OrthancProcess(root / "orthanc", http_port=free_port(), dicom_port=free_port())
    auth_file = root / "orthanc-auth"
    auth_file.write_text(AUTH_SECRET + "\n")
    (root / "node.toml").write_text(node_config(orthanc, auth_file))
    settings = load_settings(root / "node.toml", {"node.data_dir": root / "data", "node.port": free_port(),
                                                  "node.host": "127.0.0.1", "node.min_free_disk_mb": 1})
    node = ServedNode(settings)
    node.start()
    assert node.web is not None
    base = f"http://127.0.0.1:{node.web.port}"
    # Orthanc's DICOMweb client may STOW to the node (its config is written when it starts)
    orthanc.extra_config["DicomWeb"] = {
        **orthanc.build_config()["DicomWeb"],
        "Servers": {"NODE": {"Url": f"{base}/dicom-web/", "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"}}},
    }
    try:
        yield Setup(node, base, orthanc)
    finally:
        node.stop()
        orthanc.stop()


def _stow_series(setup: Setup, files: list[Path]) -> str:
    series = generate_uid()
    body, content_type = multipart([variant(p, series)[1] for p in files])
    response = httpx.post(f"{setup.base}/dicom-web/studies", content=body, timeout=60,
                          headers={"Content-Type": content_type, "Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    return series


def _deliveries(setup: Setup, series: str) -> list[Delivery]:
    with setup.node.db.session() as s:
        series_id = select(Series.id).where(Series.series_instance_uid == series).scalar_subquery()
        rows = s.execute(select(Delivery).where(Delivery.series_id == series_id)).scalars().all()
        s.expunge_all()
        return list(rows)


def _orthanc_has(orthanc: OrthancProcess, sop_uids: list[str]) -> bool:
    return all(any(r["Type"] == "Instance" for r in orthanc.lookup(uid)) for uid in sop_uids)


def _delivered(setup: Setup, series: str) -> list[Delivery] | None:
    rows = _deliveries(setup, series)
    return rows if rows and all(d.state == "delivered" for d in rows) else None


def test_orthanc_down_then_retried_then_delivered(setup: Setup, phantom_files: list[Path]) -> None:
    assert setup.orthanc.process is None  # Orthanc is down
    series = _stow_series(setup, phantom_files)
    failed = wait_for(lambda: [d for d in _deliveries(setup, series) if d.attempts >= 1 and d.state == "pending"],
                      90, "deliveries to the DICOMweb destination to fail while Orthanc is down")
    assert "ConnectError" in (failed[0].last_error or "")
    setup.orthanc.start()
    rows = wait_for(lambda: _delivered(setup, series), 90, "the results STOWed once Orthanc is up")
    assert {d.destination for d in rows} == {"ORTHANC_WEB"} and all(d.attempts >= 2 for d in rows)
    assert _orthanc_has(setup.orthanc, [d.sop_instance_uid for d in rows])
    with setup.node.db.session() as s:
        messages = s.execute(select(Event.message)).scalars().all()
    assert any("failed" in m and "/dicom-web/studies" in m for m in messages)
    assert not any("do-not-log-this-secret" in m for m in messages)  # the Authorization value stays out


def test_results_are_stowed_to_orthanc(setup: Setup, phantom_files: list[Path]) -> None:
    if setup.orthanc.process is None:
        setup.orthanc.start()
    series = _stow_series(setup, phantom_files)
    rows = wait_for(lambda: _delivered(setup, series), 90, "the results STOWed to Orthanc")
    assert all(d.attempts == 1 for d in rows)
    sop_uids = [d.sop_instance_uid for d in rows]
    assert _orthanc_has(setup.orthanc, sop_uids)
    modalities = {setup.orthanc.instance_tags(setup.orthanc.lookup(uid)[0]["ID"])["Modality"] for uid in sop_uids}
    assert "SR" in modalities  # the report itself, not only the overlays


def test_orthanc_stows_a_study_to_the_node(setup: Setup, phantom_files: list[Path]) -> None:
    if setup.orthanc.process is None:
        setup.orthanc.start()
    study, series = generate_uid(), generate_uid()
    copies = [variant(p, series, study=study) for p in phantom_files[:3]]
    uids = [uid for uid, _ in copies]
    uploaded = [setup.orthanc.upload(data) for _, data in copies]
    setup.orthanc.post("/dicom-web/servers/NODE/stow", {"Resources": [uploaded[0]["ParentStudy"]]})
    with setup.node.db.session() as s:
        stored = set(s.execute(select(Instance.sop_instance_uid).where(Instance.sop_instance_uid.in_(uids))).scalars())
        received = s.execute(select(Event).where(Event.name == "STOW_RECEIVED").order_by(Event.id.desc())).scalars().first()
    assert stored == set(uids)  # acknowledged to Orthanc only once stored
    assert received is not None and received.details["stored"] == 3 and received.details["user"].startswith("token")
