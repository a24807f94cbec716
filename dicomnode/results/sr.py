"""TID 1500 measurement reports for lung nodule findings (docs/architecture.md, "Results encoding").

One planar ROI group per nodule on its key slice, three NUM items first (OHIF shows
only those: mean diameter, volume, the headline probability of cancer), the other
measurements and the coded evaluations after; a "no nodules" group when there is none.
At report level, a Qualitative Evaluations container: exam Lung-RADS, recommendation,
LAA-950 and lung volume, risk-model inputs. In a follow-up (follow_up_context): per nodule the change
since the prior (status, prior values, volume change, doubling time, growth flag; the prior's Tracking
UID for a matched nodule) and at report level the prior study and SR, or "prior not available: <reason>".

Never the retired SRT scheme: SCT, DCM, UCUM, UMLS, and two declared private schemes
(99DCMNODE_LRADS for the Lung-RADS categories, 99DCMNODE for the few concepts with no
standard code) only. Where each code comes from is said beside it.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from copy import copy, deepcopy
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes
from pydicom.tag import Tag

from dicomnode.results.options import ResultOptions
from dicomnode.results.uids import device_uid, result_uid, settings_digest
from inference.findings import ExamSummary, Finding, ModelIdentity, SeriesResult

# No DICOM/SNOMED code list exists for Lung-RADS categories (the RadElement set RDES267 is not a
# DICOM-registered scheme): declare ours (docs/architecture.md, "Results encoding").
LUNG_RADS_SCHEME = "99DCMNODE_LRADS"
LUNG_RADS_CONCEPT = CodedConcept("LRADS", LUNG_RADS_SCHEME, "Lung-RADS assessment category")
LUNG_RADS_MEANINGS = {
    "0": "Lung-RADS 0 incomplete",
    "1": "Lung-RADS 1 negative",
    "2": "Lung-RADS 2 benign appearance or behavior",
    "3": "Lung-RADS 3 probably benign",
    "4A": "Lung-RADS 4A suspicious",
    "4B": "Lung-RADS 4B very suspicious",
    "4X": "Lung-RADS 4X very suspicious with additional features",
}
# Concepts with no standard code (searched in PS3.16, SNOMED CT and RadLex/RadElement): declared here.
PRIVATE_SCHEME = "99DCMNODE"

NODULE = codes.SCT.Nodule  # 27925004
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = CodedConcept("49755003", "SCT", "Morphologically abnormal structure")
LUNG = codes.SCT.Lung  # 39607008
# Finding site laterality (TID 1419 "Finding Site" + HAS CONCEPT MOD Laterality, CID 244)
LATERALITY = {"right": codes.SCT.Right, "left": codes.SCT.Left}  # 24028007, 7771000

# ---- NUM items (PS3.16 CID 7469/7470 and CID 6048)
DIAMETER = codes.SCT.Diameter  # 81827009, with Derivation (DCM 121401) = Mean (SCT 373098007)
MEAN = codes.SCT.Mean  # 373098007
LONG_AXIS = codes.SCT.LongAxis  # 103339001
SHORT_AXIS = codes.SCT.ShortAxis  # 103340004
VOLUME = codes.SCT.Volume  # 118565006
PROBABILITY_OF_CANCER = codes.DCM.ProbabilityOfCancer  # 111047 (CID 6048)
CERTAINTY_OF_FINDING = codes.DCM.CertaintyOfFinding  # 111012, used for detection probability
SOLID_COMPONENT_DIAMETER = CodedConcept("SOLIDDIAM", PRIVATE_SCHEME, "Solid component mean diameter")
MODEL_SCORE = CodedConcept("MODELSCORE", PRIVATE_SCHEME, "Model score, phantom-trained weights, not p(cancer)")
# Measurement Method (SCT 370129005) values naming how a probability of cancer was derived
BROCK_METHOD = CodedConcept("BROCK", PRIVATE_SCHEME, "Brock University (PanCan) full model with spiculation")
MODEL_METHOD = CodedConcept("DLMODEL", PRIVATE_SCHEME, "Detection model malignancy head, validated weights")
BROCK_ALGORITHM = ("Brock University (PanCan) model", "McWilliams et al. N Engl J Med 2013;369:910-919, full model")
LAA950 = CodedConcept("LAA950", PRIVATE_SCHEME, "Lung volume below -950 HU (LAA-950)")
SCORE_UNIT = CodedConcept("{score}", "UCUM", "score")  # a UCUM annotation: a 0..1 score, not a percentage

# ---- qualitative evaluations: the Chest CAD SR concepts of PS3.16 (TID 4100 family) where they fit
OPACITY_DESCRIPTOR = codes.DCM.OpacityDescriptor  # 112027
ATTENUATION = {
    # SCT 35702001 "Solid": HL7 LT lung IG value set "pulmonary-nodule-type", expanded by tx.fhir.org
    "solid": CodedConcept("35702001", "SCT", "Solid"),
    # no SNOMED CT / PS3.16 code for a part-solid (mixed) nodule; RadElement RDE1301 is not a DICOM scheme
    "part_solid": CodedConcept("PARTSOLID", PRIVATE_SCHEME, "Part-solid"),
    "ground_glass": codes.DCM.GroundGlassOpacity,  # 112120, CID 6102/6104
}
BORDER_SHAPE = codes.DCM.BorderShape  # 112015 (values CID 6119 Chest Border Shape)
MARGIN = {
    "smooth": codes.SCT.Smooth,  # 82280004
    "lobulated": codes.DCM.Lobulated,  # 112135, CID 6119
    "spiculated": codes.DCM.Spiculated,  # 112136, CID 6119
}
LOCATION_IN_CHEST = codes.DCM.LocationInChest  # 112013 (values CID 6124 Location in Chest)
ZONE = {
    # zones are thirds of the lung height: they approximate, and are not, the lobes
    "upper": codes.SCT.UpperZoneOfLung,  # 281392002
    "middle": codes.SCT.MiddleZoneOfLung,  # 281393007
    "lower": codes.SCT.LowerZoneOfLung,  # 281394001
}
# CID 6124 has no "juxtapleural"; Subpleural (SCT 68599007) is its nearest member: the nodule abuts the pleura
SUBPLEURAL = CodedConcept("68599007", "SCT", "Subpleural")
# Neither CID 6124 nor SNOMED CT nor the RadElement nodule set has "perifissural": a declared private code
PERIFISSURAL = CodedConcept("PERIFISSURAL", PRIVATE_SCHEME, "Perifissural")
CALCIFICATION = CodedConcept("CALC", PRIVATE_SCHEME, "Nodule calcification")
PRESENT = codes.SCT.Present  # 52101004 (CID 240)
ABSENT = codes.SCT.Absent  # 272519000 (CID 240)
CALCIFICATION_DESCRIPTOR = codes.DCM.CalcificationDescriptor  # 112030
CALCIFICATION_PATTERN = {
    # CID 6132 Chest Calcification Descriptor has popcorn and laminated, not these three
    "central": CodedConcept("CENTRALCALC", PRIVATE_SCHEME, "Central calcification"),
    "diffuse": CodedConcept("DIFFUSECALC", PRIVATE_SCHEME, "Diffuse calcification"),
    "eccentric": CodedConcept("ECCENTRICCALC", PRIVATE_SCHEME, "Eccentric calcification"),
}

SUMMARY_OF_DETECTIONS = codes.DCM.SummaryOfDetections  # 111064
WITHOUT_FINDINGS = codes.DCM.AllAlgorithmsSucceededWithoutFindings  # 111241
NOT_ANALYSED = codes.DCM.NoAlgorithmsSucceededWithoutFindings  # 111245
COMMENT = CodedConcept("121106", "DCM", "Comment")
RECOMMENDATION = codes.DCM.Recommendation  # 121075
# TID 1500 row "Qualitative Evaluations" container (CODE and TEXT items about the whole report)
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
# TID 1500 "Procedure Reported" is the imaging procedure the report is about (IHE AIR), not the algorithm:
# LOINC 24627-2 "CT Chest" (the LOINC/RSNA Radiology Playbook term for a chest CT of any contrast phase;
# low-dose screening CT is a chest CT).
PROCEDURE_REPORTED = CodedConcept("24627-2", "LN", "CT Chest")
# IHE AIR: the algorithm is Contributing Equipment with this Purpose of Reference (IHE RAD TF-3, AI Results)
PROCESSING_ALGORITHM = CodedConcept("1630", "99IHE", "Processing Algorithm")

# ---- follow-up: the comparison with the prior exam (issue 12). No PS3.16 or SNOMED CT code for the
# volume doubling time, the change values or the Lung-RADS growth flag: declared private codes. The status
# is coded with SNOMED CT where it has one (new, increased, decreased size, no change).
CHANGE_SINCE_PRIOR = CodedConcept("PRIORCHANGE", PRIVATE_SCHEME, "Change since prior exam")
CHANGE_STATUS = {
    "new": CodedConcept("7147002", "SCT", "New"),
    "growing": CodedConcept("15454001", "SCT", "Increase in size"),
    "shrinking": CodedConcept("19776001", "SCT", "Decreased size"),
    "stable": CodedConcept("260388006", "SCT", "No change"),
}
PRIOR_DIAMETER = CodedConcept("PRIORDIAM", PRIVATE_SCHEME, "Prior exam mean diameter")
PRIOR_VOLUME = CodedConcept("PRIORVOL", PRIVATE_SCHEME, "Prior exam volume")
VOLUME_CHANGE = CodedConcept("VOLCHANGE", PRIVATE_SCHEME, "Volume change since prior exam")
DIAMETER_CHANGE = CodedConcept("DIAMCHANGE", PRIVATE_SCHEME, "Mean diameter change since prior exam")
DOUBLING_TIME = CodedConcept("VDT", PRIVATE_SCHEME, "Volume doubling time")
INTERVAL = CodedConcept("PRIORINTERVAL", PRIVATE_SCHEME, "Interval since prior exam")
GROWTH_FLAG = CodedConcept("LRGROWTH", PRIVATE_SCHEME, "Lung-RADS growth (mean diameter > 1.5 mm in 12 months)")
PRIOR_COMPARISON = CodedConcept("PRIORCOMP", PRIVATE_SCHEME, "Comparison with prior exam")
PRIOR_STUDY = CodedConcept("PRIORSTUDY", PRIVATE_SCHEME, "Prior study instance UID")
PRIOR_REPORT = CodedConcept("111549", "DCM", "Previous Reports")  # the prior's SR, by its SOP Instance UID
RESOLVED = CodedConcept("PRIORRESOLVED", PRIVATE_SCHEME, "Prior exam nodule not seen (resolved)")
DAY_UNIT = CodedConcept("d", "UCUM", "day")


@dataclass(frozen=True)
class NoduleFollowUp:
    """One current nodule against the prior: its tracking UID (the prior's for a matched nodule) and the change."""

    tracking_uid: str | None  # None: the UID derived for this result (no comparison)
    status: str | None = None  # new | growing | stable | shrinking; None: no comparison
    prior_mean_diameter_mm: float | None = None
    prior_volume_mm3: float | None = None
    interval_days: int | None = None
    volume_change_pct: float | None = None
    doubling_time_days: float | None = None  # None with a prior: not growing
    diameter_change_mm: float | None = None
    lung_rads_growth: bool | None = None


@dataclass(frozen=True)
class FollowUp:
    """What the SR says about the prior exam: per current nodule, and at report level."""

    statement: str  # "prior: ..." or "prior not available: <reason>"
    nodules: tuple[NoduleFollowUp, ...] = ()
    prior_study_uid: str | None = None
    prior_sr_uid: str | None = None
    resolved: tuple[str, ...] = ()  # one line per prior nodule not seen again


# the follow-up of the result being encoded: nodule_tracking (also used by the SEG) reads its tracking UIDs
_FOLLOW_UP: ContextVar[FollowUp | None] = ContextVar("follow_up", default=None)


@contextmanager
def follow_up_context(follow_up: FollowUp | None) -> Iterator[None]:
    """Encode the results inside this block with the comparison: tracking UIDs, change items, prior refs."""
    token = _FOLLOW_UP.set(follow_up)
    try:
        yield
    finally:
        _FOLLOW_UP.reset(token)


def derived_tracking_uid(index: int, series_uid: str, model_version: str, options: ResultOptions) -> str:
    """The Tracking UID the SR gives nodule `index` of a series when no prior says otherwise."""
    return result_uid("tracking", series_uid, model_version, settings_digest(options), index, options.uid_root)


def _nodule_follow_up(index: int) -> NoduleFollowUp | None:
    follow_up = _FOLLOW_UP.get()
    if follow_up is None or index >= len(follow_up.nodules):
        return None
    return follow_up.nodules[index]


def follow_up_items(nodule: NoduleFollowUp) -> tuple[list[hd.sr.Measurement], list[hd.sr.QualitativeEvaluation],
                                                     list[hd.sr.TextContentItem]]:
    """NUM, CODE and TEXT items of a nodule's change since the prior (nothing without a comparison)."""
    if nodule.status is None:
        return [], [], []
    qe = hd.sr.QualitativeEvaluation
    evaluations = [qe(name=CHANGE_SINCE_PRIOR, value=_coded(CHANGE_STATUS, nodule.status, "change status"))]
    texts: list[hd.sr.TextContentItem] = []
    if nodule.status == "new" or nodule.prior_mean_diameter_mm is None:
        return [], evaluations, texts
    num = hd.sr.Measurement
    measurements = [
        _mm(PRIOR_DIAMETER, nodule.prior_mean_diameter_mm, derivation=MEAN),
        num(name=PRIOR_VOLUME, value=round(float(nodule.prior_volume_mm3 or 0.0), 1), unit=codes.UCUM.CubicMillimeter),
    ]
    if nodule.volume_change_pct is not None:
        measurements.append(num(name=VOLUME_CHANGE, value=round(nodule.volume_change_pct, 1), unit=codes.UCUM.Percent))
    if nodule.diameter_change_mm is not None:
        measurements.append(_mm(DIAMETER_CHANGE, nodule.diameter_change_mm))
    if nodule.interval_days is not None:
        measurements.append(num(name=INTERVAL, value=int(nodule.interval_days), unit=DAY_UNIT))
    if nodule.doubling_time_days is not None:
        measurements.append(num(name=DOUBLING_TIME, value=round(nodule.doubling_time_days, 1), unit=DAY_UNIT))
    else:
        texts.append(hd.sr.TextContentItem(name=DOUBLING_TIME, value="not growing",
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    if nodule.lung_rads_growth is not None:
        evaluations.append(qe(name=GROWTH_FLAG, value=PRESENT if nodule.lung_rads_growth else ABSENT))
    return measurements, evaluations, texts


def follow_up_statements(follow_up: FollowUp) -> list[hd.sr.TextContentItem]:
    """Report-level TEXT: the comparison (or "prior not available: <reason>"), the prior study and SR, resolved."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items = [hd.sr.TextContentItem(name=PRIOR_COMPARISON, value=follow_up.statement[:1024], relationship_type=contains)]
    if follow_up.prior_study_uid:
        items.append(hd.sr.TextContentItem(name=PRIOR_STUDY, value=follow_up.prior_study_uid, relationship_type=contains))
    if follow_up.prior_sr_uid:
        items.append(hd.sr.TextContentItem(name=PRIOR_REPORT, value=follow_up.prior_sr_uid, relationship_type=contains))
    items.extend(hd.sr.TextContentItem(name=RESOLVED, value=line[:1024], relationship_type=contains)
                 for line in follow_up.resolved)
    return items


# Required (Type 2) patient/study attributes highdicom reads from the first source dataset.
_TYPE2_FROM_SOURCE = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


PIXEL_DATA = Tag(0x7FE0, 0x0010)


def prepare_sources(source: Sequence[Dataset]) -> list[Dataset]:
    """Copies of the source datasets with the Type 2 attributes highdicom needs present.

    Elements are copied, not shared: highdicom carries source elements into the results, and a
    shared element would let a later change to a result (or to another result built from the same
    sources) write into the caller's CT datasets. Pixel data alone is shared: it is large and
    never modified here. Sorted by position along the normal.
    """
    if not source:
        raise ValueError("no source datasets")
    prepared = []
    for ds in source:
        prepared_ds = Dataset()
        for elem in ds:
            prepared_ds.add(elem if elem.tag == PIXEL_DATA else _unshared(elem))
        if hasattr(ds, "file_meta"):
            prepared_ds.file_meta = ds.file_meta
        for keyword in _TYPE2_FROM_SOURCE:
            if keyword not in prepared_ds:
                setattr(prepared_ds, keyword, None)
        prepared.append(prepared_ds)
    return sort_by_position(prepared)


def _unshared(elem: DataElement) -> DataElement:
    """A copy of `elem` through which no change reaches the original. Only values that can change in place
    (multi-valued elements, sequences) are copied deeply; strings, numbers, bytes and person names cannot,
    and a new element holding them is enough (deep-copying every element took half a second more per
    261-slice series, and most of the SR tests' time)."""
    if elem.VR == "SQ" or isinstance(elem.value, MultiValue):
        return deepcopy(elem)
    return copy(elem)


def sort_by_position(datasets: list[Dataset]) -> list[Dataset]:
    def position(ds: Dataset) -> float:
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            return float(ds.get("InstanceNumber", 0) or 0)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        return float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float)))

    return sorted(datasets, key=position)


def find_instance(sources: Sequence[Dataset], sop_instance_uid: str) -> Dataset:
    for ds in sources:
        if ds.SOPInstanceUID == sop_instance_uid:
            return ds
    raise ValueError(f"key slice {sop_instance_uid} is not in the source series")


def lung_rads_code(category: str) -> CodedConcept:
    meaning = LUNG_RADS_MEANINGS.get(category.upper(), f"Lung-RADS {category.upper()}")
    return CodedConcept(category.upper(), LUNG_RADS_SCHEME, meaning)


def lung_rads_scheme_item() -> hd.coding_schemes.CodingSchemeIdentificationItem:
    return hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=LUNG_RADS_SCHEME,
        name="dicomnode codes for the ACR Lung-RADS v2022 categories",
        responsible_organization="dicomnode project",
    )


