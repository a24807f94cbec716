"""TID 1500 SR built from the real LIDC series: content read back with highdicom."""
from __future__ import annotations

from dataclasses import replace

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO

from dicomnode.results import ResultOptions, build_not_analysed_sr, build_sr, result_uid, settings_digest
from dicomnode.results.sr_codes import LUNG_RADS_SCHEME
from inference.findings import CoronaryCalciumSummary, NoduleLocation
from tests.results.dicom_validators import (
    MODEL,
    empty_result,
    exam_summary,
    not_analysed_result,
    synthetic_result,
)


@pytest.fixture(scope="module")
def sr(series, result):
    return build_sr(list(series), result, ResultOptions())


def _encoded(ds: pydicom.Dataset) -> bytes:
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _planar_groups(ds: pydicom.Dataset):
    parsed = hd.sr.srread(DicomBytesIO(_encoded(ds)))
    return parsed.content.get_planar_roi_measurement_groups()


def test_study_series_and_sop_class(sr, series):
    ct = series[0]
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.StudyInstanceUID == ct.StudyInstanceUID
    assert sr.SeriesInstanceUID != ct.SeriesInstanceUID
    assert sr.SeriesNumber == 9001
    assert sr.PatientID == "LIDC-IDRI-0002"
    assert sr.Modality == "SR"
    # the Lung-RADS scheme is declared
    schemes = {item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence}
    assert LUNG_RADS_SCHEME in schemes
    # contributing equipment: the algorithm, as IHE AIR identifies it (99IHE 1630 "Processing Algorithm")
    ours = [e for e in sr.ContributingEquipmentSequence if e.Manufacturer == "dicomnode"]
    assert len(ours) == 1
    equipment = ours[0]
    purpose = equipment.PurposeOfReferenceCodeSequence
    assert len(purpose) == 1
    assert (purpose[0].CodeValue, purpose[0].CodingSchemeDesignator) == ("1630", "99IHE")
    assert purpose[0].CodeMeaning == "Processing Algorithm"
    assert equipment.ManufacturerModelName == MODEL.name
    assert equipment.SoftwareVersions == MODEL.version


def test_planar_groups_match_findings(sr, result, series):
    groups = _planar_groups(sr)
    assert len(groups) == len(result.findings)
    digest = settings_digest(ResultOptions())
    for index, (group, finding) in enumerate(zip(groups, result.findings)):
        assert group.tracking_identifier == f"Nodule {index + 1}"
        assert group.tracking_uid == result_uid("tracking", result.series_instance_uid, MODEL.version, digest, index)
        assert group.finding_type.value == "27925004" and group.finding_type.scheme_designator == "SCT"
        assert group.finding_category.value == "49755003"
        site = group.finding_sites[0]
        assert (site.value.value, site.value.scheme_designator) == ("39607008", "SCT")  # Lung, as before
        side = {"right": "24028007", "left": "7771000"}[finding.location.lung]
        assert site.laterality.value == side and site.laterality.scheme_designator == "SCT"
        _assert_measurements(group, finding)
        _assert_evaluations(group, finding)
        # the ROI: closed polygon around the key-slice centre, selected from that CT image
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        points = region.value
        assert np.allclose(points[0], points[-1])
        centre = points[:-1].mean(axis=0)
        assert centre == pytest.approx([finding.key_slice.column + 0.5, finding.key_slice.row + 0.5], abs=0.01)
        radius = np.hypot(*(points[:-1] - centre).T)
        assert radius == pytest.approx(np.full(len(radius), finding.radius_px[1]), abs=0.01)
        source = region.ContentSequence[0]
        assert source.RelationshipType == "SELECTED FROM"
        assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == finding.key_slice.sop_instance_uid


def _num(measurement) -> tuple[str, str, float, str]:
    return (measurement.name.value, measurement.name.scheme_designator, measurement.value, measurement.unit.value)


def _modifiers(measurement) -> dict[str, tuple[str, str] | str]:
    """HAS CONCEPT MOD children of a NUM: concept code -> (code, scheme) of a CODE, or a TEXT value."""
    out: dict[str, tuple[str, str] | str] = {}
    for item in measurement[0].ContentSequence if "ContentSequence" in measurement[0] else ():
        key = item.ConceptNameCodeSequence[0].CodeValue
        if item.ValueType == "CODE":
            code = item.ConceptCodeSequence[0]
            out[key] = (code.CodeValue, code.CodingSchemeDesignator)
        elif item.ValueType == "TEXT":
            out[key] = item.TextValue
    return out


