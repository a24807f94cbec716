"""Plain data that crosses from `inference` to `dicomnode` (docs/architecture.md, "Flow").

Everything here is JSON-friendly so the node can store it in the audit database
and the CLI can print it without knowing how the model works.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any


class Verdict(str, Enum):
    """The exam verdict (inference.clinical.verdict says how it is decided), or why there is none."""

    NEGATIVE = "negative"  # Lung-RADS 1-2
    PROBABLY_BENIGN = "probably_benign"  # Lung-RADS 3
    INCOMPLETE = "incomplete"  # Lung-RADS 0: the lungs are not fully in the field of view
    SUSPICIOUS = "suspicious"  # Lung-RADS 4A/4B/4X, or a Brock risk at the work-up threshold
    NOT_ANALYSED = "not_analysed"  # the series does not suit the model: no verdict at all

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


# Incomplete ranks above probably benign: an exam that cannot be read needs action before a 3 does.
_SEVERITY = {Verdict.NOT_ANALYSED: -1, Verdict.NEGATIVE: 0, Verdict.PROBABLY_BENIGN: 1, Verdict.INCOMPLETE: 2,
             Verdict.SUSPICIOUS: 3}


@dataclass(frozen=True)
class KeySlice:
    """Where a radiologist should look: the source slice nearest the nodule centre."""

    sop_instance_uid: str
    sop_class_uid: str
    row: float  # pixel row of the centre on that slice (0-based, may be fractional)
    column: float


@dataclass(frozen=True)
class NoduleLocation:
    lung: str | None = None  # "right" | "left"; None when the side could not be told
    zone: str | None = None  # "upper" | "middle" | "lower": thirds of that lung's height, approximating the lobe
    juxtapleural: bool = False  # touches the pleura (chest wall, mediastinum, diaphragm)
    perifissural: bool = False  # touches a thin flat sheet in the lung, a fissure (characterize/location.py)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


TYPE_WORDS = {"solid": "solid", "part_solid": "part-solid", "ground_glass": "ground-glass"}
# a cyst graded as a cyst is named as one; another air-filled lumen is said beside the attenuation type
CYST_WORDS = {"thin_walled": "thin-walled cyst", "thick_walled": "thick-walled cyst",
              "multilocular": "multilocular cyst", "thin_walled_in_part": "cyst, wall partly seen"}
LUMEN_WORDS = {"cavity": "cavitary", "with_opacity": "cystic"}


def lesion_type_words(nodule_type: str | None, cyst: str | None = None, airway: str | None = None) -> str:
    """A finding's type as the console, report and overlays write it: "part-solid", "solid cavitary",
    "thin-walled cyst", "solid airway nodule"; "-" where no type was recorded."""
    if cyst in CYST_WORDS:
        return CYST_WORDS[cyst]
    if not nodule_type:
        return "-"
    words = TYPE_WORDS.get(nodule_type, nodule_type.replace("_", "-"))
    if airway:
        return f"{words} airway nodule"
    return f"{words} {LUMEN_WORDS[cyst]}" if cyst in LUMEN_WORDS else words


@dataclass(frozen=True)
class Finding:
    """One nodule: where it is, what the Lung-RADS v2022 table and the Brock model need, and their results."""

    center_mm: tuple[float, float, float]  # x, y, z in patient LPS millimetres
    diameter_mm: float  # the Lung-RADS mean diameter (long + short axis) / 2, to 0.1 mm
    volume_mm3: float  # of the segmentation
    probability: float  # detection probability 0..1
    # DeepLung DPN + GBM score 0..1 from weights trained on synthetic phantoms: a model score, never the
    # clinical probability, unless the weights manifest declares the malignancy head validated on real data
    model_score: float
    lung_rads: str  # "1", "2", "3", "4A", "4B", "4X" (inference.clinical.lungrads)
    key_slice: KeySlice
    # in-plane extent on the key slice in pixels (row, column half-axes) for drawing
    radius_px: tuple[float, float] = (0.0, 0.0)
    nodule_type: str = "solid"  # "solid" | "part_solid" | "ground_glass" (inference.characterize.attenuation)
    calcified: bool = False  # a benign calcification pattern (central or diffuse): Lung-RADS 1
    calcification_pattern: str | None = None  # "central" | "diffuse" | "eccentric"
    margin: str | None = "smooth"  # "smooth" | "lobulated" | "spiculated"; None: not assessed
    location: NoduleLocation = NoduleLocation()
    long_axis_mm: float = 0.0  # on the axial slice of the largest extent
    short_axis_mm: float = 0.0  # perpendicular to the long axis, same slice
    solid_component_mm: float | None = None  # mean diameter of the solid component of a part-solid nodule
    solid_long_axis_mm: float | None = None
    solid_short_axis_mm: float | None = None
    brock_risk: float | None = None  # 0..1, Brock University (PanCan) full model with spiculation
    lung_rads_reasons: tuple[str, ...] = ()  # why this category (the rule that decided it)
    segmentation_ok: bool = True
    note: str | None = None  # e.g. "cut by the field of view": what a reader should know about the measurement
    # an air-filled lumen in the lesion (inference.characterize.cyst): "thin_walled" | "thick_walled" | "multilocular"
    # | "thin_walled_in_part" (a cyst, graded by the Lung-RADS cyst rules) | "with_opacity" (a cyst, and its opacity
    # graded as a nodule) | "cavity" (a nodule's, graded by size); None: none
    cyst: str | None = None
    # the airway whose lumen the lesion lies in (inference.characterize.airway), graded by the Lung-RADS airway rules:
    # "segmental_or_proximal" | "subsegmental" (by its calibre); None: in the lung
    airway: str | None = None

    @property
    def mean_diameter_mm(self) -> float:
        return self.diameter_mm

    def to_json(self) -> dict[str, Any]:
        return {
            "center_mm": [round(c, 3) for c in self.center_mm],
            "diameter_mm": round(self.diameter_mm, 3),
            "mean_diameter_mm": round(self.diameter_mm, 1),
            "long_axis_mm": round(self.long_axis_mm, 1),
            "short_axis_mm": round(self.short_axis_mm, 1),
            "volume_mm3": round(self.volume_mm3, 2),
            "type": self.nodule_type,
            "solid_component_mm": None if self.solid_component_mm is None else round(self.solid_component_mm, 1),
            "calcified": self.calcified,
            "calcification_pattern": self.calcification_pattern,
            "margin": self.margin,
            "location": self.location.to_json(),
            "probability": round(self.probability, 5),
            "brock_risk": None if self.brock_risk is None else round(self.brock_risk, 5),
            "model_score": round(self.model_score, 5),
            "lung_rads": self.lung_rads,
            "lung_rads_reasons": list(self.lung_rads_reasons),
            "segmentation_ok": self.segmentation_ok,
            "note": self.note,
            "cyst": self.cyst,
            "airway": self.airway,
            "sop_instance_uid": self.key_slice.sop_instance_uid,
            "row": round(self.key_slice.row, 2),
            "column": round(self.key_slice.column, 2),
            "radius_px": [round(r, 2) for r in self.radius_px],
        }


@dataclass(frozen=True)
class RiskInputs:
    """What the Brock model was given for this patient, and what had to be assumed."""

    age_years: float | None  # from PatientAge, or PatientBirthDate with StudyDate
    sex: str | None  # "female" | "male"
    family_history: str  # "yes" | "no" | "unknown" (unknown is counted as no)
    emphysema: bool  # LAA-950 at or above the configured threshold (no, and "emphysema" missing, on a noisy image)
    missing: tuple[str, ...] = ()  # inputs that were absent and replaced by the model's reference value

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["missing"] = list(self.missing)
        return d


@dataclass(frozen=True)
class CoronaryCalciumSummary:
    """Coronary artery calcium on the exam (inference/characterize/cardiac.py), or why it was not measured."""

    # the Agatston-equivalent score (scaled to 3 mm slices), a whole number as CAC-DRS grades it; None: not measured
    # (`note` says why)
    agatston: float | None
    grade: str | None = None  # CAC-DRS: "none" | "mild" | "moderate" | "severe"
    lesions: int = 0
    volume_mm3: float = 0.0
    threshold_hu: float | None = None  # 130 HU, or higher where the image's noise raised it
    note: str | None = None

    @property
    def words(self) -> str:
        """One line for the report, the console and the overlay."""
        if self.agatston is None:
            return self.note or "not measured"
        counted = f"; {self.lesions} lesion{'s' if self.lesions > 1 else ''}" if self.lesions else ""
        text = f"{self.grade}, Agatston-equivalent {self.agatston:.0f} (non-gated CT{counted})"
        return f"{text}; {self.note}" if self.note else text

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OtherFinding:
    """A finding other than lung cancer for which the Lung-RADS S modifier is suggested (clinical.significant)."""

    kind: str  # "coronary_calcium" | "emphysema"
    text: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def s_modifier_words(texts: list[str]) -> str | None:
    """Why S is suggested, for the report, the console, the overlay and the SR; None when it is not."""
    if not texts:
        return None
    return ("Lung-RADS S suggested for " + "; ".join(texts)
            + " (the reader decides: S is not needed for a finding already known, under evaluation or treated)")


@dataclass(frozen=True)
class ExamSummary:
    """The exam-level statement: Lung-RADS category and recommendation, emphysema, risk-model inputs."""

    lung_rads: str  # the highest nodule category; "0" when the lungs are not fully covered; "1" without nodules
    recommendation: str  # the ACR management text of that category
    lungs_fully_covered: bool
    risk_inputs: RiskInputs
    reason: str | None = None  # why the category is 0, or other caveats a reader must see
    laa950_pct: float | None = None  # % of lung volume below -950 HU
    lung_volume_ml: float | None = None
    highest_brock_risk: float | None = None
    verdict_reasons: tuple[str, ...] = ()
    headline: str = "brock"  # which risk is the headline figure: "brock", or "model" for validated weights
    image_noise_hu: float | None = None  # the series' noise; above emphysema.LAA950_MAX_NOISE_HU LAA-950 is not used
    coronary_calcium: CoronaryCalciumSummary | None = None
    significant_findings: tuple[OtherFinding, ...] = ()  # S suggested when any; the category itself is unchanged

    @property
    def lung_rads_label(self) -> str:
        """The category as a report writes it, with the S modifier when suggested: "2S"."""
        return f"{self.lung_rads}S" if self.significant_findings else self.lung_rads

    @property
    def s_modifier_words(self) -> str | None:
        return s_modifier_words([f.text for f in self.significant_findings])

    def with_caveat(self, text: str) -> ExamSummary:
        """The summary with one more caveat a reader must see, after those it has (once: a job run again adds none)."""
        if self.reason and text in self.reason:
            return self
        return replace(self, reason=f"{self.reason}; {text}" if self.reason else text)

    def to_json(self) -> dict[str, Any]:
        return {
            "lung_rads": self.lung_rads,
            "lung_rads_label": self.lung_rads_label,
            "s_modifier": bool(self.significant_findings),
            "significant_findings": [f.to_json() for f in self.significant_findings],
            "coronary_calcium": None if self.coronary_calcium is None else self.coronary_calcium.to_json(),
            "recommendation": self.recommendation,
            "reason": self.reason,
            "lungs_fully_covered": self.lungs_fully_covered,
            "laa950_pct": None if self.laa950_pct is None else round(self.laa950_pct, 2),
            "lung_volume_ml": None if self.lung_volume_ml is None else round(self.lung_volume_ml, 1),
            "highest_brock_risk": None if self.highest_brock_risk is None else round(self.highest_brock_risk, 5),
            "risk_inputs": self.risk_inputs.to_json(),
            "verdict_reasons": list(self.verdict_reasons),
            "headline": self.headline,
            "image_noise_hu": None if self.image_noise_hu is None else round(self.image_noise_hu, 1),
        }


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    weights_sha256: str  # the detector's weights file
    engine: str  # "torch-cpu", "torch-cuda-fp16", "onnxruntime-cpu", "tensorrt-fp16"
    # every weights file of the bundle (WeightsBundle.combined_sha256); empty: only the detector is known
    bundle_sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SeriesResult:
    """The outcome of one series: findings plus a study-level verdict, or why it was not analysed."""

    series_instance_uid: str
    verdict: Verdict
    verdict_probability: float  # the headline risk: the highest Brock risk (or validated model score); 0 when none
    model: ModelIdentity
    findings: list[Finding] = field(default_factory=list)
    not_analysed_reason: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    exam: ExamSummary | None = None  # None when not analysed

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
            "exam": self.exam.to_json() if self.exam is not None else None,
            "findings": [f.to_json() for f in self.findings],
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
        }


class NotAnalysable(Exception):
    """The series does not suit the model; the message is the reason shown to users."""
