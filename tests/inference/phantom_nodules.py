"""A phantom's nodule characterised as the pipeline would, beside its truth volume as characterize_eval counts it:
the one helper the characterisation tests share for nodules of the generator's phantoms."""
from __future__ import annotations

import numpy as np

from inference.characterize import characterize_nodule
from inference.characterize.model import NoduleCharacteristics
from inference.phantom import PhantomNodule, phantom_and_anatomy
from inference.training.characterize_eval import DRAWN_LUNG_MARGIN_MM, painted_volumes, truth_region


def phantom_nodule_as_detected(seed: int, index: int, diameter_mm: float | None = None, *,
                               offset_voxels: tuple[float, float, float] = (0.0, 0.0, 0.0), small: bool = False,
                               ) -> tuple[PhantomNodule, NoduleCharacteristics, float]:
    """(nodule `index` of phantom `seed` (full-size; `small`: the small one), what characterize_nodule reads from it at
    its painted centre moved by `offset_voxels` (z, y, x) with `diameter_mm` (None: the painted one) as the detector's
    diameter, its truth volume in mm3: its painted volume inside the lungs, as characterize_eval counts it)."""
    phantom, anatomy, drawn = phantom_and_anatomy(seed, small=small, margin_mm=DRAWN_LUNG_MARGIN_MM)
    nodule = phantom.nodules[index]
    truth, _ = painted_volumes(phantom, truth_region(anatomy, drawn), nodule)
    centre = phantom.world_to_voxel(np.asarray(nodule.center_mm))[0] + np.asarray(offset_voxels, float)
    found = characterize_nodule(phantom.hu, phantom.spacing, centre, diameter_mm or nodule.diameter_mm, None,
                                direction=phantom.direction)
    return nodule, found, truth