def _assert_measurements(group, finding) -> None:
    measurements = group.get_measurements()
    nums = [_num(m) for m in measurements]
    # first three, in the order OHIF labels them: mean diameter, volume, Brock probability of cancer
    assert nums[0] == ("81827009", "SCT", pytest.approx(finding.mean_diameter_mm, abs=0.05), "mm")
    assert _modifiers(measurements[0])["121401"] == ("373098007", "SCT")  # Derivation = Mean
    assert nums[1] == ("118565006", "SCT", pytest.approx(finding.volume_mm3, abs=0.05), "mm3")
    assert nums[2] == ("111047", "DCM", pytest.approx(finding.brock_risk * 100, abs=0.05), "%")
    brock = _modifiers(measurements[2])
    assert brock["370129005"] == ("BROCK", "99DCMNODE")  # Measurement Method names the model
    assert brock["111001"] == "Brock University (PanCan) model"
    assert "McWilliams" in brock["111003"]
    by_code = {n[0]: n for n in nums[3:]}
    assert by_code["103339001"] == ("103339001", "SCT", pytest.approx(finding.long_axis_mm, abs=0.05), "mm")
    assert by_code["103340004"] == ("103340004", "SCT", pytest.approx(finding.short_axis_mm, abs=0.05), "mm")
    if finding.solid_component_mm is None:
        assert "SOLIDDIAM" not in by_code
    else:
        assert by_code["SOLIDDIAM"] == ("SOLIDDIAM", "99DCMNODE", pytest.approx(finding.solid_component_mm, abs=0.05),
                                        "mm")
    # the model score is its own item, never a probability of cancer, and says what it is
    assert [n for n in nums if n[0] == "111047"] == [nums[2]]
    score = next(m for m in measurements if m.name.value == "MODELSCORE")
    assert score.value == pytest.approx(finding.model_score, abs=5e-4) and score.unit.value == "{score}"
    assert "phantom-trained" in score.name.meaning and "not p(cancer)" in score.name.meaning
    assert nums[-1] == ("111012", "DCM", pytest.approx(finding.probability * 100, abs=0.05), "%")


ATTENUATION_CODES = {"solid": ("35702001", "SCT"), "part_solid": ("PARTSOLID", "99DCMNODE"),
                     "ground_glass": ("112120", "DCM")}
MARGIN_CODES = {"smooth": ("82280004", "SCT"), "lobulated": ("112135", "DCM"), "spiculated": ("112136", "DCM")}
ZONE_CODES = {"upper": ("281392002", "SCT"), "middle": ("281393007", "SCT"), "lower": ("281394001", "SCT")}


CYST_CODES = {"thin_walled": "THINCYST", "thick_walled": "THICKCYST", "multilocular": "MULTICYST", "cavity": "CAVITY",
              "thin_walled_in_part": "THINCYSTPART", "with_opacity": "CYSTOPACITY"}


def test_a_cyst_is_coded_and_has_no_brock_risk(series, result):
    """A thin-walled cyst (Lung-RADS 1, not classified; the Brock model is for nodules): its air-filled lumen is a
    coded evaluation, and no probability of cancer is stated for it."""
    cyst = replace(result.findings[1], cyst="thin_walled", brock_risk=None, lung_rads="1",
                   lung_rads_reasons=("thin-walled unilocular cyst 6.5 mm (wall < 2 mm): benign, not classified",))
    ds = build_sr(list(series), replace(result, findings=[result.findings[0], cyst]), ResultOptions())
    group = _planar_groups(ds)[1]
    evaluations = {e.name.value: (e.value.value, e.value.scheme_designator) for e in group.get_qualitative_evaluations()}
    assert evaluations["AIRLUMEN"] == ("THINCYST", "99DCMNODE") and evaluations["LRADS"] == ("1", LUNG_RADS_SCHEME)
    assert all(m.name.value != "111047" for m in group.get_measurements())


