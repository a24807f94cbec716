"""Classification stage: crops, GBM on synthetic nodules, persistence, size measurement, the net."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from inference.classify import (
    CROP_SIZE,
    PAD_VALUE,
    MalignancyClassifier,
    central_pixels,
    estimate_volume_mm3,
    extract_crop,
    extract_crops,
    gbm_inputs,
    long_axis_diameter_mm,
    normalise_crops,
    torch_features_fn,
)
from inference.nets.classifier import FEATURES, DPNClassifierNet, count_parameters


def hu_to_uint8(hu: np.ndarray) -> np.ndarray:
    """The preprocessing's window: [-1200, 600] HU -> 0..255."""
    return np.clip((hu + 1200.0) / 1800.0 * 255.0, 0, 255).round().astype(np.uint8)


def render_sphere(shape, centre, diameter, hu_in=0.0, hu_out=-850.0, ss=4, noise=0.0, seed=0) -> np.ndarray:
    """A solid nodule in lung with partial-volume edges (ss^3 supersampling), as uint8."""
    idx = np.indices(shape, dtype=np.float64)
    frac = np.zeros(shape)
    offsets = (np.arange(ss) + 0.5) / ss - 0.5
    for a in offsets:
        for b in offsets:
            for c in offsets:
                d2 = (idx[0] + a - centre[0]) ** 2 + (idx[1] + b - centre[1]) ** 2 + (idx[2] + c - centre[2]) ** 2
                frac += d2 < (diameter / 2.0) ** 2
    hu = hu_out + frac / ss**3 * (hu_in - hu_out)
    if noise:
        hu = hu + np.random.default_rng(seed).normal(0, noise, shape)
    return hu_to_uint8(hu)


