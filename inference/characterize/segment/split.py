"""The nodule separated from vessels and the wall: a marker watershed on the distance map, a second pass with the
nodule's own radius as a shape prior, and the vessel stubs it leaves dropped."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from inference.characterize.segment.masks import component_at, dilate_mm, distance2, opening_mm, parts_touching
from inference.characterize.segment.rays import ray_radius
from inference.characterize.segment.segmentation import DENSE_HU

# dense structures beyond this times the nodule's own radius (+ half a pixel) are vessels; lobes
# stay inside (phantom lobes add 8-18 %); tuned on phantom seeds 7000..7049 (1.1 best of 0.9 ... 1.4)
ENVELOPE_FACTOR = 1.1
# _give_back_ground_glass: ground glass the vessel's basin took within this share of the nodule's own radius
GLASS_BACK_FACTOR = 0.9
# _spicules: a dense strand beyond the envelope at most this share of the nodule's own radius deep (distance from its
# axis to the lung) is thin enough to be a spicule. Phantom spicules are 0.16 R + 0.3 mm at their root (depth 1.0 ...
# 2.1 mm against R = 9.3 mm on 19017:5); the vessel pieces next to small nodules on vessels are 0.5 ... 0.6 R deep
# (18023:2, 19006:3), and letting them through put 15 ... 175 % on four of them (full-size 14000..19029, 0.25 kept none)
SPICULE_DEPTH_SHARE = 0.25
# _drop_stubs: a protrusion is what lies beyond this (mm) of the opened body; the rest of the thin part is its rim. 1.5
# mm kept the spicules of four of six large spiculated nodules on the crops (0.8 mm: three; the rim is up to two
# pixels)
SPICULE_RIM_MM = 1.5
# _drop_stubs: a thin part next to at least this share of the opened body's surface, touching the other basins with at
# most OUTER_LAYER_MAX_CONTACT of its voxels, is the nodule's own outer layer, not a stub. On 2.5-3 mm slices a small
# part-solid nodule's ground-glass layer (and its caps on the next slices) is all thin, one piece round the core: small
# 13003:5 (6.4 mm, a 3.3 mm core) touched the chest wall's edge with 2 of its 11 voxels and lost it all (-58 %, read
# solid). Of the parts the cut drops on the 82 crop nodules whose reading depends on it (docs/characterization.md,
# "Forty-second session"), the only other one next to 0.9 or more of its body (12011:0's held pass, 39 of 40 voxels on
# other basins) is a vessel's sleeve and stays dropped, and the next lies next to 0.88 (20012:2's vessel, 124 of its
# 185 voxels on it); on all 1506 crop nodules only 13003:5 changed
OUTER_LAYER_MIN_COVER = 0.9
OUTER_LAYER_MAX_CONTACT = 0.5
# ...and a thin part next to at least SIZE_LAYER_MIN_COVER of that surface, touching the other basins with at most
# SIZE_LAYER_MAX_CONTACT of its voxels, is the nodule's own outer layer for its size (`Segmentation.outer_layer`), not
# for its type: a vessel's stub is its cross-section on the other basin and ends there; a layer wraps a large part of
# the body and touches a vessel only where one passes. On 2-3 mm slices a nodule's partial-volume slice above or below
# its body is such a layer: free 20009:2 (9.6 mm solid, 2.5 mm slices) lost the outer ring of its last slice, 176
# voxels, because it touched a vessel with 25 of them (cover 0.49): -18.7 %; with the layer -5.2 %. Given to the
# mask before the type is read, the layer's partial-volume voxels, in the ground-glass band, thickened the rim of
# small solid nodules on thick slices (10015:0, 6.1 mm: part-solid, then held, -26 %) and of large ones on vessels at
# 70 HU (17001:1: part-solid, +21 %). On the crop harness's 1506 nodules (docs/characterization.md, "Forty-fourth
# session") within 15 % 1456 -> 1458 at 20 HU, 1445 -> 1447 at 40 HU, 1394 -> 1396 at 70 HU, types the same; of the
# 6, 8 and 12 nodules that moved, one crossed 15 % outwards (10014:4, 9.4 mm ground glass at 70 HU: +6 -> +35 %, its
# noisy layer 43 voxels on a body of 91)
SIZE_LAYER_MIN_COVER = 0.45
SIZE_LAYER_MAX_CONTACT = 0.2


def centre_reach_mm(radius: float) -> float:
    """How far from the detector's centre `split_from_neighbours` looks for the nodule's thick middle."""
    return radius / 2 + 2.0


def split_from_neighbours(
    smooth: np.ndarray, seed: np.ndarray, wall: np.ndarray, airways: np.ndarray, local: np.ndarray,
    spacing: np.ndarray, radius: float, far_mm: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Separate the nodule from vessels and the wall: a marker watershed on the distance map.

    Depth = distance to the nearest non-candidate voxel (mm). The nodule marker is its thick middle
    (depth >= 0.7 x the inscribed radius near the centre); the other markers are the wall and every
    candidate voxel farther than 2 R + 4 mm from the centre, or `far_mm` where given (vessels crossing the ROI
    reach it, spicules, at most about 2 R + 2 mm long on phantoms, and lobules do not). Flooding -depth, the basins
    meet at the narrowest neck between the nodule and what touches it. Returns (the nodule, its own outer layer that
    the stub cut left out: `_drop_stubs`).
    """
    # depth measured with the wall as background, so a juxtapleural nodule has its own peak
    depth = ndimage.distance_transform_edt(seed & ~wall, sampling=spacing)
    dist2 = distance2(seed.shape, local, spacing)
    near = (dist2 <= centre_reach_mm(radius) ** 2) & seed & ~wall
    if not near.any():
        return np.zeros_like(seed), np.zeros_like(seed)
    inscribed = float(depth[near].max())
    thick = near & (depth >= 0.7 * inscribed)
    deepest = np.array(np.unravel_index(int(np.argmax(np.where(near, depth, -1))), seed.shape), float)
    nodule_marker = component_at(thick, deepest, spacing, np.inf)
    markers = np.zeros(seed.shape, np.int32)
    far = 2 * radius + 4.0 if far_mm is None else far_mm
    markers[seed & (dist2 > far ** 2)] = 2
    markers[wall] = 3  # its own label: the envelope pass below cuts vessels, not the wall contact
    markers[nodule_marker] = 1
    labels = watershed(-depth, markers, mask=seed, connectivity=1)
    r_small = float(np.clip(0.5 * inscribed, 0.7, 0.5 * radius + 1.0))
    dense = smooth > DENSE_HU
    # a solid core: its spicules are strands of its own tissue, kept from both vessel cuts below (in a ground-glass
    # nodule every dense strand is a vessel)
    solid_core = float(np.median(smooth[nodule_marker])) > DENSE_HU
    nodule, other = _envelope_pass(labels, markers, nodule_marker, depth, dense, solid_core, seed, airways, spacing,
                                   inscribed)
    spicules = (dense, depth, SPICULE_DEPTH_SHARE * inscribed) if solid_core else None  # R: the inscribed radius
    # A low-dose scan's noise (70 HU per voxel) leaves voxels of ground glass (-650 ... -500 HU) under
    # SEED_THRESHOLD_HU even smoothed: holes inside the nodule. Opened by r_small, each hole opened a layer round
    # itself, the layers joined into a shell that touched some vessel, and the shell went as a stub. So the stubs are
    # looked for on the nodule with its enclosed holes filled; the mask keeps its holes. On the crop harness's 1506
    # nodules with noise added to about 70 HU (docs/characterization.md, "Forty-first session") within 15 % 1386 ->
    # 1391, mean |error| 5.77 -> 5.64 %, types the same (1480); at 40 HU 1447 -> 1446 (a free solid nodule kept a
    # vessel where a one-voxel hole was filled); at the phantoms' own 20 HU every type and count as before;
    # lidc-idri-0002 3027 -> 3071 mm3. Filling the holes for the ray radii as well went further on the phantoms but
    # took lidc-idri-0002 to 2676 mm3.
    kept, layer = _drop_stubs(ndimage.binary_fill_holes(nodule), other, r_small, spacing, spicules)
    return kept & nodule, layer & nodule


