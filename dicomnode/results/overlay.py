"""Secondary-capture images with the nodules drawn on their key slices (docs/architecture.md, "Results encoding").

For PACS users without an SR-capable viewer: one RGB image per nodule, plus a summary
image listing every finding. Burned-in annotations, so never for diagnosis.
"""
from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from dataclasses import replace

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicomnode.results.options import ResultOptions
from dicomnode.results.equipment import contributing_equipment
from dicomnode.results.sources import find_instance, prepare_sources, radius_px, sort_by_position
from dicomnode.results.uids import result_uid, settings_digest
from inference.compare.compare import patient_mismatch
from inference.findings import Finding, SeriesResult, lesion_type_words

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


BANNER_WIDTH_CHARS = 76  # what fits across a 512-column image at the banner font


def nodule_type_words(finding: Finding) -> str:
    words = lesion_type_words(finding.nodule_type, finding.cyst, finding.airway)
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
    instance_kind: str = "overlay-instance",
    instance_number: int | None = None,
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
        sop_instance_uid=result_uid(instance_kind, result.series_instance_uid, result.model.version, digest,
                                    index, root),
        instance_number=index + 1 if instance_number is None else instance_number,
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
    if exam.coronary_calcium is not None:
        lines.append(f"Coronary calcium: {exam.coronary_calcium.words}")
    if exam.s_modifier_words:
        lines.append(exam.s_modifier_words)
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
        category = f"exam Lung-RADS {result.exam.lung_rads_label}; " if result.exam is not None else ""
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


# -- prior and current side by side (issue 12) ---------------------------------------------------
COMPARISON_GAP_PX = 6  # black band between the two halves
COMPARISON_DERIVATION = ("Prior (left) and current (right) key slices of one nodule, lung window W1500 L-600, the prior "
                         "resampled to the current pixel spacing and its nodule placed at the current nodule's position; "
                         "algorithm findings burned in; not for diagnostic use")


def _spacing(ct_slice: Dataset) -> tuple[float, float]:
    row, col = (float(v) for v in ct_slice.PixelSpacing)
    return row, col


def _date(ct_slice: Dataset) -> str:
    text = str(ct_slice.get("StudyDate", "") or ct_slice.get("SeriesDate", "") or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:]}" if len(text) == 8 and text.isdigit() else "date unknown"


def align_prior(prior_rgb: np.ndarray, prior_slice: Dataset, prior: Finding, current_slice: Dataset,
                current: Finding) -> tuple[np.ndarray, Finding]:
    """The prior's windowed slice resampled to the current slice's pixel spacing and shifted so that its
    nodule lands on the current nodule's pixel position (outside: black), in the current's Rows x Columns;
    and the prior finding with its key-slice position and radius in those pixels. Same scale and place in
    both halves: what a reader compares by eye."""
    (pr, pc), (cr, cc) = _spacing(prior_slice), _spacing(current_slice)
    scale_r, scale_c = pr / cr, pc / cc
    height, width = max(1, round(prior_rgb.shape[0] * scale_r)), max(1, round(prior_rgb.shape[1] * scale_c))
    scaled = Image.fromarray(prior_rgb, mode="RGB").resize((width, height), Image.Resampling.BILINEAR)
    # pixel centres: index i covers [i, i+1) before scaling, so its centre i + 0.5 maps to (i + 0.5) * scale
    row = (prior.key_slice.row + 0.5) * scale_r - 0.5
    col = (prior.key_slice.column + 0.5) * scale_c - 0.5
    top, left = round(current.key_slice.row - row), round(current.key_slice.column - col)
    canvas = Image.new("RGB", (int(current_slice.Columns), int(current_slice.Rows)))
    canvas.paste(scaled, (left, top))
    r_row, r_col = radius_px(prior, prior_slice)
    moved = replace(prior, key_slice=replace(prior.key_slice, row=row + top, column=col + left),
                    radius_px=(r_row * scale_r, r_col * scale_c))
    return np.asarray(canvas, dtype=np.uint8).copy(), moved


def change_line(prior: Finding, current: Finding, doubling_time_days: float | None, status: str) -> str:
    """`growing: 6.0 -> 7.9 mm, volume +73%, doubling time 470 days` (or `not growing`)."""
    volume = (current.volume_mm3 / prior.volume_mm3 - 1.0) * 100.0 if prior.volume_mm3 > 0 else None
    change = "" if volume is None else f", volume {volume:+.0f}%"
    doubling = "not growing" if doubling_time_days is None else f"doubling time {doubling_time_days:.0f} days"
    return f"{status}: {prior.mean_diameter_mm:.1f} -> {current.mean_diameter_mm:.1f} mm{change}, {doubling}"


