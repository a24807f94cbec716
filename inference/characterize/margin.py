"""Margin (smooth / lobulated / spiculated, or None: not assessed) from the segmentation's shape.

Features:
- spicules: parts of the nodule that reach at least 1 mm beyond a shell of 1.1 x its own outline
  (its moments' ellipsoid scaled to its median ray radius) and end freely in the lung (`segment.spicules`, which
  also counts spicules the segmentation did not keep and tells them from clumps of noise):
  lobules bulge less than that, vessels and the wall run on and are not counted. Spiculated when at
  least `MIN_SPICULES` (1) is found. On phantom seeds 7000..7049 at 2.5-3 mm slices, 26 of 31
  spiculated nodules of 6 mm or more are found (7 of 31 with the earlier test, protrusions thinner
  than an opening by 0.3 R, which missed spicules whose tips are thinner than a voxel) and 1 of 118
  smooth or lobulated ones is called spiculated; at full size (15000..15019) 7 of 8, no false call.
- lobulation (`undulation`): a lobulated margin undulates, bulges with clefts between them (Fleischner
  glossary, Hansell et al., Radiology 2008); an oval one does not. On each central slice (area at least
  `_CENTRAL_AREA` x the largest) the outline is traced to a fraction of a pixel (the 0.5 level of the lightly
  blurred mask) and its distance from the slice's centroid read at `_ANGLES` angles. An ellipse (1/r^2 = a + b
  cos 2t + c sin 2t, plus first harmonics for an offset) is fitted by least squares on the free part of the
  outline only: where lung lies outside it, not a vessel or the wall (tissue above the boundary threshold
  within a pixel), since contact is no margin. What is left, smoothed over 1/16 of a turn (up to 8 undulations
  per turn, finer than that is pixel noise), is measured as sqrt(2) x its RMS over the free part / the mean
  radius (the amplitude of the undulation as a share of the radius). A slice whose outline is less than
  `MIN_FREE_SHARE` free is not judged; a nodule none of whose central slices can be judged (one lying along a
  vessel) and with no spicule has its margin not assessed (None): it is not called smooth. Lobulated when the
  mean over the judged slices is at least `LOBULATED_MIN`, or `LOBULATED_PIXEL_NOISE` / (the radius in pixels)
  for small outlines: pixelation alone makes a small outline undulate. The cut-offs were tuned on full-size phantom seeds 15000..15019 painted with lobes that meet the
  core in clefts (a generator variant not in the tree: the generator's own lobes are broad convex bumps, see
  docs/characterization.md), between the smooth nodules' highest values (0.026 at 10 mm and more; 0.235 / radius below) and
  the lobulated ones' lowest (0.035; 0.30 / radius). On the phantoms as drawn it calls few lobulated nodules
  lobulated (3 of 40 on the held-out 14000..14039) and 1 of 63 smooth ones.
  Lung-RADS uses the margin in its juxtapleural / perifissural rule (a smooth margin, among others, makes
  a small solid one category 2: a margin not assessed does not) and spiculation for 4X; Brock uses
  spiculation only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import measure

from inference.characterize.model import Margin
from inference.characterize.segment.masks import largest_component

MIN_SPICULES = 1
LOBULATED_MIN = 0.03
LOBULATED_PIXEL_NOISE = 0.26
MIN_FREE_SHARE = 0.5
_CENTRAL_AREA = 0.6
_ANGLES = 128
_SMOOTH_ANGLES = _ANGLES // 16
_BLUR_PX = 0.6
_GRID = np.linspace(-np.pi, np.pi, _ANGLES, endpoint=False)
# an ellipse about its centre is exactly 1/r^2 = a + b cos 2t + c sin 2t (first harmonics: an offset centre);
# fitted on these, an oval leaves nothing
_ELLIPSE_BASIS = np.stack([np.ones_like(_GRID), np.cos(_GRID), np.sin(_GRID), np.cos(2 * _GRID), np.sin(2 * _GRID)], axis=1)


@dataclass(frozen=True)
class Undulation:
    """The outline's undulation (amplitude / radius) and the outline's mean radius in pixels."""

    value: float
    radius_px: float

    @property
    def judged(self) -> bool:
        """False when no central slice had enough free outline to measure (radius_px is then 0)."""
        return self.radius_px > 0

    def lobulated(self) -> bool:
        if not self.judged:
            return False
        return self.value >= max(LOBULATED_MIN, LOBULATED_PIXEL_NOISE / self.radius_px)


def undulation(mask: np.ndarray, smooth_hu: np.ndarray, threshold_hu: float, spacing: np.ndarray) -> Undulation:
    """The mean undulation of the central slices' outlines (see the module's docstring)."""
    areas = mask.sum(axis=(1, 2))
    if areas.max() == 0:
        return Undulation(0.0, 0.0)
    pixel = np.asarray(spacing[1:], float)
    values: list[float] = []
    radii: list[float] = []
    for z in np.flatnonzero(areas >= _CENTRAL_AREA * areas.max()):
        plane = largest_component(ndimage.binary_fill_holes(mask[z]))
        contact = ndimage.binary_dilation((smooth_hu[z] > threshold_hu) & ~plane, structure=np.ones((3, 3), bool))
        found = _slice_undulation(plane, contact, pixel)
        if found is not None:
            values.append(found[0])
            radii.append(found[1] / float(pixel.mean()))
    if not values:
        return Undulation(0.0, 0.0)
    return Undulation(float(np.mean(values)), float(np.mean(radii)))


def _slice_undulation(plane: np.ndarray, contact: np.ndarray, pixel: np.ndarray) -> tuple[float, float] | None:
    """(undulation, mean radius in mm) of one slice's outline, or None when it cannot be judged."""
    profile = _radial_profile(plane, contact, pixel)
    if profile is None:
        return None
    r, free = profile
    if free.mean() < MIN_FREE_SHARE:
        return None
    coef, *_ = np.linalg.lstsq(_ELLIPSE_BASIS[free], 1.0 / np.maximum(r[free], 1e-6) ** 2, rcond=None)
    fitted = 1.0 / np.sqrt(np.maximum(_ELLIPSE_BASIS @ coef, 1e-12))
    residual = np.where(free, r - fitted, 0.0)
    # a moving mean over 1/16 of a turn, of the free samples only (the outline is closed: wrap around)
    window = np.ones(_SMOOTH_ANGLES) / _SMOOTH_ANGLES
    weight = np.convolve(np.tile(free.astype(float), 3), window, mode="same")[_ANGLES:2 * _ANGLES]
    summed = np.convolve(np.tile(residual, 3), window, mode="same")[_ANGLES:2 * _ANGLES]
    smoothed = summed / np.maximum(weight, 1e-9)
    mean_radius = float(fitted[free].mean())
    return float(np.sqrt(2.0) * np.sqrt(np.mean(smoothed[free] ** 2)) / mean_radius), mean_radius


