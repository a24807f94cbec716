"""The OrthancProcess helper against Debian's real Orthanc."""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.conftest import require_tool
from tests.peers.orthanc import DICOMWEB_PLUGIN, OrthancError, OrthancProcess
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