def synthetic_nodules(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Malignant: big bright spheres; benign: small faint ones; noisy, jittered, noisy diameters."""
    rng = np.random.default_rng(seed)
    grid = np.indices((CROP_SIZE,) * 3).astype(np.float32) - CROP_SIZE // 2
    crops, diams, labels = [], [], []
    for i in range(n):
        y = i % 2
        d = rng.uniform(8, 14) if y else rng.uniform(3, 7)
        value = rng.uniform(160, 200) if y else rng.uniform(90, 130)
        r = np.sqrt(((grid - rng.normal(0, 1.0, 3)[:, None, None, None]) ** 2).sum(0))
        crop = np.where(r < d / 2, value, 50.0) + rng.normal(0, 15, r.shape)
        crops.append(np.clip(crop, 0, 255).astype(np.uint8))
        diams.append(d * rng.uniform(0.8, 1.2))
        labels.append(y)
    return np.stack(crops), np.array(diams), np.array(labels)


@pytest.fixture(scope="module")
def nodules():
    return synthetic_nodules(120, seed=1), synthetic_nodules(60, seed=2)


# --- crops -----------------------------------------------------------------------------------


def test_crop_inside_is_the_image_with_centre_at_index_16():
    image = np.arange(50 * 60 * 70, dtype=np.int64).reshape(50, 60, 70).astype(np.uint32)
    crop = extract_crop(image, (25.2, 30.0, 34.6))
    np.testing.assert_array_equal(crop, image[9:41, 14:46, 19:51])
    assert crop[16, 16, 16] == image[25, 30, 35]


def test_crop_at_edges_is_padded_with_170():
    image = np.random.default_rng(0).integers(0, 100, (40, 50, 45)).astype(np.uint8)
    crop = extract_crop(image, (0, 0, 0))
    np.testing.assert_array_equal(crop[16:, 16:, 16:], image[:16, :16, :16])
    assert (crop[:16] == PAD_VALUE).all() and (crop[:, :16] == PAD_VALUE).all() and (crop[:, :, :16] == PAD_VALUE).all()
    far = extract_crop(image, (39, 49, 44))  # last voxel: only 17 voxels per axis exist after start
    np.testing.assert_array_equal(far[:17, :17, :17], image[23:, 33:, 28:])
    assert (far[17:] == PAD_VALUE).all() and (far[:, :, 17:] == PAD_VALUE).all()
    assert (extract_crop(image, (-100, 10, 10)) == PAD_VALUE).all()  # wholly outside
    crops = extract_crops(image, [(0, 0, 0), (20, 25, 22)])
    assert crops.shape == (2, 32, 32, 32) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops[0], crop)


def test_gbm_inputs_layout():
    crops = np.zeros((2, 32, 32, 32), np.uint8)
    crops[:, 16, 16, 16] = 255
    crops[:, 8, 8, 8] = 0
    crops[:, 7, 16, 16] = 200  # just outside the central 17^3 (indices 8..24)
    px = central_pixels(crops)
    assert px.shape == (2, 17**3)
    centre_index = 8 * 17 * 17 + 8 * 17 + 8
    assert px[0, centre_index] == pytest.approx(127 / 128) and px[0, 0] == -1.0
    assert (px[0] != (200 - 128) / 128).all()
    rows = gbm_inputs(crops, [4.0, 9.5], np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert rows.shape == (2, 2 + 17**3 + 1)
    assert rows[1, :2].tolist() == [3.0, 4.0] and rows[1, -1] == 9.5
    net_in = normalise_crops(crops)
    assert net_in.shape == (2, 1, 32, 32, 32) and net_in.dtype == np.float32
    with pytest.raises(ValueError):
        gbm_inputs(crops, [1.0], None)


# --- the classifier --------------------------------------------------------------------------


def test_gbm_learns_bright_big_vs_small_faint(nodules):
    (x, d, y), (xt, dt, yt) = nodules
    clf = MalignancyClassifier().fit(x, d, y)
    p = clf.predict_proba(xt, dt)
    assert p.shape == (60,) and ((p >= 0) & (p <= 1)).all()
    assert ((p > 0.5) == yt).mean() > 0.9


def test_gbm_with_network_features_calls_features_fn_with_normalised_crops(nodules):
    (x, d, y), (xt, dt, yt) = nodules
    seen = []

    def features_fn(batch: np.ndarray) -> np.ndarray:
        seen.append((batch.shape[1:], batch.dtype, float(batch.min()), float(batch.max())))
        return np.stack([batch.mean(axis=(1, 2, 3, 4)), batch.max(axis=(1, 2, 3, 4))], axis=1)

    clf = MalignancyClassifier(features_fn=features_fn).fit(x, d, y)
    assert clf.n_features_net == 2
    assert ((clf.predict_proba(xt, dt) > 0.5) == yt).mean() > 0.9
    shape, dtype, lo, hi = seen[0]
    assert shape == (1, 32, 32, 32) and dtype == np.float32 and lo >= -1.0 and hi < 1.0


def test_save_load_round_trip_and_integrity(nodules, tmp_path):
    (x, d, y), (xt, dt, _) = nodules
    clf = MalignancyClassifier(n_estimators=50).fit(x, d, y)
    path = tmp_path / "malignancy.joblib"
    digest = clf.save(path)
    assert (tmp_path / "malignancy.joblib.sha256").read_text().split()[0] == digest
    loaded = MalignancyClassifier.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(xt, dt), clf.predict_proba(xt, dt))
    MalignancyClassifier.load(path, expected_sha256=digest)
    with pytest.raises(ValueError, match="SHA-256"):
        MalignancyClassifier.load(path, expected_sha256="0" * 64)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        MalignancyClassifier.load(path)
    (tmp_path / "malignancy.joblib.sha256").unlink()
    with pytest.raises(ValueError, match="refusing"):
        MalignancyClassifier.load(path)


def test_feature_model_needs_its_features_fn_to_load(nodules, tmp_path):
    (x, d, y), _ = nodules

    def fn(b: np.ndarray) -> np.ndarray:
        return b.mean(axis=(1, 2, 3, 4))[:, None]

    clf = MalignancyClassifier(features_fn=fn, features_id="net-a", n_estimators=20).fit(x[:40], d[:40], y[:40])
    path = tmp_path / "m.joblib"
    clf.save(path)
    with pytest.raises(ValueError, match="features_fn"):
        MalignancyClassifier.load(path)
    with pytest.raises(ValueError, match="net-a"):
        MalignancyClassifier.load(path, features_fn=fn, features_id="net-b")
    loaded = MalignancyClassifier.load(path, features_fn=fn, features_id="net-a")
    np.testing.assert_array_equal(loaded.predict_proba(x[:5], d[:5]), clf.predict_proba(x[:5], d[:5]))


# --- size ------------------------------------------------------------------------------------


def test_volume_and_long_axis_of_a_rendered_10mm_sphere():
    image = render_sphere((48, 48, 48), (24.3, 23.6, 24.0), 10.0, noise=30.0)
    expected = math.pi / 6 * 10**3  # 523.6
    volume = estimate_volume_mm3(image, (24, 24, 24), diameter_mm=8.0)  # detector under-sized
    assert abs(volume - expected) / expected < 0.15
    assert long_axis_diameter_mm(image, (24, 24, 24), diameter_mm=8.0) == pytest.approx(10.0, rel=0.1)


def test_volume_clips_at_1_5x_diameter_when_touching_a_wall():
    image = render_sphere((48, 48, 48), (24.0, 24.0, 24.0), 8.0)
    image[:, :, 28:] = hu_to_uint8(np.array(0.0))  # a dense wall touching the nodule
    sphere = math.pi / 6 * 8**3
    volume = estimate_volume_mm3(image, (24, 24, 24), diameter_mm=8.0)
    assert 0.9 * sphere < volume < 1.5 * sphere  # the nodule plus a cap of wall, not the wall
    # the clip is what stops it: a (wrongly) large detector diameter lets the wall in
    assert estimate_volume_mm3(image, (24, 24, 24), diameter_mm=20.0) > 4 * sphere


def test_size_falls_back_to_detector_diameter_without_contrast():
    flat = np.full((40, 40, 40), 60, np.uint8)
    assert estimate_volume_mm3(flat, (20, 20, 20), 6.0) == pytest.approx(math.pi / 6 * 216)
    assert long_axis_diameter_mm(flat, (20, 20, 20), 6.0) == 6.0


# --- the feature network ---------------------------------------------------------------------


def test_dpn_classifier_net_shapes_and_size():
    torch.manual_seed(0)
    net = DPNClassifierNet().eval()
    assert 100_000 < count_parameters(net) < 1_000_000
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        feats = net(x)
        logits = net.logits(x)
    assert feats.shape == (2, FEATURES) and 128 <= FEATURES <= 256
    assert logits.shape == (2, 2)
    assert torch.isfinite(feats).all() and not torch.allclose(feats[0], feats[1])
    with pytest.raises(ValueError):
        net(torch.randn(2, 32, 32, 32))


def test_dpn_features_feed_the_gbm():
    torch.manual_seed(0)
    (x, d, y) = synthetic_nodules(6, seed=3)
    fn = torch_features_fn(DPNClassifierNet(), batch_size=8)
    clf = MalignancyClassifier(features_fn=fn, n_estimators=20).fit(x, d, y)
    assert clf.n_features_net == FEATURES
    p = clf.predict_image(np.pad(x[1], 8, constant_values=PAD_VALUE), [(24, 24, 24)], [d[1]])
    assert p.shape == (1,) and 0.0 <= p[0] <= 1.0
