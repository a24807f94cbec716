"""IHE AI Results (AIR) content of the result objects: the algorithm's identity, the procedure reported,
SR measurement groups linked to the SEG segments (docs/conformance.md, "IHE AI Results")."""
from __future__ import annotations

from dataclasses import replace

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomnode.results import ResultOptions, build_results, build_sr
from inference.findings import SeriesResult
from tests.results.dicom_validators import MODEL, not_analysed_result

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def _code(item: Dataset) -> tuple[str, str]:
    concept = item.ConceptNameCodeSequence[0]
    return str(concept.CodeValue), str(concept.CodingSchemeDesignator)


def _algorithm(ds: Dataset) -> Dataset:
    items = [e for e in ds.ContributingEquipmentSequence if e.PurposeOfReferenceCodeSequence[0].CodeValue == "1630"]
    assert len(items) == 1, f"{ds.Modality}: one Contributing Equipment item for the algorithm"
    return items[0]


def _device_observer_uid(sr: Dataset) -> str:
    return next(str(i.UID) for i in sr.ContentSequence if _code(i) == ("121012", "DCM"))


@pytest.fixture(scope="module")
def objects(series: tuple[Dataset, ...], result: SeriesResult) -> dict[str, Dataset]:
    built = build_results(list(series), result, ResultOptions(send_seg=True, send_overlays=False))
    return {ds.Modality: ds for ds in built}


def test_algorithm_is_contributing_equipment_with_a_device_uid_that_follows_the_weights(
    objects: dict[str, Dataset], series: tuple[Dataset, ...], result: SeriesResult
) -> None:
    sr, seg = objects["SR"], objects["SEG"]
    for ds in (sr, seg):
        item = _algorithm(ds)
        purpose = item.PurposeOfReferenceCodeSequence[0]
        assert (purpose.CodingSchemeDesignator, purpose.CodeMeaning) == ("99IHE", "Processing Algorithm")
        assert (item.Manufacturer, item.ManufacturerModelName, item.SoftwareVersions) == (
            "dicomnode", MODEL.name, MODEL.version)
    uid = _algorithm(sr).DeviceUID
    assert pydicom.uid.UID(uid).is_valid
    # one algorithm, one UID: SR equipment, SR device observer and SEG equipment agree
    assert _algorithm(seg).DeviceUID == uid == _device_observer_uid(sr)
    # deterministic for the same weights, different for new weights with the same name and version
    again = build_sr(list(series), result, ResultOptions())
    assert _algorithm(again).DeviceUID == uid
    retrained = replace(result, model=replace(MODEL, weights_sha256="cd" * 32))
    other = build_sr(list(series), retrained, ResultOptions())
    assert _algorithm(other).DeviceUID != uid
    assert _device_observer_uid(other) == _algorithm(other).DeviceUID
    # only the malignancy classifier retrained: same detector file, another bundle digest
    bundle_a = replace(result, model=replace(MODEL, bundle_sha256="01" * 32))
    bundle_b = replace(result, model=replace(MODEL, bundle_sha256="02" * 32))
    uid_a = _algorithm(build_sr(list(series), bundle_a, ResultOptions())).DeviceUID
    uid_b = _algorithm(build_sr(list(series), bundle_b, ResultOptions())).DeviceUID
    assert len({uid, uid_a, uid_b}) == 3


def test_the_bundle_digest_changes_with_any_weights_file() -> None:
    from inference.weights_bundle import load_weights_bundle

    bundle = load_weights_bundle()
    digest = bundle.combined_sha256()
    assert len(digest) == 64 and digest != bundle.sha256("detector")
    for role in bundle.manifest["files"]:
        files = {r: dict(v) for r, v in bundle.manifest["files"].items()}
        files[role]["sha256"] = "0" * 64
        changed = replace(bundle, manifest={**bundle.manifest, "files": files})
        assert changed.combined_sha256() != digest, role


def test_procedure_reported_is_the_chest_ct_not_the_algorithm(
    objects: dict[str, Dataset], series: tuple[Dataset, ...]
) -> None:
    for sr in (objects["SR"], build_sr(list(series), not_analysed_result(series, "too few slices"), ResultOptions())):
        reported = [i for i in sr.ContentSequence if _code(i) == ("121058", "DCM")]
        assert len(reported) == 1
        value = reported[0].ConceptCodeSequence[0]
        assert (value.CodeValue, value.CodingSchemeDesignator, value.CodeMeaning) == ("24627-2", "LN", "CT Chest")


def _groups(sr: Dataset) -> list[Dataset]:
    container = next(i for i in sr.ContentSequence if _code(i) == ("126010", "DCM"))
    return [g for g in container.ContentSequence if _code(g) == ("125007", "DCM")]


def _tracking(group: Dataset) -> tuple[str, str]:
    items = list(group.ContentSequence)
    text = next(i.TextValue for i in items if _code(i) == ("112039", "DCM"))
    uid = next(i.UID for i in items if _code(i) == ("112040", "DCM"))
    return str(text), str(uid)


def test_sr_groups_reference_each_nodule_segment_with_the_seg_tracking_identifiers(
    objects: dict[str, Dataset], result: SeriesResult
) -> None:
    sr, seg = objects["SR"], objects["SEG"]
    groups = _groups(sr)
    planar = [g for g in groups if any(i.ValueType == "SCOORD" for i in g.ContentSequence)]
    volumetric = [g for g in groups if any(_code(i) == ("121191", "DCM") for i in g.ContentSequence)]
    assert len(planar) == len(volumetric) == len(seg.SegmentSequence) == len(result.findings)
    for number, (flat, volume, segment) in enumerate(zip(planar, volumetric, seg.SegmentSequence), start=1):
        # "Referenced Segment" (TID 1411): the SEG instance and this nodule's segment number
        ref = next(i for i in volume.ContentSequence if _code(i) == ("121191", "DCM"))
        sop = ref.ReferencedSOPSequence[0]
        assert (sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID) == (SEG_SOP_CLASS, seg.SOPInstanceUID)
        assert sop.ReferencedSegmentNumber == segment.SegmentNumber == number
        source = next(i for i in volume.ContentSequence if _code(i) == ("121232", "DCM"))
        assert source.UID == result.series_instance_uid  # Source series for segmentation
        # the same Tracking Identifier and UID in the planar group, the volumetric group and the SEG segment
        assert _tracking(flat) == _tracking(volume) == (segment.TrackingID, segment.TrackingUID)
        assert segment.TrackingID == f"Nodule {number}"
    # the SEG is evidence of the SR (every referenced instance is listed)
    evidence = {
        s.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series_item in study.ReferencedSeriesSequence
        for s in series_item.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence


def test_without_seg_the_sr_has_only_planar_groups(series: tuple[Dataset, ...], result: SeriesResult) -> None:
    sr = build_results(list(series), result, ResultOptions(send_overlays=False))[0]
    groups = _groups(sr)
    assert len(groups) == len(result.findings)
    assert not any(_code(i) == ("121191", "DCM") for g in groups for i in g.ContentSequence)