def private_scheme_item() -> hd.coding_schemes.CodingSchemeIdentificationItem:
    return hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name="dicomnode lung screening concepts without a standard code",
        responsible_organization="dicomnode project",
    )


def algorithm_identification(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    # The weights hash pins the exact model; the name/version alone may be reused by retraining.
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[f"weights_sha256={model.weights_sha256}", f"engine={model.engine}",
                    *([f"bundle_sha256={model.bundle_sha256}"] if model.bundle_sha256 else [])],
    )


def algorithm_device_uid(model: ModelIdentity, options: ResultOptions) -> str:
    """The algorithm's Device UID: changes with any of the weights (uids.device_uid) - the whole bundle's
    digest when the pipeline knows it, else the detector's."""
    weights = model.bundle_sha256 or model.weights_sha256
    return str(device_uid(options.device_name, model.name, weights, options.uid_root))


def contributing_equipment(model: ModelIdentity, options: ResultOptions) -> hd.ContributingEquipment:
    """IHE AIR algorithm identification: Purpose of Reference (99IHE 1630), Manufacturer, Model Name,
    Software Versions and the Device UID that changes with the weights. Shared by the SR and the SEG."""
    equipment = hd.ContributingEquipment(
        manufacturer=options.manufacturer,
        # highdicom accepts only CID 7005 codes here: the AIR code replaces this one below
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        institution_name=options.institution_name,
        contribution_description=f"Lung nodule detection, characterisation, Lung-RADS and Brock risk ({model.engine})",
    )
    equipment.PurposeOfReferenceCodeSequence = [PROCESSING_ALGORITHM]  # CID 7005 is extensible
    equipment.DeviceUID = algorithm_device_uid(model, options)
    return equipment


