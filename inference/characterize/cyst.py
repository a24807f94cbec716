"""Cystic airspaces: an air-filled lumen that the lesion's wall encloses (Lung-RADS v2022 "atypical pulmonary cysts").

What v2022 says (Christensen J et al., ACR Lung-RADS v2022: Assessment Categories and Management Recommendations,
CHEST 2024;165:738-753 / J Am Coll Radiol 2024;21:473-488, as summarised in
https://wiki.krxiang.com/notes/lung_rads_for_cyst,
https://community.the-hospitalist.org/content/atypical-pulmonary-cysts-why-care and
https://diagnosticimaging.com/view/seven-takeaways-from-lung-rads-2022-for-ct-lung-cancer-screening):
- a thin-walled unilocular cyst (a uniform wall under 2 mm) is benign and not classified;
- an atypical pulmonary cyst, a unilocular cyst with a wall of 2 mm or more (uniform, asymmetric or focally nodular)
  or any multilocular cyst, is category 4A at baseline, 3 when stable at its 3-month CT, 4B when it grows (in mean
  diameter or wall thickness) or gains loculi or opacity.
A cavity is a gas-filled space within a nodule, mass or consolidation; a cyst is a round circumscribed airspace with a
wall, usually under 2 mm (the Fleischner Society glossary: Hansell DM et al., Radiology 2008;246:697-722). Where the
air is the smaller part the lesion is a nodule with a cavity, which Lung-RADS sizes as a nodule; the node draws that
line where the lumen's diameter is half the lesion's (`CAVITY_LUMEN_SHARE`, its own rule: v2022 gives none).

How it is measured, from the detector's centre and diameter, on the image (not on the nodule's segmentation, which a
thin wall does not hold):
- wall: voxels over `WALL_HU` on the image lightly smoothed in plane; lumen: what the wall encloses on an axial slice
  (2D hole filling, as a reader sees a ring) and is air (`segment.lung.lumen_air_limit_hu`: under -950 HU and 60 HU
  under the lung around it; lung that vessels enclose on one slice is at the lung's level), in parts of
  `MIN_LOCULUS_MM3` or more, each sealed in 3D (its air joins no more than `MAX_LEAK_SHARE` of itself beyond it,
  inside the ROI) and roundish (`MAX_ELONGATION`): an airway is a ring on every slice it crosses, but its air goes on
  where the ring opens, and it is a tube. One part must reach within `NEAR_CENTRE_MM` of the detector's centre: the
  lesion found is the cyst, not a nodule beside a bulla or an airway. Two or more parts: multilocular.
- the wall's thickness on the lumen's central slices (`CENTRAL_SHARE` of its largest section), along `RAYS` rays
  in plane from the lumen's centre: from where a ray last leaves the lumen, the width of the wall's profile at half
  its height over the lung (its full width at half maximum, which a thin wall's partial volume does not widen the
  way a fixed threshold would). A ray whose profile does not come back down within `MAX_WALL_MM` runs into a vessel,
  the pleura or the mediastinum and is not counted; one that finds no wall (`MIN_WALL_CONTRAST_HU`) neither.
- thick-walled: the `THICK_PERCENTILE`th percentile of the rays' thickness is `THICK_WALL_MM` or more (a uniform
  thickening), or `FOCAL_MIN_RAYS` rays are (a nodule on the wall). A vessel passing the wall widens its profile where
  it touches: tissue that runs on from the wall into the lung and is no thicker than a vessel
  (`_vessels_on_the_wall`) is left out of the thickness (its rays still count as the wall seen). A nodule on the wall
  that a vessel feeds stays a thickening where it is over `VESSEL_MAX_RADIUS_MM` deep; a smaller one fed by a vessel
  would be taken for the vessel.
- opacity beside the wall (ground glass, consolidation: a cancer with a cystic airspace) on `OPACITY_MIN_SHARE` of the
  rays makes the cyst `with_opacity`; a thin-walled cyst is one whose wall is seen on `WHOLE_WALL_SHARE` of its rays.
- the lesion's long and short axis and mean diameter: the outline the rays' outer edges draw on the lumen's largest
  section.
Limits: a wall under about 0.5 mm (a bulla's) reads below `WALL_HU` and encloses nothing; a septum as thin does not
separate loculi. Pixels over about 1 mm widen a thin wall's profile: on 1.4 mm pixels a 1 mm wall reads 1.5 mm and
over 2 mm on the diagonal, so it is called thick-walled (the cautious side). No real cyst has been measured: the
rules are shown on spheres (tests/inference/test_cyst.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.characterize.measure import feret
from inference.characterize.model import Axes, Cyst, CystKind
from inference.characterize.segment.lung import lumen_air_limit_hu
from inference.characterize.segment.masks import (
    distance2, enclosed_in_plane, equivalent_radius, on_the_faces, parts_reaching_out, roi_box,
)

WALL_HU = -500.0  # over halfway from aerated lung (-850) to soft tissue (40): a wall voxel
MIN_LOCULUS_MM3 = 8.0  # a lumen of about 2.5 mm across or more
# the detector's centre lies in the lumen or its wall: a nodule beside a bulla is the nodule, graded by its size
NEAR_CENTRE_MM = 2.5
MAX_ELONGATION = 2.0  # a lumen's longest extent over its equivalent sphere's diameter: a 3:1 tube is 2.1
MAX_LEAK_SHARE = 0.3  # air joined to the lumen outside it, over the lumen: more, and the lumen is open (an airway)
CENTRAL_SHARE = 0.8
RAYS = 72
STEP_MM = 0.1
SMOOTH_MM = 0.3  # in plane, against noise; more would widen a thin wall's profile
MAX_WALL_MM = 12.0
MIN_WALL_CONTRAST_HU = 200.0
THICK_WALL_MM = 2.0  # v2022: a wall of 2 mm or more makes a unilocular cyst atypical
THICK_PERCENTILE = 90.0
FOCAL_MIN_RAYS = 3  # ...or this many rays of 2 mm or more: a focal (nodular) thickening
WHOLE_WALL_SHARE = 0.9  # a thin wall is called thin only where this share of its rays found it
CAVITY_LUMEN_SHARE = 0.5
# ground glass or consolidation beside the wall (a cancer with a cystic airspace): the profile's mean from
# OPACITY_GAP_MM past the wall's outer edge over OPACITY_WINDOW_MM stands OPACITY_OVER_LUNG_HU over the lung, on
# OPACITY_MIN_SHARE of the rays (a thin wall's partial volume adds about 30 HU there, 70 HU of noise about 35 HU SD)
OPACITY_GAP_MM = 0.5
OPACITY_WINDOW_MM = 1.5
OPACITY_OVER_LUNG_HU = 150.0
OPACITY_MIN_SHARE = 0.25
MIN_VALID_RAYS = 12
# a vessel passing the wall (`_vessels_on_the_wall`): tissue beyond the wall's median thickness + SHELL_SLACK_MM that
# runs VESSEL_REACH_MM further into the lung and is at most VESSEL_MAX_RADIUS_MM deep near the wall (a 4 mm vessel)
SHELL_SLACK_MM = 1.0
VESSEL_REACH_MM = 6.0
VESSEL_MAX_RADIUS_MM = 2.0
ROI_MARGIN_MM = 8.0


def _in_plane_smoothed(hu: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(hu.astype(np.float32), (0.0, *(SMOOTH_MM / spacing[1:])))


def _sealed_and_round(part: np.ndarray, box: tuple[slice, ...], air_labels: np.ndarray, spacing: np.ndarray) -> bool:
    """A cyst's lumen is sealed by its wall in 3D, and roundish. An airway is a ring on every slice it crosses, but its
    air goes on where the ring opens (a branch, the hilum) or runs out of the ROI, and it is a tube."""
    whole = np.zeros(air_labels.shape, bool)
    whole[box] = part
    touching = np.unique(air_labels[whole])
    air = np.isin(air_labels, touching[touching > 0])
    if on_the_faces(whole) or on_the_faces(air):
        return False
    if (air & ~whole).sum() > MAX_LEAK_SHARE * part.sum():
        return False
    extent = max(float((s.stop - s.start) * d) for s, d in zip(box, spacing))
    return extent <= MAX_ELONGATION * 2.0 * equivalent_radius(part, spacing)


def _lumen(smooth: np.ndarray, spacing: np.ndarray, centre: np.ndarray,
           reach_mm: float) -> tuple[np.ndarray, int, float]:
    """(lumen mask, loculi, lung level) of the air the wall encloses at `centre` (and within `reach_mm` of it, where
    one part lies at it); an empty mask where there is none."""
    wall = smooth > WALL_HU
    holes = enclosed_in_plane(wall)
    outside = ~wall & ~holes
    lung = float(np.median(smooth[outside])) if outside.any() else -850.0
    limit = lumen_air_limit_hu(lung)
    labels, _ = ndimage.label(holes)
    air_labels, _ = ndimage.label(smooth < limit)
    d2 = distance2(smooth.shape, centre, spacing)
    voxel = float(np.prod(spacing))
    lumen = np.zeros_like(holes)
    loculi, at_centre = 0, False
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        part = labels[box] == label
        if part.sum() * voxel < MIN_LOCULUS_MM3 or not (d2[box][part] <= reach_mm**2).any():
            continue
        if float(np.median(smooth[box][part])) > limit or not _sealed_and_round(part, box, air_labels, spacing):
            continue
        lumen[box] |= part
        loculi += 1
        at_centre |= bool((d2[box][part] <= NEAR_CENTRE_MM**2).any())
    return (lumen, loculi, lung) if at_centre else (np.zeros_like(holes), 0, lung)


@dataclass(frozen=True)
class _Ray:
    thickness_mm: float
    outer_yx_mm: np.ndarray
    opacity: bool  # ground glass or consolidation beyond the wall (`OPACITY_OVER_LUNG_HU`)
    run_yx: np.ndarray  # (2, n) pixel indices the wall's run crosses, inner to outer edge

    def crosses(self, vessels: np.ndarray) -> bool:
        """Whether the run crosses a vessel passing the wall (`_vessels_on_the_wall`, on the ray's slice)."""
        return bool(vessels[self.run_yx[0], self.run_yx[1]].any())


def _vessels_on_the_wall(smooth: np.ndarray, lumen: np.ndarray, spacing: np.ndarray, wall_mm: float) -> np.ndarray:
    """Tissue touching the wall's outside that runs on into the lung (`VESSEL_REACH_MM` beyond the wall) and is no
    thicker than a vessel (`VESSEL_MAX_RADIUS_MM` deep where it meets the wall): a vessel passing the cyst, which
    widens the wall's profile where it touches. A nodule on the wall stays near it or is thicker."""
    soft = smooth > WALL_HU
    from_lumen = ndimage.distance_transform_edt(~lumen, sampling=spacing)
    shell = soft & (from_lumen <= wall_mm + SHELL_SLACK_MM)
    near = from_lumen <= wall_mm + SHELL_SLACK_MM + VESSEL_REACH_MM
    on_the_wall = ndimage.binary_dilation(shell, structure=np.ones((3, 3, 3), bool))
    vessels = np.zeros_like(lumen)
    for part, _ in parts_reaching_out(soft & ~shell, on_the_wall, near, 1):
        depth = ndimage.distance_transform_edt(part, sampling=spacing)
        if float(depth[part & near].max()) <= VESSEL_MAX_RADIUS_MM:
            vessels |= part
    return vessels


def _ray(plane: np.ndarray, lumen: np.ndarray, start_yx: np.ndarray, direction: np.ndarray, pixel: np.ndarray,
         lung: float) -> _Ray | None:
    """The wall's thickness along one in-plane ray from the lumen's centre, and where it ends; None where the ray finds
    no wall or runs into another structure."""
    t = np.arange(0.0, MAX_WALL_MM * 3, STEP_MM)
    points = start_yx[:, None] + direction[:, None] * t[None, :] / pixel[:, None]  # pixel indices (y, x)
    inside = (points >= 0).all(axis=0) & (points[0] <= plane.shape[0] - 1) & (points[1] <= plane.shape[1] - 1)
    if not inside.all():
        t, points = t[inside], points[:, inside]
    profile = ndimage.map_coordinates(plane, points, order=1)
    nearest = np.rint(points).astype(int)
    in_lumen = np.flatnonzero(lumen[nearest[0], nearest[1]])
    if in_lumen.size == 0:
        return None
    edge = int(in_lumen[-1])
    window = profile[edge:edge + int(MAX_WALL_MM / STEP_MM)]
    if window.size == 0:
        return None
    top = int(np.argmax(window))
    peak = float(window[top])
    if peak - lung < MIN_WALL_CONTRAST_HU:
        return None
    half = lung + 0.5 * (peak - lung)
    above = profile[edge:] >= half
    rising = np.flatnonzero(above[:top + 1])
    falling = np.flatnonzero(~above[top:])
    if rising.size == 0 or falling.size == 0:
        return None  # never comes back down: another structure beyond the wall
    inner = edge + int(rising[0])
    outer = edge + top + int(falling[0])
    thickness = (outer - inner) * STEP_MM
    if thickness >= MAX_WALL_MM:
        return None
    beyond = profile[outer + int(OPACITY_GAP_MM / STEP_MM):outer + int((OPACITY_GAP_MM + OPACITY_WINDOW_MM) / STEP_MM)]
    opacity = beyond.size > 0 and float(beyond.mean()) >= lung + OPACITY_OVER_LUNG_HU
    return _Ray(thickness, points[:, outer] * pixel, opacity, nearest[:, inner:outer + 1])


def _rays(smooth: np.ndarray, lumen: np.ndarray, slices: np.ndarray, pixel: np.ndarray,
          lung: float) -> list[tuple[int, _Ray]]:
    """(slice, ray) of every ray that found the wall on `slices`, from each slice's lumen centre."""
    angles = np.linspace(0.0, 2 * np.pi, RAYS, endpoint=False)
    directions = np.stack([np.sin(angles), np.cos(angles)])
    found: list[tuple[int, _Ray]] = []
    for z in slices:
        start = np.argwhere(lumen[z]).mean(axis=0)
        for k in range(RAYS):
            ray = _ray(smooth[z], lumen[z], start, directions[:, k], pixel, lung)
            if ray is not None:
                found.append((int(z), ray))
    return found


def cystic_airspace(hu: np.ndarray, spacing_zyx: np.ndarray, centre_zyx: np.ndarray, diameter_mm: float) -> Cyst | None:
    """The air-filled lumen of a cyst or cavity at a detected lesion (`centre_zyx` in voxels, the detector's
    `diameter_mm`), measured on `hu`; None where the lesion encloses no air."""
    spacing = np.asarray(spacing_zyx, float)
    box = roi_box(hu.shape, spacing, np.asarray(centre_zyx, float), 0.75 * diameter_mm + ROI_MARGIN_MM)
    smooth = _in_plane_smoothed(hu[box], spacing)
    centre = np.asarray(centre_zyx, float) - np.array([s.start for s in box])
    lumen, loculi, lung = _lumen(smooth, spacing, centre, max(diameter_mm / 2, NEAR_CENTRE_MM))
    if loculi == 0:
        return None
    areas = lumen.sum(axis=(1, 2))
    largest = int(np.argmax(areas))
    pixel = spacing[1:]
    central = np.flatnonzero(areas >= CENTRAL_SHARE * areas[largest])
    first = _rays(smooth, lumen, central, pixel, lung)
    if len(first) < MIN_VALID_RAYS:
        return None
    vessels = _vessels_on_the_wall(smooth, lumen, spacing, float(np.median([r.thickness_mm for _, r in first])))
    rays = [(z, r) for z, r in first if not r.crosses(vessels[z])]  # the wall's own thickness: vessels left out
    thicknesses = [r.thickness_mm for _, r in rays]
    opacities = sum(r.opacity for _, r in rays)
    outline = [r.outer_yx_mm for z, r in first if z == largest]  # the lesion's outline, vessels' rays and all
    if len(thicknesses) < MIN_VALID_RAYS or len(outline) < 3:
        return None
    long_mm, short_mm = feret(np.array(outline), float(pixel.mean()))
    axes = Axes(long_mm=round(long_mm, 1), short_mm=round(short_mm, 1), mean_mm=round((long_mm + short_mm) / 2, 1),
                slice_index=int(largest + box[0].start))
    rays_tried = RAYS * len(central)
    lumen_diameter = 2.0 * float(np.sqrt(areas[largest] * np.prod(pixel) / np.pi))
    wall = np.array(thicknesses)
    share = len(first) / rays_tried  # a ray across a vessel on the wall saw the wall: nothing thicker hides there
    opacity = opacities / len(thicknesses)
    return Cyst(kind=_kind(loculi, lumen_diameter, axes.mean_mm, wall, share, opacity), loculi=loculi,
                lumen_mm3=round(float(lumen.sum() * np.prod(spacing)), 1), lumen_diameter_mm=round(lumen_diameter, 1),
                wall_median_mm=round(float(np.median(wall)), 2),
                wall_p90_mm=round(float(np.percentile(wall, THICK_PERCENTILE)), 2),
                wall_max_mm=round(float(wall.max()), 2), wall_share=round(share, 3), opacity_share=round(opacity, 3),
                axes=axes)


def _kind(loculi: int, lumen_diameter_mm: float, lesion_mm: float, wall_mm: np.ndarray, share: float,
          opacity: float) -> CystKind:
    if lumen_diameter_mm < CAVITY_LUMEN_SHARE * lesion_mm:
        return "cavity"
    if opacity >= OPACITY_MIN_SHARE:
        return "with_opacity"
    if loculi >= 2:
        return "multilocular"
    if lumen_diameter_mm < CAVITY_LUMEN_SHARE * lesion_mm:
        return "cavity"
    thick = wall_mm >= THICK_WALL_MM
    if np.percentile(wall_mm, THICK_PERCENTILE) >= THICK_WALL_MM or int(thick.sum()) >= FOCAL_MIN_RAYS:
        return "thick_walled"
    return "thin_walled" if share >= WHOLE_WALL_SHARE else "thin_walled_in_part"
