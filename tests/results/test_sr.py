"""TID 1500 SR built from the real LIDC series: content read back with highdicom."""
from __future__ import annotations

from dataclasses import replace

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO

from dicomnode.results import ResultOptions, build_not_analysed_sr, build_sr, result_uid, settings_digest
from dicomnode.results.sr import LUNG_RADS_SCHEME
from tests.results.dicom_validators import (
    MODEL,
    empty_result,
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
    # contributing equipment: the algorithm as processing equipment
    ours = [e for e in sr.ContributingEquipmentSequence if e.Manufacturer == "dicomnode"]
    assert len(ours) == 1
    equipment = ours[0]
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert equipment.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "DCM"
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
        assert [s.value.value for s in group.finding_sites] == ["39607008"]
        # first three NUM items, in the order OHIF labels them
        measurements = group.get_measurements()
        names = [(m.name.value, m.name.scheme_designator) for m in measurements]
        assert names[:3] == [("103339001", "SCT"), ("118565006", "SCT"), ("111047", "DCM")]
        assert measurements[0].value == pytest.approx(finding.diameter_mm, abs=0.01)
        assert measurements[0].unit.value == "mm"
        assert measurements[1].value == pytest.approx(finding.volume_mm3, abs=0.1)
        assert measurements[1].unit.value == "mm3"
        assert measurements[2].value == pytest.approx(finding.malignancy * 100, abs=0.1)
        assert measurements[2].unit.value == "%"
        # detection probability comes after the three
        assert names[3] == ("111012", "DCM")
        assert measurements[3].value == pytest.approx(finding.probability * 100, abs=0.1)
        evaluations = {e.name.value: e.value for e in group.get_qualitative_evaluations()}
        assert evaluations["LRADS"].value == finding.lung_rads
        assert evaluations["LRADS"].scheme_designator == LUNG_RADS_SCHEME
        expected = "21594007" if finding.malignancy >= 0.5 else "30807003"
        assert evaluations["111023"].value == expected and evaluations["111023"].scheme_designator == "SCT"
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
