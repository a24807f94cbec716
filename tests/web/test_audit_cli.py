"""`dicomnode audit` on the database of a node that analysed a phantom series: the issue 11 finding
columns rounded to their precision, every subject in a table that fits an 80 or 120 column terminal
(issue 13), every field in --wide and JSON, and --status checked against each subject's states."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.node.helpers import cli_in_process
from tests.web import pipelines
from tests.web.conftest import WebNode


def settings_args(node: WebNode) -> list[str]:
    """The --config and --data-dir that point `dicomnode audit` at this node's database."""
    data_dir = node.node.settings.node.data_dir
    return ["--config", str(data_dir.parent / "node.toml"), "--data-dir", str(data_dir)]


def audit(node: WebNode, subject: str, *extra: str, columns: int = 200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dicomnode.cli", "audit", subject, *settings_args(node), *extra],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": str(columns)})


def audit_in_process(node: WebNode, subject: str, columns: int,
                     monkeypatch: pytest.MonkeyPatch) -> subprocess.CompletedProcess:
    """`audit` as above, by the CLI's entry point in this process (tests.node.helpers.cli_in_process): the
    tables are the same code, at the same COLUMNS, with stdout not a terminal."""
    monkeypatch.setenv("COLUMNS", str(columns))
    return cli_in_process("audit", subject, *settings_args(node))


def audit_findings(node: WebNode, *extra: str) -> subprocess.CompletedProcess:
    return audit(node, "findings", *extra)


def test_audit_findings_prints_the_new_columns_rounded(open_node: WebNode, open_series: dict[str, Any]) -> None:
    uid = open_series["uid"]
    table = audit_findings(open_node, "--series", uid)
    assert table.returncode == 0, table.stderr
    for header in ("type", "mean_mm", "solid_mm", "lung_rads", "brock_risk", "model_score", "margin", "zone"):
        assert header in table.stdout, f"no {header} column"
    assert "part_solid" in table.stdout and "0.0834" in table.stdout and "lobulated" in table.stdout
    assert "malignancy" not in table.stdout
    assert not re.search(r"(?<![\d.])\d+\.\d{6,}(?![\d.])", table.stdout), "unrounded float in the table"

    (row,) = json.loads(audit_findings(open_node, "--series", uid, "--format", "json").stdout)
    assert (row["type"], row["mean_diameter_mm"], row["solid_component_mm"]) == ("part_solid", 9.5, 6.5)
    assert (row["lung_rads"], row["brock_risk"], row["model_score"]) == ("4A", pipelines.BROCK_RISK, 0.62)
    assert (row["lung"], row["zone"], row["calcified"]) == ("right", "upper", False)
    floats = [v for v in row.values() if isinstance(v, float)]
    assert floats and all(len(repr(v).split(".")[1]) <= 4 for v in floats), row  # no 15-digit floats


UNROUNDED = re.compile(r"(?<![\d.])\d+\.\d{5,}(?![\d.])")  # a float printed with 5 or more decimals


def key_fields(node: WebNode, series_uid: str) -> dict[str, list[str]]:
    """What each subject's table must show even at 80 columns: its id, state and the value an admin looks for."""
    (instance, *_) = json.loads(audit(node, "instances", "--format", "json").stdout)
    short = "…" + series_uid[-12:]
    return {
        "associations": ["calling_ae", "DICOMNODE_SCU", "released"],
        "instances": ["sop_uid", "…" + instance["sop_instance_uid"][-12:]],
        "series": ["status", short, "routed", "CT"],
        "jobs": ["state", "verdict", "lung_rads", "done", "suspicious", "4A", "0.0834"],
        "findings": ["type", "mean_mm", "lung_rads", "part_solid", "9.5", "4A"],
        "deliveries": ["destination", "state", "PACS", "dead"],
        "dead-letters": ["destination", "state", "PACS", "dead"],
        "events": ["name", "message", "DELIVERY_DEAD_LETTER", "FINDING_RECORDED"],
        "nodes": ["node_id", "state", node.node.node_id[:12], "running"],
    }


def test_every_audit_subject_fits_80_and_120_columns(open_node: WebNode, open_series: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from storage.audit_subjects import AUDIT_SUBJECTS

    port = open_node.node.settings.node.port  # an association to list, called with echo's own AE title
    echo = subprocess.run([sys.executable, "-m", "dicomnode.cli", "echo", f"DICOMNODE@127.0.0.1:{port}"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert echo.returncode == 0, echo.stderr
    expected = key_fields(open_node, open_series["uid"])
    for subject in AUDIT_SUBJECTS:
        for columns in (80, 120):
            result = audit_in_process(open_node, subject, columns, monkeypatch)
            assert result.returncode == 0, result.stderr
            lines = result.stdout.splitlines()
            too_wide = [line for line in lines if len(line) > columns]
            assert not too_wide, f"audit {subject} at {columns} columns:\n" + "\n".join(too_wide)
            for field in expected[subject]:
                assert field in result.stdout, f"audit {subject} at {columns} columns lacks {field}:\n{result.stdout}"
            assert "{'" not in result.stdout and not UNROUNDED.search(result.stdout), result.stdout


def test_wide_and_json_carry_every_field(open_node: WebNode, open_series: dict[str, Any]) -> None:
    uid = open_series["uid"]
    (job,) = json.loads(audit(open_node, "jobs", "--series", uid, "--format", "json").stdout)
    assert job["series_instance_uid"] == uid  # whole, not shortened
    summary = job["summary"]  # the whole summary: model, timings, exam, counts
    assert summary["model"]["name"] == pipelines.MODEL.name and summary["exam"]["lung_rads"] == "4A"
    assert summary["verdict_probability"] == pipelines.BROCK_RISK and summary["findings"] == 1
    wide = audit(open_node, "jobs", "--series", uid, "--wide", columns=80)
    assert wide.returncode == 0, wide.stderr
    assert uid in wide.stdout and pipelines.MODEL.name in wide.stdout and "timings_s" in wide.stdout
    table = audit(open_node, "jobs", "--series", uid, columns=120).stdout
    assert uid not in table and "…" + uid[-12:] in table  # shortened in the table, --wide shows it whole


def test_status_is_one_of_the_subjects_states(open_node: WebNode, open_series: dict[str, Any]) -> None:
    bogus = audit(open_node, "jobs", "--status", "bogus")
    assert bogus.returncode == 2 and bogus.stdout == ""
    assert "--status 'bogus'" in bogus.stderr and "queued, running, done, failed" in bogus.stderr
    dead = audit(open_node, "deliveries", "--status", "DEAD", "--format", "json")  # any case
    assert dead.returncode == 0 and {d["state"] for d in json.loads(dead.stdout)} == {"dead"}
    series = audit(open_node, "series", "--status", "analysed")
    assert series.returncode == 2 and "receiving, complete, routed, ignored, not_selected" in series.stderr
    events = audit(open_node, "events", "--status", "delivery_dead_letter", "--format", "json")
    assert events.returncode == 0 and {e["name"] for e in json.loads(events.stdout)} == {"DELIVERY_DEAD_LETTER"}
