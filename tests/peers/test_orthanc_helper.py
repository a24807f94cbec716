"""The OrthancProcess helper against Debian's real Orthanc."""
from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pydicom
import pytest

from tests.conftest import require_tool
from tests.peers.orthanc import DICOMWEB_PLUGIN, STORAGE_DIRECTORY_RACE, UPLOAD_ATTEMPTS, OrthancError, OrthancProcess
from tests.results.dicom_validators import lidc_paths

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def orthanc(tmp_path: Path):
    require_tool("Orthanc")
    if not DICOMWEB_PLUGIN.exists():
        pytest.fail(f"{DICOMWEB_PLUGIN} missing: apt-get install -y orthanc-dicomweb")
    pacs = OrthancProcess(tmp_path / "orthanc", modalities={"NODE": ["DICOMNODE", "127.0.0.1", 1]})
    pacs.start()
    yield pacs
    pacs.cleanup()


def test_upload_read_back_and_dicomweb(orthanc: OrthancProcess) -> None:
    source = lidc_paths()[0]
    original = pydicom.dcmread(source)
    answer = orthanc.upload(source)
    assert answer["Status"] == "Success"
    assert orthanc.upload(source)["Status"] == "AlreadyStored"

    studies = orthanc.studies()
    assert studies == [answer["ParentStudy"]]
    assert orthanc.lookup_study(original.StudyInstanceUID) == answer["ParentStudy"]
    (series_id,) = orthanc.series(studies[0])
    assert orthanc.instances(series_id) == [answer["ID"]]
    assert orthanc.study_tags(studies[0])["StudyInstanceUID"] == original.StudyInstanceUID
    assert orthanc.study_tags(studies[0])["PatientID"] == original.PatientID
    assert orthanc.series_tags(series_id)["SeriesInstanceUID"] == original.SeriesInstanceUID
    assert orthanc.instance_tags(answer["ID"])["SOPInstanceUID"] == original.SOPInstanceUID
    assert orthanc.instance_file(answer["ID"]) == source.read_bytes()  # stored byte for byte

    qido = orthanc.qido_studies()
    assert [s["0020000D"]["Value"][0] for s in qido] == [original.StudyInstanceUID]
    series = orthanc.qido_series(original.StudyInstanceUID)
    assert series[0]["0020000E"]["Value"][0] == original.SeriesInstanceUID
    assert orthanc.get("/modalities") == ["NODE"]
    assert orthanc.wait_for_instances(1, timeout=5) == 1


def test_store_to_unreachable_modality_reports_failure(orthanc: OrthancProcess) -> None:
    answer = orthanc.upload(lidc_paths()[0])
    job = orthanc.store_to_modality("NODE", [answer["ParentStudy"]])
    assert "ID" in job
    with pytest.raises(OrthancError, match="failed"):
        orthanc.wait_job(job["ID"], timeout=60)


def test_stop_is_idempotent_and_start_errors_are_explained(tmp_path: Path) -> None:
    require_tool("Orthanc")
    pacs = OrthancProcess(tmp_path / "a").start()
    port = pacs.http_port
    pacs.stop()
    pacs.stop()
    # a second Orthanc on a busy HTTP port exits; the error carries its log
    first = OrthancProcess(tmp_path / "b", http_port=port).start()
    try:
        with pytest.raises(OrthancError, match="Orthanc"):
            OrthancProcess(tmp_path / "c", http_port=port).start(timeout=15)
    finally:
        first.stop()


class _RacingOrthanc(http.server.BaseHTTPRequestHandler):
    """Answers POST /instances as Orthanc 1.10 does when its storage-directory race hits, `failures` times."""

    failures = 0
    posts: list[bytes] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).posts.append(body)
        if len(type(self).posts) <= type(self).failures:
            status, answer = 500, {"HttpError": "Internal Server Error", "HttpStatus": 500, "Method": "POST",
                                   "OrthancError": STORAGE_DIRECTORY_RACE, "OrthancStatus": 2001, "Uri": "/instances"}
        else:
            status, answer = 200, {"ID": "a", "ParentStudy": "s", "Status": "Success"}
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("failures, stored", [(0, True), (2, True), (3, False)])
def test_upload_sends_again_only_after_orthancs_storage_directory_race(tmp_path: Path, failures: int,
                                                                        stored: bool) -> None:
    # The race cannot be made to happen on demand in a real Orthanc (two uploads must create the same
    # hash directory within microseconds), so a stand-in HTTP server gives Orthanc's answer to it.
    _RacingOrthanc.failures, _RacingOrthanc.posts = failures, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RacingOrthanc)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pacs = OrthancProcess(tmp_path / "stand-in", http_port=server.server_address[1])
        if stored:
            assert pacs.upload(b"DICM")["Status"] == "Success"
        else:
            with pytest.raises(OrthancError, match=STORAGE_DIRECTORY_RACE):
                pacs.upload(b"DICM")
    finally:
        server.shutdown()
        server.server_close()
    assert _RacingOrthanc.posts == [b"DICM"] * min(failures + 1, UPLOAD_ATTEMPTS)


def test_upload_does_not_send_again_after_another_error(orthanc: OrthancProcess) -> None:
    with pytest.raises(OrthancError, match="HTTP 400"):  # not DICOM: refused at once, not retried
        orthanc.upload(b"not a DICOM file")
    assert orthanc.count_instances() == 0