def _observation_context(model: ModelIdentity, options: ResultOptions) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm_device_uid(model, options),
        name=options.device_name,
        manufacturer_name=options.manufacturer,
        model_name=model.name,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=device,
        )
    )


def roi_graphic_data(
    center_rc: tuple[float, float], radius_rc: tuple[float, float], graphic: str, vertices: int
) -> np.ndarray:
    """SCOORD points (column, row) outlining the nodule; pixel centre convention, 0-based input.

    SCOORD pixel coordinates put the top-left corner of the first pixel at (0, 0), so the
    centre of pixel (r, c) is (c + 0.5, r + 0.5).
    """
    row, col = center_rc[0] + 0.5, center_rc[1] + 0.5
    r_row, r_col = radius_rc
    if graphic == "ellipse":
        # major axis end points first, then minor axis (PS3.3 C.18.6.1.2)
        horizontal = [[col - r_col, row], [col + r_col, row]]
        vertical = [[col, row - r_row], [col, row + r_row]]
        return np.array(horizontal + vertical if r_col >= r_row else vertical + horizontal, dtype=float)
    angles = np.linspace(0.0, 2.0 * math.pi, vertices, endpoint=False)
    points = np.stack([col + r_col * np.cos(angles), row + r_row * np.sin(angles)], axis=1)
    return np.vstack([points, points[:1]])  # closed: last point repeats the first


