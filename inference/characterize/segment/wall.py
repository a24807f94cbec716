"""A juxtapleural nodule's base on the chest wall: given back where the wall's opening took it."""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from inference.characterize.segment.masks import dilate_mm, equivalent_radius, parts_touching, wall_contact_share
from inference.characterize.segment.segmentation import DENSE_HU, Segmentation
from inference.characterize.segment.vessels import TRIM_WALL_CONTACT_MAX

# a juxtapleural nodule's base lost to the wall's opening (restore_cap): wall voxels this many pixels
# on the lung side of the pleura's plane, within CAP_REACH x the nodule's radius of its centre
CAP_MARGIN_PX = 0.25
# ...for a nodule that is not solid (median HU at or below DENSE_HU), a pixel. The ring's surface voxels (the wall's
# candidates next to lung) lie on its -750 HU iso-surface, a pixel lung-ward of the pleura itself (the half maximum
# of the wall's blurred edge: median distance 1 px on the full-size phantoms and on lidc-idri-0002). A solid nodule's
# base in that skin counts by its partial-volume fraction (measure.py), a ground-glass or part-solid one counts its
# voxels whole, and the skin added a layer to its base: full-size phantoms 14000..19029, non-solid nodules at the
# pleura +8/+10/+5/+10/+22/+30 % -> -7/+1/-1/-2/+15/+21 % (14001:3, 14005:2, 16025:2, 19012:0, 19008:0, 19017:4),
# within 15 % 571 -> 572, mean |error| 3.68 -> 3.42 %; at 1 px for solid nodules as well 569 (their fractions
# already leave the skin out)
CAP_GLASS_MARGIN_PX = 1.0
CAP_REACH = 1.2
CAP_MAX_ROUGHNESS_MM = 1.5  # the ring's spread off its plane (sd) above which the wall is not flat
# ...and where it is not (a chest wall curving or stepping under a large nodule, a nodule filling a narrow strip of
# lung between two walls), a plane per candidate through its nearest ring points. Full-size phantoms 14000..17039 (K
# 60/120, margin 0.25/0.5/1.0 px, decided per pass or once, for every nodule or solid ones): solid nodules at the
# pleura 15028:2 -24 -> -5 %, 16008:3 -18 -> +3 %, 17016:2 -35 -> -15 %, 17031:3 -35 -> -11 %; at 0.25 px the wall's
# stair on 2 mm slices came back as nodule (17036:0 -5 -> +15 %), decided per pass a hilar vessel's round surface did
# (16021:1 +6 -> +26 %), and ground-glass nodules took the wall's partial-volume surface (14003:4 -1 -> +18 %)
CAP_LOCAL_POINTS = 120
CAP_LOCAL_MARGIN_PX = 0.5
# ...for a nodule with a solid part as well (at least this share of it above DENSE_HU; its median below), whose base
# on a curved wall was left to the opening: crop harness, the 122 phantom nodules at the pleura (thirty-fifth
# session), part-solid 24013:3 (14.7 mm on 2.5 mm slices) -19 -> +2 %, 15022:3 (17.6 mm) -15 -> -6 %, and 22010:1
# (6.7 mm solid, median below it) -18 -> +3 %; 13009:4, a ground-glass nodule already read part-solid (+16 %), took
# more of the wall (+33 %). Pure ground-glass nodules at the pleura have 0.02 or less, part-solid ones 0.07 or more;
# every share from 0.1 to 0.22 changes the same four, 0.05 also took the wall's skin into 17030:3 (ground glass, 0.09,
# +32 -> +62 %) and 10004:0 (part-solid, 0.10, -7 -> +7 %)
CAP_CURVED_MIN_DENSE_SHARE = 0.15
# ...and the candidates this close to the wall's opening that the watershed gave to the wall; tuned on phantom
# seeds 7000..7049 small and 15000..15019 full size (1.5 mm: no gain; 3 mm: pleura 7/12 -> 8/12 within 15 %,
# free 101/103 -> 102/103; unbounded: the same, but a nodule on a hilar vessel took more of the vessel)
CAP_FILLET_MM = 3.0
# the first restoration measures the nodule's centre and radius without its base (the centre lies too far
# from the wall, the radius is short, so CAP_REACH falls short of the base); a second one, measured on the
# restored nodule, takes the rest of it. Full-size phantoms 14000..14039: six of the ten nodules at the pleura
# -13/-13/-12/-18/-13/+1 % -> -1/-4/-8/-9/-4/+8 %, three nodules near the wall on a vessel take more of it
# (+29/+9/+25 -> +34/+12/+37 %, the last on 15000..15039, where the rest moved 2 % or less); a third pass
# moves nothing by more than 5 %
CAP_PASSES = 2
# restore_ground_glass_base: the wall's voxels this far (mm) or more from soft tissue are not its partial-volume
# surface (which is ground-glass density too, and runs on along the whole pleura: at 1 voxel the base leaked along it)
GLASS_BASE_CLEARANCE_MM = 1.5


