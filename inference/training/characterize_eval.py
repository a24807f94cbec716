"""Evaluate characterisation on phantoms: confusion matrices (type, margin, calcification,
juxtapleural) and the volume errors, for nodules of at least `min_diameter_mm` (default 6 mm, the Lung-RADS size that matters).

Truth volume: the painter's own partial-volume fraction, recovered exactly by painting each nodule
twice (onto -2000 and -3000 HU backgrounds: painted = b + f (target - b), so f follows from the
difference), summed over the lungs (`truth_region`): the nodule-free phantom's lungs with what they
enclose (its lung mask with holes filled slice by slice), and everything more than 1.5 mm inside the
lungs as the generator drew them (`inference.phantom.phantom_and_anatomy`), which adds the hilar vessels and
airways a nodule can be painted over (they reach the mediastinum, so they are no holes of the mask).
A pleural nodule's part painted into the chest wall is invisible there and not counted, nor is its part
painted over a rib or the spine that the generator drew inside its lung label (`BONE_HU`; since 2026-12-04); the
part of a nodule over a vessel it engulfs is counted. (Until 2026-12 the second part was missing, and for
nodules at the hilum the truth was a third to a half short: see docs/characterization.md.) A nodule painted almost
wholly over tissue as dense as its own (a ground-glass nodule over a hilar vessel) does not show at all: where less than
MIN_VISIBLE_SHARE of its painting raises the image by VISIBLE_RISE_HU, it is listed as hidden by the anatomy and not
counted (since 2026-12-06; one of the 1507 nodules >= 6 mm of the crop harness, small 13001:0).
Where a nodule sits is judged from the painting, not from the generator's `attached_to`: the
generator places a "pleura" nodule where its clearance to the nearest non-aerated voxel is 0.55-1 R,
and that voxel is often a vessel or an airway deep inside the lung (of the 7 "pleura" nodules >= 6 mm
of seeds 15000..15019 full size, 4 lie 2.5-10 R deep in the drawn lungs). A nodule is at the pleura
when part of its painting falls outside the truth region (it crosses the lungs' outline into the
chest wall or mediastinum: that is also the truth of the juxtapleural confusion); otherwise one the
generator attached to the pleura or a vessel touches a vessel or an airway.
The detector's diameter is simulated as the truth diameter times a factor in 0.85 ... 1.15 drawn
from the seed (a detector is not exact), at the painted centre. With `--centres detector` the packaged detector
runs on each phantom, as the pipeline runs it, and each nodule is characterised at the centre and diameter of
the candidate that hits it (LUNA16 rule: within its radius; the most probable of several), whatever its
probability; a nodule no candidate hits is not characterised and is listed as not detected. This measures what
a user gets, the detector's error in where and how large included.

    python -m inference.training.characterize_eval --count 20 --first-seed 9000 [--full-size] [--centres detector]
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from inference.characterize import NoduleCharacteristics, characterize_nodule
from inference.characterize.measure import CONTACT_SHARE_CAVEAT, FEW_SLICES_CAVEAT, size_caveat, sphere_volume_mm3
from inference.clinical.lungrads import classify_nodule
from inference.clinical.types import LungRadsCategory, Margin, Nodule, NoduleType
from inference.phantom import paint_nodule, phantom_and_anatomy
from inference.phantom.model import Phantom, PhantomNodule
from inference.phantom.nodules import painted_solid_diameter_mm
from inference.preprocess import Preprocessed, lung_mask
from inference.training.metrics import MAX_MARKS_PER_SCAN, luna16_hits
from inference.training.painted_axes import PaintedAxes, painted_axes

if TYPE_CHECKING:
    from inference.detect import Candidate, Mode
    from inference.engines import DetectorEngine

TYPES = ("solid", "part_solid", "ground_glass")
# "not_assessed": predicted only (characterize returns margin None), never a truth: its row stays empty
MARGINS = ("smooth", "lobulated", "spiculated", "not_assessed")
# the phantom generator's nodule kinds as the pipeline names the types (inference.characterize.attenuation)
TYPE_OF_KIND = {"solid": "solid", "part-solid": "part_solid", "ground-glass": "ground_glass"}
# the Lung-RADS v2022 categories a baseline nodule can get (0 is an exam's, never a nodule's)
LUNG_RADS = tuple(c.value for c in LungRadsCategory if c is not LungRadsCategory.C0)


@dataclass
class NoduleResult:
    seed: int
    index: int  # the nodule's place in its phantom's list: "seed:index" names it in the records
    truth_type: str
    predicted_type: str
    diameter_mm: float
    truth_volume_mm3: float
    volume_mm3: float
    truth_margin: str
    margin: str
    truth_calcified: bool
    calcified: bool
    attached_to: str | None
    juxtapleural: bool
    segmentation_ok: bool
    perifissural: bool = False  # the phantoms paint no fissures: every True is a false positive
    at_pleura: bool = False  # part of its painting lies outside the lungs (the truth of juxtapleural)
    contact_share: float = 0.0  # share of its outline on other structures (the "less reliable" note above the caveat)
    detected: bool = True  # with the detector's centres: whether a candidate hit it (else nothing was measured)
    centre_offset_mm: float = 0.0  # the characterised centre's distance from the painted one
    detector_diameter_mm: float = 0.0  # the diameter the characterisation was given
    visible_share: float = 1.0  # share of its painting in the lungs that shows in the image (`visible_share`)
    slice_mm: float = 0.0  # the phantom's slice thickness (0: not recorded, as in results saved before it was)
    solid_diameter_mm: float = 0.0  # the solid part as painted in the image (nodules.painted_solid_diameter_mm)
    lung_rads: str = ""  # the category the report gives it (by its mean diameter, inference.pipeline.clinical_nodule)
    lung_rads_by_volume: str = ""  # the same nodule by the v2022 volume thresholds ("": no volume measured)
    # the painted outline's axes on the scan's slices (painted_axes.painted_axes; 0: not recorded, as in results saved
    # before they were) and its solid part's mean diameter (part-solid nodules), the truth of the diameters below
    painted_long_mm: float = 0.0
    painted_short_mm: float = 0.0
    painted_solid_mm: float = 0.0
    # the mean diameter and solid component the report gives it (inference.pipeline.clinical_nodule), the axes measured
    mean_diameter_mm: float = 0.0
    solid_component_mm: float = 0.0
    long_mm: float = 0.0
    short_mm: float = 0.0

    @property
    def hidden(self) -> bool:
        """Painted over tissue as dense as its own: nothing shows to outline (see the module's docstring)."""
        return self.visible_share < MIN_VISIBLE_SHARE

    @property
    def site(self) -> str:
        """free in the lung, on a vessel or airway, or at the pleura (see the module's docstring)."""
        return "pleura" if self.at_pleura else "free" if self.attached_to is None else "vessel"

    @property
    def size_caveat(self) -> str | None:
        """Why the report calls its volume less reliable (measure.size_caveat), "failed" where it has no segmentation
        (the finding then says why, and its size is the detector's), or None."""
        if not self.segmentation_ok:
            return "failed"
        return size_caveat(self.predicted_type, self.volume_mm3, self.contact_share, self.slice_mm)

    @property
    def volume_error(self) -> float:
        return (self.volume_mm3 - self.truth_volume_mm3) / max(self.truth_volume_mm3, 1e-6)

    def painted_lung_rads(self, *, by_volume: bool = False) -> str:
        """The Lung-RADS v2022 category of the nodule as painted (baseline rules): its type; its painted outline's
        mean diameter (`painted_long_mm`, `painted_short_mm`; where not recorded, the core diameter, the generator's
        `diameter_mm` before lobes and spicules) or its painted volume; for a part-solid nodule its solid part
        (`painted_solid_mm` as outlined, or by volume a sphere of `solid_diameter_mm`: the solid part as the generator
        paints it); its calcification and margin (`painted_category`). "" for a part-solid nodule whose solid part was
        not recorded (results saved before it was)."""
        part_solid = self.truth_type == NoduleType.PART_SOLID.value
        solid = self.solid_diameter_mm if part_solid else None
        if solid is not None and solid <= 0:
            return ""
        mean = self.diameter_mm
        if self.painted_long_mm > 0 and not by_volume:  # the painted outline's own, where recorded
            mean = self.painted_mean_mm
            # 0 in the crops patched before painted_axes fell back to it (a core no slice crosses at half)
            solid = (self.painted_solid_mm or self.solid_diameter_mm) if part_solid else None
        return painted_category(self.truth_type, mean, solid, self.truth_calcified, self.truth_margin,
                                volume_mm3=self.truth_volume_mm3, by_volume=by_volume).value

    @property
    def painted_mean_mm(self) -> float:
        """The painted outline's mean diameter (0 where its axes were not recorded)."""
        return PaintedAxes(self.painted_long_mm, self.painted_short_mm, 0.0, 0.0).mean_mm


def painted_category(type_: str, mean_mm: float, solid_mm: float | None, calcified: bool, margin: str, *,
                     volume_mm3: float | None = None, by_volume: bool = False) -> LungRadsCategory:
    """The Lung-RADS v2022 baseline category of a painted nodule: its type (as the pipeline names it), its mean
    diameter, its solid part (a part-solid nodule's; by volume a sphere of that diameter), calcification and margin, or
    by the volume thresholds its painted `volume_mm3`. No juxtapleural downgrade: a painted nodule is a sphere cut by
    the wall, not the lentiform or triangular shape the rule asks for."""
    nodule = Nodule(type=NoduleType(type_), mean_diameter_mm=mean_mm, calcified=calcified, margin=Margin(margin),
                    volume_mm3=volume_mm3, solid_component_mm=solid_mm,
                    solid_component_volume_mm3=sphere_volume_mm3(solid_mm) if solid_mm else None)
    return classify_nodule(nodule, by_volume=by_volume).category


@dataclass
class Evaluation:
    results: list[NoduleResult] = field(default_factory=list)
    min_diameter_mm: float = 6.0
    centres: str = "truth"  # "truth": the painted centre and a drawn diameter; "detector": the detector's

    @property
    def counted(self) -> list[NoduleResult]:
        return [r for r in self.results if r.diameter_mm >= self.min_diameter_mm and r.detected and not r.hidden]

    @property
    def not_detected(self) -> list[NoduleResult]:
        return [r for r in self.results if r.diameter_mm >= self.min_diameter_mm and not r.detected and not r.hidden]

    @property
    def hidden(self) -> list[NoduleResult]:
        """Nodules >= min_diameter_mm painted over tissue as dense as their own: listed, not counted."""
        return [r for r in self.results if r.diameter_mm >= self.min_diameter_mm and r.hidden]

    def confusion(self, what: str = "type") -> np.ndarray:
        """Rows: truth, columns: predicted, in TYPES order (MARGINS for margin, (False, True) for calcified and
        juxtapleural, LUNG_RADS for the categories)."""
        labels: tuple = {"type": TYPES, "margin": MARGINS, "calcified": (False, True), "juxtapleural": (False, True),
                         "lung_rads": LUNG_RADS, "lung_rads_by_volume": LUNG_RADS}[what]
        out = np.zeros((len(labels), len(labels)), int)
        for r in self.counted:
            t, p = self._pair(r, what)
            if t == "" or p == "":  # not categorised (saved before the categories were recorded, or no volume)
                continue
            out[labels.index(t), labels.index(p)] += 1
        return out

    @staticmethod
    def _pair(r: NoduleResult, what: str) -> tuple[object, object]:
        """(truth, predicted) of `r` for the confusion matrix `what`."""
        if what == "lung_rads":
            return r.painted_lung_rads(), r.lung_rads
        if what == "lung_rads_by_volume":
            return r.painted_lung_rads(by_volume=True), r.lung_rads_by_volume
        pairs: dict[str, tuple[object, object]] = {
            "type": (r.truth_type, r.predicted_type), "margin": (r.truth_margin, r.margin),
            "calcified": (r.truth_calcified, r.calcified), "juxtapleural": (r.at_pleura, r.juxtapleural)}
        return pairs[what]

    def accuracy(self, what: str = "type") -> float:
        m = self.confusion(what)
        return float(np.trace(m) / max(m.sum(), 1))

    def volume_errors(self) -> np.ndarray:
        return np.array([r.volume_error for r in self.counted])

    def diameter_errors(self, margin: str | None = None) -> np.ndarray:
        """(mean diameter, long axis, short axis) as reported minus the painted outline's, mm, one row per counted
        nodule with both (results saved before the painted axes were recorded have none); `margin`: of that painted
        margin only."""
        rows = [(r.mean_diameter_mm - r.painted_mean_mm,
                 r.long_mm - r.painted_long_mm, r.short_mm - r.painted_short_mm)
                for r in self.counted
                if r.painted_long_mm > 0 and r.long_mm > 0 and r.segmentation_ok and margin in (None, r.truth_margin)]
        return np.array(rows, float).reshape(-1, 3)

    def within_by_site(self, tolerance: float = 0.15) -> dict[str, tuple[int, int]]:
        """(within tolerance, counted) per site: free in the lung, on a vessel or airway, at the pleura."""
        out: dict[str, tuple[int, int]] = {}
        for name in ("free", "vessel", "pleura"):
            group = [r for r in self.counted if r.site == name]
            out[name] = (sum(abs(r.volume_error) <= tolerance for r in group), len(group))
        return out

    def within_by_caveat(self, tolerance: float = 0.15) -> dict[str, tuple[int, int]]:
        """(within tolerance, counted) for the nodules whose note says their volume is less reliable, by its reason
        (measure.size_caveat: "contact", "few slices"; "failed": no segmentation), and for the others ("none"): how
        much each statement is worth, and how far the volume of a nodule the report does not qualify can be trusted."""
        out: dict[str, tuple[int, int]] = {}
        for name in ("contact", "few slices", "failed", None):
            group = [r for r in self.counted if r.size_caveat == name]
            out[name or "none"] = (sum(abs(r.volume_error) <= tolerance for r in group), len(group))
        return out

    def to_json(self) -> dict[str, Any]:
        """Confusion matrices (rows truth, columns predicted), accuracies and volume errors, for `--json`."""
        out: dict[str, Any] = {"min_diameter_mm": self.min_diameter_mm, "nodules_counted": len(self.counted),
                               "nodules_total": len(self.results), "centres": self.centres,
                               "not_detected": len(self.not_detected), "hidden_by_anatomy": len(self.hidden),
                               "perifissural_false_positives": sum(r.perifissural for r in self.counted)}
        for what, labels in (("type", TYPES), ("margin", MARGINS), ("calcified", (False, True)),
                             ("juxtapleural", (False, True)), ("lung_rads", LUNG_RADS),
                             ("lung_rads_by_volume", LUNG_RADS)):
            out[what] = {"labels": list(labels), "confusion": self.confusion(what).tolist(),
                         "accuracy": round(self.accuracy(what), 4)}
        err = self.volume_errors()
        out["volume_error"] = None if not err.size else {
            "mean": round(float(err.mean()), 4), "median_abs": round(float(np.median(np.abs(err))), 4),
            "max_abs": round(float(np.abs(err).max()), 4), "share_within_15pct": round(float((np.abs(err) <= 0.15).mean()), 4),
            "within_15pct_by_site": {k: list(v) for k, v in self.within_by_site().items()},
            "within_15pct_by_caveat": {k: list(v) for k, v in self.within_by_caveat().items()},
        }
        out["diameter_error_mm"] = {margin or "all": _diameter_summary(self.diameter_errors(margin))
                                    for margin in (None, "smooth", "lobulated", "spiculated")}
        return out


# a reported mean diameter this close to the painted outline's counts as right (a tenth of a small nodule's size)
DIAMETER_TOLERANCE_MM = 1.0


def _diameter_summary(errors: np.ndarray) -> dict[str, float] | None:
    """Medians of the (mean, long, short) errors and the share of mean diameters within DIAMETER_TOLERANCE_MM."""
    if not errors.size:
        return None
    median = np.median(errors, axis=0)
    return {"count": len(errors), "mean_median": round(float(median[0]), 3), "long_median": round(float(median[1]), 3),
            "short_median": round(float(median[2]), 3),
            "mean_within": int((np.abs(errors[:, 0]) <= DIAMETER_TOLERANCE_MM).sum())}


# a nodule with more than this share of its painting outside the truth region crosses the lungs' outline
# (a nodule inside the lung loses nothing: the region holds every voxel it can be painted on)
PLEURA_SHARE_OUTSIDE = 0.02


def painted_fraction(phantom: Phantom, nodule: PhantomNodule) -> np.ndarray:
    """The nodule's partial-volume fraction per voxel of `phantom`'s grid, as the painter drew it."""
    a = np.full(phantom.hu.shape, -2000.0, np.float32)
    b = np.full(phantom.hu.shape, -3000.0, np.float32)
    paint_nodule(a, phantom.origin, phantom.spacing, phantom.direction, nodule)
    paint_nodule(b, phantom.origin, phantom.spacing, phantom.direction, nodule)
    return np.clip((b - a) / 1000.0 + 1.0, 0.0, 1.0)


def painted_volumes(phantom: Phantom, inside: np.ndarray, nodule: PhantomNodule,
                    frac: np.ndarray | None = None) -> tuple[float, float]:
    """(painted volume inside the lungs: the truth, the whole painted volume), mm3: each nodule's
    partial-volume fraction (`frac`, or painted here), summed inside `inside` and everywhere."""
    frac = painted_fraction(phantom, nodule) if frac is None else frac
    voxel = float(np.prod(phantom.spacing))
    return float((frac * inside).sum() * voxel), float(frac.sum() * voxel)


# a voxel where the nodule's painting raises the image by less than this shows nothing of it to outline (its contrast
# over lung is 250 HU or more, over the phantoms' noise of 20-45 HU)...
VISIBLE_RISE_HU = 100.0
# ...and a nodule with less than this share of its painting (in the lungs) visible is hidden by the anatomy. Of the
# crop harness's 1507 nodules >= 6 mm, 13001:0 (6.5 mm ground glass over a hilar vessel) shows 0 %; the next, 23 %
# and more, show their outline against the lung
MIN_VISIBLE_SHARE = 0.1


def visible_share(anatomy: Phantom, inside: np.ndarray, nodule: PhantomNodule, frac: np.ndarray) -> float:
    """Share of the nodule's painting inside `inside` that shows: painted onto the nodule-free image, the voxels it
    raises by VISIBLE_RISE_HU or more, weighted by its partial-volume fraction `frac` (`painted_fraction`; the painter
    keeps the brighter of nodule and background, so over tissue as dense as its own it leaves the image as it was)."""
    painted = anatomy.hu.astype(np.float32)
    paint_nodule(painted, anatomy.origin, anatomy.spacing, anatomy.direction, nodule)
    where = (frac > 0) & inside  # the painter changes nothing outside its fraction
    weight = frac[where]
    total = float(weight.sum())
    rise = painted[where] - anatomy.hu[where]
    return float(weight[rise >= VISIBLE_RISE_HU].sum()) / total if total > 0 else 0.0


# vessel-attached phantom nodules lie at least 1.5 mm inside the drawn lungs (nodules._place_nodules);
# closer to their edge lie the pleura and the chest wall, whose share the aerated lung mask decides
DRAWN_LUNG_MARGIN_MM = 1.5


# the generator draws the ribs and the spine over its lung label; a nodule's tissue (15 ... 55 HU) does not
# show over bone, and a lung vessel (40 HU, noise sd 20) stays far below this
BONE_HU = 150.0


def truth_region(anatomy: Phantom, drawn: np.ndarray) -> np.ndarray:
    """Where a painted nodule counts: the nodule-free phantom's lungs with their holes filled slice by
    slice, plus everything DRAWN_LUNG_MARGIN_MM or more inside the lungs as the generator drew them
    (`drawn`, from inference.phantom.phantom_and_anatomy), except bone: a rib drawn over the lung label
    stays a rib in the image (the painter keeps the brighter of nodule and background), so a nodule's part
    painted there is invisible, like its part in the chest wall."""
    aerated = np.stack([ndimage.binary_fill_holes(p) for p in lung_mask(anatomy.hu, anatomy.spacing)])
    return (aerated | drawn) & (anatomy.hu <= BONE_HU)


def _detections(phantom: Phantom, detector: DetectorEngine, mode: Mode,
                marks: Sequence[Candidate] | None = None) -> tuple[Preprocessed, list[Candidate]]:
    """The detector's candidates on the phantom, preprocessed and detected (in `mode`) as the pipeline does;
    `marks`: its candidates already detected on this phantom's preprocessed image (the FROC pass of
    `dicomnode model evaluate`), taken instead of detecting again."""
    from inference.detect import detect
    from inference.preprocess import preprocess
    from inference.training.cases import volume_from_phantom

    pre = preprocess(volume_from_phantom(phantom))
    if marks is not None:
        return pre, list(marks)[:MAX_MARKS_PER_SCAN]
    return pre, detect(detector, pre.image, mode=mode)[:MAX_MARKS_PER_SCAN]  # LUNA16 scores at most this many marks per scan


def _hitting(pre: Preprocessed, candidates: list[Candidate], centre_zyx: np.ndarray,
             diameter_mm: float) -> Candidate | None:
    """The most probable candidate that hits the nodule (LUNA16 rule, `luna16_hits`), or None. `centre_zyx`: source
    voxel index; the preprocessed frame is 1 mm isotropic, so its distances are millimetres."""
    truth = pre.from_source_voxel(np.asarray(centre_zyx, float)[None])
    found = np.array([c.zyx for c in candidates], float).reshape(-1, 3)
    hits = [c for c, hit in zip(candidates, luna16_hits(found, truth, np.array([diameter_mm]))[:, 0]) if hit]
    return max(hits, key=lambda c: c.probability) if hits else None


@dataclass(frozen=True)
class PaintedNodule:
    """One phantom nodule as the evaluation measures it: where it was painted, the diameter a detector is simulated to
    give it, and its truth (`unmeasured`: the NoduleResult before any measurement)."""
    nodule: PhantomNodule
    centre_zyx: np.ndarray  # the painted centre, source voxel index
    drawn_diameter_mm: float
    unmeasured: NoduleResult


def painted_nodules(seed: int, phantom: Phantom, anatomy: Phantom, drawn: np.ndarray,
                    min_diameter_mm: float = 0.0, *, drawn_for_all: bool = False) -> list[PaintedNodule]:
    """The nodules of phantom `seed` (drawn with its nodule-free twin `anatomy` and drawn lungs `drawn` by
    `phantom_and_anatomy`) of at least `min_diameter_mm`, each with its truth and a simulated detector diameter.
    The diameters are drawn in turn for the nodules listed, or with `drawn_for_all` for every nodule (as `evaluate`,
    whose phantoms are read whole, draws them)."""
    inside = truth_region(anatomy, drawn)
    rng = np.random.default_rng(seed + 7919)
    out: list[PaintedNodule] = []
    for index, nodule in enumerate(phantom.nodules):
        if nodule.diameter_mm < min_diameter_mm and not drawn_for_all:
            continue
        # drawn whichever centres are used later, so the simulated diameters stay the same in both modes
        drawn_d = nodule.diameter_mm * float(rng.uniform(0.85, 1.15))
        if nodule.diameter_mm < min_diameter_mm:
            continue
        frac = painted_fraction(phantom, nodule)
        in_lungs, painted = painted_volumes(phantom, inside, nodule, frac)
        axes = painted_axes(phantom, inside, nodule)
        out.append(PaintedNodule(nodule, phantom.world_to_voxel(np.asarray(nodule.center_mm))[0], drawn_d, NoduleResult(
            seed=seed, index=index, truth_type=TYPE_OF_KIND[nodule.kind], predicted_type="",
            diameter_mm=nodule.diameter_mm, truth_volume_mm3=in_lungs, volume_mm3=0.0, truth_margin=nodule.margin,
            margin="", truth_calcified=nodule.calcified, calcified=False, attached_to=nodule.attached_to,
            juxtapleural=False, segmentation_ok=False, at_pleura=in_lungs < (1 - PLEURA_SHARE_OUTSIDE) * painted,
            detected=False, visible_share=visible_share(anatomy, inside, nodule, frac),
            solid_diameter_mm=painted_solid_diameter_mm(nodule, phantom.spacing), painted_long_mm=axes.long_mm,
            painted_short_mm=axes.short_mm, painted_solid_mm=axes.solid_mean_mm if nodule.kind == "part-solid" else 0.0)))
    return out


def measured(unmeasured: NoduleResult, c: NoduleCharacteristics, centre_zyx: np.ndarray, painted_zyx: np.ndarray,
             spacing_zyx: np.ndarray, diameter_mm: float) -> NoduleResult:
    """`unmeasured` with what characterising it at `centre_zyx` with `diameter_mm` gave (`c`), and the Lung-RADS
    category the report gives it (`reported_lung_rads`)."""
    reported = reported_nodule(c, diameter_mm, float(spacing_zyx[0]))
    by_diameter, by_volume = reported_lung_rads(reported)
    return replace(
        unmeasured, predicted_type=c.type, volume_mm3=c.volume_mm3, margin=c.margin or "not_assessed",
        lung_rads=by_diameter, lung_rads_by_volume=by_volume, mean_diameter_mm=reported.mean_diameter_mm,
        solid_component_mm=reported.solid_component_mm or 0.0,
        long_mm=c.axes.long_mm if c.axes else 0.0, short_mm=c.axes.short_mm if c.axes else 0.0,
        calcified=c.calcified, juxtapleural=c.location.juxtapleural, segmentation_ok=c.segmentation_ok,
        perifissural=c.location.perifissural, contact_share=c.contact_share, detected=True,
        slice_mm=float(spacing_zyx[0]),
        centre_offset_mm=float(np.linalg.norm((np.asarray(centre_zyx, float) - painted_zyx) * spacing_zyx)),
        detector_diameter_mm=diameter_mm)


def reported_nodule(c: NoduleCharacteristics, diameter_mm: float, slice_mm: float) -> Nodule:
    """The nodule the report gives for one characterised as `c` (with the detector's `diameter_mm`): the pipeline's
    own `clinical_nodule`, so the evaluation scores what a reader sees."""
    from inference.detect import Candidate
    from inference.pipeline import Measured, clinical_nodule

    nodule, _ = clinical_nodule(Measured(Candidate((0.0, 0.0, 0.0), diameter_mm, 0.0, 1.0), np.zeros(3), c), slice_mm)
    return nodule


def reported_lung_rads(nodule: Nodule) -> tuple[str, str]:
    """The Lung-RADS category the report gives `nodule` (`reported_nodule`), by its mean diameter as the report has it
    and by the v2022 volume thresholds ("" where no volume was measured)."""
    by_volume = nodule.volume_mm3 is not None and (nodule.type is not NoduleType.PART_SOLID
                                                   or nodule.solid_component_volume_mm3 is not None)
    return (classify_nodule(nodule).category.value,
            classify_nodule(nodule, by_volume=True).category.value if by_volume else "")


def evaluate_seed(seed: int, min_diameter_mm: float = 0.0, small: bool = True,
                  detector: DetectorEngine | None = None, mode: Mode = "whole",
                  marks: Sequence[Candidate] | None = None) -> list[NoduleResult]:
    """Characterise every nodule of phantom `seed`: at its painted centre with a drawn diameter, or (`detector`)
    at the centre and diameter of the candidate that hits it (from `marks` where given, see _detections)."""
    # the phantom and its nodule-free twin from one drawing of the anatomy
    phantom, anatomy, drawn = phantom_and_anatomy(seed, small=small, margin_mm=DRAWN_LUNG_MARGIN_MM)
    found = _detections(phantom, detector, mode, marks) if detector is not None else None
    # with the detector, preprocessing's lung segmentation at the source resolution, as the pipeline takes it
    mask = found[0].source_lung_mask() if found is not None else lung_mask(phantom.hu, phantom.spacing)
    spacing = np.asarray(phantom.spacing, float)
    out: list[NoduleResult] = []
    for p in painted_nodules(seed, phantom, anatomy, drawn, min_diameter_mm):
        centre, detector_d = p.centre_zyx, p.drawn_diameter_mm
        if found is not None:
            pre, candidates = found
            hit = _hitting(pre, candidates, p.centre_zyx, p.nodule.diameter_mm)
            if hit is None:
                out.append(p.unmeasured)
                continue
            centre = pre.to_source_voxel(np.asarray(hit.zyx, float)[None])[0]
            detector_d = hit.diameter_mm
        c = characterize_nodule(phantom.hu, phantom.spacing, centre, detector_d, mask, direction=phantom.direction)
        out.append(measured(p.unmeasured, c, centre, p.centre_zyx, spacing, detector_d))
    return out


def evaluate(seeds: range | list[int], min_diameter_mm: float = 6.0, small: bool = True,
             detector: DetectorEngine | None = None, mode: Mode = "whole",
             marks: Mapping[int, Sequence[Candidate]] | None = None) -> Evaluation:
    """Characterise every nodule of the phantoms of `seeds` (small ones by default); counts nodules >= min_diameter_mm.
    `detector`: at the centres and diameters of its candidates, detected in `mode` (see the module's docstring), or
    taken from `marks` (seed -> the detector's candidates on that phantom) for the seeds it holds."""
    ev = Evaluation(min_diameter_mm=min_diameter_mm, centres="truth" if detector is None else "detector")
    for seed in seeds:
        ev.results.extend(evaluate_seed(seed, small=small, detector=detector, mode=mode,
                                        marks=(marks or {}).get(seed)))
    return ev


LUNG_RADS_TRUTH = ("truth: the category of the nodule as painted (NoduleResult.painted_lung_rads); predicted: the one "
                   "the report gives it")


def format_report(ev: Evaluation, details: bool = True) -> str:
    lines = [f"nodules >= {ev.min_diameter_mm:g} mm: {len(ev.counted)} (of {len(ev.results)})"]
    for what, labels in (("type", TYPES), ("margin", MARGINS), ("calcified", ("no", "yes")), ("juxtapleural", ("no", "yes")),
                         ("lung_rads", LUNG_RADS), ("lung_rads_by_volume", LUNG_RADS)):
        m = ev.confusion(what)
        lines.append(f"{what}: accuracy {ev.accuracy(what):.1%} (rows truth, columns predicted)"
                     + (f"; {LUNG_RADS_TRUTH}" if what.startswith("lung_rads") else ""))
        lines.append(" " * 14 + "".join(f"{str(l):>14}" for l in labels))
        for label, row in zip(labels, m):
            lines.append(f"{str(label):>14}" + "".join(f"{v:>14}" for v in row))
    err = ev.volume_errors()
    if err.size:
        q = np.percentile(np.abs(err), [50, 90, 100])
        lines.append(f"volume error: mean {err.mean():+.1%}, |error| median {q[0]:.1%}, 90th pct {q[1]:.1%}, "
                     f"max {q[2]:.1%}; within 15%: {(np.abs(err) <= 0.15).mean():.1%}")
        lines.append("within 15% by site (vessel: on a vessel or airway): " + ", ".join(
            f"{name} {k}/{n}" for name, (k, n) in ev.within_by_site().items()))
        lines.append(f"within 15% by the report's caveat (contact: outline >= {CONTACT_SHARE_CAVEAT:.0%} on other "
                     f"structures; few slices: non-solid, under {FEW_SLICES_CAVEAT:g} slices across; failed: no segmentation; "
                     "none: no caveat): "
                     + ", ".join(f"{name} {k}/{n}" for name, (k, n) in ev.within_by_caveat().items()))
    diameters = {margin: _diameter_summary(ev.diameter_errors(margin)) for margin in ("smooth", "lobulated", "spiculated")}
    if any(diameters.values()):
        lines.append("diameters as reported minus the painted outline's (median mean / long / short, mm; mean within "
                     f"{DIAMETER_TOLERANCE_MM:g} mm): " + ", ".join(
                         f"{margin} {d['mean_median']:+.2f} / {d['long_median']:+.2f} / {d['short_median']:+.2f}, "
                         f"{d['mean_within']:g} of {d['count']:g}" for margin, d in diameters.items() if d))
    lines.append(f"perifissural (the phantoms paint no fissures: false positives): {sum(r.perifissural for r in ev.counted)}")
    for r in ev.hidden:
        lines.append(f"hidden by the anatomy (painted over tissue as dense as its own, {r.visible_share:.0%} shows; not "
                     f"counted): seed {r.seed} {r.diameter_mm:.1f} mm {r.truth_type} site {r.site}")
    if ev.centres == "detector":
        lines.extend(_detector_lines(ev))
    for r in ev.counted if details else []:
        flag = "" if (r.truth_type == r.predicted_type and abs(r.volume_error) <= 0.15) else "  <--"
        lines.append(f"  seed {r.seed}:{r.index} {r.diameter_mm:5.1f} mm {r.truth_type:>12} -> {r.predicted_type:<12} "
                     f"vol {r.volume_mm3:8.0f} / {r.truth_volume_mm3:8.0f} ({r.volume_error:+.0%}) "
                     f"margin {r.truth_margin}->{r.margin} calc {r.truth_calcified}->{r.calcified} "
                     f"site {r.site} (generator: {r.attached_to}) jp {r.juxtapleural} contact {r.contact_share:.2f}"
                     + (f" detector {r.centre_offset_mm:.1f} mm off, {r.detector_diameter_mm:.1f} mm" if ev.centres == "detector"
                        else "") + flag)
    return "\n".join(lines)


def _detector_lines(ev: Evaluation) -> list[str]:
    """How far the detector's centres and diameters were from the painted ones, and the nodules it missed."""
    lines = [f"centres and diameters from the detector: {len(ev.counted)} of {len(ev.counted) + len(ev.not_detected)} "
             f"nodules >= {ev.min_diameter_mm:g} mm hit (not detected: {len(ev.not_detected)}, not characterised)"]
    if ev.counted:
        offsets = np.array([r.centre_offset_mm for r in ev.counted])
        ratios = np.array([r.detector_diameter_mm / r.diameter_mm for r in ev.counted])
        lines.append(f"  centre offset (mm): median {np.median(offsets):.2f}, 90th pct {np.percentile(offsets, 90):.2f}, "
                     f"max {offsets.max():.2f}; diameter / painted: median {np.median(ratios):.2f}, "
                     f"10th-90th pct {np.percentile(ratios, 10):.2f}-{np.percentile(ratios, 90):.2f}")
    for r in ev.not_detected:
        lines.append(f"  not detected: seed {r.seed} {r.diameter_mm:5.1f} mm {r.truth_type} site {r.site}")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=9000)
    parser.add_argument("--min-diameter", type=float, default=6.0)
    parser.add_argument("--full-size", action="store_true",
                        help="the generator's full phantoms (512 x 512, slices 0.625-2.5 mm) instead of the small ones "
                             "(256 x 256, 2.5-3 mm slices)")
    # --characterize-at: the name `dicomnode model evaluate` gives the same choice
    parser.add_argument("--centres", "--characterize-at", dest="centres", choices=("truth", "detector"), default="truth",
                        help="characterise at the painted centre with a drawn diameter (default), or at the centre and "
                             "diameter of the packaged detector's candidate that hits each nodule")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    detector = None
    if args.centres == "detector":
        from inference.pipeline import LungNodulePipeline

        detector = LungNodulePipeline().detector
    ev = evaluate(range(args.first_seed, args.first_seed + args.count), args.min_diameter, small=not args.full_size,
                  detector=detector)
    print(format_report(ev))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
