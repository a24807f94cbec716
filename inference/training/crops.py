"""Crops and targets: what the detector trains on.

Detector targets follow DeepLung: on the stride-4 grid, per anchor (5, 10, 20 mm), an anchor is
positive when its cube IoU with a nodule exceeds 0.5 (and the best anchor of each nodule always
is), negative when its IoU with every nodule is below 0.02, ignored otherwise. `CropSampler` draws
training crops around nodules (hard ones more often when asked, `nodule_hardness`) or at random
lung voxels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from inference.nets.dpn3d import ANCHORS_MM, STRIDE
from inference.training.cases import Case

PAD_VALUE = 170
POS_IOU = 0.5
NEG_IOU = 0.02


def _crop(image: np.ndarray, start: np.ndarray, size: int) -> np.ndarray:
    out = np.full((size,) * 3, PAD_VALUE, np.uint8)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + size, image.shape)
    if np.all(hi > lo):
        out[tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))] = image[tuple(slice(a, b) for a, b in zip(lo, hi))]
    return out


def crop_coord(start: np.ndarray, size: int, image_shape: Sequence[int]) -> np.ndarray:
    """The coordinate input for a crop: its slice of make_coord over the stride-4-padded image."""
    n4 = [max(2, -(-s // STRIDE)) for s in image_shape]
    axes = [(-0.5 + (st / STRIDE + np.arange(size // STRIDE)) / (n - 1)).astype(np.float32) for st, n in zip(start, n4)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=0)


def _cube_iou(a_centre: np.ndarray, a_side: np.ndarray, b_centre: np.ndarray, b_side: float) -> np.ndarray:
    lo = np.maximum(a_centre - a_side[..., None] / 2, b_centre - b_side / 2)
    hi = np.minimum(a_centre + a_side[..., None] / 2, b_centre + b_side / 2)
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    return inter / (a_side**3 + b_side**3 - inter)


def make_targets(nodules: np.ndarray, size: int, anchors: Sequence[float] = ANCHORS_MM) -> np.ndarray:
    """(S/4, S/4, S/4, A, 5) float32: field 0 is 1 positive / 0 negative / -1 ignore, then dz, dy, dx, dd.

    `nodules` (N, 4) z, y, x, diameter in crop voxel coordinates.
    """
    g = size // STRIDE
    a = np.asarray(anchors, float)
    centres = (STRIDE - 1) / 2 + STRIDE * np.stack(np.meshgrid(*[np.arange(g)] * 3, indexing="ij"), -1)  # (g,g,g,3)
    target = np.zeros((g, g, g, len(a), 5), np.float32)
    best_iou = np.zeros((g, g, g, len(a)))
    grid = np.broadcast_to(centres[..., None, :], (g, g, g, len(a), 3))
    sides = np.broadcast_to(a, (g, g, g, len(a)))
    for z, y, x, d in nodules:
        if d <= 0:
            continue
        c = np.array([z, y, x])
        iou = _cube_iou(grid, sides, c, d)
        pos = iou > POS_IOU
        best = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[best] > 0:
            pos[best] = True
        for idx in zip(*np.nonzero(pos)):
            anchor = a[idx[3]]
            target[idx] = [1.0, *((c - grid[idx]) / anchor), math.log(d / anchor)]
        best_iou = np.maximum(best_iou, np.where(pos, 0.0, iou))
    ignore = (target[..., 0] == 0) & (best_iou >= NEG_IOU)
    target[..., 0][ignore] = -1.0
    return target


@dataclass
class Sample:
    image: np.ndarray  # (1, S, S, S) float32 normalised
    coord: np.ndarray  # (3, S/4, S/4, S/4)
    target: np.ndarray  # (S/4, S/4, S/4, A, 5)


HARDNESS_KINDS = ("faint", "small", "touching")
# "touching": more than TOUCH_SHARE of a shell 1.5..4 mm outside the nodule is brighter than
# TOUCH_GREY. On phantoms 1000..1039 this marks 78 % of the vessel-attached and 57 % of the pleural
# nodules, and 11 % of the free ones (a small vessel passing close by).
TOUCH_SHELL_MM = (1.5, 4.0)
TOUCH_GREY = 120
TOUCH_SHARE = 0.05


def check_hardness_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """`kinds` as a tuple, or ValueError naming the unknown ones."""
    unknown = sorted(set(kinds) - set(HARDNESS_KINDS))
    if unknown:
        raise ValueError(f"unknown hardness kind(s) {', '.join(unknown)} (known: {', '.join(HARDNESS_KINDS)})")
    return tuple(kinds)


def nodule_hardness(case: Case, index: int, kinds: Sequence[str] = HARDNESS_KINDS) -> float:
    """0..3: of the `kinds`, one point for a faint nodule (mean grey level within 30 of its
    surroundings, as ground-glass ones are), one for a small one (under 8 mm), one for a nodule
    touching a bright structure (a vessel, the pleura). These are the nodules a detector trained
    with uniform sampling missed on held-out phantoms. Measured on the image, so LUNA16 cases are
    graded the same way."""
    z, y, x, d = case.nodules[index]
    r = math.ceil(max(d, d / 2 + TOUCH_SHELL_MM[1])) + 1  # room for both shells
    box = tuple(slice(max(int(round(c)) - r, 0), int(round(c)) + r + 1) for c in (z, y, x))
    sub = case.image[box].astype(np.float32)
    grid = np.stack(np.meshgrid(*[np.arange(b.start, b.start + n) for b, n in zip(box, sub.shape)], indexing="ij"), -1)
    dist = np.linalg.norm(grid - np.array([z, y, x]), axis=-1)
    ball, shell = sub[dist < d / 2], sub[(dist >= d / 2) & (dist < d)]
    faint = ball.size > 0 and shell.size > 0 and float(ball.mean() - shell.mean()) < 30.0
    # just outside the nodule's blurred edge: aerated lung is dark (< 120, about -350 HU), so a
    # bright share there is a vessel, the pleura or the chest wall it sits on
    outside = sub[(dist >= d / 2 + TOUCH_SHELL_MM[0]) & (dist < d / 2 + TOUCH_SHELL_MM[1])]
    touching = outside.size > 0 and float((outside > TOUCH_GREY).mean()) > TOUCH_SHARE
    points = {"faint": faint, "small": d < 8.0, "touching": touching}
    return float(sum(points[kind] for kind in kinds))


class CropSampler:
    """Random training crops: around a nodule with probability `p_positive`, else at a random lung voxel."""

    def __init__(self, cases: Sequence[Case], size: int, p_positive: float = 0.6, flip: bool = True,
                 hard_boost: float = 0.0, hard_kinds: Sequence[str] = HARDNESS_KINDS) -> None:
        if size % 16:
            raise ValueError(f"crop size {size} must be a multiple of 16")
        self.cases = list(cases)
        self.size = size
        self.p_positive = p_positive
        self.flip = flip
        self.positives = [(i, j) for i, c in enumerate(self.cases) for j in range(len(c.nodules))]
        if not self.cases:
            raise ValueError("no training cases")
        hard_kinds = check_hardness_kinds(hard_kinds)
        # hard nodules (faint, small, touching) are drawn 1 + hard_boost times as often per point
        weights = np.array([1.0 + hard_boost * nodule_hardness(self.cases[i], j, hard_kinds) if hard_boost else 1.0
                            for i, j in self.positives])
        self.positive_p = weights / weights.sum() if len(weights) else weights

    def sample(self, rng: np.random.Generator) -> Sample:
        s = self.size
        if self.positives and rng.random() < self.p_positive:
            ci, ni = self.positives[int(rng.choice(len(self.positives), p=self.positive_p))]
            case = self.cases[ci]
            z, y, x, d = case.nodules[ni]
            # keep the nodule's centre at least a radius (or a quarter crop) inside the crop
            room = max(0.0, s / 2 - max(d / 2, s / 8) - 2)
            centre = np.array([z, y, x]) + rng.uniform(-room, room, 3)
        else:
            case = self.cases[int(rng.integers(len(self.cases)))]
            centre = case.lung_points[int(rng.integers(len(case.lung_points)))].astype(float)
        start = np.rint(centre - s / 2).astype(int)
        crop = _crop(case.image, start, s)
        nod = case.nodules.copy()
        nod[:, :3] -= start
        coord = crop_coord(start, s, case.image.shape)
        if self.flip:
            for axis in range(3):
                if rng.random() < 0.5:
                    crop = np.flip(crop, axis)
                    nod[:, axis] = s - 1 - nod[:, axis]
        # only nodules whose centre is in the crop can own an anchor
        inside = np.all((nod[:, :3] >= 0) & (nod[:, :3] <= s - 1), axis=1)
        target = make_targets(nod[inside], s)
        # nodules cut by the edge: never call their anchors negative
        for z, y, x, d in nod[~inside]:
            if np.all((np.array([z, y, x]) > -d / 2) & (np.array([z, y, x]) < s - 1 + d / 2)):
                near = make_targets(np.array([[z, y, x, d]]), s)
                target[..., 0][(near[..., 0] != 0) & (target[..., 0] == 0)] = -1.0
        image = ((np.ascontiguousarray(crop).astype(np.float32) - 128.0) / 128.0)[None]
        return Sample(image, coord, target)
