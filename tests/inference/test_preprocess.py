"""Lung mask and DeepLung preprocessing on the real LIDC series and on a phantom."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from inference.phantom import write_phantom_series
from inference.preprocess import PAD_VALUE, lung_mask, preprocess
from inference.volume import load_volume
from tests.conftest import LIDC_SERIES


@pytest.fixture(scope="module")
def lidc():
    volume = load_volume([pydicom.dcmread(p) for p in sorted(LIDC_SERIES.glob("*.dcm"))])
    return volume, preprocess(volume)


def test_lidc_lung_mask_is_two_plausible_lungs(lidc):
    volume, _ = lidc
    mask = lung_mask(volume.hu, volume.spacing)
    assert mask.shape == volume.hu.shape
    litres = mask.sum() * np.prod(volume.spacing) / 1e6
    assert 3.0 < litres < 8.0
    # both lungs: substantial lung on each side of the midline on a mid slice
    mid = mask[130]
    half = mid.shape[1] // 2
    assert mid[:, :half].sum() > 5000 and mid[:, half:].sum() > 5000
    # and they are apart at the level of the heart (joined only through the airways, if at all)
    assert ndimage.label(mask[60])[1] >= 2
    assert not mask[:, :, :10].any()  # air outside the body is not lung


def test_lidc_preprocess_box_and_values(lidc):
    volume, pre = lidc
    assert not pre.mask_fallback
    assert pre.image.dtype == np.uint8
    size = np.array(pre.image.shape)
    # a lung box at 1 mm: about 20-35 cm tall, 15-25 cm deep, 25-35 cm wide
    assert np.all(size > [180, 150, 230]) and np.all(size < [330, 250, 350]), size
    assert pre.mask.shape == pre.image.shape and 3e6 < pre.mask.sum() < 8e6
    # lung inside, padding outside, nothing brighter than bone mapping (600 HU -> 255)
    assert np.median(pre.image[pre.mask]) < 60
    assert (pre.image == PAD_VALUE).mean() > 0.2
    # the box edges hold the margins: mask starts 5 voxels in, ends ~10 before the far side
    zs = np.flatnonzero(pre.mask.any(axis=(1, 2)))
    assert zs[0] <= 6 and pre.image.shape[0] - zs[-1] <= 12


def test_lidc_voxel_mapping_round_trip_and_values(lidc):
    volume, pre = lidc
    points = np.array([[10.0, 20.5, 30.0], [150.0, 100.0, 200.0]])
    src = pre.to_source_voxel(points)
    assert np.allclose(pre.from_source_voxel(src), points)
    # a voxel inside the lung maps to the same HU in both spaces
    z, y, x = np.argwhere(pre.mask)[len(np.argwhere(pre.mask)) // 2]
    hu = volume.hu[tuple(np.rint(pre.to_source_voxel(np.array([z, y, x]))).astype(int))]
    expected = (np.clip(hu, -1200, 600) + 1200) * 255 / 1800
    assert abs(int(pre.image[z, y, x]) - expected) < 20


def test_phantom_nodules_land_where_the_truth_says(tmp_path):
    case = write_phantom_series(tmp_path, 31, small=True, n_nodules=3)
    volume = load_volume([pydicom.dcmread(p) for p in case.files])
    pre = preprocess(volume)
    assert not pre.mask_fallback
    mask = lung_mask(volume.hu, volume.spacing)
    dilated = lung_mask(volume.hu, volume.spacing, dilated=True)
    assert dilated.sum() > mask.sum() > 0 and np.all(dilated[mask])
    for nodule in case.phantom.nodules:
        src = volume.world_to_voxel(np.array(nodule.center_mm))
        p = np.rint(pre.from_source_voxel(src)).astype(int)
        assert np.all(p >= 0) and np.all(p < pre.image.shape), "nodule outside the lung box"
        value = pre.image[tuple(p)]
        assert value != PAD_VALUE or nodule.attached_to == "pleura"
        assert value > 40  # denser than the lung (lung at -850 HU is ~50)... GGO at -600 is ~85


def test_empty_mask_falls_back_to_the_body(lidc):
    volume, _ = lidc
    from dataclasses import replace

    # no air anywhere: no lungs to find, so the box is the whole (body) volume
    solid = replace(volume, hu=np.where(volume.hu > -400, volume.hu, 40.0).astype(np.float32)[::4].copy(),
                    spacing=volume.spacing * [4, 1, 1])
    pre = preprocess(solid)
    assert pre.mask_fallback
    assert pre.image.shape[1] > 300 and pre.image.shape[2] > 300


def test_filled_convex_hull_is_the_polygon_skimage_draws() -> None:
    # the per-slice hull of DeepLung's lung mask is filled by exact integer edge tests; it must keep
    # the pixels skimage.draw.polygon gives (centres inside or on the outline), vertices and edges included
    from scipy.spatial import ConvexHull, QhullError
    from skimage.draw import polygon

    from inference.preprocess import _filled_convex_polygon

    rng = np.random.default_rng(7)
    for _ in range(200):
        shape = (int(rng.integers(3, 60)), int(rng.integers(3, 60)))
        points = np.stack([rng.integers(0, shape[0], 12), rng.integers(0, shape[1], 12)], axis=1)
        try:
            vertices = points[ConvexHull(points).vertices]
        except QhullError:  # all points on one line: the caller never fills those
            continue
        expected = np.zeros(shape, bool)
        expected[polygon(vertices[:, 0], vertices[:, 1], shape)] = True
        got = _filled_convex_polygon(vertices, shape)
        assert np.array_equal(got, expected), vertices.tolist()
        assert np.array_equal(_filled_convex_polygon(vertices[::-1], shape), expected)  # clockwise: the same
        assert got[tuple(vertices.T)].all()
