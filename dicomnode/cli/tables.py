"""The `dicomnode audit` tables: compact columns that fit the terminal, chosen by importance.

A table never folds a cell over several lines: it leaves out the least important columns until the
rest fit the width (COLUMNS, else the terminal's, else PIPE_WIDTH when piped), shortens long UIDs to
their last characters and free text to the column's width, and shows numbers to their precision.
`--wide` shows every field in full; `--format json` (cli/common.print_rows) every field unabridged.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dicomnode.core.sizes import human_bytes


# a pipe (less, grep, a file) has no width: rows stay on one line, as wide as this
PIPE_WIDTH = 250
UID_TAIL = 12  # a shortened UID keeps its last characters: they differ between series, the root does not
ELLIPSIS = "…"


@dataclass(frozen=True)
class Column:
    key: str
    rank: int  # 0: always shown; higher ranks are left out first when the terminal is narrow
    kind: str = "text"  # text, uid, time, int, bool, bytes, or "fN" for a float with N decimals
    max_width: int = 24  # text is cut to this (more when the terminal has room: see `flex`)
    flex: bool = False  # free text (a message, an error): takes the room less important columns would

    @property
    def header(self) -> str:
        """A short header for a long field name (--wide, json and csv use the field names)."""
        return SHORT_HEADERS.get(self.key, self.key)


def _c(key: str, rank: int, kind: str = "text", max_width: int = 24, flex: bool = False) -> Column:
    return Column(key, rank, kind, max_width, flex)


SHORT_HEADERS = {"series_instance_uid": "series_uid", "study_instance_uid": "study_uid", "sop_instance_uid": "sop_uid",
                 "sop_class_uid": "sop_class", "transfer_syntax_uid": "transfer_syntax", "mean_diameter_mm": "mean_mm",
                 "solid_component_mm": "solid_mm", "instance_count": "images", "instance_number": "number",
                 "first_received_at": "received", "instances_received": "instances", "bytes_received": "bytes",
                 "association_id": "assoc", "next_attempt_at": "next_attempt", "slice_thickness": "thickness",
                 "series_number": "number", "accession_number": "accession"}


# each subject's columns in display order; the job summary becomes named fields (see _job_fields)
_DELIVERY = (_c("id", 0, "int"), _c("job_id", 5, "int"), _c("series_instance_uid", 4, "uid"),
             _c("destination", 0, max_width=16), _c("ae_title", 6, max_width=16), _c("host", 6, max_width=20),
             _c("port", 7, "int"), _c("sop_instance_uid", 3, "uid"), _c("state", 0), _c("attempts", 1, "int"),
             _c("last_error", 1, max_width=60, flex=True), _c("created_at", 2, "time"),
             _c("next_attempt_at", 5, "time"), _c("delivered_at", 4, "time"),
             _c("committed_at", 5, "time"), _c("commit_transaction_uid", 8, "uid"), _c("node_id", 6, max_width=24))
SUBJECT_COLUMNS: dict[str, tuple[Column, ...]] = {
    "associations": (
        _c("id", 0, "int"), _c("started_at", 1, "time"), _c("calling_ae", 0, max_width=16),
        _c("called_ae", 3, max_width=16), _c("peer_host", 1, max_width=20), _c("peer_port", 6, "int"),
        _c("tls", 7, "bool"), _c("state", 0), _c("instances_received", 2, "int"), _c("bytes_received", 4, "bytes"),
        _c("reject_reason", 2, max_width=60, flex=True), _c("ended_at", 8, "time")),
    "instances": (
        _c("id", 0, "int"), _c("received_at", 2, "time"), _c("sop_instance_uid", 0, "uid"),
        _c("series_instance_uid", 3, "uid"), _c("instance_number", 1, "int"), _c("patient_id", 4, max_width=16),
        _c("calling_ae", 2, max_width=16), _c("peer_host", 6, max_width=20), _c("size_bytes", 5, "bytes"),
        _c("duplicates", 5, "int"), _c("association_id", 7, "int"), _c("sop_class_uid", 8, "uid"),
        _c("transfer_syntax_uid", 9, "uid"), _c("path", 10, max_width=60, flex=True)),
    "series": (
        _c("id", 0, "int"), _c("series_instance_uid", 0, "uid"), _c("patient_id", 2, max_width=16),
        _c("modality", 1), _c("series_number", 5, "int"), _c("series_description", 4, max_width=48, flex=True),
        _c("instance_count", 1, "int"), _c("slice_thickness", 6, "f1"), _c("calling_ae", 3, max_width=16),
        _c("status", 0), _c("status_reason", 2, max_width=60, flex=True), _c("route_name", 3, max_width=16),
        _c("generation", 7, "int"), _c("first_received_at", 2, "time"), _c("completed_at", 8, "time"),
        _c("study_instance_uid", 9, "uid"), _c("accession_number", 6, max_width=16), _c("body_part", 7)),
    "jobs": (
        _c("id", 0, "int"), _c("series_instance_uid", 2, "uid"), _c("state", 0), _c("verdict", 0),
        _c("lung_rads", 1), _c("risk", 1, "f4"), _c("findings", 2, "int"), _c("attempts", 4, "int"),
        _c("pipeline", 5, max_width=24), _c("route_name", 6, max_width=16), _c("seconds", 4, "f1"),
        _c("model", 7, max_width=28), _c("error", 1, max_width=60, flex=True), _c("progress", 3, max_width=30),
        _c("queued_at", 8, "time"), _c("started_at", 9, "time"), _c("finished_at", 3, "time"),
        _c("node_id", 5, max_width=24)),
    "nodes": (  # several nodes on one database (dicomnode.process.cluster)
        _c("node_id", 0, max_width=40), _c("state", 0), _c("heartbeat_age_s", 0, "f1"), _c("jobs_running", 0, "int"),
        _c("deliveries_sending", 1, "int"), _c("engine", 1), _c("host", 2, max_width=30), _c("version", 3, max_width=20),
        _c("ae_title", 4, max_width=16), _c("port", 4, "int"), _c("pid", 5, "int"), _c("started_at", 2, "time"),
        _c("last_heartbeat", 3, "time"), _c("stopped_at", 6, "time")),
    "findings": (
        _c("id", 0, "int"), _c("series_instance_uid", 3, "uid"), _c("index", 2, "int"), _c("type", 0),
        _c("mean_diameter_mm", 0, "f1"), _c("solid_component_mm", 1, "f1"), _c("lung_rads", 0),
        _c("brock_risk", 1, "f4"), _c("model_score", 4, "f3"), _c("calcified", 5, "bool"), _c("margin", 4),
        _c("lung", 2), _c("zone", 3), _c("volume_mm3", 7, "f1"), _c("note", 8, max_width=40, flex=True),
        _c("finished_at", 6, "time")),
    "removals": (  # `dicomnode retention`
        _c("series_instance_uid", 0, "uid"), _c("what", 0), _c("files", 1, "int"), _c("bytes", 0, "bytes"),
        _c("reason", 0), _c("settled_at", 2, "time")),
    "deliveries": _DELIVERY,
    "dead-letters": _DELIVERY,
    "events": (
        _c("id", 0, "int"), _c("at", 0, "time"), _c("code", 4, "int"), _c("name", 0, max_width=32),
        _c("level", 1), _c("message", 0, max_width=200, flex=True), _c("series_instance_uid", 2, "uid"),
        _c("association_id", 5, "int"), _c("job_id", 3, "int"), _c("delivery_id", 5, "int")),
}
# C0/C1 controls and DEL: an ESC from a DICOM header must not reach the terminal as an escape sequence
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def no_controls(text: str) -> str:
    """Control characters shown as \\xNN, so that none reaches the terminal or a CSV cell."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


