"""Coronary artery calcium (CAC) on a non-gated, non-contrast chest CT: the commonest Lung-RADS "S" finding.

The SCCT/STR guideline on CAC scoring of non-cardiac chest CT (Hecht HS et al., J Cardiovasc Comput Tomogr
2017;11:74-84) asks that coronary calcium be reported on every non-gated chest CT, by an Agatston score or
visually. We report an Agatston-equivalent score and its CAC-DRS grade (Hecht HS et al., J Cardiovasc Comput
Tomogr 2018;12:185-191): 0 none, 1-99 mild, 100-299 moderate, >= 300 severe.

The score (Agatston AS et al., J Am Coll Cardiol 1990;15:827-832): on each axial slice, each connected region of
pixels >= 130 HU with an area >= 1 mm2 scores its area (mm2) x a weight by its peak HU on that slice (130-199: 1,
200-299: 2, 300-399: 3, >= 400: 4); the slice scores add up. Agatston's slices were 3 mm thick and contiguous;
on thinner slices every calcification is scored on more slices, so the sum is scaled by (slice spacing / 3 mm),
the usual approximation for scoring non-gated thin-slice CT (it is not identical to a 3 mm reconstruction: partial
volume and the peak weight differ, and motion on a non-gated scan blurs and splits plaques).

Where (on a coarse grid of about `COARSE_MM`, orientation-free in-plane; `direction` only turns the slices to run
foot to head): the heart is the largest soft-tissue mass (over `SOFT_MIN_HU`, voxels of calcium counted as fat, noise
holes filled) inside each slice's convex hull of the lungs, left after an opening by a ball of `HEART_OPENING_MM`
(tubes narrower than 30 mm fall off it: the descending aorta, the arch, the oesophagus, the pulmonary arteries), cut
where its cross-section falls under `TOP_AREA_SHARE` of its widest (above: the ascending aorta and the arch). A
lesion counts when it lies within `EPICARDIAL_MM` of that heart (the coronaries run in the epicardial fat of the
atrioventricular and interventricular grooves) and inside the hull of lungs and heart, and touches none of: bone
(large components over `BONE_HU`, filled; within `BONE_CLEARANCE_MM`), tall soft-tissue structures off the heart
(the descending aorta, grown back to where it lies on the left atrium, and the liver; within `OTHER_CLEARANCE_MM`),
the lungs, aerated lung within `AIR_CLEARANCE_MM` of it (a plaque lies under the pericardium; a dense spot on the
lung's edge is an edge artefact or a pleural or pulmonary calcification), the search box's faces. A lesion is a 3D
component over the threshold (26-connected); it counts whole or not at all.

Noise: low-dose noise (20-70 HU) lifts blood and myocardium (about 40 HU) over 130 HU in clusters of voxels. The
threshold is raised to `SOFT_TISSUE_HU` + `NOISE_SD` x the image noise where that is higher (reported, with a note),
and on an image whose heart is not `QUIET_SD` SDs under 130 HU a lesion must hold a seed: a voxel over 130 HU and over
`SEED_SD` SDs of the heart on a copy smoothed by `SEED_SMOOTH_MM` (measured inside the heart). On lidc-idri-0002 with
noise added to 40 and 70 HU no calcium is found in its clean heart, and painted plaques of 2-3 mm keep their score
within 10 and 20 % (tests/inference/test_cardiac.py); plaques of 1-2 mm under about 400 HU are lost at that noise.

Not told apart (no contrast, no gating): calcium of the aortic and mitral valves and the mitral annulus inside the
heart (cardiac findings of significance too), of the aortic root by the left main and of the ascending aorta below
the heart's cut, and of the pericardium; a calcified subcarinal or hilar lymph node next to the left atrium. Dropped:
a coronary plaque within `OTHER_CLEARANCE_MM` (on the coarse grid) of the descending aorta, oesophagus or liver (the
circumflex or the crux where they lie on them), or within `AIR_CLEARANCE_MM` of the lung (a LAD under a thin fat
layer). Not dropped: calcium in the liver's dome under the heart (no contrast tells the diaphragm). On a
contrast-enhanced series blood is over 130 HU: the caller must not ask (no crash; the result means nothing).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

from inference.characterize.noise import global_noise_hu, robust_sd
from inference.clinical.significant import calcium_grade
from inference.characterize.segment.masks import dilate_mm, enclosed_in_plane, largest_component, opening_mm

CALCIUM_HU = 130.0  # Agatston's threshold
SOFT_TISSUE_HU = 40.0  # blood and myocardium without contrast: the noise margin counts from here
NOISE_SD = 2.5  # the threshold stays this many noise SDs over soft tissue...
SEED_SD = 6.0  # ...and a lesion's seed this many of the smoothed copy's
SEED_SMOOTH_MM = 0.7
QUIET_SD = 5.0  # an image whose heart stays this many SDs under 130 HU needs no seeds
MIN_HEART_SAMPLE = 1000  # voxels inside the heart to measure its level and spread on
MIN_AREA_MM2 = 1.0  # Agatston's smallest lesion on a slice
MIN_LESION_MM3 = 1.5  # a 3D lesion smaller than this is noise (a 1 mm2 spot on one 1.25 mm slice is 1.25 mm3)
REFERENCE_SLICE_MM = 3.0  # Agatston's slices
WEIGHTS = ((400.0, 4), (300.0, 3), (200.0, 2), (CALCIUM_HU, 1))

COARSE_MM = 2.7  # the grid the heart is found on
SOFT_MIN_HU = -30.0  # heart, vessels, liver on the coarse grid (fat stays out)
FAT_HU = -100.0
BONE_HU = 180.0  # coarse bone: cortex and most marrow
BONE_MARGIN_MM = 3.0  # soft tissue this near bone is the bone's edge, not the heart's
BONE_MIN_MM3 = 1000.0  # a bone component is at least this big (a rib's segment); calcified plaques are far smaller
MIN_LUNG_SLICE_MM2 = 500.0  # a slice with less lung has no hull to put a heart in
HEART_OPENING_MM = 15.0  # removes tubes under 30 mm: the descending aorta and arch, the pulmonary arteries
MIN_HEART_ML = 150.0  # a smaller mass is no heart (the heart is out of view, or cut)
TOP_AREA_SHARE = 0.25  # above this share of the widest cross-section lie the great vessels, not the heart
EPICARDIAL_MM = 12.0  # the coronaries lie within about 1 cm of the myocardium
OTHER_OPENING_MM = 5.0  # soft tissue left out of the heart that is thicker than 10 mm...
OTHER_MARGIN_MM = 6.0  # ...and lies beyond this margin round the heart (the heart's own rim, which the opening
# took off, stays inside it), grown back by the margin where it is soft tissue...
OTHER_MIN_HEIGHT_MM = 60.0  # ...and this tall: the descending aorta, the liver; not a coronary
TUBE_MAX_MM2 = 2000.0  # a 50 mm circle: the aorta's widest, far under the liver's
OTHER_CLEARANCE_MM = 4.0  # a plaque in the aortic wall lies within this of the aorta's soft tissue
BONE_CLEARANCE_MM = 4.0
MAX_LESION_MM3 = 3000.0  # bigger: bone or contrast, not a plaque
AIR_HU = -400.0  # aerated lung (its partial volume more than half air)
AIR_CLEARANCE_MM = 2.0
LUNG_DEPTH_MM = 3.0  # the lung mask's coarse edge is left to the air rule


@dataclass(frozen=True)
class CoronaryCalcium:
    agatston: float  # Agatston-equivalent score, scaled to 3 mm slices, rounded to 0.1
    lesions: int  # calcified lesions counted (3D connected components)
    volume_mm3: float  # their volume above the threshold
    threshold_hu: float  # the calcium threshold used (130, or higher in noisy images)
    note: str | None = None  # what the reader must know (noise raised the threshold; heart not found; etc.)

    @property
    def grade(self) -> str:
        """CAC-DRS 0-3 of the score: "none", "mild", "moderate" or "severe" (clinical.significant.calcium_grade)."""
        return calcium_grade(self.agatston).value


@dataclass
class _Heart:
    heart: np.ndarray  # coarse: the heart (its chambers and myocardium, without contrast about 40 HU)
    zone: np.ndarray  # coarse: where a coronary plaque may lie
    excluded: np.ndarray  # coarse: bone, lungs and other tall structures, grown by their clearances
    factors: np.ndarray  # source voxels per coarse voxel, (z, y, x)


def is_axial(direction: np.ndarray) -> bool:
    """Whether the slice axis (Volume.direction's third column) is the patient's head-foot axis."""
    return abs(float(np.asarray(direction, float)[2, 2])) >= 0.9


def density_weight(peak_hu: float) -> int:
    """Agatston's weight by a slice region's peak HU (0 under 130 HU)."""
    return next((w for low, w in WEIGHTS if peak_hu >= low), 0)


def calcium_threshold(noise_hu: float | None) -> float:
    """130 HU, or soft tissue + NOISE_SD x the noise where that is higher."""
    return CALCIUM_HU if noise_hu is None else max(CALCIUM_HU, SOFT_TISSUE_HU + NOISE_SD * noise_hu)


def coronary_calcium(hu: np.ndarray, spacing_zyx: np.ndarray, lung_mask: np.ndarray,
                     direction: np.ndarray | None = None, noise_hu: float | None = None) -> CoronaryCalcium | None:
    """Coronary calcium of a non-contrast chest CT (`hu`, (z, y, x) HU; `spacing_zyx` mm; `lung_mask` of the same
    shape; `direction` as Volume.direction; `noise_hu` the series' noise, measured here when None).

    None when the heart cannot be found in the series (e.g. it is not in the field of view)."""
    hu, lung_mask, spacing = _checked(hu, spacing_zyx, lung_mask, direction)
    heart = _find_heart(hu, lung_mask, spacing)
    if heart is None:
        return None
    if noise_hu is None:
        noise_hu = _measured_noise(hu, heart, spacing)
    threshold = calcium_threshold(noise_hu)
    scored = [(lesion, _agatston(hu, lesion, box, spacing)) for lesion, box in _lesions(hu, heart, spacing, threshold)]
    lesions = [(lesion, score) for lesion, score in scored if score > 0]  # none of its slices holds 1 mm2: noise
    score = sum(s for _, s in lesions)
    volume = sum(float(lesion.sum()) for lesion, _ in lesions) * float(np.prod(spacing))
    agatston = round(float(score), 1)
    return CoronaryCalcium(float(agatston), len(lesions), round(volume, 1), threshold,
                           _note(threshold, noise_hu))


def _checked(hu: np.ndarray, spacing_zyx: np.ndarray, lung_mask: np.ndarray,
             direction: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inputs validated, with the slice axis turned to run foot to head (the heart's top is found upward)."""
    if hu.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {hu.shape}")
    if lung_mask.shape != hu.shape:
        raise ValueError(f"lung mask shape {lung_mask.shape} differs from the volume's {hu.shape}")
    spacing = np.asarray(spacing_zyx, float)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"spacing must be three positive mm values, got {spacing_zyx!r}")
    lungs = np.asarray(lung_mask, bool)
    if direction is not None:
        d = np.asarray(direction, float)
        if not is_axial(d):
            raise ValueError("coronary calcium is measured on axial series only")
        if d[2, 2] < 0:  # LPS +z is the head
            hu, lungs = hu[::-1], lungs[::-1]
    return hu, lungs, spacing


def _block_mean(volume: np.ndarray, factors: np.ndarray, dense_hu: float | None = None) -> np.ndarray:
    """Block mean (float32, incomplete last blocks dropped) by summing strided views: no full-size copy. Voxels over
    `dense_hu`, where given, count as fat."""
    fz, fy, fx = (int(f) for f in factors)
    shape = tuple(s // f for s, f in zip(volume.shape, factors))
    out = np.zeros(shape, np.float32)
    for dz in range(fz):
        for dy in range(fy):
            for dx in range(fx):
                view = volume[dz: shape[0] * fz: fz, dy: shape[1] * fy: fy, dx: shape[2] * fx: fx]
                out += view if dense_hu is None else np.where(view > dense_hu, np.float32(FAT_HU), view)
    out *= 1.0 / (fz * fy * fx)
    return out


def _find_heart(hu: np.ndarray, lungs: np.ndarray, spacing: np.ndarray) -> _Heart | None:
    factors = np.maximum(1, np.rint(COARSE_MM / spacing)).astype(int)
    work = spacing * factors
    coarse = _block_mean(hu, factors)
    coarse_lungs = _block_mean(lungs, factors) > 0.5
    bone = _bone(coarse, work)
    between = _hull_by_slice(coarse_lungs, work)
    # calcium counted as fat: a plaque must not turn its block of fat into soft tissue (the aorta's, grown back)
    tissue = _block_mean(hu, factors, CALCIUM_HU)
    soft = between & ~coarse_lungs & ~dilate_mm(bone, BONE_MARGIN_MM, work) & (tissue > SOFT_MIN_HU)
    # low-dose noise holes the heart; the opening would shrink it
    soft = (soft | enclosed_in_plane(soft)) & between & ~coarse_lungs
    heart = largest_component(opening_mm(soft, HEART_OPENING_MM, work), np.ones((3, 3, 3), bool))
    if float(heart.sum()) * float(np.prod(work)) / 1000.0 < MIN_HEART_ML:
        return None
    heart = _below_great_vessels(heart, work)
    other = _other_structures(soft, heart, work)
    # where the heart lies on the chest wall there is no lung in front of it: the hull of lungs and heart
    zone = dilate_mm(heart, EPICARDIAL_MM, work) & _hull_by_slice(coarse_lungs | heart, work)
    top = int(np.flatnonzero(heart.any(axis=(1, 2)))[-1])
    zone[top + 1:] = False
    excluded = coarse_lungs & ~dilate_mm(~coarse_lungs, LUNG_DEPTH_MM, work)
    excluded |= dilate_mm(bone, BONE_CLEARANCE_MM, work) | dilate_mm(other, OTHER_CLEARANCE_MM, work)
    return _Heart(heart, zone, excluded, factors)


def _bone(coarse: np.ndarray, work: np.ndarray) -> np.ndarray:
    """Bone on the coarse grid: large dense components, filled slice by slice (marrow can be soft-tissue dense)."""
    dense = coarse > BONE_HU
    labels, n = ndimage.label(dense, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return dense
    big = np.bincount(labels.ravel(), minlength=n + 1) * float(np.prod(work)) >= BONE_MIN_MM3
    big[0] = False
    bone = big[labels]
    return bone | enclosed_in_plane(bone)


def _hull_by_slice(mask: np.ndarray, work: np.ndarray) -> np.ndarray:
    """Each slice's convex hull of `mask` (slices with under MIN_LUNG_SLICE_MM2 of it: empty). Of the lungs: the
    mediastinum lies in it, the chest wall and sternum outside."""
    hull = np.zeros_like(mask)
    for k in range(mask.shape[0]):
        if float(mask[k].sum()) * work[1] * work[2] >= MIN_LUNG_SLICE_MM2:
            hull[k] = convex_hull_image(mask[k])
    return hull


def _below_great_vessels(heart: np.ndarray, work: np.ndarray) -> np.ndarray:
    """The heart up to where its cross-section falls under TOP_AREA_SHARE of its widest, going up: higher, the
    opening leaves only the ascending aorta (and the arch, when it is wide)."""
    area = heart.sum(axis=(1, 2))
    widest = int(np.argmax(area))
    above = np.flatnonzero(area[widest:] < TOP_AREA_SHARE * area[widest])
    out = heart.copy()
    if above.size:
        out[widest + int(above[0]):] = False
    return out


def _other_structures(soft: np.ndarray, heart: np.ndarray, work: np.ndarray) -> np.ndarray:
    """Soft tissue off the heart, thicker than 2 x OTHER_OPENING_MM and taller than OTHER_MIN_HEIGHT_MM: the
    descending aorta (it runs the whole thorax), the liver's dome; coronaries are 2-5 mm across. The tubes among them
    (the aorta: no slice of it over TUBE_MAX_MM2) grown back into the soft tissue the heart's margin cut off: the
    aorta's wall where it lies on the left atrium. Not the liver: grown, it would take the right atrium's floor."""
    rest = opening_mm(soft & ~dilate_mm(heart, OTHER_MARGIN_MM, work), OTHER_OPENING_MM, work)
    labels, _ = ndimage.label(rest, structure=np.ones((3, 3, 3), bool))
    out = np.zeros_like(rest)
    tubes = np.zeros_like(rest)
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or (box[0].stop - box[0].start) * work[0] < OTHER_MIN_HEIGHT_MM:
            continue
        part = labels[box] == label
        out[box] |= part
        if part.sum(axis=(1, 2)).max() * work[1] * work[2] <= TUBE_MAX_MM2:
            tubes[box] |= part
    return out | (dilate_mm(tubes, OTHER_MARGIN_MM + COARSE_MM, work) & soft & ~heart)


def _measured_noise(hu: np.ndarray, heart: _Heart, spacing: np.ndarray) -> float | None:
    """The image noise on the heart's slices (every fifth), for a caller that gave none."""
    rows = np.flatnonzero(heart.zone.any(axis=(1, 2)))
    slices = range(int(rows[0] * heart.factors[0]), int((rows[-1] + 1) * heart.factors[0]), 5)
    return global_noise_hu(hu, float(spacing[1]), [k for k in slices if k < hu.shape[0]])


def _source_box(mask: np.ndarray, factors: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, slice, slice]:
    found = np.argwhere(mask)
    lo = found.min(axis=0) * factors
    hi = np.minimum((found.max(axis=0) + 1) * factors, np.array(shape))
    return (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])), slice(int(lo[2]), int(hi[2])))


