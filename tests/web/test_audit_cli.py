"""`dicomnode audit findings` on the database of a node that analysed a series: the issue 11 columns,
rounded to their precision, in a table that fits a terminal; every column in JSON."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

from tests.conftest import REPO_ROOT
from tests.web import pipelines
from tests.web.conftest import WebNode


def audit_findings(node: WebNode, *extra: str) -> subprocess.CompletedProcess:
    data_dir = node.node.settings.node.data_dir
    args = ["--config", str(data_dir.parent / "node.toml"), "--data-dir", str(data_dir)]
    return subprocess.run([sys.executable, "-m", "dicomnode.cli", "audit", "findings", *args, *extra], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"})


def test_audit_findings_prints_the_new_columns_rounded(open_node: WebNode, open_series: dict[str, Any]) -> None:
    uid = open_series["uid"]
    table = audit_findings(open_node, "--series", uid)
    assert table.returncode == 0, table.stderr
    for header in ("type", "mean_diameter_mm", "solid_component_mm", "lung_rads", "brock_risk", "model_score",
                   "margin", "zone"):
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
