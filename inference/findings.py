"""Plain data that crosses from `inference` to `dicomnode` (docs/architecture.md, "Flow").

Everything here is JSON-friendly so the node can store it in the audit database
and the CLI can print it without knowing how the model works.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class Verdict(str, Enum):
    NO_NODULE = "no_nodule"
    BENIGN = "benign"
    SUSPICIOUS = "suspicious"
    NOT_ANALYSED = "not_analysed"


@dataclass(frozen=True)
class KeySlice:
    """Where a radiologist should look: the source slice nearest the nodule centre."""

    sop_instance_uid: str
    sop_class_uid: str
    row: float  # pixel row of the centre on that slice (0-based, may be fractional)
    column: float


@dataclass(frozen=True)
class Finding:
    center_mm: tuple[float, float, float]  # x, y, z in patient LPS millimetres
    diameter_mm: float
    volume_mm3: float
    probability: float  # detection probability 0..1
    malignancy: float  # probability of cancer 0..1
    lung_rads: str  # "2", "3", "4A", "4B"
    key_slice: KeySlice
    # in-plane extent on the key slice in pixels (row, column half-axes) for drawing
    radius_px: tuple[float, float] = (0.0, 0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "center_mm": [round(c, 3) for c in self.center_mm],
            "diameter_mm": round(self.diameter_mm, 3),
            "volume_mm3": round(self.volume_mm3, 2),
            "probability": round(self.probability, 5),
            "malignancy": round(self.malignancy, 5),
            "lung_rads": self.lung_rads,
            "sop_instance_uid": self.key_slice.sop_instance_uid,
            "row": round(self.key_slice.row, 2),
            "column": round(self.key_slice.column, 2),
            "radius_px": [round(r, 2) for r in self.radius_px],
        }


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    weights_sha256: str
    engine: str  # "torch-cpu", "torch-cuda-fp16", "onnxruntime-cpu", "tensorrt-fp16"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SeriesResult:
    """The outcome of one series: findings plus a study-level verdict, or why it was not analysed."""

    series_instance_uid: str
    verdict: Verdict
    verdict_probability: float  # highest malignancy among findings (0 when none)
    model: ModelIdentity
    findings: list[Finding] = field(default_factory=list)
    not_analysed_reason: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def analysed(self) -> bool:
        return self.verdict is not Verdict.NOT_ANALYSED

    def to_json(self) -> dict[str, Any]:
        return {
            "series_instance_uid": self.series_instance_uid,
            "verdict": self.verdict.value,
            "verdict_probability": round(self.verdict_probability, 5),
            "not_analysed_reason": self.not_analysed_reason,
            "model": self.model.to_json(),
            "findings": [f.to_json() for f in self.findings],
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
        }


class NotAnalysable(Exception):
    """The series does not suit the model; the message is the reason shown to users."""


def lung_rads_category(mean_diameter_mm: float) -> str:
    """Lung-RADS v2022 for solid nodules by mean diameter (docs/architecture.md, "Results encoding")."""
    if mean_diameter_mm < 6.0:
        return "2"
    if mean_diameter_mm < 8.0:
        return "3"
    if mean_diameter_mm < 15.0:
        return "4A"
    return "4B"
