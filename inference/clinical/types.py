"""Inputs shared by the clinical rules: what the image measurements say about one nodule and one exam.

Units: millimetres for diameters, mm3 for volumes, months for stability. The characterize step
(inference/characterize/) produces these values; the rules here never look at pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import Enum


class NoduleType(str, Enum):
    """Attenuation of the nodule (Lung-RADS and Brock both use these three)."""

    SOLID = "solid"
    PART_SOLID = "part_solid"
    GROUND_GLASS = "ground_glass"  # non-solid


class Margin(str, Enum):
    SMOOTH = "smooth"
    LOBULATED = "lobulated"
    SPICULATED = "spiculated"


def margin_or_not_assessed(value: str | None) -> Margin | None:
    """The Margin a characterisation or finding names ("smooth", "lobulated", "spiculated"); None, a margin
    not assessed, stays None (no smooth-margin rule applies to it)."""
    return None if value is None else Margin(value)


class Lung(str, Enum):
    RIGHT = "right"
    LEFT = "left"


class Zone(str, Enum):
    """Thirds of the lung from apex to base; approximates the lobe (upper zone ~ upper lobe)."""

    UPPER = "upper"
    MIDDLE = "middle"
    LOWER = "lower"


class Change(str, Enum):
    """Comparison with a prior screening CT; None on a nodule means baseline (no prior)."""

    NEW = "new"
    GROWING = "growing"  # Lung-RADS v2022: mean diameter up by > 1.5 mm within 12 months
    STABLE = "stable"  # unchanged or decreased in size


class CystKind(str, Enum):
    """A cystic airspace as Lung-RADS v2022 classifies it (inference.clinical.lungrads); a nodule's cavity is none."""

    THIN_WALLED = "thin_walled"  # unilocular, wall < 2 mm: benign, not classified
    THICK_WALLED = "thick_walled"  # wall >= 2 mm, uniform or focal: an atypical pulmonary cyst
    MULTILOCULAR = "multilocular"  # an atypical pulmonary cyst
    # thin where its wall is seen, but much of it lies against other structures, where a thickening would not be
    # seen: graded as an atypical cyst until the reader sees the whole wall (the node's rule; v2022 has none)
    THIN_WALLED_IN_PART = "thin_walled_in_part"
    # ground glass or consolidation beside its wall: an atypical cyst whose opacity is also graded as a nodule
    WITH_OPACITY = "with_opacity"

    @property
    def is_nodule_too(self) -> bool:
        """Graded by the nodule rules as well (the higher category wins), and given a Brock risk as a nodule."""
        return self is CystKind.WITH_OPACITY


class AirwayLevel(str, Enum):
    """The airway an airway nodule (endobronchial or endotracheal) lies in, as Lung-RADS v2022 grades it
    (inference.clinical.lungrads)."""

    SEGMENTAL_OR_PROXIMAL = "segmental_or_proximal"  # 4A at baseline or new, 4B when it persists
    SUBSEGMENTAL = "subsegmental"  # favours infection or mucus: 2


def airway_or_none(value: str | None) -> AirwayLevel | None:
    """The AirwayLevel a finding's `airway` names; None for none (a nodule in the lung)."""
    return AirwayLevel(value) if value in {k.value for k in AirwayLevel} else None


def cyst_or_none(value: str | None) -> CystKind | None:
    """The CystKind a finding's `cyst` names; None for none, and for a nodule's cavity (graded as the nodule)."""
    return CystKind(value) if value in {k.value for k in CystKind} else None


def round_half_up(value: float, digits: int) -> float:
    """Round like a radiologist's caliper report (5.95 -> 6.0), not banker's rounding."""
    quantum = Decimal(1).scaleb(-digits)
    return float(Decimal(repr(value)).quantize(quantum, rounding=ROUND_HALF_UP))