def restore_cap(
    body: np.ndarray, wall: np.ndarray, seed: np.ndarray, hu: np.ndarray, spacing: np.ndarray, site: str | None,
) -> tuple[np.ndarray, str | None]:
    """Give a juxtapleural nodule back the base that the wall's opening took; returns (the nodule, `site`).

    The large ball of the opening rises a little into the nodule where it sits on the wall, so the
    nodule's base went to the wall. The pleura under the base is invisible (nodule and wall are both soft
    tissue) and is interpolated from the wall's surface voxels on a ring around the nodule (1 R + 1.5 mm ...
    2 R + 4 mm from its centre); candidates on the lung side of it (by more than a margin) within CAP_REACH x R
    of the centre are the nodule's: the wall's voxels, and those within CAP_FILLET_MM of the wall that the
    watershed gave to the wall's basin (the fillet between the base and the opening's rounded edge, where the
    depth map has no neck; a nodule on the pleura kept 80-90 % of its volume without them).
    `site`, decided on the first pass that finds a ring and kept for the next (a pass measures the centre and
    radius on what it is given, so the ring moves; the decision must not): "flat" where the ring lies on a plane
    (spread up to CAP_MAX_ROUGHNESS_MM): that plane or the plane of the CAP_LOCAL_POINTS ring points nearest to
    each candidate where those lie on one (a corner of the lung within the ring's spread has two faces), margin
    CAP_MARGIN_PX (CAP_GLASS_MARGIN_PX for a nodule that is not solid); "curved" where it does not, for a solid
    nodule (median HU above DENSE_HU) or one with a solid part (CAP_CURVED_MIN_DENSE_SHARE of it above DENSE_HU)
    sitting on the wall with a base (wall contact share above TRIM_WALL_CONTACT_MAX): the plane of the
    CAP_LOCAL_POINTS ring points nearest to each candidate, or where those lie on no plane the quadric surface
    through the whole ring (`_above_quadric`), margin CAP_LOCAL_MARGIN_PX. (With
    the quadric's fallback, crop harness on 1507 phantom nodules: 13009:0, 9009:0, 7019:2, 9013:3 on cupped walls
    -53/-18/-21/-18 % -> -4/0/-4/-10 %, small set within 15 % 438 -> 442 of 471, none worse by 2 points; the quadric
    for every curved site overshot where the local planes held (16008:3 +2 -> +26 %), and for ground-glass nodules it
    took the wall's partial-volume skin: 14003:4, 14017:1 -> +20/+17 %); "none" otherwise (a pure ground-glass nodule
    on a curved wall, a vessel's point contact, a corner): left alone.
    segment_nodule calls it CAP_PASSES times.
    """
    if not body.any() or not parts_touching(wall, body).any():
        return body, site
    centre = np.argwhere(body).mean(axis=0) * spacing
    radius = equivalent_radius(body, spacing)
    surface = wall & ndimage.binary_dilation(~seed, structure=np.ones((3, 3, 3), bool))
    pts = np.argwhere(surface) * spacing
    d = np.sqrt(((pts - centre) ** 2).sum(axis=1))
    ring = pts[(d >= radius + 1.5) & (d <= 2 * radius + 4.0)]
    if len(ring) < 20:
        return body, site
    c0 = ring.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(ring.T))
    flat = bool(values[0] <= CAP_MAX_ROUGHNESS_MM ** 2)
    normal = vectors[:, 0] * (1.0 if float((centre - c0) @ vectors[:, 0]) > 0 else -1.0)  # towards the nodule
    solid = float(np.median(hu[body])) > DENSE_HU
    if site is None:
        based = wall_contact_share(body, wall) > TRIM_WALL_CONTACT_MAX
        # a solid nodule (median above DENSE_HU) has over half of itself above it: this share covers it too
        dense_part = float((hu[body] > DENSE_HU).mean()) >= CAP_CURVED_MIN_DENSE_SHARE
        site = "flat" if flat else "curved" if based and dense_part else "none"
    pool = np.argwhere(seed & ~body & dilate_mm(wall, CAP_FILLET_MM, spacing))
    cand = pool * spacing
    near = np.sqrt(((cand - centre) ** 2).sum(axis=1)) <= CAP_REACH * radius
    pool, cand = pool[near], cand[near]
    pixel = float(spacing[1:].mean())
    if site == "flat" and flat:
        # the ring's plane is its average: in a corner of the lung (two faces within the ring's spread) it cuts
        # across the corner and the nodule filling it lost that part (15017:0, 6 mm: -24 %); the plane through
        # each candidate's nearest ring points follows each face. Either plane suffices: where the opening took a
        # broad lesion's dome into the wall, the ring holds the dome and the local planes alone give back less
        local = _above_local_planes(cand, ring, centre) if len(pool) else np.zeros(0)
        margin = (CAP_MARGIN_PX if solid else CAP_GLASS_MARGIN_PX) * pixel
        hit = pool[np.maximum(local, (cand - c0) @ normal) > margin]
    elif site == "curved" and len(pool):
        # where a candidate's nearest ring points lie on no plane (the wall cups round the nodule, or turns under it
        # within those points), the wall under it is the quadric surface through the whole ring
        height = _above_local_planes(cand, ring, centre)
        height = np.where(np.isfinite(height), height, _above_quadric(cand, ring, c0, normal, vectors[:, 1:]))
        hit = pool[height > CAP_LOCAL_MARGIN_PX * pixel]
    else:
        return body, site
    if not len(hit):
        return body, site
    cap = np.zeros_like(body)
    cap[tuple(hit.T)] = True
    return body | parts_touching(cap, body), site  # as in restore_ground_glass_base: all of the body, its base