def test_an_airway_nodule_is_coded_and_has_no_brock_risk(series, result):
    """An airway nodule (Lung-RADS 4A, graded by the v2022 airway rules): its location in the chest is the airway
    (SNOMED CT Airway structure) beside its zone, its level a coded evaluation, and no probability of cancer is
    stated for it."""
    polyp = replace(result.findings[1], airway="segmental_or_proximal", brock_risk=None, lung_rads="4A",
                    lung_rads_reasons=("segmental or more proximal airway nodule 6.5 mm: 3-month LDCT",))
    ds = build_sr(list(series), replace(result, findings=[result.findings[0], polyp]), ResultOptions())
    group = _planar_groups(ds)[1]
    evaluations: dict[str, list[tuple[str, str]]] = {}
    for e in group.get_qualitative_evaluations():
        evaluations.setdefault(e.name.value, []).append((e.value.value, e.value.scheme_designator))
    assert ("89187006", "SCT") in evaluations["112013"]  # Location in Chest: Airway structure
    assert evaluations["AIRWAYLEVEL"] == [("SEGAIRWAY", "99DCMNODE")]
    assert evaluations["LRADS"] == [("4A", LUNG_RADS_SCHEME)]
    assert all(m.name.value != "111047" for m in group.get_measurements())
    assert "AIRWAYLEVEL" not in {e.name.value for e in _planar_groups(ds)[0].get_qualitative_evaluations()}


def _assert_evaluations(group, finding) -> None:
    evaluations: dict[str, list[tuple[str, str]]] = {}
    for e in group.get_qualitative_evaluations():
        evaluations.setdefault(e.name.value, []).append((e.value.value, e.value.scheme_designator))
    assert evaluations["112027"] == [ATTENUATION_CODES[finding.nodule_type]]  # Opacity Descriptor
    if finding.margin is None:  # not assessed: no border shape is stated
        assert "112015" not in evaluations
    else:
        assert evaluations["112015"] == [MARGIN_CODES[finding.margin]]  # Border shape
    expected_location = [ZONE_CODES[finding.location.zone]]
    if finding.location.juxtapleural:
        expected_location.append(("68599007", "SCT"))  # Subpleural
    if finding.location.perifissural:
        expected_location.append(("PERIFISSURAL", "99DCMNODE"))
    assert evaluations["112013"] == expected_location  # Location in Chest
    assert evaluations["CALC"] == [("52101004", "SCT") if finding.calcified else ("272519000", "SCT")]
    if finding.calcification_pattern is None:
        assert "112030" not in evaluations
    else:
        assert evaluations["112030"] == [(finding.calcification_pattern.upper() + "CALC", "99DCMNODE")]
    if finding.cyst is None:
        assert "AIRLUMEN" not in evaluations
    else:
        assert evaluations["AIRLUMEN"] == [(CYST_CODES[finding.cyst], "99DCMNODE")]
    assert evaluations["LRADS"] == [(finding.lung_rads, LUNG_RADS_SCHEME)]
    assert "111023" not in evaluations  # no Benign/Malignant impression from a phantom-trained score


def test_algorithm_and_device_observer(sr):
    group = _planar_groups(sr)[0]
    algorithm = {
        item.ConceptNameCodeSequence[0].CodeValue: item.TextValue
        for item in group[0].ContentSequence
        if item.ValueType == "TEXT" and item.RelationshipType == "HAS CONCEPT MOD"
        and item.ConceptNameCodeSequence[0].CodeValue in ("111001", "111003")
    }
    assert algorithm == {"111001": MODEL.name, "111003": MODEL.version}
    parameters = [
        item.TextValue for item in group[0].ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "111002"
    ]
    assert parameters == [f"weights_sha256={MODEL.weights_sha256}", f"engine={MODEL.engine}"]
    observer = [item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "121005"]
    assert observer[0].ConceptCodeSequence[0].CodeValue == "121007"  # Device
    names = {
        item.ConceptNameCodeSequence[0].CodeMeaning: item.get("TextValue", item.get("UID"))
        for item in sr.ContentSequence
        if item.RelationshipType == "HAS OBS CONTEXT"
    }
    assert names["Device Observer Name"] == "dicomnode"
    assert names["Device Observer Manufacturer"] == "dicomnode"
    assert names["Device Observer Model Name"] == MODEL.name
    assert names["Device Observer UID"].startswith("2.25.")