def radius_px(finding: Finding, image: Dataset) -> tuple[float, float]:
    """In-plane half-axes in pixels; from the diameter when the model gave none."""
    r_row, r_col = finding.radius_px
    if r_row > 0 and r_col > 0:
        return float(r_row), float(r_col)
    spacing = [float(v) for v in image.PixelSpacing]  # row spacing, column spacing
    half = max(finding.diameter_mm, 1.0) / 2.0
    return half / spacing[0], half / spacing[1]


def _finding_site(finding: Finding) -> hd.sr.FindingSite:
    """Lung, with the side as a laterality modifier when it could be told."""
    side = LATERALITY.get(finding.location.lung or "")
    return hd.sr.FindingSite(anatomic_location=LUNG, laterality=side)


def _mm(name: CodedConcept | Code, value: float, derivation: CodedConcept | Code | None = None) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=round(float(value), 1), unit=codes.UCUM.Millimeter,
                             derivation=derivation)


def _percent(value: float) -> float:
    return round(float(value) * 100.0, 2)  # 0.01 % steps: a Brock risk of 0.3127 reads 31.27 %


def brock_measurement(risk: float) -> hd.sr.Measurement:
    """Probability of cancer by the Brock model, the method and its source named."""
    name, version = BROCK_ALGORITHM
    return hd.sr.Measurement(
        name=PROBABILITY_OF_CANCER, value=_percent(risk), unit=codes.UCUM.Percent, method=BROCK_METHOD,
        algorithm_id=hd.sr.AlgorithmIdentification(name=name, version=version),
    )


