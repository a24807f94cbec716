"""Volume and the Lung-RADS v2022 axial diameters of a segmentation.

Volume of a solid nodule: partial-volume analysis (Kuhnigk J-M, Dicken V, Bornemann L, et al.
"Morphological segmentation and partial volume analysis for volumetry of solid pulmonary lesions in
thoracic CT scans", IEEE Trans Med Imaging 2006;25(4):417-434). A voxel on the nodule's edge holds
part nodule, part lung, and its HU is the mix: its nodule fraction is (HU - lung) / (nodule - lung).
Counting the voxels above the half maximum instead is right on average for a large flat edge, but the
mask is drawn on the lightly smoothed image, and smoothing moves the half-maximum surface of a convex
body inwards (by about sigma^2 / R): on full-size phantoms the count missed 2.7 % of a free solid
nodule's volume on average, and on thick slices it swings by up to a tenth with where the nodule falls
on the grid (tests/inference/test_characterize.py). The fractions are summed over the edge (a voxel
either side of the mask's boundary); voxels fully inside count 1. Next to other structures (a vessel,
the wall) a voxel's HU is partly theirs: a voxel outside the mask there that is above the candidates'
threshold (-750 HU) is theirs and not counted; the others count their fraction like any edge voxel. For a
voxel of the mask the fraction holds the neighbour's share too, so it is at most the whole voxel that the
half-maximum count gave it. Until 2026-12-03 those voxels counted as the mask had them (whole inside,
nothing outside), which left vessel-attached solid nodules a layer too large: on the 590 full-size phantom
nodules >= 6 mm their median error +2.9 -> +1.1 %, mean |error| 7.6 -> 5.6 %, within 15 % 569 -> 570 (the
other sets and the variants tried: docs/characterization.md, "Twentieth session"). The cost: where a vessel only
touches the nodule, the nodule's own partial-volume edge that the watershed gave to the vessel's side lies
above -750 HU and is left out (a 7 mm sphere touching a 2-4 mm vessel: -3 -> -7 %). The
nodule's level is the median of its voxels fully inside it (all six face neighbours in the mask) of
soft-tissue density (-300 ... 200 HU: calcium is not the level of the edge); with fewer than
PV_MIN_LEVEL_VOXELS of them (a small nodule on thick slices, or one calcified throughout, whose edge is soft tissue)
NOMINAL_SOFT_TISSUE_HU stands in for it. Until 2026-12-05 such a nodule kept the half-maximum count, which leaves out
the half of its edge that lies outside the mask: on the crop harness's 1507 phantom nodules >= 6 mm the 78 it concerns
(53 free, 39 calcified; docs/characterization.md, "Thirty-seventh session") measured a median -4.7 -> +0.4 %, mean
|error| 9.2 -> 6.0 % (free ones 7.4 -> 3.1 %), within 15 % 70 -> 71. The lung level is the lung's own around the nodule (`local_lung_hu`: the median of a
shell from the mask's second voxel out to LOCAL_LUNG_SHELL_MM, below the candidates' threshold, other structures and
the wall left out), or the exam's median lung where the shell holds too few voxels: the exam's median is a median
6 HU and up to 26 HU off next to a nodule (the dependent gradient, the texture; 168 phantom nodules), which moves a
solid nodule's volume little (under 3 % of its contrast: mean |error| on the 896 crop nodules read solid 3.77 ->
3.65 %, none across 15 %; 2026-12-05) and a ground-glass one's four times as much.
A ground-glass or part-solid nodule's edge (the mask's boundary voxels and the lung voxels face-next to them, other
structures' voxels left out as above) counts its fraction of ground glass, (HU - lung) / (glass - lung), the glass
level the nodule's own (the median of its core between -750 and -300 HU, the level its half-maximum mask was drawn
at). Ground glass has about a quarter of a solid nodule's contrast (250 HU over lung against 900), so the lung
level and the noise weigh four times as much: with the exam's median lung the fractions clipped to 0 ... 1 turned
them into volume (+5 ... +26 % on small phantoms on 2.5-3 mm slices, whose edge holds as many voxels as the
nodule), and until 2026-12-05 the mask's voxels counted whole; against the lung's own level they do not. On the 515
non-solid crop nodules of the full-size and small phantom sets (docs/characterization.md, "Thirtieth session") mean
|error| 6.00 -> 4.92 %, free ones on slices under 2 mm 2.89 -> 0.98 % (median -1.8 -> -0.4 %), on 2-3 mm slices
5.02 -> 4.35 %. A nodule without ten inner voxels of ground glass keeps its voxel count. Instead, a spiculated
ground-glass or part-solid nodule's spicules, strands of solid tissue thinner than a voxel, count their fraction of
solid tissue and its other voxels whole.
The mask's boundary lies at half the ground glass's contrast (about -700 HU), so a voxel a third filled by a
spicule is above it and counted whole: on the full-size phantoms (940 nodules >= 6 mm) the free non-solid nodules
read spiculated measured a median +3.1 % (up to +19 %), the smooth ones -2.1 %; now +0.4 %. Their strands (the
mask's parts outside its opening by a ball of SPICULE_OPENING_MM, which touch no wall; on slices thicker than that
radius the opening is per slice, and the top and bottom slices of the nodule are its caps, not strands) count their
fraction of solid tissue, (HU - lung) / (solid level - lung), with the lung voxels around them, as a solid nodule's
edge does; the solid level is the nodule's own (its solid core), or NOMINAL_SOFT_TISSUE_HU.

Lung-RADS v2022 (ACR): size is the mean diameter, the average of the long axis and the
perpendicular short axis measured on the same axial image where the nodule is largest, rounded to
one decimal place; volume may be used instead. Here the long axis is the largest in-plane Feret
diameter of the slice's pixels and the short axis the longest chord perpendicular to it. Pixel
centres are measured and one pixel is added (a pixel's centre-to-centre span underestimates the
edge-to-edge extent by one pixel).

Contact share: the part of the segmentation's surface that borders other structures of the same density
(a vessel, an airway's wall, the pleura). There the outline is where the segmentation separated the nodule
from them, not an edge against lung, and the volume depends on that cut: on full-size phantoms (nodules >= 6 mm
of seeds 14000-14039, 15000-15039, 16000-16029 and 17000-17039) 43 of the 57 nodules with a share of
CONTACT_SHARE_CAVEAT or more had their volume within 15 % (75 %), against 362 of the 366 others (99 %); before
the cut along vessels and the pleural base on curved walls (2026-12-02, later that day) 37 (65 %) and 359 (98 %).

Few slices: a part-solid or ground-glass nodule with fewer than FEW_SLICES_CAVEAT slices through it (the diameter
of a sphere of its volume over the slice thickness). Its top and bottom slices hold much of it, and there one voxel
value mixes its ground glass, the lung and the blur of its solid core through the slice's thickness: no single level
counts that voxel's share of nodule (a solid core's blur lifts lung above the ground glass's half maximum). A solid
nodule's edge is soft tissue against lung, one level, and its volume holds on the same slices. Crop harness
(`inference.training.characterize_crops`, nodules >= 6 mm, docs/characterization.md "Forty-sixth session"), at the
phantoms' own noise: outlines with less than CONTACT_SHARE_CAVEAT on other structures that are non-solid and under
4 slices across 66 of 75 within 15 %, all others 1183 of 1183; at 3.5 slices one free miss (10003:1, a solid nodule
read part-solid, +32 %) is left without a caveat, at 3 five.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from skimage.measure import find_contours

from inference.characterize.attenuation import SOLID_THRESHOLD_HU
from inference.characterize.calcification import CALCIUM_HU
from inference.characterize.model import Axes
from inference.characterize.segment.masks import dilate_mm, opening_mm, parts_touching, surface_share
from inference.characterize.segment.segmentation import SEED_THRESHOLD_HU
from inference.clinical.types import round_half_up

PV_MIN_LEVEL_VOXELS = 10
# a solid core too small to give its own level: a fraction over about 880 HU of contrast barely moves with it
# (0 instead of 40 HU: 5 % more of a spicule's few voxels)
NOMINAL_SOFT_TISSUE_HU = 40.0
# strands thinner than 3 mm: a spicule is 1-2 mm thick at its base (the phantoms': a radius of 0.7 mm or 0.16 x the
# nodule's), and a nodule's own lobules are thicker
SPICULE_OPENING_MM = 1.5
# an edge's fractions: the lung level from a shell 2 voxels ... 4 mm out (the lung's own gradient and texture move
# its level up to 26 HU, a tenth of ground glass's contrast), with at least this many voxels in it
LOCAL_LUNG_SHELL_MM = 4.0
LOCAL_LUNG_MIN_VOXELS = 20
GROUND_GLASS_LOW_HU = -800.0  # an inner voxel between this and SOLID_THRESHOLD_HU is ground glass (or its noise)
MIN_GROUND_GLASS_CONTRAST_HU = 50.0  # less between lung and glass: a fraction would be mostly noise; voxels count whole
CONTACT_SHARE_CAVEAT = 0.5  # a nodule bordering other structures over half its surface: its volume is less reliable
FEW_SLICES_CAVEAT = 4.0  # ...and a non-solid one with fewer slices through it than this (see the module docstring)
_FACES = ndimage.generate_binary_structure(3, 1)
_CUBE = np.ones((3, 3, 3), bool)


def sphere_volume_mm3(diameter_mm: float) -> float:
    """Volume (mm3) of a sphere of `diameter_mm`: what a detector's diameter alone says of a nodule's volume."""
    return math.pi / 6.0 * diameter_mm**3


def sphere_diameter_mm(volume_mm3: float) -> float:
    """Diameter (mm) of the sphere of `volume_mm3`: the inverse of `sphere_volume_mm3`."""
    return (6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0)


def slices_across(volume_mm3: float, slice_mm: float) -> float:
    """How many slices of `slice_mm` a sphere of `volume_mm3` spans (inf for an unknown thickness)."""
    return sphere_diameter_mm(volume_mm3) / slice_mm if slice_mm > 0 else math.inf


def size_caveat(kind: str, volume_mm3: float, contact_share: float, slice_mm: float) -> str | None:
    """Why the report calls a measured nodule's volume less reliable (see the module docstring): "contact" (its
    outline borders other structures over CONTACT_SHARE_CAVEAT or more), "few slices" (not solid, `kind` being
    attenuation's type, and under FEW_SLICES_CAVEAT slices of `slice_mm` across), or None."""
    if contact_share >= CONTACT_SHARE_CAVEAT:
        return "contact"
    if kind != "solid" and volume_mm3 > 0 and slices_across(volume_mm3, slice_mm) < FEW_SLICES_CAVEAT:
        return "few slices"
    return None


def volume_mm3(mask: np.ndarray, spacing: np.ndarray) -> float:
    return float(mask.sum()) * float(np.prod(spacing))


def _soft_tissue_level(hu: np.ndarray, inside: np.ndarray) -> float | None:
    """Median HU of the voxels of `inside` of soft-tissue density (not ground glass, not calcium), or None
    with fewer than PV_MIN_LEVEL_VOXELS of them."""
    values = hu[inside]
    values = values[(values > SOLID_THRESHOLD_HU) & (values <= CALCIUM_HU)]
    return float(np.median(values)) if values.size >= PV_MIN_LEVEL_VOXELS else None


def _theirs(hu: np.ndarray, mask: np.ndarray, near_others: np.ndarray) -> np.ndarray:
    """Voxels outside `mask` next to other structures and above the candidates' threshold: a neighbour's own, not
    the nodule's edge (see the module docstring)."""
    return near_others & ~mask & (hu > SEED_THRESHOLD_HU)


def _counted_by_fractions(hu: np.ndarray, mask: np.ndarray, edge: np.ndarray, lung: float, level: float,
                          spacing: np.ndarray) -> tuple[float, bool]:
    """(volume in mm3, True) of `mask` with the voxels of `edge` (inside or outside it) counted by their fraction
    (HU - lung) / (level - lung), clipped to 0 ... 1, and the mask's other voxels whole (Kuhnigk et al. 2006)."""
    fractions = np.clip((hu[edge] - lung) / (level - lung), 0.0, 1.0)
    counted = float((mask & ~edge).sum()) + float(fractions.sum())
    return counted * float(np.prod(spacing)), True


def solid_nodule_volume_mm3(
    hu: np.ndarray, mask: np.ndarray, near_others: np.ndarray, wall: np.ndarray, background_hu: float,
    spacing: np.ndarray,
) -> tuple[float, bool]:
    """(volume in mm3, whether partial-volume analysis measured it) of a solid nodule's half-maximum `mask`
    in lung of `background_hu` (where the lung around it gives no level of its own); `near_others`: voxels whose HU
    other structures share (see the module docstring)."""
    inside = ndimage.binary_erosion(mask, structure=_FACES, border_value=1)
    level = _soft_tissue_level(hu, inside)
    if level is None:  # a small nodule on thick slices, or one calcified throughout
        level = NOMINAL_SOFT_TISSUE_HU
    lung = _lung_level(hu, mask, near_others, wall, spacing, background_hu)
    edge = ndimage.binary_dilation(mask, structure=_CUBE) & ~inside & ~_theirs(hu, mask, near_others)
    return _counted_by_fractions(hu, mask, edge, lung, level, spacing)


def spicule_strands(mask: np.ndarray, wall: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The parts of `mask` thinner than twice SPICULE_OPENING_MM that touch no `wall` voxel (see the module
    docstring): a spiculated nodule's spicules."""
    body = opening_mm(mask, SPICULE_OPENING_MM, spacing)
    strands = mask & ~body
    if float(spacing[0]) > SPICULE_OPENING_MM:  # an opening per slice: a slice with no body is a cap
        strands &= np.asarray(body.any(axis=(1, 2)))[:, None, None]
    return strands & ~parts_touching(strands, wall)


def local_lung_hu(hu: np.ndarray, mask: np.ndarray, near_others: np.ndarray, wall: np.ndarray,
                  spacing: np.ndarray) -> float | None:
    """Median HU of the lung in a shell LOCAL_LUNG_SHELL_MM around `mask` (from its second voxel out, below the
    candidates' threshold, not another structure's nor the wall's), or None with fewer than LOCAL_LUNG_MIN_VOXELS."""
    next_two = ndimage.binary_dilation(mask, structure=_FACES, iterations=2)
    shell = dilate_mm(mask, LOCAL_LUNG_SHELL_MM, spacing) & ~next_two
    shell &= (hu < SEED_THRESHOLD_HU) & ~near_others & ~wall
    return float(np.median(hu[shell])) if int(shell.sum()) >= LOCAL_LUNG_MIN_VOXELS else None


def _lung_level(hu: np.ndarray, mask: np.ndarray, near_others: np.ndarray, wall: np.ndarray, spacing: np.ndarray,
                background_hu: float) -> float:
    """The lung's own level around `mask`, or the exam's `background_hu` where its shell is too small."""
    lung = local_lung_hu(hu, mask, near_others, wall, spacing)
    return background_hu if lung is None else lung


def _ground_glass_edge_volume_mm3(
    hu: np.ndarray, mask: np.ndarray, near_others: np.ndarray, wall: np.ndarray, background_hu: float,
    level_hu: float, spacing: np.ndarray,
) -> tuple[float, bool]:
    """(volume, whether by fractions) of a non-solid nodule's half-maximum `mask`: its edge (the mask's boundary
    voxels and the lung voxels next to them, other structures' voxels left out) counted by its fraction of ground
    glass of `level_hu` against the lung around it (see the module docstring)."""
    inside = ndimage.binary_erosion(mask, structure=_FACES, border_value=1)
    glass = hu[inside]
    if int(((glass > GROUND_GLASS_LOW_HU) & (glass < SOLID_THRESHOLD_HU)).sum()) < PV_MIN_LEVEL_VOXELS:
        return volume_mm3(mask, spacing), False
    lung = _lung_level(hu, mask, near_others, wall, spacing, background_hu)
    if level_hu - lung < MIN_GROUND_GLASS_CONTRAST_HU:
        return volume_mm3(mask, spacing), False
    edge = ndimage.binary_dilation(mask, structure=_FACES) & ~inside & ~_theirs(hu, mask, near_others)
    return _counted_by_fractions(hu, mask, edge, lung, level_hu, spacing)


def non_solid_volume_mm3(
    hu: np.ndarray, mask: np.ndarray, near_others: np.ndarray, wall: np.ndarray, background_hu: float,
    level_hu: float, spacing: np.ndarray, spiculated: bool,
) -> tuple[float, bool]:
    """(volume in mm3, whether partial-volume analysis measured it) of a ground-glass or part-solid nodule's
    half-maximum `mask` in lung of `background_hu`, its ground glass of `level_hu`: a spiculated one's spicules by
    their fraction of solid tissue, any other's edge by its fraction of ground glass (see the module docstring)."""
    strands = spicule_strands(mask, wall, spacing) if spiculated else np.zeros_like(mask)
    if not strands.any():
        return _ground_glass_edge_volume_mm3(hu, mask, near_others, wall, background_hu, level_hu, spacing)
    level = _soft_tissue_level(hu, ndimage.binary_erosion(mask, structure=_FACES, border_value=1))
    if level is None:  # a small core on thick slices
        level = NOMINAL_SOFT_TISSUE_HU
    lung = _lung_level(hu, mask, near_others, wall, spacing, background_hu)
    around = ndimage.binary_dilation(strands, structure=_FACES) & ~mask
    return _counted_by_fractions(hu, mask, strands | around, lung, level, spacing)


def contact_share(mask: np.ndarray, near_others: np.ndarray) -> float:
    """Share (0..1) of the mask's surface voxels that lie next to other structures (`near_others`)."""
    return surface_share(mask, near_others)


# the most a pixel outside the mask may count in `subpixel_slice_axes`: a mask at the half maximum leaves out only
# pixels under half nodule, so the outline never passes beyond the centre of one it left out
OUTSIDE_SHARE_CAP = 0.5


def feret(points: np.ndarray, px: float) -> tuple[float, float]:
    """(long, short) of a set of points in mm: the longest distance between two of them, and the longest chord
    perpendicular to it (the points' extent across in bins of `px` along it)."""
    hull = points
    if len(points) > 3:
        try:
            hull = points[ConvexHull(points).vertices]
        except QhullError:  # collinear points
            hull = points
    d = np.linalg.norm(hull[:, None, :] - hull[None, :, :], axis=-1)
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    long = float(d[i, j])
    u = (hull[j] - hull[i]) / max(long, 1e-9)
    along = points @ u
    across = points @ np.array([-u[1], u[0]])
    bins = np.floor((along - along.min()) / px).astype(int)
    order = np.argsort(bins, kind="stable")
    edges = np.flatnonzero(np.diff(bins[order])) + 1
    short = max(float(a.max() - a.min()) for a in np.split(across[order], edges))
    return long, short


def slice_axes(plane: np.ndarray, pixel_yx: np.ndarray) -> tuple[float, float]:
    """(long, short) in mm of one axial mask: between pixel centres, plus a pixel."""
    points = np.argwhere(plane) * pixel_yx
    if len(points) == 0:
        return 0.0, 0.0
    px = float(pixel_yx.mean())
    if len(points) == 1:
        return px, px
    long, short = feret(points, px)
    return long + px, short + px


def outline_axes(fraction: np.ndarray, pixel_yx: np.ndarray) -> tuple[float, float]:
    """(long, short) in mm of the outline where a plane's fraction (0..1 per pixel) crosses 0.5, placed between pixels
    by marching squares; (0, 0) where it crosses nowhere."""
    contours = find_contours(np.pad(np.asarray(fraction, float), 1), 0.5)
    if not contours:
        return 0.0, 0.0
    points = np.concatenate(contours) * pixel_yx
    return feret(points, float(pixel_yx.mean())) if len(points) > 1 else (0.0, 0.0)


def subpixel_slice_axes(plane: np.ndarray, hu: np.ndarray, outside_hu: float, inside_hu: float,
                        pixel_yx: np.ndarray, others: np.ndarray | None = None) -> tuple[float, float]:
    """(long, short) in mm of one axial mask, its edge placed below a pixel from the edge pixels' partial volume: the
    mask's interior counts 1, the pixels of its edge ring (its own edge and the pixels just outside it) their share
    between `outside_hu` and `inside_hu` (`hu`: the plane's HU), and the outline crosses at 0.5 (`outline_axes`). A pixel
    the mask left out counts OUTSIDE_SHARE_CAP at most, and nothing where it lies on or beside other structures
    (`others`: a vessel or the wall the segmentation cut away is as dense as the nodule).

    Why: the longest distance between pixel centres plus a pixel (`slice_axes`) reads the long axis 0.7-0.85 pixel
    long, because the direction picked as the longest is the one whose outermost pixel centres lie nearest the edge;
    the outline of the binary mask is long as well (half a pixel uncertain everywhere, and the longest diameter takes
    the most outward). On digitised discs and ellipses this reads it within 0.2 pixel on average (docs/characterization.md,
    "Forty-seventh session" and "Forty-eighth session"). Falls back to `slice_axes` for a mask of under 3 pixels or
    levels less than 1 HU apart."""
    if plane.sum() < 3 or inside_hu - outside_hu < 1.0:
        return slice_axes(plane, pixel_yx)
    share = np.clip((hu - outside_hu) / (inside_hu - outside_hu), 0.0, 1.0)
    inner = ndimage.binary_erosion(plane)
    ring = ndimage.binary_dilation(plane) & ~inner
    share = np.where(plane, share, np.minimum(share, OUTSIDE_SHARE_CAP))
    if others is not None:
        share = np.where(plane | ~others, share, 0.0)
    long, short = outline_axes(np.where(inner, 1.0, np.where(ring, share, 0.0)), pixel_yx)
    return (long, short) if long > 0 else slice_axes(plane, pixel_yx)


def axes(mask: np.ndarray, spacing: np.ndarray, z_offset: int = 0, hu: np.ndarray | None = None,
         levels: tuple[float, float] | None = None, others: np.ndarray | None = None) -> Axes | None:
    """Axes on the axial slice with the longest long axis; None for an empty mask. With `hu` (the mask's HU) and
    `levels` (the HU outside and inside its edge) the edge is placed below a pixel (`subpixel_slice_axes`, with
    `others`: other structures)."""
    best: tuple[float, float, int] | None = None
    for z in (int(k) for k in np.flatnonzero(mask.any(axis=(1, 2)))):
        if hu is not None and levels is not None:
            long, short = subpixel_slice_axes(mask[z], hu[z], levels[0], levels[1], spacing[1:],
                                              None if others is None else others[z])
        else:
            long, short = slice_axes(mask[z], spacing[1:])
        if best is None or long > best[0]:
            best = (long, short, z)
    if best is None:
        return None
    long, short, z = best
    # Lung-RADS v2022: both axes to one decimal, and the mean of those to one decimal
    long_mm, short_mm = round_half_up(long, 1), round_half_up(short, 1)
    return Axes(long_mm=long_mm, short_mm=short_mm, mean_mm=round_half_up((long_mm + short_mm) / 2, 1),
                slice_index=z + z_offset)
