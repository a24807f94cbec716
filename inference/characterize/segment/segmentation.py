"""The segmentation's record and the thresholds every step shares."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEED_THRESHOLD_HU = -750.0
# soft tissue (attenuation.SOLID_THRESHOLD_HU): only dense structures beyond the envelope are cut as
# vessels; a ground-glass lobe of an irregular real lesion (lidc-idri-0002) is the lesion, not a vessel
DENSE_HU = -300.0
SMOOTH_MM = 0.5  # Gaussian sigma for the masks: tames noise, keeps edges (raw HU used for statistics)


@dataclass
class Segmentation:
    box: tuple[slice, slice, slice]  # the ROI in the volume
    hu: np.ndarray  # raw HU of the ROI, float32
    smooth: np.ndarray  # smoothed HU of the ROI
    mask: np.ndarray  # the nodule (bool, ROI shape)
    wall: np.ndarray  # large structures (chest wall, mediastinum) removed from the candidates
    parenchyma_hu: float
    ok: bool
    reason: str | None
    spicules: int  # thin protrusions of the nodule (margin.py)
    # the nodule's own outer layer that the stub cut left out of `mask` (`split._drop_stubs`): counted for its size,
    # not its
    # type (see split.SIZE_LAYER_MIN_COVER); empty (or None) where there is none
    outer_layer: np.ndarray | None = None


def restore_outer_layer(seg: Segmentation) -> None:
    """Give the mask back the nodule's own outer layer that the stub cut left out (`Segmentation.outer_layer`): for
    its size, once its type has been read on the mask without it (see split.SIZE_LAYER_MIN_COVER)."""
    if seg.outer_layer is not None:
        seg.mask |= seg.outer_layer


def touches_volume_edge(seg: Segmentation, shape: tuple[int, ...]) -> bool:
    """True when the nodule reaches a face of the scanned volume (cut by the field of view)."""
    m = seg.mask
    for axis, sl in enumerate(seg.box):
        if sl.start == 0 and np.take(m, 0, axis=axis).any():
            return True
        if sl.stop == shape[axis] and np.take(m, m.shape[axis] - 1, axis=axis).any():
            return True
    return False
