"""DICOM SEG of the nodules: frames hold the sphere voxels, segments link to the SR tracking UIDs."""
from __future__ import annotations

import numpy as np
import pytest

from dicomnode.results import ResultOptions, build_seg, result_uid, settings_digest
from dicomnode.results.seg import sphere_mask
from tests.results.dicom_validators import MODEL, empty_result


@pytest.fixture(scope="module")
def seg(series, result):
    return build_seg(list(series), result, ResultOptions(send_seg=True))


def test_segments_and_tracking(seg, result, series):
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.StudyInstanceUID == series[0].StudyInstanceUID
    assert seg.SeriesNumber == 9003
    assert seg.SegmentationType == "BINARY"
    assert len(seg.SegmentSequence) == len(result.findings)
    digest = settings_digest(ResultOptions(send_seg=True))
    for i, segment in enumerate(seg.SegmentSequence):
        assert segment.SegmentLabel == f"Lung nodule {i + 1}"
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert segment.TrackingUID == result_uid("tracking", result.series_instance_uid, MODEL.version, digest, i)


def test_frames_contain_the_nodule_voxels(seg, result, series):
    by_uid = {ds.SOPInstanceUID: ds for ds in series}
    pixels = seg.pixel_array  # frames x rows x columns
    for finding_index, finding in enumerate(result.findings):
        frames = [
            f for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence)
            if item.SegmentIdentificationSequence[0].ReferencedSegmentNumber == finding_index + 1
        ]
        slices = [
            seg.PerFrameFunctionalGroupsSequence[f].DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for f in frames
        ]
        # the key slice carries the nodule centre voxel
        assert finding.key_slice.sop_instance_uid in slices
        key_frame = frames[slices.index(finding.key_slice.sop_instance_uid)]
        row, col = round(finding.key_slice.row), round(finding.key_slice.column)
        assert pixels[key_frame, row, col] == 1
        # the frames span the sphere's extent along z (slice spacing 1.25 mm)
        zs = sorted(float(by_uid[uid].ImagePositionPatient[2]) for uid in slices)
        radius = finding.diameter_mm / 2
        assert zs[0] >= finding.center_mm[2] - radius - 1e-6 and zs[-1] <= finding.center_mm[2] + radius + 1e-6
        assert zs[-1] - zs[0] >= finding.diameter_mm - 2 * 1.25 - 1e-6
        # area on the key slice is the disc area (within a pixel ring)
        spacing = float(series[0].PixelSpacing[0])
        area_mm2 = pixels[key_frame].sum() * spacing**2
        dz = abs(float(by_uid[finding.key_slice.sop_instance_uid].ImagePositionPatient[2]) - finding.center_mm[2])
        expected = np.pi * (radius**2 - dz**2)
        assert area_mm2 == pytest.approx(expected, rel=0.1)


def test_sphere_mask_geometry(series):
    ct = series[100]
    ipp = [float(v) for v in ct.ImagePositionPatient]
    spacing = float(ct.PixelSpacing[0])
    centre = (ipp[0] + 200 * spacing, ipp[1] + 300 * spacing, ipp[2])  # column 200, row 300
    mask = sphere_mask(ct, centre, 10.0)
    rows, cols = np.nonzero(mask)
    assert (rows.mean(), cols.mean()) == pytest.approx((300, 200), abs=0.01)
    assert (rows.max() - rows.min()) * spacing == pytest.approx(10.0, abs=2 * spacing)
    assert not sphere_mask(ct, (centre[0], centre[1], ipp[2] + 5.1), 10.0).any()


def test_no_findings_no_seg(series):
    assert build_seg(list(series), empty_result(series), ResultOptions()) is None