def _to_source(coarse: np.ndarray, factors: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """A coarse mask on the source voxels of `box` (a box of whole coarse blocks, clipped at the volume's end)."""
    lo = [b.start // int(f) for b, f in zip(box, factors)]
    hi = [-(-b.stop // int(f)) for b, f in zip(box, factors)]
    part = coarse[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    for axis, f in enumerate(factors):
        part = np.repeat(part, int(f), axis=axis)
    size = [b.stop - b.start for b in box]
    out = np.zeros(size, bool)
    out[:part.shape[0], :part.shape[1], :part.shape[2]] = part[:size[0], :size[1], :size[2]]
    return out


def _lesions(hu: np.ndarray, heart: _Heart, spacing: np.ndarray,
             threshold: float) -> list[tuple[np.ndarray, tuple[slice, ...]]]:
    """The calcified lesions that lie in the epicardial zone and touch nothing excluded, each as (mask, its box in
    the source volume). A lesion is a 3D component (26-connected) over the threshold that holds a seed: a voxel
    over the seed level on a copy smoothed by SEED_SMOOTH_MM (noise makes small clusters over any threshold in the
    raw image, few on the smoothed one, where a plaque of a few mm keeps most of its density)."""
    box = _source_box(heart.zone, heart.factors, hu.shape)
    values = hu[box]
    dense = values >= threshold
    seeds = _seeds(values, spacing, heart, box)
    seeds = dense if seeds is None else dense & seeds
    zone = _to_source(heart.zone, heart.factors, box)
    excluded = _to_source(heart.excluded, heart.factors, box)
    labels, _ = ndimage.label(dense, structure=np.ones((3, 3, 3), bool))
    seeded = np.zeros(int(labels.max()) + 1, bool)
    seeded[labels[seeds]] = True
    voxel_mm3 = float(np.prod(spacing))
    found = []
    for label, part_box in enumerate(ndimage.find_objects(labels), start=1):
        if part_box is None or not seeded[label]:
            continue
        part = labels[part_box] == label
        size = float(part.sum()) * voxel_mm3
        if not MIN_LESION_MM3 <= size <= MAX_LESION_MM3 or _touches_box_edge(part_box, dense.shape):
            continue
        if excluded[part_box][part].any() or zone[part_box][part].mean() < 0.5:
            continue
        where = tuple(slice(b.start + p.start, b.start + p.stop) for b, p in zip(box, part_box))
        if not _touches_air(hu, part, where, spacing):
            found.append((part, where))
    return found


def _seeds(values: np.ndarray, spacing: np.ndarray, heart: _Heart, box: tuple[slice, ...]) -> np.ndarray | None:
    """Where lesions may start on a noisy image: voxels over CALCIUM_HU and over the heart's level + SEED_SD x its
    spread (robust SD) on a copy smoothed by SEED_SMOOTH_MM, both measured inside the heart (blood and myocardium are
    one level without contrast). None (every lesion is seeded) on a quiet image, where the heart's raw level +
    QUIET_SD x its raw spread stays under CALCIUM_HU: there smoothing would only lose plaques of 1-2 mm."""
    inside = _to_source(ndimage.binary_erosion(heart.heart), heart.factors, box)[:, ::2, ::2]
    raw = values[:, ::2, ::2][inside]  # every fourth voxel of a slice is enough for these figures
    if raw.size < MIN_HEART_SAMPLE:
        return None
    level = float(np.median(raw))
    if level + QUIET_SD * robust_sd(raw, level) <= CALCIUM_HU:
        return None
    smooth = ndimage.gaussian_filter(values, SEED_SMOOTH_MM / spacing)
    sample = smooth[:, ::2, ::2][inside]
    level = float(np.median(sample))
    return smooth >= max(CALCIUM_HU, level + SEED_SD * robust_sd(sample, level))


def _touches_air(hu: np.ndarray, part: np.ndarray, box: tuple[slice, ...], spacing: np.ndarray) -> bool:
    """Whether aerated lung (under AIR_HU) lies within AIR_CLEARANCE_MM of the lesion. A plaque lies in epicardial
    fat under the pericardium; a dense spot on the lung's edge is a partial-volume edge, a pleural or pulmonary
    calcification or a vessel in the lung."""
    margin = np.ceil(AIR_CLEARANCE_MM / spacing).astype(int)
    lo = [max(b.start - m, 0) for b, m in zip(box, margin)]
    hi = [min(b.stop + m, s) for b, m, s in zip(box, margin, hu.shape)]
    grown = np.zeros([h - low for low, h in zip(lo, hi)], bool)
    grown[tuple(slice(b.start - low, b.stop - low) for b, low in zip(box, lo))] = part
    near = dilate_mm(grown, AIR_CLEARANCE_MM, spacing)
    return bool((hu[tuple(slice(low, h) for low, h in zip(lo, hi))][near] < AIR_HU).any())


def _touches_box_edge(part_box: tuple[slice, ...], shape: tuple[int, ...]) -> bool:
    """A part cut by the search box runs on beyond it: bone or a vessel, not a plaque inside the zone."""
    return any(b.start == 0 or b.stop == s for b, s in zip(part_box, shape))


def _agatston(hu: np.ndarray, lesion: np.ndarray, box: tuple[slice, ...], spacing: np.ndarray) -> float:
    """One lesion's Agatston score: per slice, each in-plane region (8-connected) of >= MIN_AREA_MM2 scores its
    area x the weight of its peak; scaled by slice spacing / 3 mm."""
    pixel_mm2 = float(spacing[1] * spacing[2])
    values = hu[box]
    score = 0.0
    for k in range(lesion.shape[0]):
        labels, n = ndimage.label(lesion[k], structure=np.ones((3, 3), bool))
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        areas = ndimage.sum_labels(lesion[k], labels, index) * pixel_mm2
        peaks = ndimage.maximum(values[k], labels, index)
        score += sum(a * density_weight(float(p)) for a, p in zip(areas, peaks) if a >= MIN_AREA_MM2)
    return score * float(spacing[0]) / REFERENCE_SLICE_MM


def _note(threshold: float, noise_hu: float | None) -> str | None:
    if threshold <= CALCIUM_HU:
        return None
    return (f"image noise {noise_hu:.0f} HU: calcium read above {threshold:.0f} HU, not {CALCIUM_HU:g} "
            "HU, so that noise in blood and myocardium is not read as calcium; small or faint plaques may be missed "
            "and the score understates a 130 HU score")