def _envelope_pass(
    labels: np.ndarray, markers: np.ndarray, nodule_marker: np.ndarray, depth: np.ndarray, dense: np.ndarray,
    solid_core: bool, seed: np.ndarray, airways: np.ndarray, spacing: np.ndarray, inscribed: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Second watershed with a shape prior: cut attached vessels near the nodule's own surface.

    On a vessel's plateau of equal depth the first pass's floods meet half-way between the nodule
    and the far marker, so the nodule takes a length of vessel with it. The nodule's own radius is
    the median ray radius of that first nodule (a vessel lengthens only the rays that run into it),
    bounded off the wall by its inscribed radius (which a vessel hardly changes; against the wall
    the inscribed radius is that of the visible cap only). Dense voxels beyond the envelope
    (ENVELOPE_FACTOR x that radius) become markers of the other basin, so the basins meet near the
    nodule's surface; parts of the first nodule beyond it that end freely, and the spicules of a solid one
    (`_spicules`: thin strands that reach no vessel tissue), are not marked. Airway walls beyond the envelope
    (`airways`, of any density) are marked too. `dense`: smoothed HU above DENSE_HU; `solid_core`: whether the
    nodule's thick middle is solid (then its spicules are strands of its tissue).
    Off the wall, dense parts beyond the radius itself that still run into a vessel are then cut, but
    only within (ENVELOPE_FACTOR - 1) x the radius + a pixel of the vessel's basin: a stub left between
    the radius and the envelope is no longer than that, whereas such parts can form a connected shell
    one pixel thick all round (the nodule's edge when its radius is underestimated by a pixel) that
    touches a vessel at one point, and cutting all of it cost a free 12.2 mm phantom nodule (seed
    15027) 17 % of its volume. A vessel here is what the first pass's far markers hold (it crosses the
    ROI), not a spicule the envelope marked: spicules end in the lung, and near each one's root the
    shell of a large spiculated nodule was cut (full-size 19017:5, free, 18.8 mm: -17 %).
    Returns (the nodule, everything else: vessels and wall).
    """
    nodule = labels == 1
    crossing = markers == 2  # the first pass's other markers: what reaches 2 R + 4 mm from the centre
    centre = np.argwhere(nodule_marker).mean(axis=0)
    half_px = float(spacing[1:].mean()) / 2
    on_wall = bool(parts_touching(nodule, labels == 3).any())
    own_radius = ray_radius(nodule, centre, spacing)
    if not on_wall:
        own_radius = min(own_radius, inscribed)
    dist2 = distance2(seed.shape, centre, spacing)
    beyond = dist2 > (ENVELOPE_FACTOR * own_radius + half_px) ** 2
    to_vessel = parts_touching(nodule & beyond, labels == 2)
    if solid_core:
        to_vessel &= ~_spicules(to_vessel & dense, (labels == 2) & dense, depth, own_radius)
    markers[seed & dense & beyond & ~(nodule & ~to_vessel) & (markers == 0)] = 2
    markers[airways & beyond & (markers == 0)] = 2
    markers[nodule_marker] = 1
    labels = watershed(-depth, markers, mask=seed, connectivity=1)
    nodule = labels == 1
    nodule = _give_back_ground_glass(nodule, labels == 2, dense, dist2, own_radius, centre, spacing)
    if not on_wall:
        out = nodule & dense & (dist2 > (own_radius + half_px) ** 2)
        vessel = parts_touching(labels == 2, crossing)  # not the spicules the envelope marked: they end in the lung
        stub_reach = (ENVELOPE_FACTOR - 1) * own_radius + 2 * half_px
        near_vessel = ndimage.distance_transform_edt(~vessel, sampling=spacing) <= stub_reach
        nodule &= ~(parts_touching(out, vessel) & near_vessel)
        nodule = component_at(nodule, centre, spacing, np.inf)
    return nodule, labels >= 2


def _spicules(parts: np.ndarray, vessels: np.ndarray, depth: np.ndarray, own_radius: float) -> np.ndarray:
    """The connected parts of `parts` (dense voxels of the first nodule beyond the envelope, in pieces that run into
    a vessel's basin) that are spicules: they reach no dense voxel of `vessels` (the basin) and are thin, at most
    SPICULE_DEPTH_SHARE x the nodule's own radius deep.

    The first pass's nodule has a halo of partial-volume voxels (-750 ... -300 HU) all round, which joins every
    strand beyond the envelope to any vessel that the nodule touches elsewhere; so the envelope marked a large
    nodule's spicules as vessels and the watershed gave them away (full-size 19017:5, 18.8 mm, nine spicules in the
    first pass, none left: read smooth). A vessel's piece is joined to its continuation by vessel tissue and is as
    thick as the vessel; a spicule tapers from the nodule and ends in the lung (a vessel near its tip touches only
    its halo). Only for a nodule with a solid core (`_envelope_pass`): in a ground-glass one every dense strand is
    a vessel (19023:0, 24.3 mm: pieces of its vessels then read as spicules).
    """
    return _strands(parts & ~parts_touching(parts, vessels), depth, SPICULE_DEPTH_SHARE * own_radius)


def _strands(parts: np.ndarray, depth: np.ndarray, max_depth_mm: float) -> np.ndarray:
    """The connected parts of `parts` (26-connectivity) that hold a voxel of positive `depth` and none deeper than
    `max_depth_mm`."""
    labels, n = ndimage.label(parts, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return np.zeros_like(parts)
    deepest = np.asarray(ndimage.maximum(depth, labels, index=np.arange(1, n + 1)), float)
    thin = np.concatenate([[False], (deepest > 0) & (deepest <= max_depth_mm)])
    return np.asarray(thin[labels])


def _give_back_ground_glass(
    nodule: np.ndarray, vessel: np.ndarray, dense: np.ndarray, dist2: np.ndarray, own_radius: float,
    centre: np.ndarray, spacing: np.ndarray,
) -> np.ndarray:
    """Give a nodule back the ground glass that the watershed gave to a vessel beside it.

    The basins meet at the narrowest neck of the depth map, and where a vessel lies against a ground-glass
    nodule that neck runs through the nodule (full-size 15014:1, 6.3 mm in a vessel bundle: -31 %). A vessel is
    soft tissue with a partial-volume halo about a pixel wide; a voxel of its basin below soft-tissue density,
    more than a pixel from any, and within GLASS_BACK_FACTOR x the nodule's own radius of its centre is the
    nodule's ground glass (a solid nodule's only such voxels are its own partial-volume edge, within a pixel of
    it). 1.0 x the radius also took an airway's wall of ground-glass density past a 10 mm nodule's edge
    (18019:0 +12 -> +15 %); 0.9 leaves a margin for the radius's error.
    """
    within = vessel & ~dense & (dist2 <= (GLASS_BACK_FACTOR * own_radius) ** 2)
    if not within.any():  # most nodules: no distance map needed
        return nodule
    back = within & ~dilate_mm(dense, float(spacing[1:].mean()), spacing)
    if not back.any():
        return nodule
    return component_at(nodule | back, centre, spacing, np.inf)


def _drop_stubs(
    nodule: np.ndarray, other: np.ndarray, r_small: float, spacing: np.ndarray,
    spicules: tuple[np.ndarray, np.ndarray, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Remove vessel stubs: thin protrusions that end on the watershed line with a vessel or the wall.

    Where a vessel runs through a nodule there is no neck, so the watershed line falls part-way along
    the vessel; the piece on the nodule's side is thin (it vanishes in an opening by r_small) and it
    touches the other basin. A spicule is thin too but ends freely in the lung, so it stays.
    `spicules` (dense, depth, the deepest a spicule is), for a nodule with a solid core: the opening of a large
    nodule (r_small up to 0.5 R + 1 mm) leaves a rim all round it that joins every spicule to a stub, and the
    stub's whole thin part went with its spicules (full-size 16017:0, 17.8 mm on a vessel: three spicules, read
    smooth). There the protrusions beyond SPICULE_RIM_MM of the opened body that touch no other basin and are
    dense strands (`_strands`) stay, with the rim's voxels next to them that touch no other basin.
    Returns (the nodule, the dropped parts that are its own outer layer for its size: SIZE_LAYER_MIN_COVER).
    """
    body = opening_mm(nodule, r_small, spacing)
    none = np.zeros_like(nodule)
    if not body.any():
        return nodule, none
    cube = np.ones((3, 3, 3), bool)
    thin = nodule & ~body
    labels, n = ndimage.label(thin, structure=cube)
    if n == 0:
        return nodule, none
    touching = ndimage.binary_dilation(other, structure=cube)
    stubs = np.unique(labels[touching & (labels > 0)])
    drop = np.zeros(n + 1, bool)
    drop[stubs] = True
    drop[0] = False
    parts = _ThinParts.of(labels, n, body, touching, max(OUTER_LAYER_MAX_CONTACT, SIZE_LAYER_MAX_CONTACT))
    drop &= ~parts.layers(OUTER_LAYER_MIN_COVER, OUTER_LAYER_MAX_CONTACT)
    layer = (drop & parts.layers(SIZE_LAYER_MIN_COVER, SIZE_LAYER_MAX_CONTACT))[labels]
    if spicules is None or not drop.any():
        return nodule & ~drop[labels], layer
    dense, depth, max_depth = spicules
    protrusions = thin & ~dilate_mm(body, SPICULE_RIM_MM, spacing)
    free = protrusions & ~parts_touching(protrusions, other)
    kept = _strands(free, np.where(dense, depth, 0.0), max_depth)
    kept |= thin & ~protrusions & ~touching & ndimage.binary_dilation(kept, structure=cube)
    return component_at(nodule & ~(drop[labels] & ~kept), np.argwhere(body).mean(axis=0), spacing, np.inf), layer


