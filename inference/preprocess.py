"""DeepLung preprocessing (docs/architecture.md, "Flow"): lung mask, 1 mm resampling, intensity mapping, crop.

The lung mask is found on a reduced grid (about 1.4 mm in-plane) because the thresholds, component
labelling and convex hulls do not need full resolution, and it keeps the step to a few seconds.
The 10-iteration dilation runs on the 1 mm grid, so it reaches 10 mm as in DeepLung's LUNA data.

Mapping back: preprocessed index p and source voxel index s (both (z, y, x)) relate by
s = (p + box_start) * resolution / spacing; `Preprocessed.to_source_voxel` and
`from_source_voxel` do that.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from inference.volume import Volume

log = logging.getLogger(__name__)

RESOLUTION_MM = 1.0
HU_MIN, HU_MAX = -1200.0, 600.0
PAD_VALUE = 170
BONE_THRESHOLD = 210
MARGIN_LOW_MM, MARGIN_HIGH_MM = 5, 10
_WORK_MM = 1.4  # pixel size the mask is computed at
_MIN_LUNG_ML = 100.0


@dataclass
class Preprocessed:
    image: np.ndarray  # uint8 (z, y, x) at 1 mm, cropped to the lung box
    mask: np.ndarray  # bool, the (undilated) lung mask on the same grid
    box_start: np.ndarray  # (z, y, x) index of image[0, 0, 0] on the full 1 mm grid
    source_spacing: np.ndarray  # (z, y, x) mm of the source volume
    resolution_mm: float
    mask_fallback: bool
    # the lungs found on the working grid, kept so the source-resolution mask needs no second segmentation
    work_lungs: np.ndarray | None = None
    work_factors: np.ndarray | None = None
    source_shape: tuple[int, int, int] | None = None

    def source_lung_mask(self) -> np.ndarray:
        """The same mask as `lung_mask(hu, spacing)` (undilated, no body fallback) at the source resolution."""
        if self.work_lungs is None or self.work_factors is None or self.source_shape is None:
            raise ValueError("this Preprocessed carries no working-grid lung mask")
        return _to_source(self.work_lungs, self.work_factors, self.source_shape)

    def to_source_voxel(self, zyx: np.ndarray) -> np.ndarray:
        """Preprocessed (N, 3) index -> fractional voxel index in the source Volume."""
        zyx = np.asarray(zyx, dtype=np.float64)
        return (zyx + self.box_start) * self.resolution_mm / self.source_spacing

    def from_source_voxel(self, zyx: np.ndarray) -> np.ndarray:
        """Source Volume (N, 3) voxel index -> fractional preprocessed index."""
        zyx = np.asarray(zyx, dtype=np.float64)
        return zyx * self.source_spacing / self.resolution_mm - self.box_start


@dataclass
class _Lungs:
    lungs: np.ndarray  # bool at the working grid
    hull: np.ndarray  # per-slice convex-hull-processed lungs (before dilation)
    factors: np.ndarray  # (z, y, x) source voxels per working voxel
    work_spacing: np.ndarray
    tissue_voxels: int  # voxels above -500 HU on the working grid: the body, less its lungs


def _factors(spacing: np.ndarray) -> np.ndarray:
    return np.maximum(1, np.rint(_WORK_MM / np.asarray(spacing, float))).astype(int)


def _reduce(hu: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Block mean of the source volume (dropping the incomplete last block on each axis), float32."""
    fz, fy, fx = (int(f) for f in factors)
    nz, ny, nx = (s // f for s, f in zip(hu.shape, factors))
    out = np.zeros((nz, ny, nx), np.float32)
    # summing strided views is much faster than a reshape-mean and makes no full-size copy
    for dz in range(fz):
        for dy in range(fy):
            for dx in range(fx):
                out += hu[dz : nz * fz : fz, dy : ny * fy : fy, dx : nx * fx : fx]
    out *= 1.0 / (fz * fy * fx)
    return out


def _segment(hu: np.ndarray, spacing: np.ndarray) -> _Lungs:
    spacing = np.asarray(spacing, float)
    factors = _factors(spacing)
    work_spacing = spacing * factors
    small = _reduce(hu, factors)
    ndimage.gaussian_filter(small, sigma=(0, 1, 1), output=small)
    air = small < -600
    tissue = int(np.count_nonzero(small > -500))
    del small
    labels, n = ndimage.label(air)
    if n == 0:
        empty = np.zeros(air.shape, bool)
        return _Lungs(empty, empty, factors, work_spacing, tissue)
    # air that touches the in-plane border is outside the body (the lungs may touch the top and bottom slice)
    outside = np.unique(np.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(), labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
    sizes[0] = 0
    sizes[outside] = 0
    voxel_ml = float(np.prod(work_spacing)) / 1000.0
    order = np.argsort(sizes)[::-1]
    keep = [int(order[0])] if sizes[order[0]] * voxel_ml >= _MIN_LUNG_ML else []
    # the second lung, unless the two are joined (then the runner-up is bowel or stomach gas)
    if keep and n > 1 and sizes[order[1]] >= 0.15 * sizes[order[0]] and sizes[order[1]] * voxel_ml >= _MIN_LUNG_ML:
        keep.append(int(order[1]))
    lut = np.zeros(n + 1, bool)
    lut[keep] = True
    lungs = lut[labels]
    hull = np.zeros_like(lungs)
    boxes = ndimage.find_objects(labels)
    for label in keep:
        box = boxes[label - 1]
        component = labels[box] == label
        target = hull[box]
        for k in range(component.shape[0]):
            if component[k].any():
                target[k] |= _hull_if_compact(component[k])
    return _Lungs(lungs, hull, factors, work_spacing, tissue)


def _hull_if_compact(plane: np.ndarray) -> np.ndarray:
    """DeepLung's rule: take the convex hull of a lung slice unless it grows the area by more than 1.5x."""
    rows = np.flatnonzero(plane.any(axis=1))
    cols = np.flatnonzero(plane.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = plane[r0:r1, c0:c1]
    if crop.sum() < 3:
        return plane
    points = np.argwhere(crop)
    try:
        vertices = points[ConvexHull(points).vertices]
    except QhullError:  # all pixels on one line: the slice is its own hull
        return plane
    hull = _filled_convex_polygon(vertices, crop.shape)
    if hull.sum() > 1.5 * crop.sum():
        return plane
    out = np.zeros_like(plane)
    out[r0:r1, c0:c1] = hull
    return out


def _filled_convex_polygon(vertices: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The pixels (of an array of `shape`) whose centres lie inside or on the convex polygon of integer
    `vertices` (rows, cols; in hull order, at least three not on one line): the sign of each edge's cross
    product, exact in integers (what skimage.draw.polygon gives for such a polygon, at a fraction of its time)."""
    rows = np.arange(shape[0])[:, None]
    cols = np.arange(shape[1])[None, :]
    following = np.roll(vertices, -1, axis=0)
    # twice the signed area: positive when the vertices run counter-clockwise in (row, col)
    orientation = np.sign(np.sum(vertices[:, 0] * following[:, 1] - following[:, 0] * vertices[:, 1]))
    inside = np.ones((shape[0], shape[1]), bool)
    for (r0, c0), (r1, c1) in zip(vertices.tolist(), following.tolist()):
        inside &= orientation * ((r1 - r0) * (cols - c0) - (c1 - c0) * (rows - r0)) >= 0
    return inside


def _to_source(mask: np.ndarray, factors: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Working-grid mask -> source-resolution mask (each working voxel covers a block of source voxels)."""
    out = np.zeros(shape, bool)
    full = mask
    for axis, f in enumerate(factors):
        full = np.repeat(full, int(f), axis=axis)
    out[: full.shape[0], : full.shape[1], : full.shape[2]] = full
    return out


def lung_mask(hu: np.ndarray, spacing: np.ndarray, *, dilated: bool = False) -> np.ndarray:
    """Bool (z, y, x) lung mask at the source resolution.

    Without `dilated`: the lungs (air < -600 HU after smoothing, not touching the in-plane border,
    the two largest components). With `dilated`: per-slice convex hull where compact, then grown by
    10 mm, the region DeepLung keeps.
    """
    if hu.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {hu.shape}")
    seg = _segment(hu, spacing)
    mask = seg.lungs
    if dilated and mask.any():
        distance = ndimage.distance_transform_edt(~seg.hull, sampling=seg.work_spacing)
        mask = distance <= 10.0
    return _to_source(mask, seg.factors, hu.shape)


def _linear_resample(array: np.ndarray, coords: list[np.ndarray]) -> np.ndarray:
    """Trilinear interpolation of `array` at the outer product of per-axis coordinates (edge-clamped), float32.

    Separable: one axis at a time, each on the crop it needs, so the cost is a few passes over the box.
    """
    lows = [np.clip(np.floor(c).astype(int), 0, n - 1) for c, n in zip(coords, array.shape)]
    lo = [int(l.min()) for l in lows]
    hi = [min(int(l.max()) + 2, n) for l, n in zip(lows, array.shape)]
    out = array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    for axis in (2, 1, 0):  # x first: it shrinks the most in a typical lung box
        c = np.clip(coords[axis], 0, array.shape[axis] - 1) - lo[axis]
        i0 = np.minimum(np.floor(c).astype(int), out.shape[axis] - 1)
        i1 = np.minimum(i0 + 1, out.shape[axis] - 1)
        shape = [1, 1, 1]
        shape[axis] = -1
        w = (c - i0).astype(np.float32).reshape(shape)
        a = np.take(out, i0, axis=axis).astype(np.float32, copy=False)
        b = np.take(out, i1, axis=axis).astype(np.float32, copy=False)
        b -= a
        b *= w
        a += b
        out = a
    return out


def preprocess(volume: Volume) -> Preprocessed:
    """DeepLung input for one volume: uint8 image at 1 mm cropped to the lung box, plus its mask."""
    hu = volume.hu
    spacing = np.asarray(volume.spacing, float)
    seg = _segment(hu, spacing)
    grid_shape = np.rint(np.array(hu.shape) * spacing / RESOLUTION_MM).astype(int)

    lungs, hull, fallback = seg.lungs, seg.hull, False
    voxel_ml = float(np.prod(seg.work_spacing)) / 1000.0
    n_lung = int(np.count_nonzero(lungs))
    if n_lung * voxel_ml < _MIN_LUNG_ML or n_lung < 0.01 * (n_lung + seg.tissue_voxels):
        body = _body(hu, seg.factors)
        log.warning("lung mask empty or too small (%.0f ml); using the body box instead", lungs.sum() * voxel_ml)
        lungs, hull, fallback = body, body, True
        if not body.any():
            lungs = hull = np.ones_like(body)

    # lung box on the 1 mm grid, in source-extent mm
    coords = np.argwhere(lungs)
    lo_mm = coords.min(axis=0) * seg.work_spacing
    hi_mm = (coords.max(axis=0) + 1) * seg.work_spacing
    start = np.maximum(np.floor(lo_mm / RESOLUTION_MM).astype(int) - MARGIN_LOW_MM, 0)
    stop = np.minimum(np.ceil(hi_mm / RESOLUTION_MM).astype(int) + MARGIN_HIGH_MM, grid_shape)
    shape = tuple(int(v) for v in stop - start)

    # 1 mm grid index p -> source index (p + start) * res / spacing
    src = [(np.arange(a, b) * RESOLUTION_MM / sp) for a, b, sp in zip(start, stop, spacing)]
    # a working voxel covers source voxels [i * f, i * f + f): nearest working voxel of each point
    work = [np.clip(np.floor((c + 0.5) / f).astype(int), 0, n - 1) for c, f, n in zip(src, seg.factors, lungs.shape)]
    mask = lungs[np.ix_(*work)]
    hull_1mm = hull[np.ix_(*work)]
    dilated = hull_1mm if fallback else ndimage.binary_dilation(hull_1mm, ndimage.generate_binary_structure(3, 1), iterations=10)

    image = _linear_resample(hu, src)
    # HU -> 0..255 as DeepLung's lumTrans: clip to [-1200, 600], scale linearly
    np.clip(image, HU_MIN, HU_MAX, out=image)
    image -= HU_MIN
    image *= 255.0 / (HU_MAX - HU_MIN)
    out = image.astype(np.uint8)
    del image
    out[~dilated] = PAD_VALUE
    # bone in the ring the dilation added (ribs, spine) would look like nodules at the lung edge
    ring = dilated & ~mask
    out[ring & (out > BONE_THRESHOLD)] = PAD_VALUE
    return Preprocessed(
        image=out, mask=mask, box_start=start.astype(np.int64), source_spacing=spacing,
        resolution_mm=RESOLUTION_MM, mask_fallback=fallback,
        work_lungs=seg.lungs, work_factors=seg.factors, source_shape=(hu.shape[0], hu.shape[1], hu.shape[2]),
    )


def _body(hu: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Body on the working grid: tissue above -500 HU with its holes (the lungs) filled slice by slice."""
    small = _reduce(hu, factors)
    tissue = small > -500
    labels, n = ndimage.label(tissue)
    if n == 0:
        return tissue
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    for k in range(body.shape[0]):
        body[k] = ndimage.binary_fill_holes(body[k])
    return body