def model_measurement(finding: Finding, result: SeriesResult) -> hd.sr.Measurement:
    """The detection model's malignancy output: a probability only when its weights are declared validated."""
    if headline_is_model(result):
        return hd.sr.Measurement(
            name=PROBABILITY_OF_CANCER, value=_percent(finding.model_score), unit=codes.UCUM.Percent,
            method=MODEL_METHOD, algorithm_id=algorithm_identification(result.model),
        )
    return hd.sr.Measurement(name=MODEL_SCORE, value=round(float(finding.model_score), 3), unit=SCORE_UNIT)


def headline_is_model(result: SeriesResult) -> bool:
    return result.exam is not None and result.exam.headline == "model"


def nodule_measurements(finding: Finding, result: SeriesResult) -> list[hd.sr.Measurement]:
    """NUM items; the first three are what OHIF labels the nodule with, in a radiologist's order:
    the Lung-RADS mean diameter, the volume, the headline probability of cancer (Brock, or the
    model's only when its weights are declared validated)."""
    headline: list[hd.sr.Measurement] = []
    rest: list[hd.sr.Measurement] = []
    brock = [brock_measurement(finding.brock_risk)] if finding.brock_risk is not None else []
    model = [model_measurement(finding, result)]
    if headline_is_model(result):
        headline, rest = model, brock
    else:
        headline, rest = brock, model
    measurements = [
        _mm(DIAMETER, finding.mean_diameter_mm, derivation=MEAN),
        hd.sr.Measurement(name=VOLUME, value=round(float(finding.volume_mm3), 1), unit=codes.UCUM.CubicMillimeter),
        *headline,
    ]
    if finding.long_axis_mm > 0:
        measurements.append(_mm(LONG_AXIS, finding.long_axis_mm))
    if finding.short_axis_mm > 0:
        measurements.append(_mm(SHORT_AXIS, finding.short_axis_mm))
    if finding.solid_component_mm is not None:
        measurements.append(_mm(SOLID_COMPONENT_DIAMETER, finding.solid_component_mm, derivation=MEAN))
    measurements.extend(rest)
    measurements.append(
        hd.sr.Measurement(name=CERTAINTY_OF_FINDING, value=_percent(finding.probability), unit=codes.UCUM.Percent)
    )
    return measurements


