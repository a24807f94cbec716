"""Secondary-capture images with the nodules drawn on their key slices (docs/architecture.md, "Results encoding").

For PACS users without an SR-capable viewer: one RGB image per nodule, plus a summary
image listing every finding. Burned-in annotations, so never for diagnosis.
"""
from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicomnode.results.options import ResultOptions
from dicomnode.results.sr import find_instance, contributing_equipment, prepare_sources, radius_px, sort_by_position
from dicomnode.results.uids import result_uid, settings_digest
from inference.findings import Finding, SeriesResult

OUTLINE_COLOUR = (255, 255, 0)  # yellow reads well on the grey lung window
TEXT_COLOUR = (255, 255, 0)
OUTLINE_WIDTH = 2
# The ring sits this far outside the nodule edge so it does not hide the margin.
OUTLINE_MARGIN_PX = 4
LABEL_FONT_SIZE = 14
BANNER_FONT_SIZE = 13


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def lung_window_rgb(ct_slice: Dataset, center: float = -600.0, width: float = 1500.0) -> np.ndarray:
    """Rows x Columns x 3 uint8 image of one CT slice in the given window."""
    if "PixelData" not in ct_slice:
        raise ValueError(f"CT slice {ct_slice.SOPInstanceUID} was read without pixel data")
    pixels = ct_slice.pixel_array.astype(np.float32)
    hu = pixels * float(ct_slice.get("RescaleSlope", 1) or 1) + float(ct_slice.get("RescaleIntercept", 0) or 0)
    low = center - width / 2.0
    grey = np.clip((hu - low) / width * 255.0, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


TYPE_WORDS = {"solid": "solid", "part_solid": "part-solid", "ground_glass": "ground-glass"}
BANNER_WIDTH_CHARS = 76  # what fits across a 512-column image at the banner font


def nodule_type_words(finding: Finding) -> str:
    words = TYPE_WORDS.get(finding.nodule_type, finding.nodule_type)
    return f"{words} calcified" if finding.calcified else words


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.0f}%"


def finding_label(number: int, finding: Finding) -> str:
    """What a radiologist reads first: type, Lung-RADS mean diameter, category, Brock risk."""
    return (
        f"{number}: {nodule_type_words(finding)} {finding.mean_diameter_mm:.1f} mm, "
        f"Lung-RADS {finding.lung_rads}, Brock {percent(finding.brock_risk)}"
    )


MODEL_SCORE_FOOTNOTE = {
    "brock": "* model score: weights trained on phantoms; not a probability of cancer",
    "model": "* model p(cancer): weights declared validated on real data",
}


def _headline(result: SeriesResult) -> str:
    return "model" if result.exam is not None and result.exam.headline == "model" else "brock"


def model_score_words(finding: Finding, result: SeriesResult) -> str:
    """The detection model's malignancy output, labelled for what it is (the footnote says more)."""
    if _headline(result) == "model":
        return f"model p(cancer) {percent(finding.model_score)}*"
    return f"model score {finding.model_score:.2f}*"


