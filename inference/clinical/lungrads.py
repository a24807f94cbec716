"""ACR Lung-RADS v2022: category per nodule and per exam, with the management recommendation.

Sources (as found with the project's search tool; thresholds checked against each):
- ACR Lung-RADS v1.1 assessment table (2019), the size/volume thresholds that v2022 keeps:
  https://ncbi.nlm.nih.gov/books/NBK568579/table/appa.tab2/ ("Overview of Lung-RADS Classification
  System (Version 1.1)") and https://huggingface.co/datasets/pdf2dataset/73088e9a6406ff5296744fff1a9c3cd4
  (the ACR v1.1 PDF as text): solid < 6 mm (< 113 mm3) -> 2, new < 4 mm (< 34 mm3) -> 2; >= 6 to < 8 mm
  (113 to < 268 mm3) at baseline or new 4 to < 6 mm -> 3; >= 8 to < 15 mm (268 to < 1767 mm3) at baseline,
  growing < 8 mm or new 6 to < 8 mm -> 4A; part-solid < 6 mm total (< 113 mm3) at baseline -> 2,
  >= 6 mm total with solid component < 6 mm, or new < 6 mm total -> 3, solid component >= 6 to < 8 mm
  or a new/growing < 4 mm solid component -> 4A; non-solid < 30 mm (< 14137 mm3), or >= 30 mm and
  unchanged or slowly growing -> 2, >= 30 mm at baseline or new -> 3; perifissural < 10 mm (524 mm3) -> 2;
  calcification patterns (complete, central, popcorn, concentric rings) and fat -> 1.
  4B is the rest: solid >= 15 mm (>= 1767 mm3) at baseline or new/growing >= 8 mm; part-solid solid
  component >= 8 mm (>= 268 mm3) or a new/growing solid component >= 4 mm (v1.0/v1.1 table rows,
  https://paperzz.com/doc/7368320/lung-rads and https://docslib.org/doc/7486432/).
- Lung-RADS v2022 changes: Christensen J et al. ACR Lung-RADS v2022: Assessment Categories and
  Management Recommendations. J Am Coll Radiol 2024;21:473-488 / CHEST 2024;165:738-753
  (https://scribd.com/document/730382758/ACR-Lung-RADS-v2022-Assessment-Categories-and-Man);
  https://www.yingbo777.com/home/lung-rads/ (the v2022 notes: mean diameter from long and short axis to
  one decimal, volume to the nearest mm3; growth = mean diameter up by > 1.5 mm within 12 months;
  size thresholds apply at first detection and when a nodule enlarges into a higher size category);
  https://diagnosticimaging.com/view/seven-takeaways-from-lung-rads-2022-for-ct-lung-cancer-screening
  and Radiology 2024 (doi 10.1148/radiol.240091, "Management of Pleural-attached Pulmonary Nodules"):
  juxtapleural solid nodules with smooth margins, oval/lentiform/triangular shape and mean diameter
  < 10 mm -> 2; stepped management for stable category 3 and 4A nodules.
- Atypical pulmonary cysts (v2022; the CHEST 2024 article above, https://wiki.krxiang.com/notes/lung_rads_for_cyst,
  https://community.the-hospitalist.org/content/atypical-pulmonary-cysts-why-care and the diagnosticimaging.com
  takeaways): a thin-walled unilocular cyst (uniform wall < 2 mm) is benign and not classified (here: category 1,
  said so); a thick-walled cyst (wall >= 2 mm, uniform, asymmetric or focally nodular) or a multilocular cyst is 4A at
  baseline (and new), 3 when stable at its 3-month LDCT (the stepped management below), 4B when it grows (a growing
  thick-walled or multilocular cyst; the wall's growth and new loculi or opacity are for the reader, comparing images).
  A cyst has no size thresholds: its mean diameter is reported, not graded. A cyst with ground glass or consolidation
  beside its wall (a cancer's pattern: Farooqi AO et al., AJR 2012;199:781-786, types III-IV) is an atypical cyst
  whose opacity is graded as a nodule too; the higher category wins (the node's reading: v2022 grades a new or
  increased opacity of a multilocular cyst 4B at follow-up).
- Airway nodules (v2022; the CHEST 2024 article above, the diagnosticimaging.com takeaways and the ECR 2025 poster
  C-22137, https://portal.myesr.org/esr/membership/publicposter/ba878c24-25d4-4695-a75c-012da1bd2055/show/purpose):
  a solid endotracheal or endobronchial nodule in a segmental or more proximal airway is 4A at baseline or new, and
  4B when it persists (stable or growing) at follow-up, for bronchoscopy; subsegmental endobronchial findings favour
  infection or mucus and are 2 when no obstructing nodule is seen. A segmental one is also graded by its size, the
  higher category winning (the node's reading: a 15 mm endotracheal mass is not less than a 15 mm nodule); there is no
  stepping down. Which airway the lesion lies in comes from its calibre (inference.characterize.airway).
- 4X: category 3 or 4 nodules with additional features that increase the suspicion of cancer
  (spiculation is the one measured here); the ACR says "may be" upgraded, so the reason says "suggested".

Management wording follows v2022 (12-month screening LDCT, 6-month LDCT, 3-month LDCT, diagnostic
chest CT / PET/CT / tissue sampling), written here in our own words.
"""
from __future__ import annotations