def _above_local_planes(points: np.ndarray, ring: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """How far (mm) each of `points` lies on the nodule's side of the plane through the CAP_LOCAL_POINTS `ring`
    points nearest to it (all in mm); -inf where those points do not lie on a plane (a corner, two walls)."""
    k = min(CAP_LOCAL_POINTS, len(ring))
    _, index = cKDTree(ring).query(points, k=k)
    near = ring[index.reshape(len(points), k)]
    mean = near.mean(axis=1)
    spread = near - mean[:, None, :]
    values, vectors = np.linalg.eigh(np.einsum("nki,nkj->nij", spread, spread) / k)
    normal = vectors[:, :, 0]
    normal *= np.where(np.einsum("ni,ni->n", centre - mean, normal) < 0, -1.0, 1.0)[:, None]
    height = np.einsum("ni,ni->n", points - mean, normal)
    return np.where(values[:, 0] <= CAP_MAX_ROUGHNESS_MM ** 2, height, -np.inf)


def _above_quadric(points: np.ndarray, ring: np.ndarray, mean: np.ndarray, normal: np.ndarray,
                   in_plane: np.ndarray) -> np.ndarray:
    """How far (mm) each of `points` lies on the nodule's side of the quadric surface h = f(u, v) fitted by least
    squares to the `ring` points (all in mm), in the ring's frame from restore_cap: h along `normal` (its axis of
    least spread, towards the nodule) from its `mean`, u and v along the two columns of `in_plane` (a curved wall
    seen from the nodule: a cup, a saddle or a bend)."""

    def terms(p: np.ndarray) -> np.ndarray:
        u, v = (p - mean) @ in_plane[:, 0], (p - mean) @ in_plane[:, 1]
        return np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=1)

    coefficients, *_ = np.linalg.lstsq(terms(ring), (ring - mean) @ normal, rcond=None)
    return np.asarray((points - mean) @ normal - terms(points) @ coefficients)


def restore_ground_glass_base(seg: Segmentation, threshold_hu: float, spacing: np.ndarray) -> None:
    """Give a non-solid nodule on the pleura back the ground-glass base that the wall's opening took.

    The opening's ball fits into whatever lies above -750 HU, so a ground-glass nodule broad at its base
    (lidc-idri-0002's lesion) loses the part of it that the ball reaches; restore_cap takes back only what
    lies on the lung side of the pleura's plane near the nodule. Chest wall and mediastinum are soft tissue
    (above DENSE_HU); the opening's voxels above the nodule's boundary threshold but below soft-tissue density
    and more than GLASS_BASE_CLEARANCE_MM from soft tissue are ground glass, and where they connect to the
    nodule within its equivalent radius of it, they are its base. (Not for solid nodules: their base is as
    dense as the wall.) Where the wall's edge is blurred over 3 mm or more (the phantoms draw the chest on a
    1.5 mm grid), its partial-volume surface lies two 0.75 mm pixels from soft tissue, past the clearance, and
    that one-voxel layer along the pleura joined the base for the whole r_eq around the nodule (full-size
    17027:2, 10.9 mm: +19 %; a 10 mm nodule's long axis 17-19 mm). A voxel of the base lies between the nodule
    and the wall; one that borders the lung on its slice is the wall's surface, and it joins only where it
    borders the base itself (the base's own rim on the pleura).
    """
    m = seg.mask
    if not m.any() or not seg.wall.any() or not parts_touching(seg.wall, m).any():
        return
    soft = seg.smooth > DENSE_HU
    r_eq = equivalent_radius(m, spacing)
    glass = seg.wall & (seg.smooth > threshold_hu) & ~dilate_mm(soft, GLASS_BASE_CLEARANCE_MM, spacing) \
        & dilate_mm(m, r_eq, spacing)
    if not glass.any():
        return
    lung = ~seg.wall & ~m & (seg.smooth <= threshold_hu)
    on_lung = glass & ndimage.binary_dilation(lung, structure=np.ones((1, 3, 3), bool))
    # the glass that touches the nodule, not the component at one of its voxels: the half-maximum threshold can leave
    # a stray voxel of the mask apart from it, and the component at that one was all that was kept (a part-solid
    # nodule on the pleura, 1130 voxels -> 1)
    base = m | parts_touching(glass & ~on_lung, m)
    seg.mask = base | (on_lung & ndimage.binary_dilation(base, structure=np.ones((3, 3, 3), bool)))