def outline_box(finding: Finding, ct_slice: Dataset) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) pixel box of the ring around the nodule."""
    r_row, r_col = radius_px(finding, ct_slice)
    row, col = finding.key_slice.row, finding.key_slice.column
    return (
        col - r_col - OUTLINE_MARGIN_PX,
        row - r_row - OUTLINE_MARGIN_PX,
        col + r_col + OUTLINE_MARGIN_PX,
        row + r_row + OUTLINE_MARGIN_PX,
    )


def label_anchor(finding: Finding, ct_slice: Dataset, text_size: tuple[float, float]) -> tuple[int, int]:
    """Top-left of the label: above the ring, kept inside the image."""
    left, top, _, bottom = outline_box(finding, ct_slice)
    width, height = text_size
    x = int(min(max(left, 2), int(ct_slice.Columns) - width - 2))
    y = int(top - height - 4)
    if y < 2:  # no room above: put it below the ring
        y = int(min(bottom + 4, int(ct_slice.Rows) - height - 2))
    return x, y


def draw_findings(
    rgb: np.ndarray,
    ct_slice: Dataset,
    numbered: Sequence[tuple[int, Finding]],
    banner: Sequence[str] = (),
) -> np.ndarray:
    image = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(image)
    label_font = _font(LABEL_FONT_SIZE)
    for number, finding in numbered:
        draw.ellipse(outline_box(finding, ct_slice), outline=OUTLINE_COLOUR, width=OUTLINE_WIDTH)
        text = finding_label(number, finding)
        box = draw.textbbox((0, 0), text, font=label_font, stroke_width=2)
        anchor = label_anchor(finding, ct_slice, (box[2] - box[0], box[3] - box[1]))
        draw.text(anchor, text, fill=TEXT_COLOUR, font=label_font, stroke_width=2, stroke_fill=(0, 0, 0))
    if banner:
        _draw_banner(draw, image.size, banner, [outline_box(f, ct_slice) for _, f in numbered])
    return np.asarray(image, dtype=np.uint8).copy()


def banner_top(size: tuple[int, int], height: int, boxes: Sequence[tuple[float, float, float, float]]) -> int:
    """Top of the banner: at the top unless it would hide a nodule or its label, then at the bottom."""
    label_room = LABEL_FONT_SIZE + 12  # the label sits above the ring

    def clear(top: int) -> bool:
        return all(box[3] < top or box[1] - label_room > top + height for box in boxes)

    bottom = size[1] - height - 1
    return 0 if clear(0) or not clear(bottom) else bottom


def _draw_banner(draw: ImageDraw.ImageDraw, size: tuple[int, int], banner: Sequence[str],
                 boxes: Sequence[tuple[float, float, float, float]]) -> None:
    banner_font = _font(BANNER_FONT_SIZE)
    line_height = BANNER_FONT_SIZE + 4
    height = line_height * len(banner) + 8
    width = max(draw.textbbox((0, 0), line, font=banner_font)[2] for line in banner) + 12
    top = banner_top(size, height, boxes)
    draw.rectangle((0, top, min(width, size[0] - 1), top + height), fill=(0, 0, 0))
    for i, line in enumerate(banner):
        draw.text((6, top + 4 + i * line_height), line, fill=(255, 255, 255), font=banner_font)


def render_overlay_png(
    ct_slice: Dataset,
    findings: Sequence[Finding],
    options: ResultOptions | None = None,
    numbers: Sequence[int] | None = None,
    banner: Sequence[str] = (),
) -> bytes:
    """PNG of one CT slice in the lung window with the given findings outlined and labelled.

    numbers are the labels shown (default 1..n in the order given).
    """
    options = options or ResultOptions()
    numbers = list(numbers) if numbers is not None else list(range(1, len(findings) + 1))
    rgb = lung_window_rgb(ct_slice, options.window_center, options.window_width)
    drawn = draw_findings(rgb, ct_slice, list(zip(numbers, findings)), banner)
    buffer = io.BytesIO()
    Image.fromarray(drawn, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def patient_orientation(ct_slice: Dataset) -> tuple[str, str]:
    """PatientOrientation (row direction, column direction) letters from ImageOrientationPatient."""
    iop = np.asarray(ct_slice.ImageOrientationPatient, dtype=float)

    def letters(vector: np.ndarray) -> str:
        names = (("L", "R"), ("P", "A"), ("H", "F"))  # LPS: +x left, +y posterior, +z head
        order = np.argsort(-np.abs(vector))
        out = ""
        for axis in order:
            if abs(vector[axis]) > 1e-3 and len(out) < 3:
                out += names[axis][0] if vector[axis] > 0 else names[axis][1]
        return out

    return letters(iop[:3]), letters(iop[3:])


_COPIED_FROM_CT = (
    "StudyDescription",
    "BodyPartExamined",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "LastMenstrualDate",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "IssuerOfPatientID",
    "OtherPatientIDsSequence",
    "EthnicGroup",
)


def _sc_image(
    rgb: np.ndarray,
    ct_slice: Dataset,
    result: SeriesResult,
    options: ResultOptions,
    digest: str,
    index: int,
    comment: str,
) -> hd.sc.SCImage:
    root = options.uid_root
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ct_slice,
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=result_uid("overlay-series", result.series_instance_uid, result.model.version, digest, 0,
                                       root),
        series_number=options.overlay_series_number,
        sop_instance_uid=result_uid("overlay-instance", result.series_instance_uid, result.model.version, digest,
                                    index, root),
        instance_number=index + 1,
        manufacturer=options.manufacturer,
        pixel_spacing=tuple(float(v) for v in ct_slice.PixelSpacing),  # type: ignore[arg-type]  # highdicom: ints here, floats in __init__ (which checks the length)
        patient_orientation=patient_orientation(ct_slice),
        contributing_equipment=[contributing_equipment(result.model, options)],
        series_description=options.overlay_series_description,
        manufacturer_model_name=result.model.name,
        software_versions=result.model.version,
        institution_name=options.institution_name,
    )
    # SCImage copies only the basics; the rest of the patient/study entity must match the CT
    # for dcentvfy, and BodyPartExamined keeps dciodvfy's Laterality check quiet.
    for keyword in _COPIED_FROM_CT:
        if keyword in ct_slice and keyword not in sc:
            sc[keyword] = ct_slice[keyword]
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = comment
    source = Dataset()
    source.ReferencedSOPClassUID = ct_slice.SOPClassUID
    source.ReferencedSOPInstanceUID = ct_slice.SOPInstanceUID
    source.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)]
    sc.SourceImageSequence = [source]
    sc.DerivationDescription = "Lung window W1500 L-600 with algorithm findings burned in; not for diagnostic use"
    return sc


def _largest(findings: Sequence[Finding]) -> int:
    return max(range(len(findings)), key=lambda i: findings[i].diameter_mm)


def _where(finding: Finding) -> str:
    location = finding.location
    side = location.lung or "side unknown"
    zone = f" {location.zone} zone" if location.zone else " lung"
    return (side + zone + (", juxtapleural" if location.juxtapleural else "")
            + (", perifissural" if location.perifissural else ""))


def _exam_lines(result: SeriesResult) -> list[str]:
    exam = result.exam
    if exam is None:
        return []
    lines = []
    if exam.laa950_pct is not None:
        volume = f" of {exam.lung_volume_ml:.0f} mL lung" if exam.lung_volume_ml is not None else ""
        lines.append(f"LAA-950 {exam.laa950_pct:.1f}%{volume}")
    missing = ", ".join(exam.risk_inputs.missing)
    if missing:
        lines.append(f"Brock inputs missing (reference value used): {missing}")
    if exam.reason:
        lines.append(exam.reason)
    lines.append(f"Recommendation: {exam.recommendation}")
    lines.append("Zones approximate the lobes.")
    return lines


def summary_lines(result: SeriesResult) -> list[str]:
    """The summary table; the second line is the headline (also the summary image's ImageComments)."""
    model = result.model
    lines = [f"{model.name} {model.version} - NOT FOR DIAGNOSTIC USE"]
    if not result.findings:
        lines.append("No lung nodules detected.")
    else:
        highest = max((f.brock_risk for f in result.findings if f.brock_risk is not None), default=None)
        category = f"exam Lung-RADS {result.exam.lung_rads}; " if result.exam is not None else ""
        lines.append(f"{len(result.findings)} nodule(s); {category}highest Brock risk {percent(highest)}")
    for number, finding in enumerate(result.findings, start=1):
        z = finding.center_mm[2]
        lines.append(finding_label(number, finding))
        lines.append(f"   {_where(finding)}; {finding.volume_mm3:.0f} mm3; z {z:.0f} mm; "
                     f"{model_score_words(finding, result)}")
    if result.findings:
        lines.append(MODEL_SCORE_FOOTNOTE[_headline(result)])
    lines.extend(_exam_lines(result))
    return [wrapped for line in lines
            for wrapped in textwrap.wrap(line, BANNER_WIDTH_CHARS, subsequent_indent="   ") or [""]]


def _slices_drawn(source: Sequence[Dataset], result: SeriesResult) -> list[Dataset]:
    """Prepared copies of only the slices the overlays are drawn on (the key slices, or the middle slice
    when there is no finding), sorted along the normal: copying all of a 261-slice series took ~0.7 s."""
    keys = {f.key_slice.sop_instance_uid for f in result.findings}
    if keys:
        return prepare_sources([ds for ds in source if ds.get("SOPInstanceUID") in keys])
    ordered = sort_by_position(list(source))
    return prepare_sources([ordered[len(ordered) // 2]])


def build_overlays(
    source: Sequence[Dataset], result: SeriesResult, options: ResultOptions | None = None
) -> list[Dataset]:
    """One SC image per nodule key slice, then a summary image (instance numbers in that order).

    The summary is drawn over the slice of the largest nodule (the middle slice when none),
    with every nodule on that slice outlined and a table of all findings at the top.
    """
    options = options or ResultOptions()
    sources = _slices_drawn(source, result)
    digest = settings_digest(options)
    images: list[Dataset] = []
    window = (options.window_center, options.window_width)
    for index, finding in enumerate(result.findings):
        ct_slice = find_instance(sources, finding.key_slice.sop_instance_uid)
        rgb = draw_findings(lung_window_rgb(ct_slice, *window), ct_slice, [(index + 1, finding)])
        images.append(_sc_image(rgb, ct_slice, result, options, digest, index, finding_label(index + 1, finding)))

    if result.findings:
        ct_slice = find_instance(sources, result.findings[_largest(result.findings)].key_slice.sop_instance_uid)
    else:
        ct_slice = sources[len(sources) // 2]
    on_slice = [
        (number, f)
        for number, f in enumerate(result.findings, start=1)
        if f.key_slice.sop_instance_uid == ct_slice.SOPInstanceUID
    ]
    lines = summary_lines(result)
    rgb = draw_findings(lung_window_rgb(ct_slice, *window), ct_slice, on_slice, lines)
    images.append(_sc_image(rgb, ct_slice, result, options, digest, len(result.findings), "Summary: " + lines[1]))
    return images