def _coded(table: Mapping[str, CodedConcept | Code], key: str | None, what: str) -> CodedConcept | Code:
    try:
        return table[key or ""]
    except KeyError:
        raise ValueError(f"finding has an unknown {what} {key!r}; expected one of {sorted(table)}") from None


def nodule_evaluations(finding: Finding) -> list[hd.sr.QualitativeEvaluation]:
    """Attenuation type, margin, location, calcification and the Lung-RADS category, coded."""
    qe = hd.sr.QualitativeEvaluation
    evaluations = [qe(name=OPACITY_DESCRIPTOR, value=_coded(ATTENUATION, finding.nodule_type, "attenuation type"))]
    if finding.margin is not None:  # a margin not assessed is not stated
        evaluations.append(qe(name=BORDER_SHAPE, value=_coded(MARGIN, finding.margin, "margin")))
    if finding.location.zone is not None:
        evaluations.append(qe(name=LOCATION_IN_CHEST, value=_coded(ZONE, finding.location.zone, "zone")))
    if finding.location.juxtapleural:
        evaluations.append(qe(name=LOCATION_IN_CHEST, value=SUBPLEURAL))
    if finding.location.perifissural:
        evaluations.append(qe(name=LOCATION_IN_CHEST, value=PERIFISSURAL))
    evaluations.append(qe(name=CALCIFICATION, value=PRESENT if finding.calcified else ABSENT))
    if finding.calcification_pattern is not None:
        pattern = _coded(CALCIFICATION_PATTERN, finding.calcification_pattern, "calcification pattern")
        evaluations.append(qe(name=CALCIFICATION_DESCRIPTOR, value=pattern))
    evaluations.append(qe(name=LUNG_RADS_CONCEPT, value=lung_rads_code(finding.lung_rads)))
    return evaluations


def nodule_tracking(index: int, result: SeriesResult, options: ResultOptions, digest: str) -> hd.sr.TrackingIdentifier:
    """Tracking Identifier "Nodule <n>" and UID of one nodule: the same in its SR groups and its SEG segment.
    In a follow-up (follow_up_context), a matched nodule keeps the UID of the prior's SR, so it is followed."""
    nodule = _nodule_follow_up(index)
    return hd.sr.TrackingIdentifier(
        uid=(nodule.tracking_uid if nodule is not None and nodule.tracking_uid else
             result_uid("tracking", result.series_instance_uid, result.model.version, digest, index, options.uid_root)),
        identifier=f"Nodule {index + 1}",
    )