from dataclasses import dataclass

from inference.clinical.types import (
    AirwayLevel, Change, CystKind, Exam, LungRadsCategory, Margin, Nodule, NoduleType, round_half_up,
)

C = LungRadsCategory

# Mean diameter (mm) and the v2022 volume equivalents (mm3) of each threshold.
SOLID_2_3 = (6.0, 113.0)
SOLID_3_4A = (8.0, 268.0)
SOLID_4A_4B = (15.0, 1767.0)
SOLID_NEW_2_3 = (4.0, 34.0)
PART_SOLID_TOTAL_2_3 = (6.0, 113.0)
PART_SOLID_COMPONENT_3_4A = (6.0, 113.0)
PART_SOLID_COMPONENT_4A_4B = (8.0, 268.0)
PART_SOLID_NEW_COMPONENT_4A_4B = (4.0, 34.0)
GROUND_GLASS_2_3 = (30.0, 14137.0)
JUXTAPLEURAL_MAX = (10.0, 524.0)

GROWTH_THRESHOLD_MM_PER_12_MONTHS = 1.5  # v2022 growth: > 1.5 mm mean diameter within 12 months
STABLE_MONTHS_3_TO_2 = 6.0  # a category 3 nodule stable at its 6-month LDCT -> 2
STABLE_MONTHS_4A_TO_3 = 3.0  # a category 4A nodule stable at its 3-month LDCT -> 3

RECOMMENDATIONS: dict[LungRadsCategory, str] = {
    C.C0: "Incomplete: additional lung cancer screening CT images and/or comparison with prior chest CT "
    "examinations are needed before a category can be assigned.",
    C.C1: "12-month screening LDCT (continue annual screening).",
    C.C2: "12-month screening LDCT (continue annual screening).",
    C.C3: "6-month LDCT.",
    C.C4A: "3-month LDCT; PET/CT may be considered if there is a solid nodule or solid component "
    ">= 8 mm (>= 268 mm3).",
    C.C4B: "Diagnostic chest CT with or without contrast; PET/CT may be considered if there is a solid "
    "nodule or solid component >= 8 mm (>= 268 mm3); tissue sampling and/or referral for further clinical "
    "evaluation, depending on the probability of malignancy and comorbidities.",
    C.C4X: "Diagnostic chest CT with or without contrast; PET/CT may be considered if there is a solid "
    "nodule or solid component >= 8 mm (>= 268 mm3); tissue sampling and/or referral for further clinical "
    "evaluation, depending on the probability of malignancy and comorbidities.",
}

DESCRIPTORS: dict[LungRadsCategory, str] = {
    C.C0: "Incomplete",
    C.C1: "Negative",
    C.C2: "Benign appearance or behavior",
    C.C3: "Probably benign",
    C.C4A: "Suspicious",
    C.C4B: "Very suspicious",
    C.C4X: "Very suspicious, additional features",
}


@dataclass(frozen=True)
class NoduleAssessment:
    category: LungRadsCategory
    reasons: tuple[str, ...]
    recommendation: str
    measure: str  # "diameter" or "volume": what the thresholds were applied to; "cyst": none applied (a cyst's rules)


@dataclass(frozen=True)
class ExamAssessment:
    category: LungRadsCategory
    recommendation: str
    reason: str
    nodules: tuple[NoduleAssessment, ...]
    # The highest nodule category even when the exam is 0, so no suspicious row is hidden behind "incomplete".
    highest_nodule_category: LungRadsCategory | None


