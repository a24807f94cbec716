"""Re-running a series with a real PACS (issue 13): Orthanc pushes a phantom study, the lung-nodule
pipeline answers with the SR and overlays; `dicomnode reprocess` runs it again, and Orthanc still
holds exactly one SR with the same SOP Instance UID (a replacement, not a duplicate), while the
audit database shows two jobs, the second superseding the first."""
from __future__ import annotations

import os
import sqlite3
import subprocess
from typing import Any

import pytest

from inference.phantom import write_phantom_series
from tests.conftest import REPO_ROOT
from tests.node.helpers import PYTHON, NodeProcess, free_port, wait_for
from tests.e2e.helpers import orthanc_node_config as _config
from tests.peers.orthanc import OrthancProcess, orthanc_binary

pytestmark = pytest.mark.skipif(orthanc_binary() is None, reason="Debian package orthanc is not installed (.ci/run installs it)")




def _rows(node: NodeProcess, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(node.data_dir / "audit.sqlite") as conn:
        return conn.execute(sql, args).fetchall()


def _delivered(node: NodeProcess, job_id: int) -> bool:
    states = _rows(node, "SELECT j.state, d.state FROM jobs j JOIN deliveries d ON d.job_id = j.id WHERE j.id = ?", job_id)
    return bool(states) and all(j == "done" and d == "delivered" for j, d in states)


def _by_modality(orthanc: OrthancProcess, study_id: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for series in orthanc.get(f"/studies/{study_id}/series"):
        found.setdefault(series["MainDicomTags"]["Modality"], []).append(series)
    return found


def _sop_uids(orthanc: OrthancProcess, series: dict[str, Any]) -> list[str]:
    return sorted(orthanc.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in series["Instances"])


def test_reprocess_replaces_the_sr_in_orthanc(tmp_path):
    case = write_phantom_series(tmp_path / "phantom", seed=4244, small=True)
    node_port = free_port()
    orthanc = OrthancProcess(tmp_path / "orthanc", modalities={"NODE": ["DICOMNODE", "127.0.0.1", node_port]}).start()
    node = NodeProcess(tmp_path / "node", "", port=node_port)
    node.config.write_text(_config(orthanc))
    node.start()
    try:
        study_id = orthanc.upload_many(case.files)[0]["ParentStudy"]
        orthanc.wait_job(orthanc.store_to_modality("NODE", [study_id])["ID"], timeout=300)
        wait_for(lambda: _delivered(node, 1), 300, "the first result delivered to Orthanc")
        before = _by_modality(orthanc, study_id)
        assert len(before["SR"]) == 1
        sr_uids = _sop_uids(orthanc, before["SR"][0])
        assert len(sr_uids) == 1
        instances_before = len(orthanc.get("/instances"))
        ((series_uid,),) = _rows(node, "SELECT series_instance_uid FROM series WHERE status = 'routed'")

        result = subprocess.run(
            [PYTHON, "-m", "dicomnode.cli", "reprocess", series_uid, "--config", str(node.config),
             "--data-dir", str(node.data_dir)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"})
        assert result.returncode == 0, result.stderr
        assert "queued job 2" in result.stdout and "superseding job 1" in result.stdout
        wait_for(lambda: _delivered(node, 2), 300, "the re-run's result delivered to Orthanc")

        after = _by_modality(orthanc, study_id)
        assert len(after["SR"]) == 1 and _sop_uids(orthanc, after["SR"][0]) == sr_uids, "one SR, the same SOP Instance UID"
        assert {m: len(s) for m, s in after.items()} == {m: len(s) for m, s in before.items()}
        assert len(orthanc.get("/instances")) == instances_before, "replacements, no duplicates"
        assert _rows(node, "SELECT id, state, supersedes_job_id FROM jobs ORDER BY id") == [(1, "done", None), (2, "done", 1)]
        first = _rows(node, "SELECT sop_instance_uid FROM deliveries WHERE job_id = 1 ORDER BY sop_instance_uid")
        second = _rows(node, "SELECT sop_instance_uid FROM deliveries WHERE job_id = 2 ORDER BY sop_instance_uid")
        assert first == second and (sr_uids[0],) in second
        assert _rows(node, "SELECT count(*) FROM events WHERE code = 507 AND job_id = 2") == [(1,)]
    finally:
        node.stop()
        orthanc.stop()
