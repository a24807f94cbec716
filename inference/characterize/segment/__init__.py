"""Nodule segmentation in a local region of interest around the detector's centre.

Method (all distances in mm, so anisotropic voxels are handled by `sampling`):
1. ROI: a box of half-size 2 R + 8 mm around the centre (R = detector diameter / 2), enough for the
   nodule, its spicules (up to about 2 R + 2 mm from the centre) and some parenchyma around it.
2. Candidate voxels: lightly smoothed HU > -750 (`SEED_THRESHOLD_HU`). Ground-glass opacity is
   roughly -750 ... -300 HU and aerated lung about -950 ... -800 HU, so -750 keeps ground-glass rims
   while excluding normal parenchyma (Fleischner glossary, Hansell et al., Radiology 2008: GGO is
   hazy increased attenuation that does not obscure vessels; the HU band is the one used in the
   quantitative subsolid-nodule literature, not a single primary source checked here). On the
   phantoms the lung is -860 +- 20 HU and ground glass -650 ... -500 HU.
3. Chest wall / mediastinum ("cut at the pleura"): whatever survives a morphological opening with a
   ball larger than the nodule (radius 0.6 D + 1.5 mm) cannot be the nodule. (Cutting at the lung
   mask closed over the nodule's bite was tried and lost more of juxtapleural nodules on phantoms.)
4. Vessels: a marker-controlled watershed on the distance map (`split.split_from_neighbours`) cuts the nodule from the
   vessels and the wall at the narrowest neck between them; spicules, which end near the nodule and
   taper outwards, stay with it. Where there is no neck (a vessel as thick as the nodule, or running
   through it), a second pass with a shape prior (`_envelope_pass`) cuts dense structures that run
   on into a vessel at the nodule's own radius, measured by rays from its centre; a solid nodule's spicules (thin
   dense strands that reach no vessel tissue) stay with it, through both passes and the stub cut (`_drop_stubs`).
   An airway's wall of ground-glass density beside the nodule (`airway_walls`: a ring of candidates round air on a
   slice) is marked as another structure beyond the nodule's radius in that second pass.
5. Partial volume: the final boundary is re-thresholded half-way between the local parenchyma HU and
   the nodule's own level (its solid HU for solid nodules, its ground-glass HU otherwise), the
   half-maximum rule that makes a voxel count when at least half of it is nodule.
6. Vessel stub (`trim_vessels`, after step 5): a vessel nearly as thick as the nodule still leaves a
   layer of itself on the nodule; what lies beyond 1.1 x the nodule's base radius and touches tissue
   outside it on the same slice is cut (never more than half of the nodule; near the wall only where the
   nodule touches it at a point, and not the wall itself).
   A vessel running along the nodule leaves a layer on it within that reach (`cut_to_lung_outline`): in the
   directions where the nodule borders other tissue its outline is interpolated from the directions where it
   borders lung, and what lies beyond is cut (on the wall too, where the sphere through the lung-side edge keeps
   the rim of a base whose centre lies in the wall, and a lesion spreading along the pleura is left whole).
7. Faint ground glass (`grow_to_half_maximum`): where the half-maximum threshold of step 5 lies below the
   -750 HU seed threshold (a nodule of -650 HU in -890 HU lung), the size is measured at the half maximum.
8. Ground-glass base (`restore_ground_glass_base`, for nodules typed part-solid or ground-glass): the wall's
   opening also takes a broad ground-glass base that sits on the pleura; chest wall is soft tissue, so the
   opening's voxels of ground-glass density away from it are given back.
A segmentation that touches the volume's edge is reported as cut by the field of view.

Modules, in the order the steps depend on each other (a module imports only those below it; pyproject.toml's
import contract checks it):
- `nodule`: `segment_nodule` (steps 1-4, and the wall's base given back), `inscribed_diameter`;
- `boundary` (steps 5 and 7), `bone` (`drop_bone`), `spicules` (`count_spicules`, the margin's spicules), `split`
  (step 4), `wall` (the base on the wall, step 8);
- `vessels`: step 6;
- `lung` (the lung's level round the nodule, airway walls), `rays` (ray radii from a centre);
- `masks` (morphology in mm, connected parts, contact), `segmentation` (the record and the shared thresholds).
"""
from __future__ import annotations

from inference.characterize.segment.bone import drop_bone
from inference.characterize.segment.boundary import grow_to_half_maximum, near_other_structures, refine_boundary
from inference.characterize.segment.masks import share_beyond
from inference.characterize.segment.nodule import inscribed_diameter, segment_nodule
from inference.characterize.segment.segmentation import (
    DENSE_HU, SEED_THRESHOLD_HU, Segmentation, restore_outer_layer, touches_volume_edge,
)
from inference.characterize.segment.vessels import cut_to_lung_outline, trim_vessels
from inference.characterize.segment.wall import restore_ground_glass_base

__all__ = [
    "DENSE_HU", "SEED_THRESHOLD_HU", "Segmentation", "cut_to_lung_outline", "drop_bone", "grow_to_half_maximum",
    "inscribed_diameter", "near_other_structures", "refine_boundary", "restore_ground_glass_base",
    "restore_outer_layer", "segment_nodule", "share_beyond", "touches_volume_edge", "trim_vessels",
]
