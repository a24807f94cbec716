"""TID 1500 measurement reports for lung nodule findings (docs/architecture.md, "Results encoding").

One planar ROI group per nodule on its key slice, three NUM items first (OHIF shows
only those: mean diameter, volume, the headline probability of cancer), the other
measurements and the coded evaluations after; a "no nodules" group when there is none.
At report level, a Qualitative Evaluations container: exam Lung-RADS, recommendation,
LAA-950 and lung volume, risk-model inputs. In a follow-up (follow_up_context): per nodule the change
since the prior (status, prior values, volume change, doubling time, growth flag; the prior's Tracking
UID for a matched nodule) and at report level the prior study and SR, or "prior not available: <reason>".

The codes, and where each comes from, are in `sr_codes`; the comparison with the prior in `sr_follow_up`; the
algorithm's identification (shared with the SEG and the overlays) in `equipment`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes

from dicomnode.results.equipment import algorithm_identification, contributing_equipment, observation_context
from dicomnode.results.options import ResultOptions
from dicomnode.results.sources import find_instance, prepare_sources, radius_px, sort_by_position
from dicomnode.results.sr_codes import (
    ABSENT,
    AIR_FILLED_LUMEN,
    AIRWAY,
    AIRWAY_LEVEL,
    AIRWAY_LEVELS,
    ATTENUATION,
    BORDER_SHAPE,
    BROCK_ALGORITHM,
    BROCK_METHOD,
    CALCIFICATION,
    CALCIFICATION_DESCRIPTOR,
    CALCIFICATION_PATTERN,
    CERTAINTY_OF_FINDING,
    COMMENT,
    CORONARY_CALCIUM,
    CYST_KIND,
    DIAMETER,
    LAA950,
    LATERALITY,
    LOCATION_IN_CHEST,
    LONG_AXIS,
    LUNG,
    LUNG_RADS_CONCEPT,
    LUNG_RADS_MODIFIER,
    MARGIN,
    MEAN,
    MODEL_METHOD,
    MODEL_SCORE,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    NODULE,
    NOT_ANALYSED,
    OPACITY_DESCRIPTOR,
    PERIFISSURAL,
    PRESENT,
    PROBABILITY_OF_CANCER,
    PROCEDURE_REPORTED,
    QUALITATIVE_EVALUATIONS,
    RECOMMENDATION,
    SCORE_UNIT,
    SHORT_AXIS,
    S_MODIFIER_SUGGESTED,
    SOLID_COMPONENT_DIAMETER,
    SUBPLEURAL,
    SUMMARY_OF_DETECTIONS,
    VOLUME,
    WITHOUT_FINDINGS,
    ZONE,
    coded,
    lung_rads_code,
    lung_rads_scheme_item,
    mm_measurement,
    private_scheme_item,
)
from dicomnode.results.sr_follow_up import (
    current_follow_up,
    follow_up_items,
    follow_up_statements,
    nodule_follow_up,
    nodule_tracking,
)
from dicomnode.results.uids import result_uid, settings_digest
from inference.findings import ExamSummary, Finding, ModelIdentity, SeriesResult


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


def _finding_site(finding: Finding) -> hd.sr.FindingSite:
    """Lung, with the side as a laterality modifier when it could be told."""
    side = LATERALITY.get(finding.location.lung or "")
    return hd.sr.FindingSite(anatomic_location=LUNG, laterality=side)


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
        mm_measurement(DIAMETER, finding.mean_diameter_mm, derivation=MEAN),
        hd.sr.Measurement(name=VOLUME, value=round(float(finding.volume_mm3), 1), unit=codes.UCUM.CubicMillimeter),
        *headline,
    ]
    if finding.long_axis_mm > 0:
        measurements.append(mm_measurement(LONG_AXIS, finding.long_axis_mm))
    if finding.short_axis_mm > 0:
        measurements.append(mm_measurement(SHORT_AXIS, finding.short_axis_mm))
    if finding.solid_component_mm is not None:
        measurements.append(mm_measurement(SOLID_COMPONENT_DIAMETER, finding.solid_component_mm, derivation=MEAN))
    measurements.extend(rest)
    measurements.append(
        hd.sr.Measurement(name=CERTAINTY_OF_FINDING, value=_percent(finding.probability), unit=codes.UCUM.Percent)
    )
    return measurements


def nodule_evaluations(finding: Finding) -> list[hd.sr.QualitativeEvaluation]:
    """Attenuation type, margin, location, calcification, an air-filled lumen, the airway a lesion lies in and the
    Lung-RADS category, coded."""
    qe = hd.sr.QualitativeEvaluation
    evaluations = [qe(name=OPACITY_DESCRIPTOR, value=coded(ATTENUATION, finding.nodule_type, "attenuation type"))]
    if finding.margin is not None:  # a margin not assessed is not stated
        evaluations.append(qe(name=BORDER_SHAPE, value=coded(MARGIN, finding.margin, "margin")))
    if finding.location.zone is not None:
        evaluations.append(qe(name=LOCATION_IN_CHEST, value=coded(ZONE, finding.location.zone, "zone")))
    if finding.location.juxtapleural:
        evaluations.append(qe(name=LOCATION_IN_CHEST, value=SUBPLEURAL))
    if finding.location.perifissural:
        evaluations.append(qe(name=LOCATION_IN_CHEST, value=PERIFISSURAL))
    evaluations.append(qe(name=CALCIFICATION, value=PRESENT if finding.calcified else ABSENT))
    if finding.calcification_pattern is not None:
        pattern = coded(CALCIFICATION_PATTERN, finding.calcification_pattern, "calcification pattern")
        evaluations.append(qe(name=CALCIFICATION_DESCRIPTOR, value=pattern))
    if finding.cyst is not None:
        evaluations.append(qe(name=AIR_FILLED_LUMEN, value=coded(CYST_KIND, finding.cyst, "cyst")))
    if finding.airway is not None:
        evaluations.append(qe(name=LOCATION_IN_CHEST, value=AIRWAY))
        evaluations.append(qe(name=AIRWAY_LEVEL, value=coded(AIRWAY_LEVELS, finding.airway, "airway level")))
    evaluations.append(qe(name=LUNG_RADS_CONCEPT, value=lung_rads_code(finding.lung_rads)))
    return evaluations


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
    nodule = nodule_follow_up(index)
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


def significant_items(exam: ExamSummary) -> list[hd.sr.CodeContentItem | hd.sr.TextContentItem]:
    """The coronary calcium (TEXT: its grade and score, or why it was not measured) and, when suggested, the Lung-RADS
    modifier S (CODE) with the findings it is suggested for (TEXT)."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items: list[hd.sr.CodeContentItem | hd.sr.TextContentItem] = []
    if exam.coronary_calcium is not None:
        items.append(hd.sr.TextContentItem(name=CORONARY_CALCIUM, value=exam.coronary_calcium.words,
                                           relationship_type=contains))
    if exam.s_modifier_words:
        items.append(hd.sr.CodeContentItem(name=LUNG_RADS_MODIFIER, value=S_MODIFIER_SUGGESTED,
                                           relationship_type=contains))
        items.append(hd.sr.TextContentItem(name=COMMENT, value=exam.s_modifier_words, relationship_type=contains))
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
        *significant_items(exam),
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
        observation_context=observation_context(model, options),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
        # Image Library (TID 1600): the key slices only; listing all 261 slices makes the
        # tree (and highdicom) 20x slower and viewers find the series from the evidence anyway.
        referenced_images=library,
    )
    if exam is not None:
        report[0].ContentSequence.append(exam_statements(exam))
        follow_up = current_follow_up()
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
