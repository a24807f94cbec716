"""The whole path with a real PACS: Orthanc pushes a study to the node, the lung-nodule pipeline runs,
and the SR and overlays come back into the same study in Orthanc (issue 4)."""
from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from inference.phantom import write_phantom_series
from tests.conftest import LIDC_SERIES
from tests.node.helpers import NodeProcess, free_port, wait_for
from tests.e2e.helpers import orthanc_node_config as _node_config
from tests.peers.orthanc import OrthancProcess, orthanc_binary

pytestmark = pytest.mark.skipif(orthanc_binary() is None, reason="Debian package orthanc is not installed (.ci/run installs it)")




def _sr_groups(sr_bytes: bytes) -> list[dict]:
    """Nodules as a viewer reads them: tracking UID, the NUM values in order, the key slice."""
    sr = hd.sr.srread(BytesIO(sr_bytes))
    groups = sr.content.get_planar_roi_measurement_groups()
    out = []
    for g in groups:
        nums = [(m.name.meaning, float(m.value), m.unit.value) for m in g.get_measurements()]
        # the SCOORD is SELECTED FROM the key slice: its IMAGE child names the CT instance
        image = g.roi.ContentSequence[0] if g.roi is not None else None
        key = str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) if image is not None else None
        out.append({"uid": str(g.tracking_uid), "nums": nums, "key_slice": key})
    return out


def _run_through_orthanc(tmp_path: Path, files: list[Path], orthanc_timeout: float) -> tuple:
    node_port = free_port()
    orthanc = OrthancProcess(tmp_path / "orthanc", modalities={"NODE": ["DICOMNODE", "127.0.0.1", node_port]}).start()
    node = NodeProcess(tmp_path / "node", "", port=node_port)
    node.config.write_text(_node_config(orthanc))
    node.start()
    try:
        uploaded = orthanc.upload_many(files)
        study_id = uploaded[0]["ParentStudy"]
        job = orthanc.store_to_modality("NODE", [study_id])
        orthanc.wait_job(job["ID"], timeout=300)
        sent_at = time.monotonic()
        # the node returns the SR (9001) and the overlays (9002) into the same study
        series = wait_for(lambda: (s := orthanc.get(f"/studies/{study_id}/series")) and len(s) >= 3 and s,
                          orthanc_timeout, "SR and overlays in Orthanc")
        turnaround = time.monotonic() - sent_at
        return orthanc, node, study_id, series, turnaround
    except BaseException:
        node.stop()
        orthanc.stop()
        raise


def test_phantom_study_round_trip_through_orthanc(tmp_path):
    case = write_phantom_series(tmp_path / "phantom", seed=4242, small=True)
    orthanc, node, study_id, series, _ = _run_through_orthanc(tmp_path, case.files, 240)
    try:
        by_modality = {s["MainDicomTags"]["Modality"]: s for s in series}
        assert {"CT", "SR", "OT"} <= set(by_modality) or {"CT", "SR"} <= set(by_modality)
        sr_series = by_modality["SR"]
        assert sr_series["MainDicomTags"]["SeriesNumber"] == "9001"
        sr_bytes = orthanc.instance_file(sr_series["Instances"][0])
        sr = dcmread(BytesIO(sr_bytes))
        assert sr.StudyInstanceUID == case.study_instance_uid
        groups = _sr_groups(sr_bytes)

        findings = node.audit("findings")
        jobs = node.audit("jobs")
        assert [j["state"] for j in jobs] == ["done"]
        assert len(groups) == len(findings), "one measurement group per recorded finding"
        for g in groups:
            names = [n for n, _, _ in g["nums"]][:3]
            assert names == ["Diameter", "Volume", "Probability of cancer"], names  # mean diameter first (Lung-RADS)
        # the SR carries diameters to 0.01 mm; the audit database keeps the model's float
        recorded = sorted((f["sop_instance_uid"], round(f["diameter_mm"], 2)) for f in findings)
        in_sr = sorted((g["key_slice"], g["nums"][0][1]) for g in groups)
        assert [uid for uid, _ in recorded] == [uid for uid, _ in in_sr], "findings on the same key slices"
        assert [d for _, d in recorded] == pytest.approx([d for _, d in in_sr], abs=0.006), \
            "the SR in the PACS says what the audit database recorded"
        ct_uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in case.files}
        assert all(g["key_slice"] in ct_uids for g in groups)

        # the audit trail: association from Orthanc, series routed, job, findings, deliveries
        assert any(a["calling_ae"] == orthanc.aet and a["state"] == "released" for a in node.audit("associations"))
        assert node.audit("series")[0]["status"] == "routed"
        deliveries = node.audit("deliveries")
        assert deliveries and all(d["state"] == "delivered" and d["ae_title"] == orthanc.aet for d in deliveries)
    finally:
        node.stop()
        orthanc.stop()


def test_sr_findings_from_orthanc_match_the_phantom_nodules(tmp_path):
    case = write_phantom_series(tmp_path / "phantom", seed=4243, small=True)
    orthanc, node, study_id, series, _ = _run_through_orthanc(tmp_path, case.files, 240)
    try:
        sr_series = next(s for s in series if s["MainDicomTags"]["Modality"] == "SR")
        sr = hd.sr.srread(BytesIO(orthanc.instance_file(sr_series["Instances"][0])))
        groups = sr.content.get_planar_roi_measurement_groups()
        findings = node.audit("findings")
        assert len(groups) == len(findings)
        centres = np.array([[f["center_x_mm"], f["center_y_mm"], f["center_z_mm"]] for f in findings]).reshape(-1, 3)
        for n in (n for n in case.phantom.nodules if n.diameter_mm >= 6.0):
            distances = np.linalg.norm(centres - np.array(n.center_mm), axis=1) if len(centres) else np.array([np.inf])
            assert distances.min() < max(n.diameter_mm / 2, 3.0), f"missed the {n.diameter_mm:.1f} mm nodule at {n.center_mm}"
    finally:
        node.stop()
        orthanc.stop()


@pytest.mark.slow
def test_lidc_series_round_trip_turnaround(tmp_path, record_property):
    files = sorted(p for p in LIDC_SERIES.iterdir() if p.is_file())
    orthanc, node, study_id, series, turnaround = _run_through_orthanc(tmp_path, files, 600)
    try:
        sr_series = next(s for s in series if s["MainDicomTags"]["Modality"] == "SR")
        groups = _sr_groups(orthanc.instance_file(sr_series["Instances"][0]))
        record_property("turnaround_s", round(turnaround, 1))
        print(f"\nlidc-idri-0002: {len(groups)} finding(s); C-STORE from Orthanc to SR in Orthanc: {turnaround:.1f} s")
        jobs = node.audit("jobs")
        assert [j["state"] for j in jobs] == ["done"]
        assert len(groups) == len(node.audit("findings"))
    finally:
        node.stop()
        orthanc.stop()