FLEX_MIN = 16  # a free-text column is shown only if it gets at least this many characters


def terminal_width() -> int:
    """COLUMNS if set, else the terminal's width, else PIPE_WIDTH for a pipe."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return PIPE_WIDTH


# -- one cell --------------------------------------------------------------------------------------
def _first_line(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    lines = str(value).splitlines()
    return lines[0].replace("\t", " ") if lines else ""


def _format(value: Any, kind: str, wide: bool) -> str:
    """The text of one cell; `wide` keeps UIDs, times and free text whole."""
    if value is None:
        return ""
    if kind.startswith("f") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.{int(kind[1:])}f}"
    if kind == "bool" or isinstance(value, bool):
        return "yes" if value else "no"
    if kind == "bytes" and isinstance(value, int):
        return human_bytes(value)
    if isinstance(value, float):  # a float the table has no precision for: 4 significant digits
        return f"{value:.4g}"
    if kind == "time" and isinstance(value, str) and not wide:
        return value.replace("T", " ")[:19]  # ISO in UTC, to the second
    text = no_controls(str(value) if wide and not isinstance(value, (dict, list)) else _first_line(value))
    if kind == "uid" and not wide and len(text) > UID_TAIL + 1:
        return ELLIPSIS + text[-UID_TAIL:]
    return text


def _cut(text: str, width: int) -> str:
    """Text cut to `width` terminal cells, an ellipsis marking the cut."""
    if cell_len(text) <= width:
        return text
    while text and cell_len(text) > width - 1:
        text = text[:-1]
    return text + ELLIPSIS


# -- the named fields of a job's summary -------------------------------------------------------------
def _job_fields(row: dict[str, Any]) -> dict[str, Any]:
    """Lung-RADS, risk, findings, seconds and model out of the summary JSON, as columns of their own."""
    summary = _mapping(row.get("summary"))
    exam = _mapping(row.get("exam") or summary.get("exam"))
    model = _mapping(summary.get("model"))
    name = " ".join(str(model[k]) for k in ("name", "version") if model.get(k))
    return {**row, "lung_rads": exam.get("lung_rads"), "risk": summary.get("verdict_probability"),
            "findings": summary.get("findings"), "seconds": summary.get("seconds"), "model": name or None}


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


DERIVED: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"jobs": _job_fields}


# -- choosing the columns ------------------------------------------------------------------------------
def _line_width(widths: list[int]) -> int:
    """A rich table with vertical rules: one space of padding either side of a cell, a rule between."""
    return sum(widths) + 3 * len(widths) + 1


CORE_RANK = 1  # columns up to this rank come first; then free text grows; then the rest if room is left


def choose_columns(columns: tuple[Column, ...], cells: dict[str, list[str]], width: int) -> dict[str, int]:
    """The columns that fit `width`, each with its width, in display order: the core columns (free text
    at FLEX_MIN), then free text grown to what it needs, then less important columns while they fit."""
    natural = {c.key: max([cell_len(c.header)] + [cell_len(v) for v in cells[c.key]]) for c in columns}
    wanted = {c.key: min(natural[c.key], max(c.max_width, cell_len(c.header))) for c in columns}
    chosen: dict[str, int] = {}

    def add(column: Column, need: int) -> None:
        if need <= width - _line_width(list(chosen.values()) + [0]):
            chosen[column.key] = need

    ranked = [c for c in sorted(columns, key=lambda c: c.rank) if c.rank == 0 or any(cells[c.key])]
    for column in ranked:  # an empty optional column is not worth its width
        if column.rank <= CORE_RANK:
            add(column, min(wanted[column.key], max(FLEX_MIN, cell_len(column.header))) if column.flex
                else wanted[column.key])
    for column in ranked:
        if column.flex and column.key in chosen:
            spare = width - _line_width(list(chosen.values()))
            chosen[column.key] += max(0, min(spare, wanted[column.key] - chosen[column.key]))
    for column in ranked:
        if column.rank > CORE_RANK:
            add(column, wanted[column.key])
    return {c.key: chosen[c.key] for c in columns if c.key in chosen}


# -- the table -------------------------------------------------------------------------------------------
def render(rows: list[dict[str, Any]], subject: str, wide: bool = False, width: int | None = None) -> str:
    """The table as text, every line at most `width` cells wide (unless `wide`)."""
    width = width or terminal_width()
    if not rows:
        return f"no {subject}\n"
    rows = [DERIVED[subject](r) for r in rows] if subject in DERIVED else rows
    spec = {c.key: c for c in SUBJECT_COLUMNS.get(subject, ())}
    if wide:  # every field of the row in full (the job summary as JSON), no width limit
        columns = tuple(spec.get(k, Column(k, 0)) for k in rows[0])
    else:
        columns = tuple(c for c in SUBJECT_COLUMNS.get(subject, ()) if c.key in rows[0]) or \
            tuple(Column(k, 0) for k in rows[0])
    cells = {c.key: [_format(r.get(c.key), c.kind, wide) for r in rows] for c in columns}
    headers = {c.key: c.key if wide else c.header for c in columns}
    if wide:
        widths = {c.key: max([cell_len(c.key)] + [cell_len(v) for v in cells[c.key]]) for c in columns}
        width = _line_width(list(widths.values()))
    else:
        widths = choose_columns(columns, cells, width)
    table = Table(box=box.HEAVY_HEAD, show_lines=False, expand=False, pad_edge=True, padding=(0, 1))
    for key, w in widths.items():
        table.add_column(Text(headers[key]), width=w, no_wrap=True, overflow="ellipsis")
    for i in range(len(rows)):
        table.add_row(*(Text(_cut(cells[key][i], w)) for key, w in widths.items()))
    buffer = io.StringIO()
    Console(width=width, file=buffer, color_system=None, force_terminal=False, legacy_windows=False).print(table, crop=True)
    text = buffer.getvalue()
    hidden = [c.key for c in columns if c.key not in widths and any(cells[c.key])]
    hidden += [key for key in rows[0] if key not in spec and not wide]  # e.g. the job's summary JSON
    if hidden:
        text += _cut(f"{len(rows)} row(s); not shown: {', '.join(hidden)} (--wide or --format json)", width) + "\n"
    return text