def _exam_container(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    parsed = hd.sr.srread(DicomBytesIO(_encoded(ds)))
    containers = [item for item in parsed.content[0].ContentSequence
                  if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    assert len(containers) == 1
    assert containers[0].ConceptNameCodeSequence[0].CodingSchemeDesignator == "UMLS"
    return list(containers[0].ContentSequence)


def test_exam_statements_at_report_level(sr, result):
    items = _exam_container(sr)
    lung_rads = [i for i in items if i.ConceptNameCodeSequence[0].CodeValue == "LRADS"]
    assert [(i.ConceptCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodingSchemeDesignator)
            for i in lung_rads] == [(result.exam.lung_rads, LUNG_RADS_SCHEME)]
    texts = [(i.ConceptNameCodeSequence[0].CodeValue, i.TextValue) for i in items if i.ValueType == "TEXT"]
    assert ("121075", result.exam.recommendation) in texts
    assert ("LAA950", "3.8 % of the lung volume") in texts
    assert ("118565006", "5231.6 mL (both lungs)") in texts
    comments = " ".join(t for code, t in texts if code == "121106")
    # the inputs the Brock model used, the missing ones named, family history's default said
    assert "age unknown; sex unknown" in comments
    assert "family history of lung cancer unknown (counted as no)" in comments
    assert "Missing inputs (model reference value used): age, sex." in comments
    assert "approximate, and are not, the lobes" in comments
    # the coronary calcium (SCT 450360000) and the Lung-RADS modifier S it suggests, CODE and its reasons
    assert ("450360000", "severe, Agatston-equivalent 412 (non-gated CT; 7 lesions)") in texts
    modifier = [i for i in items if i.ConceptNameCodeSequence[0].CodeValue == "LRADSMOD"]
    assert [(i.ConceptCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodingSchemeDesignator)
            for i in modifier] == [("LRADSS", "99DCMNODE")]
    assert "Lung-RADS S suggested for severe coronary artery calcification (Agatston-equivalent 412" in comments


def test_no_s_modifier_and_calcium_not_measured_are_stated(series, result):
    exam = replace(result.exam, significant_findings=(), coronary_calcium=CoronaryCalciumSummary(
        None, note="not measured: the heart was not found in the scan"))
    items = _exam_container(build_sr(list(series), replace(result, exam=exam), ResultOptions()))
    assert not [i for i in items if i.ConceptNameCodeSequence[0].CodeValue == "LRADSMOD"]
    texts = [(i.ConceptNameCodeSequence[0].CodeValue, i.TextValue) for i in items if i.ValueType == "TEXT"]
    assert ("450360000", "not measured: the heart was not found in the scan") in texts
    assert not any("S suggested" in t for _, t in texts)


def test_no_measurement_group_without_a_region_beside_the_nodules(sr):
    """OHIF 3.13.2 cannot open an SR with a region-less group: the exam is stated at report level instead."""
    parsed = hd.sr.srread(DicomBytesIO(_encoded(sr)))
    assert parsed.content.get_image_measurement_groups() == []


def test_validated_model_score_is_the_headline_probability(series):
    """Only weights declared validated may give the probability of cancer; Brock then follows, still named."""
    result = synthetic_result(series, count=1, headline="model")
    group = _planar_groups(build_sr(list(series), result, ResultOptions()))[0]
    finding = result.findings[0]
    measurements = group.get_measurements()
    probabilities = [m for m in measurements if m.name.value == "111047"]
    assert measurements[2] is probabilities[0]
    assert probabilities[0].value == pytest.approx(finding.model_score * 100, abs=0.05)
    assert _modifiers(probabilities[0])["370129005"] == ("DLMODEL", "99DCMNODE")
    assert _modifiers(probabilities[0])["111001"] == MODEL.name
    assert probabilities[1].value == pytest.approx(finding.brock_risk * 100, abs=0.05)
    assert _modifiers(probabilities[1])["370129005"] == ("BROCK", "99DCMNODE")
    assert "MODELSCORE" not in {m.name.value for m in measurements}


def test_unknown_attenuation_type_is_refused_by_name(series):
    result = synthetic_result(series, count=1)
    result.findings[0] = replace(result.findings[0], nodule_type="cavitary")
    with pytest.raises(ValueError, match="attenuation type 'cavitary'"):
        build_sr(list(series), result, ResultOptions())


def test_image_library_lists_key_slices(sr, result):
    library = [item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "111028"]
    assert len(library) == 1
    referenced = {
        image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for group in library[0].ContentSequence
        for image in group.ContentSequence
    }
    assert referenced == {f.key_slice.sop_instance_uid for f in result.findings}


def test_never_the_srt_scheme(series, result):
    for options in (ResultOptions(), ResultOptions(sop_class="comprehensive3d")):
        blob = _encoded(build_sr(list(series), result, options))
        assert b"SRT" not in blob
        assert b"SCT" in blob


def test_uids_are_deterministic(series, result):
    first = build_sr(list(series), result, ResultOptions())
    again = build_sr(list(series), result, ResultOptions())
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    newer = replace(result, model=replace(MODEL, version="0.3.2"))
    other = build_sr(list(series), newer, ResultOptions())
    assert other.SeriesInstanceUID != first.SeriesInstanceUID
    assert other.SOPInstanceUID != first.SOPInstanceUID
    # a content-changing option changes the UIDs; a send switch does not
    assert build_sr(list(series), result, ResultOptions(roi_graphic="ellipse")).SOPInstanceUID != first.SOPInstanceUID
    assert build_sr(list(series), result, ResultOptions(send_seg=True)).SOPInstanceUID == first.SOPInstanceUID


def test_source_datasets_are_not_mutated(series):
    blank = pydicom.dcmread(str(series[0].filename), stop_before_pixels=True)
    del blank.PatientName, blank.PatientSex, blank.StudyID, blank.AccessionNumber
    sources = [blank]
    result = synthetic_result(tuple(sources), count=1)
    sr = build_sr(sources, result, ResultOptions())
    assert "PatientName" not in blank and "StudyID" not in blank
    assert "PatientName" in sr and not sr.PatientName
    assert "AccessionNumber" in sr and not sr.AccessionNumber
    assert sr.PatientID == "LIDC-IDRI-0002"


def test_changing_a_result_never_reaches_the_source_datasets(series):
    sources = [pydicom.dcmread(str(ds.filename), stop_before_pixels=True) for ds in series[:40]]
    first = build_sr(sources, synthetic_result(tuple(sources), count=1), ResultOptions())
    names = {str(ds.PatientName) for ds in sources}
    first.PatientID = "SOMEONE-ELSE"
    first.PatientName = "Else^Someone"
    assert {ds.PatientID for ds in sources} == {"LIDC-IDRI-0002"}
    assert {str(ds.PatientName) for ds in sources} == names
    again = build_sr(sources, synthetic_result(tuple(sources), count=1), ResultOptions())
    assert again.PatientID == "LIDC-IDRI-0002" and str(again.PatientName) != "Else^Someone"


def test_comprehensive_3d_adds_world_point(series, result):
    sr3d = build_sr(list(series), result, ResultOptions(sop_class="comprehensive3d"))
    assert sr3d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    groups = _planar_groups(sr3d)
    for group, finding in zip(groups, result.findings):
        diameter = group.get_measurements()[0]
        points = [item for item in diameter[0].ContentSequence if item.ValueType == "SCOORD3D"]
        assert len(points) == 1
        assert points[0].GraphicType == "POINT"
        assert points[0].ReferencedFrameOfReferenceUID == series[0].FrameOfReferenceUID
        assert [float(v) for v in points[0].GraphicData] == pytest.approx(finding.center_mm, abs=1e-3)


def _summary(ds: pydicom.Dataset) -> tuple[str, str]:
    parsed = hd.sr.srread(DicomBytesIO(_encoded(ds)))
    assert parsed.content.get_planar_roi_measurement_groups() == []
    groups = parsed.content.get_image_measurement_groups()
    assert len(groups) == 1
    evaluation = groups[0].get_qualitative_evaluations()[0]
    assert evaluation.name.value == "111064"
    comment = [item.TextValue for item in groups[0][0].ContentSequence if item.ValueType == "TEXT"
               and item.ConceptNameCodeSequence[0].CodeValue == "121106"]
    return evaluation.value.value, comment[0]


def test_no_nodule_report(series):
    sr = build_sr(list(series), empty_result(series), ResultOptions())
    code, text = _summary(sr)
    assert code == "111241"  # all algorithms succeeded; without findings
    assert text == "No lung nodules detected."


def test_not_analysed_report(series):
    reason = "slice thickness 5.0 mm exceeds 2.5 mm"
    sr = build_not_analysed_sr(list(series), reason, MODEL, ResultOptions())
    code, text = _summary(sr)
    assert code == "111245"  # no algorithms succeeded; without findings
    assert reason in text
    assert "NOT ANALYSED" in sr.SeriesDescription
    # build_sr routes a not-analysed result to the same report
    routed = build_sr(list(series), not_analysed_result(series, reason), ResultOptions())
    assert routed.SOPInstanceUID == sr.SOPInstanceUID
    assert _summary(routed) == (code, text)


def test_incomplete_exam_states_category_0_and_why(series):
    """Lungs not fully in the field of view: Lung-RADS 0 at report level with the reason, never a crash."""
    result = synthetic_result(series, count=1)
    reason = "lungs not fully in the field of view: the apices are cut"
    result.exam = replace(exam_summary("0"), reason=reason, lungs_fully_covered=False)
    items = _exam_container(build_sr(list(series), result, ResultOptions()))
    code = next(i for i in items if i.ConceptNameCodeSequence[0].CodeValue == "LRADS").ConceptCodeSequence[0]
    assert (code.CodeValue, code.CodeMeaning) == ("0", "Lung-RADS 0 incomplete")
    assert reason in [i.TextValue for i in items if i.ValueType == "TEXT"]


def test_missing_risk_and_side_are_left_out_not_invented(series):
    """No Brock risk: no probability of cancer item; no side or zone: no laterality or location item."""
    result = synthetic_result(series, count=1)
    result.findings[0] = replace(result.findings[0], brock_risk=None, location=NoduleLocation())
    group = _planar_groups(build_sr(list(series), result, ResultOptions()))[0]
    names = [m.name.value for m in group.get_measurements()]
    assert "111047" not in names
    assert names[:3] == ["81827009", "118565006", "103339001"]  # OHIF then shows the long axis third
    assert group.finding_sites[0].laterality is None
    assert "112013" not in {e.name.value for e in group.get_qualitative_evaluations()}


def test_margin_not_assessed_states_no_border_shape(series):
    """A margin not assessed (None) gets no Border shape item: the SR never says smooth for it."""
    result = synthetic_result(series, count=2)
    result.findings[0] = replace(result.findings[0], margin=None)
    groups = _planar_groups(build_sr(list(series), result, ResultOptions()))
    names = [[e.name.value for e in g.get_qualitative_evaluations()] for g in groups]
    assert "112015" not in names[0] and "112015" in names[1]
    assert "112027" in names[0]  # the other evaluations stay


def test_a_nodule_note_is_its_groups_comment(series):
    """What the reader must know about one nodule's measurement (e.g. its size less reliable) is a TEXT
    Comment in that nodule's group, not lost outside the report; a nodule without a note has none."""
    result = synthetic_result(series, count=2)
    note = "borders a vessel, an airway or the pleura over 62% of its surface: its volume is less reliable"
    result.findings[1] = replace(result.findings[1], note=note)
    groups = _planar_groups(build_sr(list(series), result, ResultOptions()))

    def comments(group) -> list[str]:
        return [item.TextValue for item in group[0].ContentSequence
                if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106"]

    assert comments(groups[0]) == [] and comments(groups[1]) == [note]


def _private_codes(items) -> set[str]:
    """Every code of the private scheme in an SR's content tree (concept names and coded values)."""
    found: set[str] = set()
    for item in items:
        for attribute in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            for code in getattr(item, attribute, []):
                if code.CodingSchemeDesignator == "99DCMNODE":
                    found.add(code.CodeValue)
        found |= _private_codes(getattr(item, "ContentSequence", []))
    return found


def test_every_private_code_the_sr_uses_is_in_the_conformance_statement(series, result):
    """An integration engineer maps the SR's codes from docs/conformance.md (section 10.2): every 99DCMNODE code an SR
    carries, with a cyst and an airway nodule among its findings, is listed there."""
    from dicomnode import conformance

    cyst = replace(result.findings[1], cyst="thick_walled", brock_risk=None, lung_rads="4A")
    polyp = replace(result.findings[0], airway="segmental_or_proximal", brock_risk=None, lung_rads="4A")
    ds = build_sr(list(series), replace(result, findings=[polyp, cyst]), ResultOptions())
    used = _private_codes(ds.ContentSequence)
    assert {"AIRLUMEN", "THICKCYST", "AIRWAYLEVEL", "SEGAIRWAY", "MODELSCORE", "LRADSMOD", "LRADSS"} <= used
    listed = {c.value for c in conformance.private_concepts()}
    assert used <= listed, used - listed
    statement = conformance.generate()
    assert all(f"| {code} |" in statement for code in used)