def recommendation(category: LungRadsCategory) -> str:
    return RECOMMENDATIONS[category]


def _below(size: float, threshold: tuple[float, float], by_volume: bool) -> bool:
    return size < threshold[1 if by_volume else 0]


def _size(nodule: Nodule, by_volume: bool) -> float:
    if by_volume:
        assert nodule.volume_mm3 is not None
        return round_half_up(nodule.volume_mm3, 0)  # v2022: volume reported to the nearest mm3
    return nodule.reported_mean_diameter_mm


def _solid_component(nodule: Nodule, by_volume: bool) -> float:
    if by_volume:
        assert nodule.solid_component_volume_mm3 is not None
        return round_half_up(nodule.solid_component_volume_mm3, 0)
    value = nodule.reported_solid_component_mm
    assert value is not None  # Nodule requires it for part-solid
    return value


def _unit(by_volume: bool) -> str:
    return "mm3" if by_volume else "mm"


def _solid_baseline(s: float, v: bool) -> tuple[LungRadsCategory, str]:
    u = _unit(v)
    if _below(s, SOLID_2_3, v):
        return C.C2, f"solid {s:g} {u} < {SOLID_2_3[v]:g} {u}"
    if _below(s, SOLID_3_4A, v):
        return C.C3, f"solid {s:g} {u} in [{SOLID_2_3[v]:g}, {SOLID_3_4A[v]:g}) {u}"
    if _below(s, SOLID_4A_4B, v):
        return C.C4A, f"solid {s:g} {u} in [{SOLID_3_4A[v]:g}, {SOLID_4A_4B[v]:g}) {u}"
    return C.C4B, f"solid {s:g} {u} >= {SOLID_4A_4B[v]:g} {u}"


def _solid_change(s: float, v: bool, change: Change) -> tuple[LungRadsCategory, str]:
    u = _unit(v)
    if change is Change.NEW:
        if _below(s, SOLID_NEW_2_3, v):
            return C.C2, f"new solid {s:g} {u} < {SOLID_NEW_2_3[v]:g} {u}"
        if _below(s, SOLID_2_3, v):
            return C.C3, f"new solid {s:g} {u} in [{SOLID_NEW_2_3[v]:g}, {SOLID_2_3[v]:g}) {u}"
        if _below(s, SOLID_3_4A, v):
            return C.C4A, f"new solid {s:g} {u} in [{SOLID_2_3[v]:g}, {SOLID_3_4A[v]:g}) {u}"
        return C.C4B, f"new solid {s:g} {u} >= {SOLID_3_4A[v]:g} {u}"
    # growing
    if _below(s, SOLID_3_4A, v):
        return C.C4A, f"growing solid {s:g} {u} < {SOLID_3_4A[v]:g} {u}"
    return C.C4B, f"growing solid {s:g} {u} >= {SOLID_3_4A[v]:g} {u}"


def _part_solid_baseline(t: float, c: float, v: bool) -> tuple[LungRadsCategory, str]:
    u = _unit(v)
    if _below(t, PART_SOLID_TOTAL_2_3, v):
        return C.C2, f"part-solid total {t:g} {u} < {PART_SOLID_TOTAL_2_3[v]:g} {u}"
    if _below(c, PART_SOLID_COMPONENT_3_4A, v):
        return C.C3, f"part-solid total {t:g} {u}, solid component {c:g} {u} < {PART_SOLID_COMPONENT_3_4A[v]:g} {u}"
    if _below(c, PART_SOLID_COMPONENT_4A_4B, v):
        return C.C4A, (
            f"part-solid solid component {c:g} {u} in "
            f"[{PART_SOLID_COMPONENT_3_4A[v]:g}, {PART_SOLID_COMPONENT_4A_4B[v]:g}) {u}"
        )
    return C.C4B, f"part-solid solid component {c:g} {u} >= {PART_SOLID_COMPONENT_4A_4B[v]:g} {u}"