def _segment_group(
    index: int, finding: Finding, result: SeriesResult, options: ResultOptions, digest: str, segmentation: Dataset
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 group of one nodule: Referenced Segment (its SEG segment) and Source series for segmentation.

    Same tracking identifier and UID as the nodule's planar group and SEG segment, so a viewer (OHIF merges
    groups by Tracking UID) and a reader link the three; no NUM here, the measurements stay in the planar group.
    """
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=nodule_tracking(index, result, options, digest),
        # built from UIDs: highdicom's from_segmentation fails on a one-segment SEG (shared functional groups)
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=segmentation.SOPClassUID,
            sop_instance_uid=segmentation.SOPInstanceUID,
            segment_number=index + 1,
            source_series=hd.sr.SourceSeriesForSegmentation(result.series_instance_uid),
        ),
        finding_type=NODULE,
        finding_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        finding_sites=[_finding_site(finding)],
        algorithm_id=algorithm_identification(result.model),
    )


def _nodule_group(
    index: int,
    finding: Finding,
    image: Dataset,
    result: SeriesResult,
    options: ResultOptions,
    digest: str,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    tracking = nodule_tracking(index, result, options, digest)
    graphic = hd.sr.GraphicTypeValues.ELLIPSE if options.roi_graphic == "ellipse" else hd.sr.GraphicTypeValues.POLYLINE
    region = hd.sr.ImageRegion(
        graphic_type=graphic,
        graphic_data=roi_graphic_data(
            (finding.key_slice.row, finding.key_slice.column),
            radius_px(finding, image),
            options.roi_graphic,
            options.polygon_vertices,
        ),
        source_image=hd.sr.SourceImageForRegion.from_source_image(image),
    )
    nodule = _nodule_follow_up(index)
    changes, change_evaluations, change_texts = follow_up_items(nodule) if nodule is not None else ([], [], [])
    measurements = nodule_measurements(finding, result) + changes
    evaluations = nodule_evaluations(finding) + change_evaluations
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=region,
        finding_type=NODULE,
        finding_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        finding_sites=[_finding_site(finding)],
        algorithm_id=algorithm_identification(result.model),
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )
    group[0].ContentSequence.extend(change_texts)  # "not growing": a TEXT beside the NUM doubling times
    if finding.note:  # what the reader must know about this nodule's measurement (e.g. cut by the field of view)
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=COMMENT, value=finding.note[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    if options.sop_class == "comprehensive3d":
        _add_world_centre(group, finding, image)
    return group


def _add_world_centre(
    group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations, finding: Finding, image: Dataset
) -> None:
    """Attach the nodule's world centre as SCOORD3D POINT (INFERRED FROM) to the mean diameter NUM.

    highdicom refuses 3D coordinates inside a planar group, but the Comprehensive 3D SR IOD
    allows NUM INFERRED FROM SCOORD3D; 3D-aware viewers can jump to the point.
    """
    point = hd.sr.CoordinatesForMeasurement3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.array([finding.center_mm], dtype=float),
        frame_of_reference_uid=image.FrameOfReferenceUID,
    )
    for item in group[0].ContentSequence:
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == DIAMETER.value:
            if "ContentSequence" not in item:
                item.ContentSequence = hd.sr.ContentSequence()
            item.ContentSequence.append(point)
            return
    raise AssertionError("mean diameter measurement missing from the nodule group")


def _summary_group(
    result_series_uid: str,
    model: ModelIdentity,
    options: ResultOptions,
    digest: str,
    summary: CodedConcept | Code,
    text: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """Series-level group (TID 1501) saying what the algorithm concluded without a nodule ROI.

    Only when there is no nodule: OHIF 3.13.2 fails to open an SR in which a measurement group has
    no image region (it reads coords[0] of every group), so with nodules there is none.
    """
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=result_uid("tracking-summary", result_series_uid, model.version, digest, 0, options.uid_root),
            identifier="Lung nodule detection",
        ),
        finding_sites=[hd.sr.FindingSite(anatomic_location=LUNG)],
        algorithm_id=algorithm_identification(model),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=SUMMARY_OF_DETECTIONS, value=summary)],
    )
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(name=COMMENT, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    )
    return group


def risk_inputs_text(exam: ExamSummary) -> str:
    """What the Brock model was given, and which inputs were missing (replaced by its reference values)."""
    inputs = exam.risk_inputs
    age = f"{inputs.age_years:.0f} years" if inputs.age_years is not None else "unknown"
    family = inputs.family_history + (" (counted as no)" if inputs.family_history == "unknown" else "")
    missing = ", ".join(inputs.missing) if inputs.missing else "none"
    return (
        f"Brock model inputs: age {age}; sex {inputs.sex or 'unknown'}; family history of lung cancer {family}; "
        f"emphysema {'yes' if inputs.emphysema else 'no'}. Missing inputs (model reference value used): {missing}."
    )


def emphysema_items(exam: ExamSummary) -> list[hd.sr.TextContentItem]:
    """LAA-950 and the lung volume as TEXT: the report-level container takes CODE and TEXT only (TID 1500),
    and a measurement group without an image region would stop OHIF from opening the SR."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items = []
    if exam.laa950_pct is not None:
        items.append(hd.sr.TextContentItem(name=LAA950, value=f"{exam.laa950_pct:.1f} % of the lung volume",
                                           relationship_type=contains))
    if exam.lung_volume_ml is not None:
        items.append(hd.sr.TextContentItem(name=VOLUME, value=f"{exam.lung_volume_ml:.1f} mL (both lungs)",
                                           relationship_type=contains))
    return items


