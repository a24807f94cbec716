"""Voxel masks measured in mm: boxes, morphology by balls, connected parts and contact between masks."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import ndimage


def roi_box(
    shape: tuple[int, ...], spacing: np.ndarray, centre: np.ndarray, half_mm: float,
) -> tuple[slice, slice, slice]:
    half = np.ceil(half_mm / spacing).astype(int)
    c = np.rint(centre).astype(int)
    lo = np.maximum(c - half, 0)
    hi = np.minimum(c + half + 1, np.array(shape))
    return (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])), slice(int(lo[2]), int(hi[2])))


def _around(mask: np.ndarray, margin: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of `mask` grown by `margin` voxels per axis, clipped to the array."""
    found = np.argwhere(mask)
    lo = np.maximum(found.min(axis=0) - margin, 0)
    hi = np.minimum(found.max(axis=0) + margin + 1, np.array(mask.shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def opening_mm(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Morphological opening by a ball of `radius_mm` via two distance transforms (fast for big balls).

    Both run on the mask's bounding box grown by a voxel: the same result as on the whole array (a mask voxel's
    nearest background voxel is never farther than that ring, and an opening stays inside the mask), at a
    fraction of the cost in a segmentation's box (half of `characterize_nodule`'s time went to distance transforms).
    """
    if not mask.any():
        return mask.copy()
    box = _around(mask, np.ones(mask.ndim, int))
    eroded = ndimage.distance_transform_edt(mask[box], sampling=spacing) > radius_mm
    out = np.zeros_like(mask)
    if eroded.any():
        out[box] = ndimage.distance_transform_edt(~eroded, sampling=spacing) <= radius_mm
    return out


def dilate_mm(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Dilation by a ball of `radius_mm`, on the mask's bounding box grown by the radius (the same result)."""
    if not mask.any():
        return mask.copy()
    box = _around(mask, np.ceil(radius_mm / np.asarray(spacing, float)).astype(int) + 1)
    out = np.zeros_like(mask)
    out[box] = ndimage.distance_transform_edt(~mask[box], sampling=spacing) <= radius_mm
    return out


def enclosed_in_plane(mask: np.ndarray) -> np.ndarray:
    """What `mask` encloses on each axial slice (its holes there): a ring on a slice, as a reader sees an airway's or
    a cyst's lumen."""
    holes = np.zeros_like(mask)
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        holes[z] = ndimage.binary_fill_holes(mask[z]) & ~mask[z]
    return holes


def on_the_faces(mask: np.ndarray) -> bool:
    """Whether the mask reaches a face of its box (an ROI's): what it holds runs on past the box."""
    return any(np.take(mask, index, axis=axis).any() for axis in range(mask.ndim) for index in (0, -1))


def equivalent_radius(mask: np.ndarray, spacing: np.ndarray) -> float:
    """The radius (mm) of the sphere with the mask's volume."""
    return float((3 * int(mask.sum()) * float(np.prod(spacing)) / (4 * np.pi)) ** (1 / 3))


def offset_in_radii(part: np.ndarray, mask: np.ndarray, spacing: np.ndarray) -> float:
    """How far `part`'s centroid lies from `mask`'s, in `mask`'s equivalent radii (0: central)."""
    offset = (np.argwhere(part).mean(axis=0) - np.argwhere(mask).mean(axis=0)) * spacing
    return float(np.linalg.norm(offset)) / max(equivalent_radius(mask, spacing), 1e-9)


def component_at(mask: np.ndarray, point: np.ndarray, spacing: np.ndarray, search_mm: float) -> np.ndarray:
    """The connected component of `mask` at `point`, or the one nearest to it within `search_mm`."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return np.zeros_like(mask)
    p = np.clip(np.rint(point).astype(int), 0, np.array(mask.shape) - 1)
    label = int(labels[tuple(p)])
    if label == 0:
        coords = np.argwhere(labels > 0)
        d = np.linalg.norm((coords - point) * spacing, axis=1)
        k = int(np.argmin(d))
        if d[k] > search_mm:
            return np.zeros_like(mask)
        label = int(labels[tuple(coords[k])])
    return labels == label


def largest_component(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    """The largest connected part of `mask` (connectivity `structure`, scipy's default when None); the mask
    itself when it has at most one."""
    labels, n = ndimage.label(mask, structure=structure)
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    return np.asarray(labels == int(np.argmax(sizes)) + 1)


def parts_touching(mask: np.ndarray, other: np.ndarray, in_plane: bool = False) -> np.ndarray:
    """The connected parts of `mask` (26-connectivity) that touch `other` (`in_plane`: on the same slice)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return np.zeros_like(mask)
    reach = np.ones((3, 3, 3), bool)
    if in_plane:
        reach[0] = reach[2] = False
    grown = ndimage.binary_dilation(other, structure=reach)
    hit = np.zeros(n + 1, bool)
    hit[np.unique(labels[grown & (labels > 0)])] = True
    hit[0] = False
    return hit[labels]


def distance2(shape: tuple[int, ...], point: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Squared distance (mm2) of every voxel of a box to a point."""
    z, y, x = (np.arange(n, dtype=np.float64) for n in shape)
    return (((z - point[0]) * spacing[0]) ** 2)[:, None, None] + (((y - point[1]) * spacing[1]) ** 2)[None, :, None] \
        + (((x - point[2]) * spacing[2]) ** 2)[None, None, :]


def share_beyond(mask: np.ndarray, point: np.ndarray, spacing: np.ndarray, reach_mm: float) -> float:
    """Share (0..1) of the voxels of `mask` farther than `reach_mm` from `point` (voxel indices); 0 for none."""
    if not mask.any():
        return 0.0
    return float((distance2(mask.shape, point, spacing)[mask] > reach_mm**2).mean())


def without_specks(mask: np.ndarray, spacing: np.ndarray, min_mm3: float) -> np.ndarray:
    """`mask` without its connected parts (26-connectivity) smaller than `min_mm3`."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return mask
    keep = np.bincount(labels.ravel(), minlength=n + 1) * float(np.prod(spacing)) >= min_mm3
    keep[0] = False
    return keep[labels]


def parts_reaching_out(
    dense: np.ndarray, mask: np.ndarray, around: np.ndarray, min_outside: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The connected parts (26-neighbourhood) of `dense` that lie partly in `mask` and reach at least `min_outside`
    voxels beyond `around` (the mask grown by a clearance): a structure that continues outside the nodule is a
    neighbour's (a vessel, bone), not the nodule's. Yields (the part, its voxels beyond `around`)."""
    labels, _ = ndimage.label(dense, structure=np.ones((3, 3, 3), bool))
    for label in np.unique(labels[dense & mask]):
        part = labels == label
        outside = part & ~around
        if int(outside.sum()) >= min_outside:
            yield part, outside


def mask_surface(mask: np.ndarray) -> np.ndarray:
    """The mask's surface voxels: those with a 26-neighbour outside it (the box's faces are no surface)."""
    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3, 3), bool), border_value=1)


def surface_share(mask: np.ndarray, other: np.ndarray) -> float:
    """Share (0..1) of the mask's surface voxels (`mask_surface`) that lie in `other`."""
    surface = mask_surface(mask)
    return float((surface & other).sum()) / max(1, int(surface.sum()))


def wall_contact_share(mask: np.ndarray, wall: np.ndarray) -> float:
    """Share of the mask's surface voxels next to the wall (26-neighbours)."""
    return surface_share(mask, ndimage.binary_dilation(wall, structure=np.ones((3, 3, 3), bool)))
