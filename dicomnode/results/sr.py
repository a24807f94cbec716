"""TID 1500 measurement reports for lung nodule findings (docs/architecture.md, "Results encoding").

One planar ROI group per nodule on its key slice, three NUM items first (OHIF shows
only those), coded evaluations after. Never the retired SRT scheme: SCT, DCM, UCUM
and our declared private Lung-RADS scheme only.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from copy import deepcopy

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes
from pydicom.tag import Tag

from dicomnode.results.options import ResultOptions
from dicomnode.results.uids import device_uid, result_uid, settings_digest
from inference.findings import Finding, ModelIdentity, SeriesResult

# No standard code list exists for Lung-RADS categories (docs/architecture.md, "Results encoding"): declare ours.
LUNG_RADS_SCHEME = "99DCMNODE_LRADS"
LUNG_RADS_CONCEPT = CodedConcept("LRADS", LUNG_RADS_SCHEME, "Lung-RADS assessment category")
LUNG_RADS_MEANINGS = {
    "1": "Lung-RADS 1 negative",
    "2": "Lung-RADS 2 benign appearance or behavior",
    "3": "Lung-RADS 3 probably benign",
    "4A": "Lung-RADS 4A suspicious",
    "4B": "Lung-RADS 4B very suspicious",
    "4X": "Lung-RADS 4X very suspicious with additional features",
}

NODULE = codes.SCT.Nodule  # 27925004
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = CodedConcept("49755003", "SCT", "Morphologically abnormal structure")
LUNG = codes.SCT.Lung  # 39607008
LONG_AXIS = codes.SCT.LongAxis  # 103339001
VOLUME = codes.SCT.Volume  # 118565006
PROBABILITY_OF_CANCER = codes.DCM.ProbabilityOfCancer  # 111047
CERTAINTY_OF_FINDING = codes.DCM.CertaintyOfFinding  # 111012, used for detection probability
IMPRESSION = codes.DCM.DifferentialDiagnosisImpression  # 111023
BENIGN = codes.SCT.Benign  # 30807003
MALIGNANT = codes.SCT.Malignant  # 21594007
SUMMARY_OF_DETECTIONS = codes.DCM.SummaryOfDetections  # 111064
WITH_FINDINGS = codes.DCM.AllAlgorithmsSucceededWithFindings  # 111242
WITHOUT_FINDINGS = codes.DCM.AllAlgorithmsSucceededWithoutFindings  # 111241
NOT_ANALYSED = codes.DCM.NoAlgorithmsSucceededWithoutFindings  # 111245
COMMENT = CodedConcept("121106", "DCM", "Comment")
PROCEDURE_REPORTED = codes.SCT.ComputedTomography  # 77477000

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
        copy = Dataset()
        for elem in ds:
            copy.add(elem if elem.tag == PIXEL_DATA else deepcopy(elem))
        if hasattr(ds, "file_meta"):
            copy.file_meta = ds.file_meta
        for keyword in _TYPE2_FROM_SOURCE:
            if keyword not in copy:
                setattr(copy, keyword, None)
        prepared.append(copy)
    return sort_by_position(prepared)


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
        name="dicomnode Lung-RADS v2022 categories (solid nodules, by mean diameter)",
        responsible_organization="dicomnode project",
    )


def algorithm_identification(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    # The weights hash pins the exact model; the name/version alone may be reused by retraining.
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[f"weights_sha256={model.weights_sha256}", f"engine={model.engine}"],
    )


def contributing_equipment(model: ModelIdentity, options: ResultOptions) -> hd.ContributingEquipment:
    return hd.ContributingEquipment(
        manufacturer=options.manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        institution_name=options.institution_name,
        contribution_description=f"Lung nodule detection and malignancy estimation ({model.engine})",
    )


def _observation_context(model: ModelIdentity, options: ResultOptions) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(options.device_name, model.name, options.uid_root),
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


def _nodule_group(
    index: int,
    finding: Finding,
    image: Dataset,
    result: SeriesResult,
    options: ResultOptions,
    digest: str,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    number = index + 1
    tracking = hd.sr.TrackingIdentifier(
        uid=result_uid("tracking", result.series_instance_uid, result.model.version, digest, index, options.uid_root),
        identifier=f"Nodule {number}",
    )
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
    algorithm = algorithm_identification(result.model)
    # Order matters: OHIF labels a group with its first three NUM items.
    measurements = [
        hd.sr.Measurement(
            name=LONG_AXIS,
            value=round(float(finding.diameter_mm), 2),
            unit=codes.UCUM.Millimeter,
        ),
        hd.sr.Measurement(
            name=VOLUME,
            value=round(float(finding.volume_mm3), 1),
            unit=codes.UCUM.CubicMillimeter,
        ),
        hd.sr.Measurement(
            name=PROBABILITY_OF_CANCER,
            value=round(float(finding.malignancy) * 100.0, 1),
            unit=codes.UCUM.Percent,
        ),
        hd.sr.Measurement(
            name=CERTAINTY_OF_FINDING,
            value=round(float(finding.probability) * 100.0, 1),
            unit=codes.UCUM.Percent,
        ),
    ]
    evaluations = [
        hd.sr.QualitativeEvaluation(
            name=IMPRESSION,
            value=MALIGNANT if finding.malignancy >= options.malignancy_threshold else BENIGN,
        ),
        hd.sr.QualitativeEvaluation(name=LUNG_RADS_CONCEPT, value=lung_rads_code(finding.lung_rads)),
    ]
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=region,
        finding_type=NODULE,
        finding_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=LUNG)],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )
    if options.sop_class == "comprehensive3d":
        _add_world_centre(group, finding, image)
    return group


def _add_world_centre(
    group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations, finding: Finding, image: Dataset
) -> None:
    """Attach the nodule's world centre as SCOORD3D POINT (INFERRED FROM) to the diameter NUM.

    highdicom refuses 3D coordinates inside a planar group, but the Comprehensive 3D SR IOD
    allows NUM INFERRED FROM SCOORD3D; 3D-aware viewers can jump to the point.
    """
    point = hd.sr.CoordinatesForMeasurement3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.array([finding.center_mm], dtype=float),
        frame_of_reference_uid=image.FrameOfReferenceUID,
    )
    for item in group[0].ContentSequence:
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == LONG_AXIS.value:
            if "ContentSequence" not in item:
                item.ContentSequence = hd.sr.ContentSequence()
            item.ContentSequence.append(point)
            return
    raise AssertionError("long axis measurement missing from the nodule group")


def _summary_group(
    result_series_uid: str,
    model: ModelIdentity,
    options: ResultOptions,
    digest: str,
    summary: CodedConcept | Code,
    text: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """Series-level group (TID 1501) saying what the algorithm concluded without a nodule ROI."""
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


def _document(
    sources: list[Dataset],
    groups: list,
    library: list[Dataset],
    source_series_uid: str,
    model: ModelIdentity,
    options: ResultOptions,
    digest: str,
    description: str,
) -> Dataset:
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(model, options),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
        # Image Library (TID 1600): the key slices only; listing all 261 slices makes the
        # tree (and highdicom) 20x slower and viewers find the series from the evidence anyway.
        referenced_images=library,
    )
    sr_class = hd.sr.Comprehensive3DSR if options.sop_class == "comprehensive3d" else hd.sr.ComprehensiveSR
    root = options.uid_root
    sr = sr_class(
        evidence=sources,
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
        coding_schemes=[lung_rads_scheme_item()],
        contributing_equipment=[contributing_equipment(model, options)],
    )
    return sr


def build_sr(source: Sequence[Dataset], result: SeriesResult, options: ResultOptions | None = None) -> Dataset:
    """TID 1500 report of an analysed series: one ROI group per nodule, or a "no nodules" group."""
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
    if not groups:
        groups.append(
            _summary_group(result.series_instance_uid, result.model, options, digest, WITHOUT_FINDINGS,
                           "No lung nodules detected.")
        )
    library = sort_by_position(list(key_images.values())) or [_middle(sources)]
    return _document(sources, groups, library, result.series_instance_uid, result.model, options, digest,
                     options.sr_series_description)


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
