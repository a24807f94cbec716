"""The detector's view of a series: the orientation its weights were trained in.

The packaged weights were trained on phantoms on their own grid (inference.training.cases.volume_from_phantom: direction
identity), so always with x towards the patient's left, y posterior and z superior (LPS). Training flipped its crops for
augmentation, but not DeepLung's coordinate input (the crop's place in the lung box), and the lung box itself is cut
with unequal margins on its low and high sides (preprocess.MARGIN_LOW_MM, MARGIN_HIGH_MM), so what the detector sees
depends on which way the series' axes run. A series is loaded as it is stored (inference.volume: z along the slice
normal): a feet-first one has x and z reversed, a prone one (rows and columns stored the other way,
ImageOrientationPatient -1\\0\\0\\0\\-1\\0) x and y, and one stored with rows and columns swapped (0\\1\\0\\1\\0\\0,
axial and legal) x and y transposed: that copy of the test phantom gave 4 of its 8 findings. Read that way the findings
changed with the storage: a phantom stored prone lost 3 of its 8 (tests/inference/test_pipeline.py); on small phantoms
7000-7009 feet-first found 36 of 44 nodules with 4 false positives and prone 37 with 5, against 37 and 7 in LPS
(docs/characterization.md, "Fifty-fifth session"), and the report threshold was calibrated on phantoms in LPS
(`dicomnode model calibrate`). So preprocessing, the detector and the model score read the volume turned to LPS
(`lps_view`), and so does each nodule's characterisation: its long axis picks among pixel pairs of equal length, and its
short axis is taken in strips counted from one end, so measured as stored lidc-idri-0002's lesion read 22.0 mm stored
prone and 21.9 mm supine. What they give back is turned to the series' own voxels (`LpsView.to_volume_voxel`,
`volume_mask`, `characteristics_in_volume`), where key slices, world coordinates and the results work. Training cases
are made on the same view (`training.cases.case_from_volume`), so a LUNA16 scan stored another way round trains what the
pipeline will see. The exam's measures (coverage, LAA-950, noise, coronary calcium) read the series as stored, since
turning the whole volume for them would copy it: the first three count voxels, but the calcium scoring's coarse grid
starts at the stored first voxel, so a plaque at the heart's edge could count differently in a series stored another way
round (calcium painted into lidc-idri-0002's heart scores the same within 2 % stored each way:
tests/inference/test_cardiac.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from inference.characterize.model import Axes, NoduleCharacteristics
from inference.volume import Volume

# the volume array's axes (z, y, x) and the direction matrix's column of each (columns: x, y, z index directions)
_AXIS_COLUMNS = ((0, 2), (1, 1), (2, 0))


def reversed_axes(direction: np.ndarray) -> tuple[int, ...]:
    """The axes of a (z, y, x) volume that run against LPS (a near-axial series, rows and columns not swapped: each
    index direction's largest component lies on its own axis)."""
    d = np.asarray(direction, float)
    return tuple(axis for axis, column in _AXIS_COLUMNS if d[column, column] < 0)


def rows_and_columns_swapped(direction: np.ndarray) -> bool:
    """Whether the column index runs along the patient's y axis and the row index along x (ImageOrientationPatient
    0\\1\\0\\1\\0\\0 and the like: still axial, and legal)."""
    d = np.abs(np.asarray(direction, float))
    return bool(d[1, 0] > d[0, 0])


@dataclass(frozen=True)
class LpsView:
    """`volume` turned to LPS (a view of the same voxels: no copy), and the way back to the series' voxels: first
    rows and columns swapped back (`swapped`), then the axes in `reversed` (of the swapped array) turned."""

    volume: Volume
    reversed: tuple[int, ...]  # the axes that were turned, after the swap
    shape: tuple[int, int, int]  # the view's
    swapped: bool = False

    def to_volume_voxel(self, zyx: np.ndarray) -> np.ndarray:
        """A voxel position (voxel centres at whole numbers) of the view -> the series' own; (3,) or (N, 3)."""
        point = np.array(zyx, dtype=np.float64)
        for axis in self.reversed:
            point[..., axis] = self.shape[axis] - 1 - point[..., axis]
        return point[..., [0, 2, 1]] if self.swapped else point

    def volume_mask(self, mask: np.ndarray) -> np.ndarray:
        """A mask on the view's voxels -> the same mask on the series' own."""
        unturned = np.flip(mask, self.reversed) if self.reversed else mask
        return unturned.transpose(0, 2, 1) if self.swapped else unturned

    def characteristics_in_volume(self, chars: NoduleCharacteristics) -> NoduleCharacteristics:
        """A nodule's characteristics measured on the view, with their voxel positions (the centroid, the slices its
        axes were measured on) in the series' own voxels."""
        if not self.reversed and not self.swapped:
            return chars
        centroid = self.to_volume_voxel(np.asarray(chars.centroid_zyx, float))

        def slice_of(axes: Axes | None) -> Axes | None:
            if axes is None or 0 not in self.reversed:
                return axes
            return replace(axes, slice_index=self.shape[0] - 1 - axes.slice_index)

        return replace(chars, centroid_zyx=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
                       axes=slice_of(chars.axes), solid_axes=slice_of(chars.solid_axes))


def lps_view(volume: Volume) -> LpsView:
    """The series as the detector was trained to read it. The world coordinates of every voxel stay the same: the
    origin moves to the turned array's first voxel and the turned axes' directions change sign."""
    swapped = rows_and_columns_swapped(volume.direction)
    if swapped:  # the rows and columns swapped back first (a transposed view), then turned like any series
        direction = np.asarray(volume.direction, float)[:, [1, 0, 2]]
        volume = replace(volume, hu=volume.hu.transpose(0, 2, 1), direction=direction,
                         spacing=np.asarray(volume.spacing, float)[[0, 2, 1]])
    axes = reversed_axes(volume.direction)
    if not axes:
        return LpsView(volume, (), volume.shape, swapped)
    last = np.array(volume.shape, float) - 1
    first = np.where([axis in axes for axis in range(3)], last, 0.0)  # the view's voxel [0, 0, 0], in the series'
    direction = np.asarray(volume.direction, float).copy()
    for axis, column in _AXIS_COLUMNS:
        if axis in axes:
            direction[:, column] = -direction[:, column]
    uids = volume.sop_instance_uids[::-1] if 0 in axes else volume.sop_instance_uids
    frames = volume.frame_numbers
    turned = replace(volume, hu=np.flip(volume.hu, axes), origin=volume.voxel_to_world(first), direction=direction,
                     sop_instance_uids=list(uids),
                     frame_numbers=None if frames is None else list(frames[::-1] if 0 in axes else frames))
    return LpsView(turned, axes, volume.shape, swapped)