def _check_pair(current_slice: Dataset, prior_slice: Dataset, current: Finding, prior: Finding) -> None:
    """The slices must be the findings' key slices, of one patient, in two different studies."""
    for name, ct_slice, finding in (("current", current_slice, current), ("prior", prior_slice, prior)):
        if str(ct_slice.get("SOPInstanceUID", "")) != finding.key_slice.sop_instance_uid:
            raise ValueError(f"the {name} slice {ct_slice.get('SOPInstanceUID')} is not the {name} finding's key "
                             f"slice {finding.key_slice.sop_instance_uid}")
    why = patient_mismatch(current_slice, prior_slice)
    if why is not None:
        raise ValueError(f"no side-by-side image: the prior is not this patient's exam ({why})")
    if current_slice.get("StudyInstanceUID") == prior_slice.get("StudyInstanceUID"):
        raise ValueError("no side-by-side image: the prior slice is from the current study")
    prior_date, current_date = _date(prior_slice), _date(current_slice)
    if "unknown" not in prior_date + current_date and prior_date > current_date:
        raise ValueError(f"no side-by-side image: the prior ({prior_date}) is later than the current exam ({current_date})")


def draw_comparison(current_slice: Dataset, prior_slice: Dataset, current: Finding, prior: Finding, number: int,
                    change: str = "", options: ResultOptions | None = None) -> np.ndarray:
    """Rows x (2 Columns + gap) x 3 uint8: the prior key slice (left) and the current one (right), each with
    its nodule ringed and labelled and its study date; `change` is a line under the current date."""
    options = options or ResultOptions()
    window = (options.window_center, options.window_width)
    _check_pair(current_slice, prior_slice, current, prior)
    prior_rgb, moved = align_prior(lung_window_rgb(prior_slice, *window), prior_slice, prior, current_slice, current)
    # the aligned prior has the current slice's geometry: draw it with that slice's size and spacing
    left = draw_findings(prior_rgb, current_slice, [(number, moved)], [f"PRIOR {_date(prior_slice)}"])
    chars = max(20, int(current_slice.Columns) * BANNER_WIDTH_CHARS // 512)  # what fits across one half
    right = draw_findings(lung_window_rgb(current_slice, *window), current_slice, [(number, current)],
                          [f"CURRENT {_date(current_slice)}"] + textwrap.wrap(change, chars))
    gap = np.zeros((left.shape[0], COMPARISON_GAP_PX, 3), dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def build_comparison_overlay(
    current_slice: Dataset,
    prior_slice: Dataset,
    current: Finding,
    prior: Finding,
    result: SeriesResult,
    number: int,
    change: str = "",
    options: ResultOptions | None = None,
) -> Dataset:
    """One secondary-capture image of a matched nodule: prior key slice left, current right (draw_comparison).

    `result` is the current exam's; `number` the nodule's 1-based number in it; `change` e.g. change_line(...).
    The image belongs to the current exam's patient and study and to the overlay series of build_overlays
    (same series UID, number and description), after its images: instance number len(findings) + 1 +
    number, its own SOP Instance UID (deterministic, like the other results). Burned-in annotation; the
    source images are both key slices. Raises ValueError when the slices are not the findings' key slices,
    belong to another patient or to the same study.
    """
    options = options or ResultOptions()
    rgb = draw_comparison(current_slice, prior_slice, current, prior, number, change, options)
    ref = prepare_sources([current_slice])[0]
    comment = f"Prior {_date(prior_slice)} vs current {_date(current_slice)}: {finding_label(number, current)}"
    sc = _sc_image(rgb, ref, result, options, settings_digest(options), number, comment[:10240],
                   instance_kind="comparison-overlay-instance", instance_number=len(result.findings) + 1 + number)
    source = Dataset()
    source.ReferencedSOPClassUID = prior_slice.SOPClassUID
    source.ReferencedSOPInstanceUID = prior_slice.SOPInstanceUID
    source.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)]
    sc.SourceImageSequence.append(source)
    sc.DerivationDescription = COMPARISON_DERIVATION
    return sc
