"""The side-by-side overlay of a matched nodule (issue 12): prior key slice left, current right, each
ringed where its nodule is, from its own source, at the current scale; a secondary capture of the current
exam's patient and study in the overlay series."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicomnode.results import ResultOptions, build_overlays
from dicomnode.results.overlay import (
    COMPARISON_GAP_PX,
    OUTLINE_COLOUR,
    OUTLINE_MARGIN_PX,
    build_comparison_overlay,
    change_line,
)
from inference.findings import Finding, KeySlice, SeriesResult, Verdict
from tests.results.dicom_validators import MODEL, dciodvfy, exam_summary, save

PRIOR_HU, CURRENT_HU, NODULE_HU = -200, -900, 0  # lung window W1500 L-600: grey 195, 76 and 229


def grey(hu: int) -> int:
    return int(np.clip((hu + 1350) / 1500 * 255, 0, 255))


def ct_slice(study_uid: str, date: str, size: int, spacing: float, background: int, nodule: tuple[int, int],
             radius_px: float) -> Dataset:
    """One CT slice of patient P-12: a uniform background with a round nodule of radius_px at (row, column)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = "DOE^JANE", "P-12", "HOSP"
    ds.PatientBirthDate, ds.PatientSex = "19600101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = date, "101010", "A1", "1"
    ds.ReferringPhysicianName, ds.Modality, ds.BodyPartExamined = "", "CT", "CHEST"
    ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 1, 1, "test"
    ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [-150.0, -150.0, -100.0]
    ds.PixelSpacing, ds.SliceThickness = [spacing, spacing], 1.0
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    rows, cols = np.mgrid[0:size, 0:size]
    hu = np.full((size, size), background, np.int16)
    hu[(rows - nodule[0]) ** 2 + (cols - nodule[1]) ** 2 <= radius_px ** 2] = NODULE_HU
    ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
    return ds


def finding(ds: Dataset, row: float, col: float, diameter_mm: float, volume: float, lung_rads: str) -> Finding:
    r = diameter_mm / 2 / float(ds.PixelSpacing[0])
    return Finding(center_mm=(0.0, 0.0, -100.0), diameter_mm=diameter_mm, volume_mm3=volume, probability=0.9,
                   model_score=0.3, lung_rads=lung_rads, key_slice=KeySlice(ds.SOPInstanceUID, ds.SOPClassUID, row, col),
                   radius_px=(r, r))


# the prior: a 200 x 200 slice at 0.8 mm, its nodule near the left edge; the current: 256 x 256 at 0.6 mm
PRIOR = ct_slice("1.2.826.0.9.1", "20240115", 200, 0.8, PRIOR_HU, (100, 60), 7.5)
CURRENT = ct_slice("1.2.826.0.9.2", "20250121", 256, 0.6, CURRENT_HU, (150, 170), 13.2)
PRIOR_F = finding(PRIOR, 100.0, 60.0, 12.0, 905.0, "4A")
CURRENT_F = finding(CURRENT, 150.0, 170.0, 15.8, 2065.0, "4B")
RESULT = SeriesResult(CURRENT.SeriesInstanceUID, Verdict.SUSPICIOUS, 0.2, MODEL, findings=[CURRENT_F],
                      exam=exam_summary("4B"))
WIDTH = 256 + COMPARISON_GAP_PX


def _ring_fraction(image: np.ndarray, row: float, col: float, radius: float) -> float:
    """Share of the angles around (row, col) at which the outline colour lies on the ring."""
    angles = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    hits = np.zeros(72, bool)
    for d in (0.5, 1.0, 1.5, 2.0):  # PIL draws the 2 px outline just inside the box
        rows = np.round(row + (radius - d) * np.sin(angles)).astype(int)
        cols = np.round(col + (radius - d) * np.cos(angles)).astype(int)
        hits |= np.all(image[rows, cols] == OUTLINE_COLOUR, axis=1)
    return float(hits.mean())


@pytest.fixture(scope="module")
def sc() -> Dataset:
    change = change_line(PRIOR_F, CURRENT_F, 470.0, "growing")
    return build_comparison_overlay(CURRENT, PRIOR, CURRENT_F, PRIOR_F, RESULT, 1, change)


def test_both_nodules_are_ringed_where_they_are_each_half_from_its_own_slice(sc: Dataset) -> None:
    pixels = sc.pixel_array
    assert pixels.shape == (256, 2 * 256 + COMPARISON_GAP_PX, 3)
    left, right = pixels[:, :256], pixels[:, WIDTH:]
    # the current nodule (15.8 mm at 0.6 mm) ringed at its own centre on the right
    assert _ring_fraction(right, 150, 170, 15.8 / 2 / 0.6 + OUTLINE_MARGIN_PX) > 0.8
    # the prior nodule (12 mm) resampled to 0.6 mm and placed at the current nodule's position on the left
    assert _ring_fraction(left, 150, 170, 12.0 / 2 / 0.6 + OUTLINE_MARGIN_PX) > 0.8
    # inside each ring the nodule itself: the prior's is 7.5 px at 0.8 mm = 10 px at 0.6 mm
    assert np.all(left[150, 170] == grey(NODULE_HU)) and np.all(left[150, 170 + 8] == grey(NODULE_HU))
    assert np.all(left[150, 170 + 25] == grey(PRIOR_HU))  # past the prior nodule and its ring: the prior's lung
    assert np.all(right[150, 170 + 12] == grey(NODULE_HU))  # the current nodule is larger
    # away from the drawing each half is its own source: the prior's grey left, the current's right
    assert np.all(left[220:240, 150:200] == grey(PRIOR_HU))
    assert np.all(right[220:240, 150:200] == grey(CURRENT_HU))
    # the prior nodule was 60 px (48 mm) from the prior slice's left edge, the current one is 102 mm from its
    # own: the prior image starts 90 px in, and black fills what it does not cover
    assert np.all(left[140:250, 0:85] == 0) and np.all(left[140:250, 95:100] == grey(PRIOR_HU))  # below the label
    assert np.all(pixels[:, 256:WIDTH] == 0)  # the gap