def exam_statements(exam: ExamSummary) -> hd.sr.ContainerContentItem:
    """Report-level Qualitative Evaluations (TID 1500): exam Lung-RADS, recommendation, LAA-950 and lung
    volume, risk-model inputs, caveats."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type=contains)
    items = [
        hd.sr.CodeContentItem(name=LUNG_RADS_CONCEPT, value=lung_rads_code(exam.lung_rads), relationship_type=contains),
        hd.sr.TextContentItem(name=RECOMMENDATION, value=exam.recommendation, relationship_type=contains),
        *emphysema_items(exam),
        hd.sr.TextContentItem(name=COMMENT, value=risk_inputs_text(exam), relationship_type=contains),
        hd.sr.TextContentItem(
            name=COMMENT, relationship_type=contains,
            value="Nodule zones are thirds of each lung's height: they approximate, and are not, the lobes.",
        ),
    ]
    if exam.reason:
        items.append(hd.sr.TextContentItem(name=COMMENT, value=exam.reason, relationship_type=contains))
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _document(
    sources: list[Dataset],
    groups: list,
    library: list[Dataset],
    source_series_uid: str,
    model: ModelIdentity,
    options: ResultOptions,
    digest: str,
    description: str,
    exam: ExamSummary | None = None,
    segmentation: Dataset | None = None,
) -> Dataset:
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(model, options),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
        # Image Library (TID 1600): the key slices only; listing all 261 slices makes the
        # tree (and highdicom) 20x slower and viewers find the series from the evidence anyway.
        referenced_images=library,
    )
    if exam is not None:
        report[0].ContentSequence.append(exam_statements(exam))
        follow_up = _FOLLOW_UP.get()
        if follow_up is not None:  # the comparison with the prior, or why there is none
            report[0].ContentSequence[-1].ContentSequence.extend(follow_up_statements(follow_up))
    sr_class = hd.sr.Comprehensive3DSR if options.sop_class == "comprehensive3d" else hd.sr.ComprehensiveSR
    root = options.uid_root
    sr = sr_class(
        # every referenced instance is evidence (PS3.3 C.17.2.3): the CT, and the SEG when its segments are referenced
        evidence=sources if segmentation is None else [*sources, segmentation],
        content=report[0],
        series_instance_uid=result_uid("sr-series", source_series_uid, model.version, digest, 0, root),
        series_number=options.sr_series_number,
        sop_instance_uid=result_uid("sr-instance", source_series_uid, model.version, digest, 0, root),
        instance_number=1,
        manufacturer=options.manufacturer,
        is_complete=True,
        institution_name=options.institution_name,
        series_description=description,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        coding_schemes=[lung_rads_scheme_item(), private_scheme_item()],
        contributing_equipment=[contributing_equipment(model, options)],
    )
    return sr


def build_sr(
    source: Sequence[Dataset],
    result: SeriesResult,
    options: ResultOptions | None = None,
    segmentation: Dataset | None = None,
) -> Dataset:
    """TID 1500 report of an analysed series: one ROI group per nodule (or a "no nodules" group), the exam
    statements at report level. With `segmentation` (the SEG built for the same result), each nodule also
    gets a TID 1411 group referencing its segment (IHE AIR)."""
    options = options or ResultOptions()
    if not result.analysed:
        return build_not_analysed_sr(source, result.not_analysed_reason or "not analysed", result.model, options,
                                     source_series_uid=result.series_instance_uid)
    sources = prepare_sources(source)
    digest = settings_digest(options)
    groups: list = []
    key_images: dict[str, Dataset] = {}
    for index, finding in enumerate(result.findings):
        image = find_instance(sources, finding.key_slice.sop_instance_uid)
        key_images[image.SOPInstanceUID] = image
        groups.append(_nodule_group(index, finding, image, result, options, digest))
    if segmentation is not None:
        groups.extend(_segment_groups(result, options, digest, segmentation))
    if not groups:
        groups.append(
            _summary_group(result.series_instance_uid, result.model, options, digest, WITHOUT_FINDINGS,
                           "No lung nodules detected.")
        )
    library = sort_by_position(list(key_images.values())) or [_middle(sources)]
    return _document(sources, groups, library, result.series_instance_uid, result.model, options, digest,
                     options.sr_series_description, result.exam, segmentation)


def _segment_groups(
    result: SeriesResult, options: ResultOptions, digest: str, segmentation: Dataset
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """After the planar groups (OHIF reads the first SCOORD of each Tracking UID), one per segment."""
    segments = len(segmentation.SegmentSequence)
    if segments != len(result.findings):
        raise ValueError(f"the segmentation has {segments} segments for {len(result.findings)} findings")
    return [_segment_group(i, f, result, options, digest, segmentation) for i, f in enumerate(result.findings)]


def _middle(sources: list[Dataset]) -> Dataset:
    return sources[len(sources) // 2]


def build_not_analysed_sr(
    source: Sequence[Dataset],
    reason: str,
    model: ModelIdentity,
    options: ResultOptions | None = None,
    source_series_uid: str | None = None,
) -> Dataset:
    """Report that the series was not analysed, stating why (e.g. slices too thick)."""
    options = options or ResultOptions()
    sources = prepare_sources(source)
    series_uid = source_series_uid or str(sources[0].SeriesInstanceUID)
    digest = settings_digest(options)
    group = _summary_group(series_uid, model, options, digest, NOT_ANALYSED, f"Series not analysed: {reason}")
    return _document(sources, [group], [_middle(sources)], series_uid, model, options, digest,
                     f"{options.sr_series_description} - NOT ANALYSED")