def _part_solid_change(t: float, c: float, v: bool, change: Change) -> tuple[LungRadsCategory, str]:
    u = _unit(v)
    word = change.value
    if change is Change.NEW and _below(t, PART_SOLID_TOTAL_2_3, v):
        return C.C3, f"new part-solid total {t:g} {u} < {PART_SOLID_TOTAL_2_3[v]:g} {u}"
    if _below(c, PART_SOLID_NEW_COMPONENT_4A_4B, v):
        return C.C4A, f"{word} part-solid, solid component {c:g} {u} < {PART_SOLID_NEW_COMPONENT_4A_4B[v]:g} {u}"
    return C.C4B, f"{word} part-solid, solid component {c:g} {u} >= {PART_SOLID_NEW_COMPONENT_4A_4B[v]:g} {u}"


def _ground_glass(s: float, v: bool, change: Change | None) -> tuple[LungRadsCategory, str]:
    u = _unit(v)
    if _below(s, GROUND_GLASS_2_3, v):
        return C.C2, f"ground-glass {s:g} {u} < {GROUND_GLASS_2_3[v]:g} {u}"
    if change in (Change.STABLE, Change.GROWING):
        # v2022 keeps ">= 30 mm and unchanged or slowly growing" in category 2; a fast-growing
        # non-solid nodule is for the reader (4X by additional features), which we cannot measure here.
        return C.C2, f"ground-glass {s:g} {u} >= {GROUND_GLASS_2_3[v]:g} {u}, {change.value} (unchanged or slowly growing)"
    prefix = "new " if change is Change.NEW else ""
    return C.C3, f"{prefix}ground-glass {s:g} {u} >= {GROUND_GLASS_2_3[v]:g} {u}"


def _size_category(nodule: Nodule, v: bool, change: Change | None) -> tuple[LungRadsCategory, str]:
    s = _size(nodule, v)
    if nodule.type is NoduleType.GROUND_GLASS:
        return _ground_glass(s, v, change)
    if nodule.type is NoduleType.SOLID:
        base = _solid_baseline(s, v)
        if change in (Change.NEW, Change.GROWING):
            assert change is not None
            # v2022: size thresholds also apply to enlarging nodules, so the higher of the two wins.
            return max(base, _solid_change(s, v, change), key=lambda r: r[0].rank)
        return base
    c = _solid_component(nodule, v)
    base = _part_solid_baseline(s, c, v)
    if change in (Change.NEW, Change.GROWING):
        assert change is not None
        return max(base, _part_solid_change(s, c, v, change), key=lambda r: r[0].rank)
    return base


def _juxtapleural_benign(nodule: Nodule, v: bool) -> str | None:
    """v2022: juxtapleural (incl. perifissural) solid nodule, smooth, oval/lentiform/triangular, < 10 mm -> 2."""
    if not (nodule.juxtapleural or nodule.perifissural):
        return None
    if nodule.type is not NoduleType.SOLID or nodule.margin is not Margin.SMOOTH:
        return None
    if nodule.pleural_shape_benign is not True or nodule.change is Change.GROWING:
        return None
    s = _size(nodule, v)
    if not _below(s, JUXTAPLEURAL_MAX, v):
        return None
    where = "perifissural" if nodule.perifissural else "juxtapleural"
    u = _unit(v)
    return f"{where} solid nodule, smooth margin, oval/lentiform/triangular, {s:g} {u} < {JUXTAPLEURAL_MAX[v]:g} {u}"


def _cyst_category(nodule: Nodule) -> tuple[LungRadsCategory, str]:
    """v2022 cystic airspace rules (module docstring); `nodule.cyst` is set."""
    s = nodule.reported_mean_diameter_mm
    assert nodule.cyst is not None
    if nodule.cyst is CystKind.THIN_WALLED:
        return C.C1, f"thin-walled unilocular cyst {s:g} mm (wall < 2 mm): benign, not classified as a nodule"
    what = {CystKind.THICK_WALLED: "thick-walled cyst (wall >= 2 mm)", CystKind.MULTILOCULAR: "multilocular cyst",
            CystKind.THIN_WALLED_IN_PART: "cyst, wall thin where seen but not seen whole",
            CystKind.WITH_OPACITY: "cyst with ground glass or consolidation beside its wall"}[nodule.cyst]
    if nodule.change is Change.GROWING:
        return C.C4B, f"growing {what} {s:g} mm: atypical pulmonary cyst"
    prefix = "new " if nodule.change is Change.NEW else ""
    return C.C4A, f"{prefix}{what} {s:g} mm: atypical pulmonary cyst"


