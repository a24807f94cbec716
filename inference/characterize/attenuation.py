"""Attenuation type (solid / part-solid / ground-glass) from the HU inside the segmentation.

Solid threshold -300 HU (`SOLID_THRESHOLD_HU`): ground-glass is about -750 ... -300 HU and
soft tissue above about -300 HU in the quantitative subsolid-nodule literature; -300 HU is the
cut-off most often used to separate the solid component in CT-density studies of adenocarcinoma
spectrum lesions (it sits half-way between ground-glass near -600 HU and soft tissue near 0 HU, so a
voxel counts as solid when at least half of it is soft tissue).

Partial volume: a small solid nodule has a rim (and top/bottom slices) of intermediate HU that
looks like ground glass. So the share is measured on the nodule CORE only: voxels at least
`_RIM_PX` pixels (in-plane) inside the boundary, on the central slices (in-plane area at least
`_CENTRAL_AREA` of the largest slice), where slice partial volume is small.
A second feature, the ratio of the volume above -750 HU to that above -300 HU, separates a solid
nodule (only its partial-volume edge, about 0.8 mm, lies between the two: ratio 1.2 ... 2.6 on
phantoms of 6 mm and more) from a part-solid one with a large core but a real ground-glass rim.
Cut-offs `SOLID_SHARE`, `SOLID_MAX_RATIO` and `GGO_SHARE` were tuned on phantom seeds 1..40 (small phantoms) and
checked on seeds 500..519 (type 90.7 %); see evaluate.py.

Two later rules, tuned on phantom seeds 7000..7049 (held out: 8000..8019 and 9000..9019):
- Vessels (`vessel_voxels`): a vessel running through or along a ground-glass nodule puts its
  dense voxels in the core and made it part-solid. Dense structures that continue outside the
  nodule lose, inside it, what an opening by their exit radius removes (their course); a solid core
  (or a solid nodule) thicker than the vessel survives the opening and is still counted. A vessel
  thicker than that test allows (over half the nodule's inscribed radius) loses its voxels inside
  the nodule when they lie off its centre (`ECCENTRIC_SHARE`, tuned on seeds 7000..7049 and
  12000..12039: 0.35 ... 0.5 gave the same types, 0.65 one error more); a core is central.
- Ground-glass rim (`ground_glass_rim`): a part-solid nodule of about 9 mm with a large core has a
  core share and a volume ratio like a solid one at 1.5 x 1.5 x 3 mm. The thickness of its layer in
  the ground-glass band (-700 ... -450 HU) around its tissue tells them apart: at most 0.88 mm for
  solid phantoms of 6 mm or more (their partial-volume edge), 0.98 mm or more for part-solid ones.

Since the rim and the ratio tell a ground-glass component apart, the core share need not: `SOLID_SHARE`
was 0.74 until 2026-12. The core is that of the first mask (above -750 HU), and a small solid nodule in a
haze of close vessels takes the haze's partial volume into that mask, so its core share fell to 0.54 ... 0.73
(three solid nodules of 6.3-6.9 mm on full-size phantoms 14000..15039, typed part-solid and then measured at
the ground-glass threshold: +64 ... +177 % volume) while their rims stayed 0.55 ... 0.91 mm; every
part-solid nodule >= 6 mm of those phantoms has a rim of 1.39 mm or more, and those with a core share above
0.5 (0.53 ... 0.61) rims of 1.47 mm or more. At 0.5: full size 14000..14039 type 121 -> 122 of 124 and
15000..15039 110 -> 112 of 112; small 12000..12039 one more solid nodule right (112 -> 113 of 115), 13000..13019
one ground-glass nodule on a vessel, already typed part-solid, now solid; 7000..7049, 9000..9019, 10000..10019
unchanged. 0.5 -> 0.45 (2026-12-04, twenty-fifth session): where the packaged detector puts it (8.3 mm, centre
0.8 mm off), full-size 15032:2 (6.6 mm solid in a haze of vessels) has a core share of 0.47 with a solid rim
(0.91 mm): typed part-solid, +159 %; at 0.45 solid, +16 %. Every other type and volume of the 590 full-size
nodules >= 6 mm (painted centres and the detector's) and of the small sets 9000.., 10000.., 13000.. (both) stayed.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from inference.characterize.model import AttenuationType
from inference.characterize.segment.masks import largest_component, opening_mm, parts_reaching_out

SOLID_THRESHOLD_HU = -300.0
SOLID_SHARE = 0.45  # core share above -300 HU at or above which the nodule is solid...
SOLID_MAX_RATIO = 3.0  # ...unless its volume above -750 HU is over 3x that above -300 HU (a ground-glass rim)
SOLID_MAX_RIM = 0.93  # ...or a ground-glass layer thicker than 0.93 mm lies around its tissue (a rim)
GGO_BAND_HU = (-700.0, -450.0)  # ground glass (phantoms -650 ... -500 HU), away from lung and tissue
# ground_glass_rim: strands that a ball of this radius (mm) does not fit are not a rim. A spiculated solid 6.4 mm
# nodule on 2 mm slices (full-size 17005:0) measured a rim of 0.945 mm from its spicules, typed part-solid and
# +23 % volume; with the opening 0.85 mm (at its painted diameter), solid, -3 %. Full size 14000..19029 no other
# type changed (at 1 mm a 6 mm ground-glass nodule in a bundle lost its rim and read solid); small sets (1.4 mm
# pixels, where the ball holds one voxel) unchanged. 17005:0 now falls under SPICULATED_RIM_STRAND_MM below
RIM_STRAND_MM = 0.75
# ...and in a nodule whose margin has spicules (margin.has_spicules), this: a spiculated solid 6.4 mm nodule
# on 0.625 mm slices (full-size 21016:1, read once before this change) has spicules up to 2 mm thick at their
# root, whose partial volume the 0.75 mm ball keeps: rim 1.19 mm, part-solid, +32 %; at 1.25 mm solid, -5 % (at
# 1.0 mm still part-solid). No other type or volume changed: 590 full size (both centres), 164 more full size
# (20000..20019, 21000..21039), 471 small (7000.., 8000.., 9000.., 10000.., 12000.., 13000..), among them 93
# part-solid nodules called spiculated, whose rims stayed (2026-12-04, twenty-sixth session)
SPICULATED_RIM_STRAND_MM = 1.25
# below this (and no measurable solid part) it is ground-glass. 0.03 until 2026-12-04: full-size 14005:2, a 7.5 mm
# part-solid nodule with a 2.45 mm core on 0.625 mm slices, has 0.022 (0.018 where the detector puts it) and read
# ground glass. Of the 590 full-size nodules >= 6 mm, ground-glass ones have 0.008 or less (at both centres), of
# the small sets 7000..7049 and 12000..12039 0; part-solid ones 0.06 or more but 14005:0 and 14005:2. 0.012 sits
# between; no other type changed, there or on 9000.., 10000.., 13000..
# (docs/characterization.md, "Twenty-fifth session").
GGO_SHARE = 0.012
MIN_SOLID_COMPONENT_MM = 1.5  # a solid part smaller than this cannot be measured (under a pixel or two)
_RIM_PX = 1.0
VESSEL_CLEARANCE_PX = 1  # a dense structure must reach this many voxels beyond the nodule to be a vessel...
VESSEL_MIN_OUTSIDE_VOXELS = 3  # ...with at least this many voxels there (not one noisy voxel)
# a "vessel" thicker than half the nodule's inscribed radius (+ half a pixel for the pixelation of both
# radii: a 1.1 mm vessel on a 6 mm nodule at 1.5 mm pixels) is left in: not told apart by shape
VESSEL_MAX_RADIUS = 0.5
VESSEL_SLACK_PX = 0.5
ECCENTRIC_SHARE = 0.45  # a thick vessel's voxels this far off-centre are its course, not a core (_eccentric_course)
_CENTRAL_AREA = 0.6


def core(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Inner voxels on the central slices (rim and cap partial volume excluded)."""
    areas = mask.sum(axis=(1, 2))
    central = areas >= _CENTRAL_AREA * areas.max()
    out = np.zeros_like(mask)
    px = float(spacing[1:].mean())
    for z in np.flatnonzero(central):
        depth = ndimage.distance_transform_edt(mask[z], sampling=spacing[1:])
        inner = depth > _RIM_PX * px
        out[z] = inner if inner.any() else mask[z]
    return out