def test_dates_and_labels_are_burned_in(sc: Dataset) -> None:
    pixels = sc.pixel_array
    white = np.all(pixels == 255, axis=2)
    assert white[:40, :256].sum() > 30 and white[:40, WIDTH:].sum() > 30  # "PRIOR date" / "CURRENT date" banners
    assert white[70:, :].sum() == 0  # the banners stay at the top: the nodules are lower
    assert sc.ImageComments == ("Prior 2024-01-15 vs current 2025-01-21: 1: solid 15.8 mm, Lung-RADS 4B, Brock n/a")


def test_secondary_capture_of_the_current_study_in_the_overlay_series(sc: Dataset, tmp_path: Path) -> None:
    assert (sc.StudyInstanceUID, sc.PatientID, sc.PatientName) == (CURRENT.StudyInstanceUID, "P-12", "DOE^JANE")
    assert sc.SeriesInstanceUID not in (CURRENT.SeriesInstanceUID, PRIOR.SeriesInstanceUID)
    overlays = build_overlays([CURRENT], RESULT, ResultOptions())
    assert sc.SeriesInstanceUID == overlays[0].SeriesInstanceUID and sc.SeriesNumber == 9002
    assert int(sc.InstanceNumber) == len(overlays) + 1  # after the nodule images and the summary
    assert sc.SOPInstanceUID not in {o.SOPInstanceUID for o in overlays}
    assert sc.BurnedInAnnotation == "YES" and "NOT FOR DIAGNOSTIC USE" in sc.SeriesDescription
    assert [s.ReferencedSOPInstanceUID for s in sc.SourceImageSequence] == [CURRENT.SOPInstanceUID, PRIOR.SOPInstanceUID]
    assert [float(v) for v in sc.PixelSpacing] == [0.6, 0.6]
    report = dciodvfy(save(sc, tmp_path / "sc.dcm"))
    assert not report.errors, report.errors
    # the same inputs give the same UID (a re-run replaces the image in the PACS)
    again = build_comparison_overlay(CURRENT, PRIOR, CURRENT_F, PRIOR_F, RESULT, 1, "")
    assert again.SOPInstanceUID == sc.SOPInstanceUID


def test_another_patients_prior_or_a_wrong_slice_is_refused() -> None:
    other = ct_slice("1.2.826.0.9.3", "20240115", 200, 0.8, PRIOR_HU, (100, 60), 7.5)
    other.PatientBirthDate = "19610101"
    other_f = replace(PRIOR_F, key_slice=replace(PRIOR_F.key_slice, sop_instance_uid=other.SOPInstanceUID))
    with pytest.raises(ValueError, match="not this patient's exam .PatientBirthDate differs"):
        build_comparison_overlay(CURRENT, other, CURRENT_F, other_f, RESULT, 1)
    with pytest.raises(ValueError, match="is not the prior finding's key slice"):
        build_comparison_overlay(CURRENT, PRIOR, CURRENT_F, other_f, RESULT, 1)
    with pytest.raises(ValueError, match="from the current study"):
        same_study = ct_slice(CURRENT.StudyInstanceUID, "20240115", 200, 0.8, PRIOR_HU, (100, 60), 7.5)
        build_comparison_overlay(CURRENT, same_study, CURRENT_F, replace(PRIOR_F, key_slice=replace(
            PRIOR_F.key_slice, sop_instance_uid=same_study.SOPInstanceUID)), RESULT, 1)


def test_a_prior_dated_after_the_current_exam_is_refused() -> None:
    later = ct_slice("1.2.826.0.9.4", "20260101", 200, 0.8, PRIOR_HU, (100, 60), 7.5)
    later_f = replace(PRIOR_F, key_slice=replace(PRIOR_F.key_slice, sop_instance_uid=later.SOPInstanceUID))
    with pytest.raises(ValueError, match=r"the prior \(2026-01-01\) is later than the current exam \(2025-01-21\)"):
        build_comparison_overlay(CURRENT, later, CURRENT_F, later_f, RESULT, 1)


def test_change_line() -> None:
    assert change_line(PRIOR_F, CURRENT_F, 470.4, "growing") == "growing: 12.0 -> 15.8 mm, volume +128%, doubling time 470 days"
    assert change_line(PRIOR_F, PRIOR_F, None, "stable") == "stable: 12.0 -> 12.0 mm, volume +0%, not growing"