def _airway_category(nodule: Nodule, v: bool) -> tuple[LungRadsCategory, str]:
    """v2022 airway nodule rules (module docstring); `nodule.airway` is set."""
    s = nodule.reported_mean_diameter_mm
    if nodule.airway is AirwayLevel.SUBSEGMENTAL:
        return C.C2, (f"subsegmental airway nodule {s:g} mm: favours mucus or infection (2), unless an obstructing "
                      "nodule is seen")
    where = "segmental or more proximal airway nodule"
    if nodule.change in (Change.STABLE, Change.GROWING):
        assert nodule.change is not None
        category, reason = C.C4B, f"{where} {s:g} mm, persistent ({nodule.change.value}): bronchoscopy"
    else:
        prefix = "new " if nodule.change is Change.NEW else ""
        category, reason = C.C4A, f"{prefix}{where} {s:g} mm: 3-month LDCT, and 4B with bronchoscopy if it persists"
    by_size = _size_category(nodule, v, nodule.change)
    if by_size[0].rank > category.rank:
        return by_size[0], f"{by_size[1]}, in a segmental or more proximal airway"
    return category, reason


def _stepped_down(category: LungRadsCategory, nodule: Nodule) -> tuple[LungRadsCategory, str | None]:
    """v2022 stepped management of a stable nodule: 4A stable at 3 months -> 3; 3 stable at 6 months -> 2."""
    months = nodule.stable_months
    if nodule.change is not Change.STABLE or months is None:
        return category, None
    start = nodule.prior_category or category
    if start is C.C4A and months >= STABLE_MONTHS_4A_TO_3:
        if months >= STABLE_MONTHS_4A_TO_3 + STABLE_MONTHS_3_TO_2:
            return C.C2, f"4A nodule stable for {months:g} months (3-month and 6-month LDCT) -> 2"
        return C.C3, f"4A nodule stable for {months:g} months (>= {STABLE_MONTHS_4A_TO_3:g}) -> 3"
    if start is C.C3 and months >= STABLE_MONTHS_3_TO_2:
        return C.C2, f"3 nodule stable for {months:g} months (>= {STABLE_MONTHS_3_TO_2:g}) -> 2"
    return category, None


def classify_nodule(nodule: Nodule, *, by_volume: bool = False) -> NoduleAssessment:
    """Lung-RADS v2022 category of one nodule.

    by_volume: apply the volume thresholds (mm3) instead of the mean diameter; needs volume_mm3 (and
    solid_component_volume_mm3 for a part-solid nodule). Follow-up inputs (change, stable_months,
    prior_category) are used when present; without them the baseline rules apply.
    """
    if by_volume:
        if nodule.volume_mm3 is None:
            raise ValueError("by_volume needs volume_mm3")
        if nodule.type is NoduleType.PART_SOLID and nodule.solid_component_volume_mm3 is None:
            raise ValueError("by_volume needs solid_component_volume_mm3 for a part_solid nodule")
    measure = "volume" if by_volume else "diameter"
    if nodule.calcified:
        return _assessment(C.C1, ("benign calcification pattern",), measure)
    if nodule.airway is not None:
        category, reason = _airway_category(nodule, by_volume)
        return _assessment(category, (reason,), measure)  # no stepping down, no 4X: a lesion in a bronchus's lumen
    if nodule.cyst is not None:
        category, reason = _cyst_category(nodule)
        measure = "cyst"  # no size threshold applies to a cyst...
        if nodule.cyst.is_nodule_too:  # ...but to the opacity beside it, graded as the nodule it is
            by_size = _size_category(nodule, by_volume, nodule.change)
            if by_size[0].rank > category.rank:
                (category, reason), measure = by_size, "volume" if by_volume else "diameter"
    else:
        benign_pleural = _juxtapleural_benign(nodule, by_volume)
        if benign_pleural is not None:
            return _assessment(C.C2, (benign_pleural,), measure)
        category, reason = _size_category(nodule, by_volume, nodule.change)
    reasons = [reason]
    if nodule.change is Change.STABLE:
        category, step = _stepped_down(category, nodule)
        if step is not None:
            reasons.append(step)
    if nodule.margin is Margin.SPICULATED and category.rank >= C.C3.rank:
        reasons.append(f"spiculated margin: category {category.value} with an additional feature, 4X suggested")
        category = C.C4X
    return _assessment(category, tuple(reasons), measure)


def _assessment(category: LungRadsCategory, reasons: tuple[str, ...], measure: str) -> NoduleAssessment:
    return NoduleAssessment(category, reasons, RECOMMENDATIONS[category], measure)


