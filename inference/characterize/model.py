"""What characterisation returns: one record per nodule and one per exam (plain dataclasses)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

AttenuationType = Literal["solid", "part_solid", "ground_glass"]
Margin = Literal["smooth", "lobulated", "spiculated"]
CalcificationPattern = Literal["central", "diffuse", "eccentric"]
Lung = Literal["right", "left"]
Zone = Literal["upper", "middle", "lower"]


@dataclass(frozen=True)
class Axes:
    """Long axis, perpendicular short axis and Lung-RADS mean diameter on one axial slice (mm)."""

    long_mm: float
    short_mm: float
    mean_mm: float  # (long + short) / 2 rounded to 0.1 mm, the Lung-RADS v2022 measurement
    slice_index: int  # z index (source voxels) of the axial slice measured


@dataclass(frozen=True)
class Location:
    lung: Lung | None  # None when no lung mask was given and the side cannot be told
    zone: Zone | None  # thirds of that lung's craniocaudal extent: approximates the lobe, it is not one
    juxtapleural: bool  # the segmentation touches the chest wall / mediastinum (the pleura)
    perifissural: bool  # touches a thin flat sheet inside the lung: a fissure (location.perifissural)


CystKind = Literal["thin_walled", "thick_walled", "multilocular", "cavity", "thin_walled_in_part", "with_opacity"]


@dataclass(frozen=True)
class Cyst:
    """An air-filled lumen that the lesion's wall encloses (`characterize.cyst.cystic_airspace`)."""

    # thin_walled: one lumen, its wall under 2 mm wherever seen and seen nearly whole; thick_walled: a wall of 2 mm or
    # more (uniform, or focally over a few rays); multilocular: two lumens or more; cavity: the lumen under half the
    # lesion's diameter (a nodule with a cavity); thin_walled_in_part: thin where seen, but much of it borders other
    # structures, so a thicker part could be hidden (graded as an atypical cyst until the reader sees it whole);
    # with_opacity: ground glass or consolidation beside its wall
    kind: CystKind
    loculi: int
    lumen_mm3: float
    lumen_diameter_mm: float  # the equivalent diameter of the lumen's largest axial section
    wall_median_mm: float
    wall_p90_mm: float
    wall_max_mm: float
    wall_share: float  # share of the rays that found the wall (the rest ran into other structures or found none)
    opacity_share: float  # share of those with ground glass or consolidation beyond the wall
    axes: Axes  # the whole lesion's (lumen and wall), on the lumen's largest section

    @property
    def is_cyst(self) -> bool:
        """A cyst graded by the cyst rules alone (thin-walled, thick-walled, multilocular, thin where its wall is seen),
        not a nodule's cavity or a cyst with an opacity beside it (graded as a nodule too)."""
        return self.kind in ("thin_walled", "thick_walled", "multilocular", "thin_walled_in_part")

    def describe(self) -> str:
        opacity = f"cyst with ground glass or consolidation beside {self.opacity_share:.0%} of its wall"
        what = {"thin_walled": "thin-walled cyst", "thick_walled": "thick-walled cyst",
                "multilocular": f"multilocular cyst ({self.loculi} loculi)", "cavity": "cavity",
                "thin_walled_in_part": "cyst, thin-walled where its wall is seen", "with_opacity": opacity}[self.kind]
        wall = f"wall {self.wall_median_mm:.1f} mm"
        if self.kind == "thick_walled" and self.wall_median_mm < 2.0:
            wall += f", focally thickened to {self.wall_max_mm:.1f} mm"
        return (f"{what}: air-filled lumen {self.lumen_diameter_mm:.1f} mm across in a lesion of "
                f"{self.axes.mean_mm:.1f} mm, {wall} ({self.wall_share:.0%} of it measured, up to "
                f"{self.wall_max_mm:.1f} mm)")


AirwayLevel = Literal["segmental_or_proximal", "subsegmental"]


@dataclass(frozen=True)
class AirwayLesion:
    """A lesion inside an airway's lumen (`characterize.airway.airway_lesion`)."""

    level: AirwayLevel  # by the lumen's calibre (characterize.airway.SEGMENTAL_MIN_LUMEN_MM), approximating generation
    lumen_diameter_mm: float  # the airway's lumen, its largest inscribed diameter near the lesion
    inside_share: float  # share of the lesion within the lumen's hull grown by a bronchial wall
    walled_share: float  # share of the lumen's surface lined by a wall

    def describe(self) -> str:
        level = "segmental or more proximal" if self.level == "segmental_or_proximal" else "subsegmental"
        return (f"in an airway's lumen ({level} by its calibre: lumen {self.lumen_diameter_mm:.1f} mm across; "
                f"{self.inside_share:.0%} of the lesion within the airway)")


@dataclass(frozen=True)
class NoduleCharacteristics:
    segmentation_ok: bool
    reason: str | None  # why segmentation failed or is doubtful; None when it is fine
    volume_mm3: float
    axes: Axes | None  # whole nodule
    solid_axes: Axes | None  # solid component (all of a solid nodule; None for ground-glass)
    solid_volume_mm3: float
    type: AttenuationType
    solid_share: float  # share of the nodule core above the solid threshold (the type's evidence)
    calcified: bool  # a benign pattern (central or diffuse); an eccentric one is not benign
    calcification_pattern: CalcificationPattern | None
    # None: not assessed (no central slice's outline was free enough to judge lobulation, and no spicule;
    # or the segmentation failed): no smooth margin is claimed, so no smooth-margin rule applies
    margin: Margin | None
    location: Location
    mean_hu: float
    centroid_zyx: tuple[float, float, float]  # voxel indices of the segmentation's centroid
    features: dict[str, float] = field(default_factory=dict)  # raw shape/HU features, for audit and tuning
    # share of the outline bordering a vessel, an airway or the pleura (measure.contact_share): where it is
    # large the volume depends on where the segmentation cut, and is less reliable
    contact_share: float = 0.0
    # the first segmentation ran into structures of the nodule's own density and was done again held to the
    # detector's extent (characterize._ran_into_neighbours): its size follows the detector's estimate
    held_to_detector: bool = False
    # an air-filled lumen the lesion encloses (a cyst or a cavity); None: none
    cyst: Cyst | None = None
    # the airway whose lumen the lesion lies in (an endobronchial or endotracheal nodule); None: in the lung
    airway: AirwayLesion | None = None

    @property
    def mean_diameter_mm(self) -> float:
        return self.axes.mean_mm if self.axes else 0.0

    @property
    def solid_component_mm(self) -> float:
        return self.solid_axes.mean_mm if self.solid_axes else 0.0


@dataclass(frozen=True)
class ExamCharacteristics:
    lung_volume_ml: float
    laa950_pct: float  # % of lung voxels below -950 HU
    lungs_fully_covered: bool
    reason: str | None  # why the lungs are not fully covered (Lung-RADS 0), else None
    end_slice_lung_share: tuple[float, float]  # lung area on the first/last slice over the largest lung slice
    image_noise_hu: float | None = None  # the series' noise (noise.global_noise_hu); None where not measurable
    laa950_reliable: bool = True  # False: the noise is above emphysema.LAA950_MAX_NOISE_HU, LAA-950 overstates
