"""Run the Debian DICOM validators on files and parse what they say; plus the shared test inputs.

dciodvfy/dcentvfy come from dicom3tools, dsrdump from dcmtk.
"""
from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from inference.findings import Finding, KeySlice, ModelIdentity, SeriesResult, Verdict, lung_rads_category
from tests.conftest import LIDC_SERIES, require_tool

# dciodvfy warnings we accept, each with why:
KNOWN_DCIODVFY_WARNINGS = (
    # LIDC removed StudyTime/StudyID values; the results inherit them (Type 2, empty is legal).
    re.compile(r"^Warning - </(StudyTime\(0008,0030\)|StudyID\(0020,0010\))> - Missing attribute or value that would be needed to build DICOMDIR$"),
    # Our private Lung-RADS scheme: declared in CodingSchemeIdentificationSequence (PS3.3
    # C.12.1.1.4 allows "99"-prefixed local schemes), but dciodvfy only knows standard designators.
    re.compile(r"CodingSchemeDesignator\(0008,0102\)\[1\]> - Unrecognized defined term = <99DCMNODE_LRADS>$"),
)

# dcentvfy: dicom3tools files AccessionNumber under the Series IE for CT/SC/SEG but the Study IE
# for SR, and reports the mismatch although the values are identical.
KNOWN_DCENTVFY_WARNINGS = (
    re.compile(r"^Warning - Different information entities for attribute - Element=<AccessionNumber> IE <(Series> versus <Study|Study> versus <Series)>"),
)


@dataclass
class ToolReport:
    errors: list[str]
    warnings: list[str]  # not tolerated
    tolerated: list[str]
    output: str


def _run(args: list[str]) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    return proc.stdout + proc.stderr


def _classify(output: str, tolerated: tuple[re.Pattern[str], ...]) -> ToolReport:
    errors, warnings, ok = [], [], []
    for line in output.splitlines():
        if line.startswith("Error"):
            errors.append(line)
        elif line.startswith("Warning"):
            (ok if any(p.search(line) for p in tolerated) else warnings).append(line)
    return ToolReport(errors, warnings, ok, output)


def dciodvfy(path: Path) -> ToolReport:
    """`dciodvfy -new` on one file."""
    return _classify(_run([require_tool("dciodvfy"), "-new", str(path)]), KNOWN_DCIODVFY_WARNINGS)


def dcentvfy(paths: list[Path]) -> ToolReport:
    """`dcentvfy` across files that should form one consistent patient/study."""
    return _classify(_run([require_tool("dcentvfy"), *map(str, paths)]), KNOWN_DCENTVFY_WARNINGS)


def dsrdump(path: Path) -> ToolReport:
    """`dsrdump +Pt` (print template ids): dcmtk reports SR problems as 'W:'/'E:' or Warning/Error lines."""
    output = _run([require_tool("dsrdump"), "+Pt", str(path)])
    lines = output.splitlines()
    errors = [l for l in lines if re.match(r"^(E:|F:)", l) or "error" in l.lower()]
    warnings = [l for l in lines if l.startswith("W:") or "warning" in l.lower()]
    return ToolReport(errors, warnings, [], output)


# ---- shared inputs for the results tests: the real LIDC series and a synthetic result ----

MODEL = ModelIdentity(name="deeplung-dpn26", version="0.3.1", weights_sha256="ab" * 32, engine="onnxruntime-cpu")


@functools.lru_cache(maxsize=1)
def lidc_series() -> tuple[Dataset, ...]:
    """The 261 CT datasets with pixel data (read once per test session; callers must not mutate)."""
    paths = sorted(LIDC_SERIES.glob("*.dcm"))
    return tuple(pydicom.dcmread(p) for p in paths)


def lidc_paths() -> list[Path]:
    return sorted(LIDC_SERIES.glob("*.dcm"))


def key_slice_for(series: tuple[Dataset, ...], center_mm: tuple[float, float, float]) -> tuple[Dataset, KeySlice]:
    """Nearest slice to a world point and the point's (row, column) on it, from the datasets' geometry."""
    point = np.asarray(center_mm, dtype=float)

    def distance(ds: Dataset) -> float:
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        return abs(float(np.dot(point - np.asarray(ds.ImagePositionPatient, dtype=float), np.cross(iop[:3], iop[3:]))))

    ds = min(series, key=distance)
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    offset = point - np.asarray(ds.ImagePositionPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    column = float(np.dot(offset, iop[:3])) / col_spacing
    row = float(np.dot(offset, iop[3:])) / row_spacing
    return ds, KeySlice(ds.SOPInstanceUID, ds.SOPClassUID, row, column)


# The ground-glass lesion of LIDC-IDRI-0002 (left upper lobe, seen z -121..-87 mm), plus two
# made-up small nodules in lung parenchyma on other slices.
NODULE_SPECS = (
    # centre (x, y, z) LPS mm, diameter, volume, detection p, malignancy
    ((56.3, 67.5, -104.5), 25.0, 4100.0, 0.97, 0.81),
    ((-60.0, 20.0, -200.0), 6.5, 144.0, 0.71, 0.12),
    ((-80.0, 0.0, -60.0), 9.2, 410.0, 0.55, 0.34),
)


def synthetic_result(series: tuple[Dataset, ...], model: ModelIdentity = MODEL, count: int = 3) -> SeriesResult:
    findings = []
    for centre, diameter, volume, probability, malignancy in NODULE_SPECS[:count]:
        ds, key = key_slice_for(series, centre)
        r = diameter / 2.0 / float(ds.PixelSpacing[0])
        findings.append(
            Finding(centre, diameter, volume, probability, malignancy, lung_rads_category(diameter), key, (r, r))
        )
    verdict_p = max(f.malignancy for f in findings) if findings else 0.0
    return SeriesResult(
        series_instance_uid=series[0].SeriesInstanceUID,
        verdict=Verdict.SUSPICIOUS if verdict_p >= 0.5 else Verdict.BENIGN,
        verdict_probability=verdict_p,
        model=model,
        findings=findings,
    )


def empty_result(series: tuple[Dataset, ...], model: ModelIdentity = MODEL) -> SeriesResult:
    return SeriesResult(series[0].SeriesInstanceUID, Verdict.NO_NODULE, 0.0, model)


def not_analysed_result(series: tuple[Dataset, ...], reason: str, model: ModelIdentity = MODEL) -> SeriesResult:
    return SeriesResult(series[0].SeriesInstanceUID, Verdict.NOT_ANALYSED, 0.0, model, not_analysed_reason=reason)


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path
