"""Synthetic chest CT with known nodules: for tests, training and demos.

`make_phantom(seed)` builds an HU volume (int16, (z, y, x), axes along LPS +x, +y, +z) of a chest:
body with skin, fat and muscle, ribs, spine, sternum, heart, aorta, mediastinum, two lungs with
texture, branching vessel trees, airways, diaphragm with liver and stomach, and nodules (solid,
part-solid, ground-glass; some on the pleura or a vessel). Everything is deterministic by seed.

Speed: the anatomy is drawn on a coarse grid (about 1.5 mm) and upsampled trilinearly (which also
gives the scanner blur); nodules are drawn at full resolution; noise comes from a small pool of
noise planes shifted per slice. A 512x512x240 phantom builds in a few seconds on 2 cores.

`write_phantom_series` writes it as a CT Image Storage series plus `truth.json`;
`insert_nodules` paints phantom nodules into a real CT volume.

Modules, in the order a phantom is made:
- `model`: tissue HU values; `PhantomNodule`, `Phantom`, `PhantomCase`
- `drawing`: the grid, partial-volume edges, tubes, trilinear upsampling
- `anatomy`: the chest drawn on the coarse grid
- `nodules`: nodules sampled, placed in the lung and painted
- `build`: `make_phantom` and `insert_nodules`
- `series`: `write_phantom_series`, the DICOM writer
- `follow_up`: `write_follow_up_series`, the same patient months later (known motion, growth, a new and
  a resolved nodule) for testing the comparison with a prior
"""
from inference.phantom.build import anatomy_and_lungs, insert_nodules, make_phantom, phantom_and_anatomy
from inference.phantom.model import (
    AIR,
    BLOOD,
    CANCELLOUS,
    CORTICAL,
    FAT,
    LIVER,
    LUNG,
    MUSCLE,
    SOFT,
    Attachment,
    NoduleKind,
    Phantom,
    PhantomCase,
    PhantomNodule,
)
from inference.phantom.nodules import paint_nodule
from inference.phantom.series import write_phantom_series

__all__ = [
    "AIR", "BLOOD", "CANCELLOUS", "CORTICAL", "FAT", "LIVER", "LUNG", "MUSCLE", "SOFT",
    "Attachment", "NoduleKind", "Phantom", "PhantomCase", "PhantomNodule",
    "anatomy_and_lungs", "insert_nodules", "make_phantom", "paint_nodule", "phantom_and_anatomy", "write_phantom_series",
]
