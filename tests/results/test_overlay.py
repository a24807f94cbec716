"""Secondary-capture overlays: attributes per docs/architecture.md, "Results encoding", and the drawn pixels."""
from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from dicomnode.results import ResultOptions, build_overlays, render_overlay_png
from dicomnode.results.overlay import (
    OUTLINE_COLOUR,
    OUTLINE_MARGIN_PX,
    draw_findings,
    finding_label,
    lung_window_rgb,
    summary_lines,
)
from tests.results.dicom_validators import empty_result, synthetic_result


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


def test_labels_show_type_mean_diameter_lung_rads_and_brock(overlays, result):
    """The burned-in strings (the renderer's own label text, not OCR): per nodule and in the summary."""
    expected = [
        "1: part-solid cavitary 25.0 mm, Lung-RADS 4X, Brock 31%",
        "2: solid 6.5 mm, Lung-RADS 3, Brock 2%",
        "3: solid calcified 9.2 mm, Lung-RADS 1, Brock 4%",
    ]
    assert [finding_label(n, f) for n, f in enumerate(result.findings, start=1)] == expected
    cyst = replace(result.findings[1], cyst="thin_walled", lung_rads="1", brock_risk=None)
    assert finding_label(2, cyst) == "2: thin-walled cyst 6.5 mm, Lung-RADS 1, Brock n/a"  # graded as a cyst
    polyp = replace(result.findings[1], airway="segmental_or_proximal", lung_rads="4A", brock_risk=None)
    assert finding_label(2, polyp) == "2: solid airway nodule 6.5 mm, Lung-RADS 4A, Brock n/a"
    assert [sc.ImageComments for sc in overlays[:-1]] == expected
    lines = summary_lines(result)
    assert lines[1] == "3 nodule(s); exam Lung-RADS 4XS; highest Brock risk 31%"  # S: severe coronary calcium
    assert overlays[-1].ImageComments == "Summary: " + lines[1]
    assert set(expected) <= set(lines)
    text = "\n".join(lines)
    assert "left upper zone; 4100 mm3" in text and "right lower zone, juxtapleural" in text
    assert "right middle zone, perifissural" in text
    # the phantom-trained score is labelled as such, never as p(cancer)
    assert "model score 0.81*" in text
    assert "* model score: weights trained on phantoms; not a probability of cancer" in lines
    assert "p(cancer)" not in text
    assert "LAA-950 3.8% of 5232 mL lung" in lines
    assert "Brock inputs missing (reference value used): age, sex" in lines
    assert "Zones approximate the lobes." in lines
    assert "Coronary calcium: severe, Agatston-equivalent 412 (non-gated CT; 7 lesions)" in lines
    assert any(line.startswith("Lung-RADS S suggested for severe coronary artery calcification") for line in lines)
    assert lines[lines.index("Zones approximate the lobes.") - 4].startswith("Recommendation: Diagnostic chest CT")


def test_validated_model_labelled_as_probability(series):
    result = synthetic_result(series, count=1, headline="model")
    lines = summary_lines(result)
    assert "model p(cancer) 81%*" in lines[3]
    assert "* model p(cancer): weights declared validated on real data" in lines


def test_label_pixels_follow_the_nodule_type(series, result):
    """Changing only the type changes pixels in the label band above the ring, nowhere else."""
    finding = result.findings[1]
    ct = next(ds for ds in series if ds.SOPInstanceUID == finding.key_slice.sop_instance_uid)
    solid = np.asarray(Image.open(io.BytesIO(render_overlay_png(ct, [finding]))).convert("RGB"))
    glass = replace(finding, nodule_type="ground_glass")
    other = np.asarray(Image.open(io.BytesIO(render_overlay_png(ct, [glass]))).convert("RGB"))
    changed = np.argwhere(np.any(solid != other, axis=2))
    assert len(changed) > 50
    ring_top = finding.key_slice.row - finding.radius_px[0] - OUTLINE_MARGIN_PX
    assert changed[:, 0].max() < ring_top  # only the label, which sits above the ring, differs
    assert changed[:, 0].min() > ring_top - 30


def test_banner_moves_below_a_nodule_it_would_hide(series, result):
    finding = replace(result.findings[1], key_slice=replace(result.findings[1].key_slice, row=60.0))
    ct = next(ds for ds in series if ds.SOPInstanceUID == finding.key_slice.sop_instance_uid)
    rgb = lung_window_rgb(ct)
    drawn = draw_findings(rgb, ct, [(1, finding)], banner=summary_lines(result))
    height = len(summary_lines(result)) * 17 + 8
    # the banner (black box with white text) is at the bottom; the ring at the top is still drawn
    bottom = drawn[-height:, :300]
    black_or_white = np.all(bottom == 0, axis=2) | np.all(bottom == 255, axis=2)
    assert black_or_white.mean() > 0.6  # the CT there is mostly grey (about 0.23)
    assert np.all(bottom == 255, axis=2).sum() > 200
    assert np.array_equal(drawn[:20, :100], rgb[:20, :100])  # nothing drawn in the top-left corner
    r = finding.radius_px[1] + OUTLINE_MARGIN_PX
    assert _ring_hits(drawn, finding.key_slice.row, finding.key_slice.column, r).mean() > 0.8
