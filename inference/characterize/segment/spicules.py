"""The spicules of a segmented nodule (`count_spicules`), which make its margin spiculated (margin.py).

A spicule is a part of the nodule that reaches at least SPICULE_MIN_LENGTH_MM beyond a shell of SPICULE_SHELL_FACTOR x
its own outline, ends freely in the lung, and is tissue: its voxels stand clear of the lung's noise.
- Its own outline is the ellipsoid of the mask's second moments scaled to its median ray radius: an elongated nodule is
  no spiculated one, and the few rays a spicule lengthens leave the median alone. A lobule bulges less than the shell.
- A spicule, thinner than a voxel at its tip, is measured by how far it reaches, not how thick it is (an opening by a
  ball, an earlier test, missed most of them at 3 mm slices).
- It ends freely: it touches no other candidate voxel of tissue (a vessel or the wall runs on, a spicule ends). On a
  noisy scan the smoothing lifts clumps of noise over the candidates' threshold beside a spicule's tip; they are no
  structure (their raw HU averages under SPICULE_MIN_CONTRAST_SD x the lung's noise over its level, `_tissue`), and a
  spicule that touches only them still ends freely.
- The segmentation does not keep all of them (`faint_strands`): a spicule thinner than a voxel falls below the
  candidates' threshold once smoothed, and one whose base is thick may go to a neighbour's basin in the split. What
  stands clear of the lung's noise on the raw HU, joined to the nodule and ending within STRAND_REACH of it, is
  counted with the nodule's mask.
- Noise is not tissue (SPICULE_MIN_CONTRAST_SD): the smoothing joins clumps of noise to the nodule; at 70 HU of noise
  they reach as far as spicules and end freely, and 131 of 1190 smooth or lobulated phantom nodules >= 6 mm were
  called spiculated. A spicule's voxels lie, on average, at least SPICULE_MIN_CONTRAST_SD x the lung's noise above
  the lung's level.

Tuning (docs/characterization.md, "Forty-ninth session"; the crop harness, 1506 nodules >= 6 mm; spiculated found /
smooth or lobulated called spiculated):
- shell and reach: phantom seeds 7000..7049 small (2.5-3 mm slices; shell 1.1/1.15/1.2 x, reach 0.8/1.0/1.5 mm):
  spiculated nodules >= 6 mm found 7/31 -> 26/31, smooth or lobulated called spiculated 0/118 -> 1/118; at full size
  (15000..15019) 7/8 before and after, none of the 48 others.
- faint strands, at the phantoms' noise (20 HU): 279 -> 287 of 316 found, 16 -> 17 of 1190 called spiculated. Taking
  every candidate the split gave away (not only what stands clear on the raw HU) found the same 8 and called 4 more
  smooth nodules spiculated (vessels' partial-volume halos).
- the contrast, at 70 HU of noise: 241 -> 232 found, 131 -> 8 called spiculated, with the strands (4 x: 229 and 4);
  each nodule's most contrasted part beyond the shell averages 3.8 x the noise or more where it is painted with
  spicules (5th percentile), 2.2 ... 3.2 x where it is painted without (5th ... 90th). At 40 HU 280 -> 284 found, 21 -> 15 called spiculated; at 20 HU
  the test changes nothing.
- clumps of noise do not stop a spicule (fiftieth session): at 70 HU 232 -> 258 found, 8 -> 11 called spiculated (the
  category by diameter 1314 -> 1338 of 1506); at 20 HU 287 -> 288 and 17; at 40 HU 284 -> 292 and 15.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from inference.characterize.segment.lung import LungNoise
from inference.characterize.segment.masks import distance2, equivalent_radius, parts_touching
from inference.characterize.segment.rays import RAYS, ray_radii

SPICULE_SHELL_FACTOR = 1.1
SPICULE_MIN_LENGTH_MM = 1.0
SPICULE_MIN_CONTRAST_SD = 3.5  # a spicule's mean HU over the lung's level, in the lung's noise
# faint strands: raw HU above the lung's level by this many times its noise, and at least this many HU (a voxel a
# fifth filled by soft tissue; at the phantoms' 20 HU of noise the HU floor decides)...
STRAND_NOISE_SD = 5.0
STRAND_MIN_CONTRAST_HU = 200.0
# ...and lying wholly within this reach of the nodule's centre: a x R + b mm, R the radius of a sphere of its volume
# (the phantoms' spicules end within 2 R + 2 mm; a vessel runs on)
STRAND_REACH = (2.2, 2.5)


def faint_strands(hu: np.ndarray, mask: np.ndarray, noise: LungNoise | None, spacing: np.ndarray) -> np.ndarray:
    """The voxels outside the nodule's `mask` whose raw `hu` stands clear of the lung's `noise` (STRAND_NOISE_SD,
    STRAND_MIN_CONTRAST_HU), in pieces that touch the mask and lie wholly within STRAND_REACH of its centre: spicules
    the segmentation did not keep (see the module docstring). A piece may hold candidates the split gave to a
    neighbour."""
    out = np.zeros_like(mask)
    if noise is None or not mask.any():
        return out
    faint = (hu > noise.level + max(STRAND_MIN_CONTRAST_HU, STRAND_NOISE_SD * noise.sd)) & ~mask
    labels, n = ndimage.label(parts_touching(faint, mask), structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return out
    reach = STRAND_REACH[0] * equivalent_radius(mask, spacing) + STRAND_REACH[1]
    far2 = ndimage.maximum(distance2(mask.shape, np.argwhere(mask).mean(axis=0), spacing), labels,
                           index=np.arange(1, n + 1))
    return np.concatenate([[False], np.asarray(far2) <= reach ** 2])[labels]


def count_spicules(mask: np.ndarray, seed: np.ndarray, spacing: np.ndarray, hu: np.ndarray | None = None,
                   noise: LungNoise | None = None, strands: np.ndarray | None = None) -> int:
    """The number of spicules of the nodule's `mask` (see the module docstring); `seed`: the candidates, the nodule's
    and other structures'; `strands` (`faint_strands`) count with the mask; with `hu` and `noise` a spicule must stand
    clear of the lung's noise."""
    if mask.sum() < 8:
        return 0
    pts = np.argwhere(mask)
    centre = pts.mean(axis=0)
    # second moments in mm, plus a voxel's own (a one-slice nodule still has a thickness)
    inverse = np.linalg.inv(np.cov((pts * spacing).T) + np.diag(spacing ** 2 / 12.0))

    def outline(directions: np.ndarray) -> np.ndarray:
        """The moments' ellipsoid's radius along unit `directions` (mm), up to one scale."""
        return 1.0 / np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", directions, inverse, directions), 1e-12))

    # a hole inside the mask (a cavity round the centre, a bubble lucency) is no edge: from a cavity every ray left the
    # mask at once, the shell was 1.1 x 0 mm, and a thick-walled cavitary nodule's wall read as spicules (4X). Only
    # here: the segmentation's own rays (split, vessels) keep the holes, where filling them took lidc-idri-0002's
    # ground glass from 3071 to 2676 mm3 (split.py)
    scale = float(np.median(ray_radii(ndimage.binary_fill_holes(mask), centre, spacing) / outline(RAYS)))
    others = seed & ~mask
    if strands is not None:
        pts = np.argwhere(mask | strands)
        others &= ~strands
    if hu is not None and noise is not None:
        others = _tissue(others, hu, noise)
    offsets = (pts - centre) * spacing
    dist = np.linalg.norm(offsets, axis=1)
    units = offsets / np.maximum(dist, 1e-6)[:, None]
    shell = SPICULE_SHELL_FACTOR * scale * outline(units) + 0.5 * float(spacing[1:].mean())
    beyond = np.zeros_like(mask)
    beyond[tuple(pts[dist > shell].T)] = True
    free = beyond & ~parts_touching(beyond, others)
    labels, n = ndimage.label(free, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return 0
    excess = np.zeros(mask.shape, float)
    excess[tuple(pts.T)] = dist - shell
    index = np.arange(1, n + 1)
    spicule = np.asarray(ndimage.maximum(excess, labels, index=index)) >= SPICULE_MIN_LENGTH_MM
    if hu is not None and noise is not None:
        spicule &= _is_tissue(hu, labels, n, noise)
    return int(spicule.sum())


def _is_tissue(hu: np.ndarray, labels: np.ndarray, n: int, noise: LungNoise) -> np.ndarray:
    """Per labelled part (1..n): whether its raw HU averages SPICULE_MIN_CONTRAST_SD x the lung's noise over the lung's
    level: tissue, not a clump of noise that the smoothing lifted over the candidates' threshold."""
    contrast = np.asarray(ndimage.mean(hu, labels, index=np.arange(1, n + 1))) - noise.level
    return np.asarray(contrast >= SPICULE_MIN_CONTRAST_SD * noise.sd)


def _tissue(parts: np.ndarray, hu: np.ndarray, noise: LungNoise) -> np.ndarray:
    """The connected parts of `parts` that are tissue (`_is_tissue`): a spicule that touches only clumps of noise
    still ends freely."""
    labels, n = ndimage.label(parts, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return parts
    return np.concatenate([[False], _is_tissue(hu, labels, n, noise)])[labels]
