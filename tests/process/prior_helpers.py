"""Reading a follow-up SR and matching findings to the phantom truth (tests of issue 12)."""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset

from storage.models import FindingRow

# the SR's coded change since the prior (dicomnode.results.sr_codes.CHANGE_STATUS), by comparison_status
STATUS_MEANING = {"new": "New", "growing": "Increase in size", "stable": "No change", "shrinking": "Decreased size"}


def items(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from items(item)


def meaning(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning)


def nodule_groups(sr: Dataset) -> dict[str, dict[str, Any]]:
    """Per Tracking UID (planar groups only): its NUM values, CODE values and TEXT values by concept meaning."""
    out: dict[str, dict[str, Any]] = {}
    for group in items(sr):
        children = list(group.get("ContentSequence", []))
        if meaning(group) != "Measurement Group" or not any(c.ValueType == "SCOORD" for c in children):
            continue
        values: dict[str, Any] = {}
        for c in children:
            if c.ValueType == "NUM":
                values[meaning(c)] = float(c.MeasuredValueSequence[0].NumericValue)
            elif c.ValueType == "CODE":
                values.setdefault(meaning(c), str(c.ConceptCodeSequence[0].CodeMeaning))
            elif c.ValueType in ("TEXT", "UIDREF"):
                values.setdefault(meaning(c), str(c.TextValue if c.ValueType == "TEXT" else c.UID))
        out[values["Tracking Unique Identifier"]] = values
    return out


def report_texts(sr: Dataset, name: str) -> list[str]:
    return [str(i.TextValue) for i in items(sr) if i.ValueType == "TEXT" and meaning(i) == name]


def nearest(rows: list[FindingRow], centre: list[float]) -> tuple[FindingRow, float]:
    d = [(math.dist((r.center_x_mm, r.center_y_mm, r.center_z_mm), centre), i) for i, r in enumerate(rows)]
    best, i = min(d)
    return rows[i], best