def _positive(name: str, value: float | None) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class Nodule:
    """One nodule as Lung-RADS and the Brock model need it.

    mean_diameter_mm: mean of long and short axis (the Lung-RADS measurement); it is rounded to one
    decimal (half up) before any threshold is applied, as Lung-RADS v2022 says to report it.
    longest_diameter_mm: the long axis (the Brock model's nodule size); falls back to the mean.
    solid_component_mm: mean diameter of the solid part (part-solid nodules only, required there).
    pleural_shape_benign: for juxtapleural/perifissural nodules, whether the shape is oval, lentiform
    or triangular (Lung-RADS v2022 juxtapleural rule); None = not assessed, and the rule then does
    not downgrade the nodule.
    change/stable_months/prior_category: follow-up inputs; None at baseline.
    """

    type: NoduleType
    mean_diameter_mm: float
    calcified: bool = False  # a benign calcification pattern (complete, central, popcorn, concentric rings) or fat
    margin: Margin | None = Margin.SMOOTH  # None: not assessed (the smooth-margin rules then do not apply)
    volume_mm3: float | None = None
    longest_diameter_mm: float | None = None
    solid_component_mm: float | None = None
    solid_component_volume_mm3: float | None = None
    juxtapleural: bool = False
    perifissural: bool = False
    pleural_shape_benign: bool | None = None
    lung: Lung | None = None
    zone: Zone | None = None
    change: Change | None = None
    stable_months: float | None = None
    prior_category: "LungRadsCategory | None" = None
    cyst: CystKind | None = None  # a cystic airspace, classified by the cyst rules instead of its size
    airway: AirwayLevel | None = None  # an airway nodule, classified by the airway rules (lungrads._airway_category)

    def __post_init__(self) -> None:
        _positive("mean_diameter_mm", self.mean_diameter_mm)
        _positive("volume_mm3", self.volume_mm3)
        _positive("longest_diameter_mm", self.longest_diameter_mm)
        _positive("solid_component_mm", self.solid_component_mm)
        _positive("solid_component_volume_mm3", self.solid_component_volume_mm3)
        if not isinstance(self.type, NoduleType):
            raise ValueError(f"type must be a NoduleType, got {self.type!r}")
        if self.type is NoduleType.PART_SOLID and self.solid_component_mm is None:
            raise ValueError("solid_component_mm is required for a part_solid nodule (Lung-RADS grades it)")
        if self.cyst is not None and not isinstance(self.cyst, CystKind):
            raise ValueError(f"cyst must be a CystKind or None, got {self.cyst!r}")
        if self.airway is not None and not isinstance(self.airway, AirwayLevel):
            raise ValueError(f"airway must be an AirwayLevel or None, got {self.airway!r}")
        if self.airway is not None and self.cyst is not None:
            raise ValueError("a lesion is an airway nodule or a cyst, not both")
        if self.stable_months is not None and (not math.isfinite(self.stable_months) or self.stable_months < 0):
            raise ValueError(f"stable_months must be >= 0, got {self.stable_months!r}")

    @property
    def reported_mean_diameter_mm(self) -> float:
        """The Lung-RADS mean diameter: one decimal, rounded half up."""
        return round_half_up(self.mean_diameter_mm, 1)

    @property
    def reported_solid_component_mm(self) -> float | None:
        if self.solid_component_mm is None:
            return None
        return round_half_up(self.solid_component_mm, 1)

    @property
    def upper_zone(self) -> bool:
        return self.zone is Zone.UPPER


@dataclass(frozen=True)
class Exam:
    """One screening CT: whether the lungs are fully in the field of view, and its nodules."""

    lungs_fully_covered: bool
    nodules: tuple[Nodule, ...] = field(default_factory=tuple)
    incomplete_reason: str | None = None  # why not covered (shown with category 0)

    def __post_init__(self) -> None:
        if not self.lungs_fully_covered and not (self.incomplete_reason and self.incomplete_reason.strip()):
            raise ValueError("incomplete_reason is required when lungs_fully_covered is False")


class LungRadsCategory(str, Enum):
    """ACR Lung-RADS v2022 assessment categories, in increasing order of suspicion."""

    C0 = "0"
    C1 = "1"
    C2 = "2"
    C3 = "3"
    C4A = "4A"
    C4B = "4B"
    C4X = "4X"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def is_suspicious(self) -> bool:
        return self in (LungRadsCategory.C4A, LungRadsCategory.C4B, LungRadsCategory.C4X)


_RANK = {c: i for i, c in enumerate(LungRadsCategory)}
