"""Bone that the watershed gave a nodule, taken out again."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from inference.characterize.segment.masks import largest_component, offset_in_radii, parts_reaching_out
from inference.characterize.segment.segmentation import Segmentation

# bone (or a contrast-filled vessel) next to a nodule: denser than any nodule tissue but a calcification
# (phantom calcifications 250-500 HU), and a calcification lies inside its nodule (`drop_bone`)
BONE_HU = 300.0
BONE_MIN_OUTSIDE_VOXELS = 20
# ...unless its part in the nodule is central: its centroid within this share of the nodule's radius (that of a
# sphere of its volume) from the nodule's centroid, as calcification.CENTRAL_OFFSET reads a calcification central.
# A calcified nodule resting on a rib (phantom 19003:0) has its calcification there (0.27); ribs the watershed gave a
# nodule lie along its side (0.75 ... 1.01 on the 590)
CALCIFICATION_CENTRAL_SHARE = 0.5


def drop_bone(seg: Segmentation, spacing: np.ndarray) -> None:
    """Take out of the nodule the bone that the watershed gave it.

    A rib or vertebra lies in the chest wall, which the wall's opening removes; where one runs into the lung
    region as a bar thinner than the opening's ball (the phantom generator draws ribs over its lung label) and a
    nodule lies along it, no neck separates the two and the nodule took a length of it (full-size phantom
    14022:2, an 18 mm part-solid nodule: 728 mm3 of rib, +20 %). Nodule tissue is never that dense but for a
    calcification, and a calcification lies inside its nodule: a structure above BONE_HU that continues
    outside the nodule (BONE_MIN_OUTSIDE_VOXELS beyond its 26-neighbourhood) is the neighbour's, unless its part
    in the nodule is central (CALCIFICATION_CENTRAL_SHARE): a calcification that touches the rib under its
    nodule joins it above BONE_HU (the smoothed HU climb from one to the other without a saddle), and was taken
    for bone (phantom 19003:0, a 7.7 mm calcified nodule on a rib: -22 %, its 41-voxel calcification dropped).
    Its voxels leave the mask; their partial-volume neighbours stay, and the volume counts them as it counts any
    edge next to other structures (cutting a voxel round the bone as well took 2-10 % of five larger nodules).
    """
    dense = seg.smooth > BONE_HU
    if not (dense & seg.mask).any():
        return
    around = ndimage.binary_dilation(seg.mask, structure=np.ones((3, 3, 3), bool))
    bone = np.zeros_like(seg.mask)
    for part, _ in parts_reaching_out(dense, seg.mask, around, BONE_MIN_OUTSIDE_VOXELS):
        if offset_in_radii(part & seg.mask, seg.mask, spacing) > CALCIFICATION_CENTRAL_SHARE:
            bone |= part
    kept = seg.mask & ~bone
    if bone.any() and kept.any():
        seg.mask = largest_component(kept, np.ones((3, 3, 3), bool))