def _radial_profile(plane: np.ndarray, contact: np.ndarray, pixel: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The outline's distance (mm) from the slice's centroid at the `_GRID` angles, and whether the outline is
    free there (not in `contact`); None for a plane too small to trace."""
    if plane.sum() < 8:
        return None
    pad = 3
    contours = measure.find_contours(ndimage.gaussian_filter(np.pad(plane, pad).astype(float), _BLUR_PX), 0.5)
    if not contours:
        return None
    outline = max(contours, key=len) - pad  # (row, col) in pixels, sub-pixel
    nearest = np.clip(np.rint(outline).astype(int), 0, np.array(plane.shape) - 1)
    free_points = ~contact[nearest[:, 0], nearest[:, 1]]
    offset = (outline - np.argwhere(plane).mean(axis=0)) * pixel
    angle = np.arctan2(offset[:, 0], offset[:, 1])
    order = np.argsort(angle)
    angle, radius, free_points = angle[order], np.hypot(offset[order, 0], offset[order, 1]), free_points[order]
    r = np.interp(_GRID, angle, radius, period=2 * np.pi)
    # a grid angle is free when the outline point nearest to it in angle is
    gap = np.abs(np.angle(np.exp(1j * (_GRID[:, None] - angle[None, :]))))
    return r, free_points[np.argmin(gap, axis=1)]


def has_spicules(spicules: int) -> bool:
    """Whether `spicules` (segment.spicules.count_spicules) make the margin spiculated."""
    return spicules >= MIN_SPICULES


def classify_margin(spicules: int, lobulation: Undulation) -> Margin | None:
    """Spiculated, lobulated or smooth; None (not assessed) when no spicule was found and the lobulation
    could not be judged: a margin whose outline is mostly in contact with tissue is not called smooth."""
    if has_spicules(spicules):
        return "spiculated"
    if lobulation.lobulated():
        return "lobulated"
    return "smooth" if lobulation.judged else None
