"""Audit tables that fit a browser window: a few columns per subject, short cells, the rest on a row's page.

The columns are those of storage.queries (the same names as the CLI and the API); every field of a
row is on its own page, /audit/{subject}/{id}, and in the JSON API.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from storage.queries import FINDING_TABLE_COLUMNS

DELIVERY_COLUMNS = ("id", "series_instance_uid", "destination", "state", "attempts", "last_error", "created_at",
                    "delivered_at", "node_id")
AUDIT_COLUMNS: dict[str, tuple[str, ...]] = {
    "associations": ("id", "started_at", "calling_ae", "called_ae", "peer_host", "tls", "state", "reject_reason",
                     "instances_received", "bytes_received"),
    "instances": ("id", "received_at", "sop_instance_uid", "instance_number", "size_bytes", "duplicates",
                  "series_instance_uid", "patient_id", "calling_ae"),
    "series": ("id", "first_received_at", "series_instance_uid", "patient_id", "modality", "series_number",
               "series_description", "instance_count", "calling_ae", "status", "route_name"),
    "jobs": ("id", "series_instance_uid", "pipeline", "state", "attempts", "verdict", "queued_at", "finished_at", "error",
             "node_id"),
    # the CLI's finding columns less calcified and margin (on the finding's page): 1280 px wide at most
    "findings": tuple(c for c in FINDING_TABLE_COLUMNS if c not in ("calcified", "margin")),
    "deliveries": DELIVERY_COLUMNS,
    "events": ("id", "at", "name", "level", "message", "series_instance_uid"),
    "dead-letters": DELIVERY_COLUMNS,
    "nodes": ("node_id", "state", "heartbeat_age_s", "jobs_running", "deliveries_sending", "engine", "host", "version",
              "last_heartbeat"),
}
UID_COLUMNS = frozenset({"series_instance_uid", "study_instance_uid", "sop_instance_uid", "sop_class_uid",
                         "transfer_syntax_uid"})
TEXT_COLUMNS = frozenset({"message", "error", "last_error", "status_reason", "reject_reason", "series_description",
                          "pipeline"})
UID_HEAD, UID_TAIL = 8, 10  # characters kept of a long UID: root and the distinguishing end
MAX_CELL_TEXT = 60  # characters of a message or error in a table cell


def short_uid(uid: Any) -> str:
    """'1.2.826.0.1.3680043.8.498.1234567890' -> '1.2.826.…1234567890' (the full value goes in a title)."""
    text = "" if uid is None else str(uid)
    return text if len(text) <= UID_HEAD + UID_TAIL + 1 else f"{text[:UID_HEAD]}…{text[-UID_TAIL:]}"


def short_text(value: Any, limit: int = MAX_CELL_TEXT) -> str:
    text = "" if value is None else " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def short_time(value: Any) -> str:
    """ISO UTC from the queries -> '2026-11-30 08:33:49' (the zone is said once, in the page)."""
    if not isinstance(value, str):
        return "" if value is None else str(value)
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def cell(column: str, value: Any) -> dict[str, str]:
    """What a table cell shows and, when shortened, the full value for its title attribute."""
    if value is None:
        return {"text": "", "title": ""}
    if column in UID_COLUMNS:
        text = short_uid(value)
    elif column in TEXT_COLUMNS:
        text = short_text(value)
    elif column == "at" or column.endswith("_at"):
        return {"text": short_time(value), "title": str(value)}
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = short_text(value)
    return {"text": text, "title": str(value) if text != str(value) else ""}


def table_rows(subject: str, rows: list[dict[str, Any]]) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """The subject's columns and, per row, its id and its cells."""
    columns = AUDIT_COLUMNS[subject]
    return columns, [{"id": r.get("id"), "series_instance_uid": r.get("series_instance_uid"),
                      "cells": [(c, cell(c, r.get(c))) for c in columns]} for r in rows]