@dataclass(frozen=True)
class _ThinParts:
    """Per label of a nodule's thin parts (`labels`, 1..n; index 0 unused): its voxels, its voxels on `touching` (the
    other basins and the voxels next to them) and the voxels of `body`'s surface next to it, counted once for both
    outer-layer tests of `_drop_stubs`; `surface`: the body's surface voxels."""
    sizes: np.ndarray
    contact: np.ndarray
    covered: np.ndarray
    surface: int

    @classmethod
    def of(cls, labels: np.ndarray, n: int, body: np.ndarray, touching: np.ndarray, max_contact: float) -> _ThinParts:
        """The counts; the cover only of the parts with at most `max_contact` of their voxels on `touching` (the
        widest contact any test asks: the others are no layer), 0 for the rest."""
        cube = np.ones((3, 3, 3), bool)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        contact = np.bincount(labels.ravel(), weights=touching.ravel(), minlength=n + 1)
        surface = body & ~ndimage.binary_erosion(body, structure=cube)
        boxes = ndimage.find_objects(labels)
        covered = np.zeros(n + 1, np.int64)
        for label in np.arange(1, n + 1)[contact[1:] <= max_contact * sizes[1:]]:
            box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in boxes[label - 1])  # what its dilation reaches
            beside = ndimage.binary_dilation(labels[box] == label, structure=cube)
            covered[label] = np.count_nonzero(surface[box] & beside)
        return cls(sizes, contact, covered, int(np.count_nonzero(surface)))

    def layers(self, min_cover: float, max_contact: float) -> np.ndarray:
        """Per label: whether it is the nodule's own outer layer, next to `min_cover` or more of the body's surface and
        on `touching` with at most `max_contact` (no more than `of`'s) of its voxels."""
        out = (self.contact <= max_contact * self.sizes) & (self.covered >= min_cover * self.surface)
        out[0] = False
        return np.asarray(out)
