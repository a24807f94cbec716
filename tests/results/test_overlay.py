"""Secondary-capture overlays: attributes per docs/architecture.md, "Results encoding", and the drawn pixels."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dicomnode.results import ResultOptions, build_overlays, render_overlay_png
from dicomnode.results.overlay import OUTLINE_COLOUR, OUTLINE_MARGIN_PX, lung_window_rgb
from tests.results.dicom_validators import empty_result


@pytest.fixture(scope="module")
def overlays(series, result):
    return build_overlays(list(series), result, ResultOptions())


def _ring_pixels(image: np.ndarray, row: float, col: float, radius: float) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    rows = np.round(row + radius * np.sin(angles)).astype(int)
    cols = np.round(col + radius * np.cos(angles)).astype(int)
    return image[rows, cols]


def _ring_hits(image: np.ndarray, row: float, col: float, radius: float) -> np.ndarray:
    """Per angle: is the outline colour on the ring? PIL draws the 2 px outline just inside the box."""
    hits = [np.all(_ring_pixels(image, row, col, radius - d) == OUTLINE_COLOUR, axis=1) for d in (0.5, 1.0, 1.5, 2.0)]
    return np.any(hits, axis=0)


def test_one_image_per_nodule_plus_summary(overlays, result, series):
    assert len(overlays) == len(result.findings) + 1
    assert [int(o.InstanceNumber) for o in overlays] == list(range(1, len(overlays) + 1))
    assert len({o.SOPInstanceUID for o in overlays}) == len(overlays)
    assert len({o.SeriesInstanceUID for o in overlays}) == 1
    ct = series[0]
    for sc, finding in zip(overlays, result.findings):
        assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert sc.StudyInstanceUID == ct.StudyInstanceUID
        assert sc.SeriesNumber == 9002
        assert "NOT FOR DIAGNOSTIC USE" in sc.SeriesDescription
        assert sc.BurnedInAnnotation == "YES"
        assert sc.PhotometricInterpretation == "RGB" and sc.BitsAllocated == 8 and sc.SamplesPerPixel == 3
        assert list(sc.PatientOrientation) == ["L", "P"]
        assert [float(v) for v in sc.PixelSpacing] == pytest.approx([float(v) for v in ct.PixelSpacing])
        assert sc.BodyPartExamined == "CHEST"
        assert "FrameOfReferenceUID" not in sc and "ImagePositionPatient" not in sc
        assert "ImageOrientationPatient" not in sc
        source = sc.SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == finding.key_slice.sop_instance_uid
        code = source.PurposeOfReferenceCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator) == ("121322", "DCM")


def test_outline_and_label_drawn(overlays, result, series):
    for sc, finding in zip(overlays, result.findings):
        pixels = sc.pixel_array
        ct = next(ds for ds in series if ds.SOPInstanceUID == finding.key_slice.sop_instance_uid)
        original = lung_window_rgb(ct)
        r = finding.radius_px[1] + OUTLINE_MARGIN_PX
        yellow = _ring_hits(pixels, finding.key_slice.row, finding.key_slice.column, r)
        assert yellow.mean() > 0.8, "outline colour missing on the ring"
        # the ring was not there before drawing: the CT itself is grey
        assert not np.any(np.all(_ring_pixels(original, finding.key_slice.row, finding.key_slice.column, r)
                                 == OUTLINE_COLOUR, axis=1))
        # label text sits above the ring: yellow pixels appear in that band
        top = int(finding.key_slice.row - r)
        band = pixels[max(top - 24, 0): max(top - 2, 1)]
        assert np.all(band == OUTLINE_COLOUR, axis=2).sum() > 30
        # far from the nodule the image is still the lung-windowed CT
        assert np.array_equal(pixels[-40:, :40], original[-40:, :40])


def test_summary_lists_findings_over_the_largest_nodule(overlays, result):
    summary = overlays[-1]
    largest = max(result.findings, key=lambda f: f.diameter_mm)
    assert summary.SourceImageSequence[0].ReferencedSOPInstanceUID == largest.key_slice.sop_instance_uid
    pixels = summary.pixel_array
    # table banner: white text on black in the top-left corner
    banner = pixels[:60, :300]
    assert np.all(banner == 255, axis=2).sum() > 200
    assert np.all(banner == 0, axis=2).sum() > 1000


def test_no_findings_gives_one_summary_image(series):
    images = build_overlays(list(series), empty_result(series), ResultOptions())
    assert len(images) == 1
    assert images[0].ImageComments == "Summary: No lung nodules detected."


def test_render_overlay_png(series, result):
    finding = result.findings[0]
    ct = next(ds for ds in series if ds.SOPInstanceUID == finding.key_slice.sop_instance_uid)
    png = render_overlay_png(ct, [finding])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape == (512, 512, 3)
    r = finding.radius_px[1] + OUTLINE_MARGIN_PX
    assert _ring_hits(image, finding.key_slice.row, finding.key_slice.column, r).mean() > 0.8


def test_overlay_description_must_say_not_diagnostic():
    with pytest.raises(ValueError):
        ResultOptions(overlay_series_description="Lung nodule overlays")
