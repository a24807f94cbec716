"""Run the Debian DICOM validators on files and parse what they say; plus the shared test inputs.

dciodvfy/dcentvfy come from dicom3tools, dsrdump from dcmtk.
"""
from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from inference.clinical import RECOMMENDATIONS
from inference.clinical.lungrads import LungRadsCategory
from inference.findings import (
    CoronaryCalciumSummary,
    ExamSummary,
    Finding,
    KeySlice,
    ModelIdentity,
    NoduleLocation,
    OtherFinding,
    RiskInputs,
    SeriesResult,
    Verdict,
)
from tests.conftest import LIDC_SERIES, require_tool

# dciodvfy warnings we accept, each with why:
KNOWN_DCIODVFY_WARNINGS = (
    # LIDC removed StudyTime/StudyID values; the results inherit them (Type 2, empty is legal).
    re.compile(r"^Warning - </(StudyTime\(0008,0030\)|StudyID\(0020,0010\))> - Missing attribute or value that would be needed to build DICOMDIR$"),
    # Our private Lung-RADS scheme: declared in CodingSchemeIdentificationSequence (PS3.3
    # C.12.1.1.4 allows "99"-prefixed local schemes), but dciodvfy only knows standard designators.
    # The same for 99DCMNODE, the declared scheme of the few concepts with no standard code.
    re.compile(r"CodingSchemeDesignator\(0008,0102\)\[1\]> - Unrecognized defined term = <99DCMNODE(_LRADS)?>$"),
    # IHE AIR requires the algorithm's Device UID in its Contributing Equipment item; the dicom3tools of
    # Debian (2022-06) do not list it in that sequence: at worst a Standard Extended attribute (PS3.2 A.1).
    re.compile(r"^Warning - </ContributingEquipmentSequence\(0018,a001\)\[\d\]/DeviceUID\(0018,1002\)> - Attribute is not present in standard DICOM IOD$"),
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


# The ground-glass lesion of LIDC-IDRI-0002 (left upper lobe, seen z -121..-87 mm), here a part-solid
# nodule, plus two made-up nodules in lung parenchyma on other slices: every attenuation type, margin,
# zone, calcification and the juxtapleural flag appears once.
NODULE_SPECS = (
    Finding(
        center_mm=(56.3, 67.5, -104.5), diameter_mm=25.0, volume_mm3=4100.0, probability=0.97, model_score=0.81,
        lung_rads="4X", key_slice=KeySlice("", "", 0.0, 0.0), nodule_type="part_solid", margin="spiculated",
        location=NoduleLocation(lung="left", zone="upper"), long_axis_mm=28.2, short_axis_mm=21.8,
        solid_component_mm=9.4, solid_long_axis_mm=10.6, solid_short_axis_mm=8.2, brock_risk=0.3127,
        lung_rads_reasons=("part-solid, solid component >= 8 mm: 4B", "spiculated: 4X"), cyst="cavity",
    ),
    Finding(
        center_mm=(-60.0, 20.0, -200.0), diameter_mm=6.5, volume_mm3=144.0, probability=0.71, model_score=0.12,
        lung_rads="3", key_slice=KeySlice("", "", 0.0, 0.0), nodule_type="solid", margin="smooth",
        location=NoduleLocation(lung="right", zone="lower", juxtapleural=True), long_axis_mm=7.1, short_axis_mm=5.9,
        brock_risk=0.0186, lung_rads_reasons=("solid 6.0-7.9 mm: 3",),
    ),
    Finding(
        center_mm=(-80.0, 0.0, -60.0), diameter_mm=9.2, volume_mm3=410.0, probability=0.55, model_score=0.34,
        lung_rads="1", key_slice=KeySlice("", "", 0.0, 0.0), nodule_type="solid", margin="lobulated",
        calcified=True, calcification_pattern="central", location=NoduleLocation(lung="right", zone="middle", perifissural=True),
        long_axis_mm=10.3, short_axis_mm=8.1, brock_risk=0.0412, lung_rads_reasons=("benign calcification: 1",),
    ),
)

def exam_summary(lung_rads: str = "4X", headline: str = "brock") -> ExamSummary:
    """An exam as inference.clinical would state it: LIDC-0002 has no PatientAge or PatientSex."""
    return ExamSummary(
        lung_rads=lung_rads, recommendation=RECOMMENDATIONS[LungRadsCategory(lung_rads)], lungs_fully_covered=True,
        risk_inputs=RiskInputs(age_years=None, sex=None, family_history="unknown", emphysema=False,
                               missing=("age", "sex")),
        laa950_pct=3.84, lung_volume_ml=5231.6, highest_brock_risk=0.3127, headline=headline,
        verdict_reasons=("Lung-RADS 4X",),
        coronary_calcium=CoronaryCalciumSummary(412, "severe", 7, 96.4, 130.0),
        significant_findings=(OtherFinding("coronary_calcium", "severe coronary artery calcification (Agatston-"
                                           "equivalent 412 on this non-gated CT; CAC-DRS 3)"),),
    )


def synthetic_result(series: tuple[Dataset, ...], model: ModelIdentity = MODEL, count: int = 3,
                     headline: str = "brock") -> SeriesResult:
    findings = []
    for spec in NODULE_SPECS[:count]:
        ds, key = key_slice_for(series, spec.center_mm)
        r = spec.diameter_mm / 2.0 / float(ds.PixelSpacing[0])
        findings.append(replace(spec, key_slice=key, radius_px=(r, r)))
    exam = exam_summary(max((f.lung_rads for f in findings), key=_LRADS_ORDER.index, default="1"), headline)
    risk = max((f.brock_risk or 0.0 for f in findings), default=0.0)
    return SeriesResult(
        series_instance_uid=series[0].SeriesInstanceUID,
        verdict=Verdict.SUSPICIOUS if exam.lung_rads.startswith("4") else Verdict.PROBABLY_BENIGN,
        verdict_probability=risk,
        model=model,
        findings=findings,
        exam=exam,
    )


_LRADS_ORDER = ["0", "1", "2", "3", "4A", "4B", "4X"]


def empty_result(series: tuple[Dataset, ...], model: ModelIdentity = MODEL) -> SeriesResult:
    return SeriesResult(series[0].SeriesInstanceUID, Verdict.NEGATIVE, 0.0, model, exam=exam_summary("1"))


def not_analysed_result(series: tuple[Dataset, ...], reason: str, model: ModelIdentity = MODEL) -> SeriesResult:
    return SeriesResult(series[0].SeriesInstanceUID, Verdict.NOT_ANALYSED, 0.0, model, not_analysed_reason=reason)


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path
