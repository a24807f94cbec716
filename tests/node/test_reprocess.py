"""`dicomnode reprocess SERIES_UID` against the data directory of a running node and of a stopped one
(issue 13): real node process, real dcmtk storescu in and storescp as the PACS."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from typing import Any

import pytest
from pydicom import dcmread

from tests.conftest import LIDC_SERIES, REPO_ROOT
from tests.node.conftest import node_config
from tests.node.helpers import PYTHON, NodeProcess, storescu, wait_for

pytestmark = pytest.mark.one_receiver  # receiving is not this file's subject (tests/conftest.py)


def _rows(node: NodeProcess, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(node.data_dir / "audit.sqlite") as conn:
        return conn.execute(sql, args).fetchall()


def reprocess(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "dicomnode.cli", "reprocess", *args, "--config", str(node.config), "--data-dir", str(node.data_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"},
    )


def _job_delivered(node: NodeProcess, job_id: int) -> bool:
    states = _rows(node, "SELECT j.state, d.state FROM jobs j JOIN deliveries d ON d.job_id = j.id WHERE j.id = ?", job_id)
    return bool(states) and all(j == "done" and d == "delivered" for j, d in states)


def test_reprocess_a_series_on_a_running_then_a_stopped_node(make_node, pacs):
    node = make_node(node_config(pacs.port)).start()
    storescu(node.port, sorted(LIDC_SERIES.glob("*.dcm"))[:8])
    wait_for(lambda: _job_delivered(node, 1), 60, "the first job's result delivered")
    ((series_uid, status),) = _rows(node, "SELECT series_instance_uid, status FROM series")
    ((first_sop,),) = _rows(node, "SELECT sop_instance_uid FROM deliveries WHERE job_id = 1")

    # running node: its workers pick the job up; the same UIDs go out again (a replacement)
    done = reprocess(node, series_uid)
    assert done.returncode == 0, done.stderr
    assert f"queued job 2 for series {series_uid}" in done.stdout and "superseding job 1" in done.stdout
    assert "results to PACS" in done.stdout
    wait_for(lambda: _job_delivered(node, 2), 60, "the re-run's result delivered")
    jobs = _rows(node, "SELECT id, state, supersedes_job_id, pipeline FROM jobs ORDER BY id")
    assert jobs == [(1, "done", None, "tests.node.pipelines:summary_pipeline"),
                    (2, "done", 1, "tests.node.pipelines:summary_pipeline")]
    assert _rows(node, "SELECT job_id, sop_instance_uid, state FROM deliveries ORDER BY id") == [
        (1, first_sop, "delivered"), (2, first_sop, "delivered")], "the PACS gets a replacement, not a second object"
    assert {str(dcmread(p).SOPInstanceUID) for p in pacs.files()} == {first_sop}
    ((message, details),) = _rows(node, "SELECT message, details FROM events WHERE code = 507")
    who = json.loads(details)
    assert who["via"] == "cli" and who["client"].startswith("cli on ") and who["supersedes_job"] == 1
    assert who["pipeline"] == "tests.node.pipelines:summary_pipeline" and who["user"] in message
    assert _rows(node, "SELECT status FROM series") == [("routed",)] and status == "routed"
    jobs_listed = node.audit("jobs")
    assert [(j["id"], j["supersedes_job_id"]) for j in jobs_listed] == [(2, 1), (1, None)]

    # stopped node: the job waits in the database and runs when the node starts
    node.stop()
    queued = reprocess(node, series_uid, "--format", "json")
    assert queued.returncode == 0, queued.stderr
    assert json.loads(queued.stdout) == {"job": 3, "series_instance_uid": series_uid,
                                         "pipeline": "tests.node.pipelines:summary_pipeline", "destinations": ["PACS"],
                                         "supersedes_job": 2, "instances": 8, "state": "queued"}
    twice = reprocess(node, series_uid)
    assert twice.returncode == 2 and "already has job 3 queued" in twice.stderr
    assert _rows(node, "SELECT state FROM jobs WHERE id = 3") == [("queued",)]
    node.start()
    wait_for(lambda: _job_delivered(node, 3), 60, "the queued re-run once the node started")


# a configured route whose pipeline module is not installed (it never matches: no modality XX)
BROKEN_ROUTE = """
[[routes]]
name = "broken"
pipeline = "no_such_package.module:run"
[routes.match]
modality = ["XX"]
"""


def test_reprocess_errors_name_what_is_wrong(make_node, pacs):
    node = make_node(node_config(pacs.port, extra=BROKEN_ROUTE)).start()
    storescu(node.port, sorted(LIDC_SERIES.glob("*.dcm"))[:4])
    wait_for(lambda: _job_delivered(node, 1), 60, "the first job's result delivered")
    ((series_uid,),) = _rows(node, "SELECT series_instance_uid FROM series")

    unknown = reprocess(node, "1.2.3.4.5")
    assert unknown.returncode == 2 and "no series 1.2.3.4.5 in the audit database" in unknown.stderr
    missing = reprocess(node, series_uid, "--pipeline", "no_such_package.module:run")
    assert missing.returncode == 2 and "there is no module 'no_such_package.module'" in missing.stderr
    # only what the configuration names: never any importable callable
    for name in ("os:system", "not a pipeline"):
        refused = reprocess(node, series_uid, "--pipeline", name)
        assert refused.returncode == 2, refused.stdout
        assert (f"pipeline {name!r} is not one this node runs; choose from lung-nodule, no_such_package.module:run, "
                "tests.node.pipelines:summary_pipeline") in refused.stderr.replace("\n", " ")

    # the source files are gone (retention, or by hand): nothing to analyse, nothing queued
    for (path,) in _rows(node, "SELECT path FROM instances"):
        (node.data_dir / "spool" / path).unlink()
    gone = reprocess(node, series_uid)
    assert gone.returncode == 2
    assert f"the source files of series {series_uid} are gone from the spool (4 of 4 missing" in gone.stderr
    assert _rows(node, "SELECT id FROM jobs") == [(1,)], "no job queued by a refused re-run"
    assert _rows(node, "SELECT count(*) FROM events WHERE code = 507") == [(0,)]
    assert _rows(node, "SELECT status FROM series") == [("routed",)]
