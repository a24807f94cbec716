"""Results reach the PACS even when it is down at first; dead letters can be sent again;
a node killed with SIGKILL mid-series loses nothing it acknowledged."""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import LIDC_SERIES, REPO_ROOT
from tests.node.conftest import node_config
from tests.node.helpers import StoreSCP, require_tool, storescu, wait_for

pytestmark = pytest.mark.one_receiver  # receiving is not this file's subject (tests/conftest.py)


def _lidc_files() -> list[Path]:
    return sorted(p for p in LIDC_SERIES.iterdir() if p.is_file())


def test_destination_down_then_up_delivers_once(make_node, pacs_port, tmp_path):
    # enough attempts that the PACS comes back before the delivery becomes a dead letter
    node = make_node(node_config(pacs_port).replace("max_attempts = 4", "max_attempts = 100")).start()
    storescu(node.port, _lidc_files()[:30])
    # the PACS is down: attempts fail and are retried with backoff. Read the row between attempts
    # (state pending); mid-attempt it is "sending", which is just as correct but says nothing.
    failed = wait_for(lambda: [d for d in node.audit("deliveries") if d["attempts"] >= 2 and d["state"] != "sending"],
                      60, "failed attempts")
    assert failed[0]["state"] == "pending" and "no association" in failed[0]["last_error"]
    assert node.audit("events", "--status", "DELIVERY_ATTEMPT_FAILED")
    pacs = StoreSCP(tmp_path / "late-pacs", port=pacs_port).start()
    try:
        delivered = wait_for(lambda: [d for d in node.audit("deliveries") if d["state"] == "delivered"], 60, "delivery")
        assert len(delivered) == 1
        time.sleep(2)  # nothing else may arrive afterwards
        files = pacs.files()
        assert len(files) == 1
        assert dcmread(files[0]).SOPInstanceUID == delivered[0]["sop_instance_uid"]
    finally:
        pacs.stop()


def test_dead_letter_is_sent_again_by_retry(make_node, pacs_port, tmp_path):
    config = node_config(pacs_port).replace("max_attempts = 4", "max_attempts = 2")
    node = make_node(config).start()
    storescu(node.port, _lidc_files()[:20])
    dead = wait_for(lambda: node.audit("dead-letters"), 60, "a dead letter")
    assert dead[0]["attempts"] == 2
    assert node.audit("events", "--status", "DELIVERY_DEAD_LETTER")
    pacs = StoreSCP(tmp_path / "pacs-back", port=pacs_port).start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "dicomnode.cli", "retry", "--all-dead", "--config", str(node.config),
             "--data-dir", str(node.data_dir)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "delivered 1 of 1" in result.stdout
        assert len(pacs.files()) == 1
        rows = node.audit("deliveries")
        assert [r["state"] for r in rows] == ["delivered"]
        assert node.audit("events", "--status", "DELIVERY_RETRY_REQUESTED")
    finally:
        pacs.stop()


def _acknowledged_files(storescu_log: str) -> list[str]:
    """Files storescu got a success response for (its -v log pairs 'Sending file' with the response)."""
    acknowledged, current = [], None
    for line in storescu_log.splitlines():
        m = re.search(r"Sending file: (.+)$", line)
        if m:
            current = m.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            acknowledged.append(current)
            current = None
    return acknowledged


def test_kill9_mid_series_loses_nothing_acknowledged_and_the_job_runs(make_node, pacs):
    node = make_node(node_config(pacs.port, stable=2.0)).start()
    files = _lidc_files()
    tool = require_tool("storescu")
    sender = subprocess.Popen([tool, "-v", "-aet", "SCANNER", "-aec", "DICOMNODE", "127.0.0.1", str(node.port),
                               *map(str, files)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(sender.stderr), daemon=True)
    reader.start()
    spool = node.data_dir / "spool"
    wait_for(lambda: sum(1 for _ in spool.rglob("*.dcm")) >= 60, 120, "60 instances in the spool")
    node.kill9()
    sender.wait(60)
    reader.join(10)
    acknowledged = _acknowledged_files("".join(log))
    # the last file in the spool may have been fsynced without its response reaching storescu
    assert 30 <= len(acknowledged) < len(files), "the kill must land mid-series"

    node.start()  # same data dir: recovery runs
    instances = {r["sop_instance_uid"]: r for r in node.audit("instances", "--limit", "10000")}
    for path in acknowledged:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert uid in instances, f"{path} was acknowledged but is not in the audit database"
        spooled = spool / instances[uid]["path"]
        assert spooled.stat().st_size == instances[uid]["size_bytes"]
        assert dcmread(spooled).SOPInstanceUID == uid
    assert not list(spool.rglob(".*.tmp")), "partial files are removed at start-up"
    assert node.audit("events", "--status", "NODE_RECOVERED")

    storescu(node.port, files)  # the scanner sends the series again: only the missing ones are new
    full = wait_for(lambda: [j for j in node.audit("jobs") if j["state"] == "done"
                             and j["summary"]["instances"] == len(files)], 90, "a job over the whole series")
    assert len(full) == 1
    assert len(node.audit("instances", "--limit", "10000")) == len(files)
    # if the partial series completed before the resend, the resend re-opened it and its result is
    # replaced: same result UID at the PACS, never a second object
    wait_for(lambda: all(d["state"] in ("delivered", "superseded") for d in node.audit("deliveries")), 30, "deliveries")
    assert len({p.name for p in pacs.files()}) == 1


def test_job_interrupted_by_kill9_runs_again_after_restart(make_node, pacs, tmp_path):
    # the pipeline waits for a gate file, so the kill certainly lands while the job runs
    gate = tmp_path / "gate"
    config = node_config(pacs.port, pipeline="tests.node.pipelines:gated_pipeline")
    node = make_node(config, env={"TEST_PIPELINE_GATE": str(gate)}).start()
    storescu(node.port, _lidc_files()[:10])
    wait_for(lambda: [j for j in node.audit("jobs") if j["state"] == "running"], 60, "the job to start")
    node.kill9()
    node.start()
    gate.touch()
    done = wait_for(lambda: [j for j in node.audit("jobs") if j["state"] == "done"], 90, "the job to finish")
    assert done[0]["attempts"] == 2
    requeued = node.audit("events", "--status", "JOB_REQUEUED")
    assert requeued and "restart" in requeued[0]["message"]
    wait_for(lambda: pacs.files(), 30, "results at the PACS")