def vessel_voxels(smooth: np.ndarray, mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Dense voxels of the nodule that belong to a vessel running through or along it.

    A dense (> -300 HU) structure that continues outside the nodule is a vessel (or the wall); its
    radius is the largest depth of its part outside. Inside the nodule, what an opening by a ball
    a little larger than that radius removes is the vessel's course; what survives is thicker than
    the vessel: a solid core (or all of a solid nodule), which stays.
    """
    dense = smooth > SOLID_THRESHOLD_HU
    out = np.zeros_like(mask)
    if not (dense & mask).any():
        return out
    around = ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3), bool), iterations=VESSEL_CLEARANCE_PX)
    px = float(spacing[1:].mean())
    inscribed = float(ndimage.distance_transform_edt(mask, sampling=spacing).max())
    for comp, outside in parts_reaching_out(dense, mask, around, VESSEL_MIN_OUTSIDE_VOXELS):
        depth = ndimage.distance_transform_edt(comp, sampling=spacing)
        # its radius where it leaves the nodule (farther on it may join a larger trunk)
        exit_ring = outside & ndimage.binary_dilation(around, structure=np.ones((3, 3, 3), bool), iterations=2)
        rho = float(depth[exit_ring if exit_ring.any() else outside].max()) + 0.5 * px
        if rho > VESSEL_MAX_RADIUS * inscribed + VESSEL_SLACK_PX * px:
            out |= _eccentric_course(comp & mask, mask, spacing)
            continue
        eroded = depth > rho
        body = ndimage.distance_transform_edt(~eroded, sampling=spacing) <= rho if eroded.any() else eroded
        out |= comp & mask & ~body
    return out


def _eccentric_course(inside: np.ndarray, mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The nodule's voxels of a vessel too thick for the opening test, when they lie off its centre.

    A solid component is central in the nodule (it grows from the middle out); a thick vessel
    passing a ground-glass nodule only crosses its edge. When the dense voxels of such a structure
    inside the nodule have their centroid more than ECCENTRIC_SHARE x the nodule's radius from the
    nodule's centroid, they are its course; a central core fused with the vessel keeps them.
    """
    m = np.argwhere(mask) * spacing
    centre = m.mean(axis=0)
    radius = float(np.sqrt(((m - centre) ** 2).sum(axis=1)).max())
    pts = np.argwhere(inside) * spacing
    if not len(pts) or radius == 0:
        return np.zeros_like(inside)
    offset = float(np.linalg.norm(pts.mean(axis=0) - centre))
    return inside.copy() if offset > ECCENTRIC_SHARE * radius else np.zeros_like(inside)


def solid_share(smooth: np.ndarray, mask: np.ndarray, spacing: np.ndarray, near_wall: np.ndarray | None = None,
                vessels: np.ndarray | None = None) -> float:
    """Share of the core above -300 HU; voxels next to the chest wall (its partial volume) and the
    course of vessels through the nodule are left out (as long as some core remains)."""
    c = core(mask, spacing)
    for exclude in (near_wall, vessels):
        if exclude is not None and (c & ~exclude).any():
            c &= ~exclude
    return float((smooth[c] > SOLID_THRESHOLD_HU).mean()) if c.any() else 0.0


def volume_ratio(smooth: np.ndarray, mask: np.ndarray) -> float:
    """Volume above -750 HU over volume above the solid threshold (inf when nothing is solid)."""
    solid = int((mask & (smooth > SOLID_THRESHOLD_HU)).sum())
    return float(mask.sum()) / solid if solid else float("inf")


def ground_glass_rim(smooth: np.ndarray, mask: np.ndarray, spacing: np.ndarray, spiculated: bool = False) -> float:
    """Thickness (mm) of the ground-glass layer around the nodule's soft tissue: the volume of its
    voxels in the ground-glass band over the surface of its tissue (> -200 HU, taken as a sphere).

    The partial-volume edge of a solid nodule spreads its voxels evenly over every HU between lung
    and tissue, so a 250 HU band holds a thin layer of them (about a voxel's share, whatever the
    nodule's size: 0.9 mm or less on 1.5 x 1.5 x 3 mm phantoms of 6 mm or more); a real
    ground-glass rim piles up in the band and is thicker (1 mm or more on the same phantoms).
    Thin strands (spicules, a vessel's stub) are their partial volume all through, band voxels without a rim:
    the band is counted on the mask opened by a ball of RIM_STRAND_MM (SPICULATED_RIM_STRAND_MM for a `spiculated`
    nodule), which they do not hold and which a rim round the tissue, part of the nodule's body, does.
    """
    opened = opening_mm(mask, SPICULATED_RIM_STRAND_MM if spiculated else RIM_STRAND_MM, spacing)
    values = smooth[opened if opened.any() else mask]
    voxel = float(np.prod(spacing))
    band = float(((values > GGO_BAND_HU[0]) & (values <= GGO_BAND_HU[1])).sum()) * voxel
    tissue = float((values > -200.0).sum()) * voxel
    if tissue == 0:
        return float("inf")
    return band / ((36 * np.pi) ** (1 / 3) * tissue ** (2 / 3))


def is_solid(share: float, ratio: float, rim: float = 0.0) -> bool:
    return share >= SOLID_SHARE and ratio <= SOLID_MAX_RATIO and rim <= SOLID_MAX_RIM


def classify(share: float, ratio: float, solid_component_mm: float, rim: float = 0.0) -> AttenuationType:
    if is_solid(share, ratio, rim):
        return "solid"
    if share < GGO_SHARE or solid_component_mm < MIN_SOLID_COMPONENT_MM:
        return "ground_glass"
    return "part_solid"


def solid_component(smooth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Voxels of the nodule above the solid threshold, largest connected part (spicules excluded)."""
    return largest_component(mask & (smooth > SOLID_THRESHOLD_HU), np.ones((3, 3, 3), bool))