def classify_exam(exam: Exam, *, by_volume: bool = False) -> ExamAssessment:
    """Exam category = the highest nodule category; 0 (with the reason) when the lungs are not fully covered."""
    rows = tuple(classify_nodule(n, by_volume=by_volume) for n in exam.nodules)
    highest = max((r.category for r in rows), key=lambda c: c.rank, default=None)
    if not exam.lungs_fully_covered:
        reason = f"lungs not fully covered: {exam.incomplete_reason}"
        return ExamAssessment(C.C0, RECOMMENDATIONS[C.C0], reason, rows, highest)
    if highest is None:
        return ExamAssessment(C.C1, RECOMMENDATIONS[C.C1], "no lung nodules", rows, None)
    index = [r.category for r in rows].index(highest)
    reason = f"highest nodule category {highest.value} (nodule {index + 1}: {'; '.join(rows[index].reasons)})"
    return ExamAssessment(highest, RECOMMENDATIONS[highest], reason, rows, highest)


__all__ = [
    "ExamAssessment",
    "NoduleAssessment",
    "RECOMMENDATIONS",
    "DESCRIPTORS",
    "GROWTH_THRESHOLD_MM_PER_12_MONTHS",
    "classify_exam",
    "classify_nodule",
    "infection_caveat",
    "is_growth",
    "prior_not_compared_caveat",
    "recommendation",
]


# v2022 "suspected infectious or inflammatory findings" (the yingbo777 notes above): Lung-RADS 0 with a 1-3 month
# LDCT *may* be recommended for, among others, multiple new nodules (more than six) and large solid nodules (>= 8 mm)
# appearing in a short interval. A reader's choice, so the node states it beside the category it gives.
INFECTION_NEW_NODULES = 6
INFECTION_NEW_SOLID_MM = 8.0


def infection_caveat(nodules: tuple[Nodule, ...] | list[Nodule]) -> str | None:
    """What a follow-up exam's new nodules (`change` NEW) say of infection or inflammation, in v2022's words; None
    where they say nothing."""
    new = [n for n in nodules if n.change is Change.NEW and n.cyst is None]
    large = [n for n in new if n.type is NoduleType.SOLID and not n.calcified
             and n.reported_mean_diameter_mm >= INFECTION_NEW_SOLID_MM]
    said = []
    if len(new) > INFECTION_NEW_NODULES:
        said.append(f"{len(new)} new nodules (more than {INFECTION_NEW_NODULES})")
    if large:
        sizes = ", ".join(f"{n.reported_mean_diameter_mm:g}" for n in large)
        said.append(f"new solid nodule(s) of {INFECTION_NEW_SOLID_MM:g} mm or more ({sizes} mm)")
    if not said:
        return None
    return (" and ".join(said) + " since the prior: findings that can mean infection or inflammation; Lung-RADS v2022 "
            "allows category 0 with a 1-3 month LDCT in their place (the reader's call); the category here is the most "
            "suspicious nodule's")


def prior_not_compared_caveat(prior_label: str) -> str:
    """An earlier chest CT of the patient that exists and was not compared (not retrieved in time, not readable, the
    comparison failed). v2022 category 0 covers "prior chest CT examination(s) being located for comparison": a
    baseline category can be wrong once the prior is seen (a 4A nodule stable for two years is a 2), so the reader is
    told so beside the category the node gives, which reads the exam as a baseline. The reader, who has the PACS, may
    compare and keep it, or give 0 (the reader's call, as for infection)."""
    return (f"an earlier chest CT of the patient exists ({prior_label}) and was not compared: the category here reads "
            "the exam as a baseline; Lung-RADS v2022 gives category 0 while a prior chest CT is being located for "
            "comparison (the reader's call)")


def is_growth(previous_mean_mm: float, current_mean_mm: float, interval_months: float) -> bool:
    """v2022 growth: mean diameter up by > 1.5 mm within a 12-month interval (one-decimal values compared)."""
    if interval_months <= 0 or interval_months > 12:
        raise ValueError(f"interval_months must be in (0, 12], got {interval_months!r}")
    delta = round_half_up(current_mean_mm, 1) - round_half_up(previous_mean_mm, 1)
    return round_half_up(delta, 1) > GROWTH_THRESHOLD_MM_PER_12_MONTHS
