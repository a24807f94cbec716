"""Training pieces: anchor targets, crop coordinates, loss, a seeded 2-step run, LUNA16 reading."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.nets.checkpoint import load_into, read_checkpoint
from inference.nets.dpn3d import ANCHORS_MM, DPN26Detector, make_coord
from inference.phantom import make_phantom
from inference.training.cases import Case
from inference.training.crops import CropSampler, crop_coord, make_targets, nodule_hardness
from inference.training.detector import TrainConfig, init_head, train_detector
from inference.training.loss import detector_loss
from inference.training.luna16 import luna16_cases, read_mhd_volume
from tests.conftest import REPO_ROOT


def _sphere_case(seed: int = 0) -> Case:
    """A 64^3 'lung' (dark) with one bright 10 mm ball: enough to train a couple of steps on."""
    rng = np.random.default_rng(seed)
    image = np.full((64, 64, 64), 30, np.uint8) + rng.integers(0, 6, (64, 64, 64), dtype=np.uint8)
    zz, yy, xx = np.mgrid[:64, :64, :64]
    image[(zz - 30) ** 2 + (yy - 34) ** 2 + (xx - 28) ** 2 <= 25] = 140
    lung = np.argwhere(np.ones((64, 64, 64), bool)[::8, ::8, ::8]) * 8
    return Case("sphere", image, np.array([[30.0, 34.0, 28.0, 10.0]]), np.array([1], np.int8), lung.astype(np.int32))


def test_targets_mark_the_best_anchor_with_its_regression():
    t = make_targets(np.array([[21.5, 17.5, 25.5, 10.0]]), 32)
    pos = np.argwhere(t[..., 0] == 1)
    # the centre sits exactly on grid cell (5, 4, 6) (1.5 + 4*i) and matches the 10 mm anchor
    assert [5, 4, 6, 1] in pos.tolist()
    np.testing.assert_allclose(t[5, 4, 6, 1], [1, 0, 0, 0, 0], atol=1e-6)
    # regression targets decode back to the nodule for every positive anchor
    for z, y, x, a in pos:
        d = t[z, y, x, a]
        anchor = ANCHORS_MM[a]
        centre = 1.5 + 4 * np.array([z, y, x]) + d[1:4] * anchor
        np.testing.assert_allclose(centre, [21.5, 17.5, 25.5], atol=1e-4)
        assert math.exp(d[4]) * anchor == pytest.approx(10.0, rel=1e-5)
    # far away: negative; close but poor overlap: ignored
    assert t[0, 0, 0, 0, 0] == 0
    assert (t[..., 0] == -1).sum() > 0


def test_empty_crop_is_all_negative():
    t = make_targets(np.zeros((0, 4)), 32)
    assert t.shape == (8, 8, 8, 3, 5) and (t[..., 0] == 0).all()


def test_crop_coord_is_the_slice_of_the_volume_coordinates():
    shape = (40, 52, 64)
    full = make_coord(tuple(-(-s // 4) * 4 for s in shape))
    c = crop_coord(np.array([8, 4, 12]), 16, shape)
    np.testing.assert_allclose(c, full[:, 2:6, 1:5, 3:7], atol=1e-6)


def test_loss_pushes_positive_logits_up():
    target = torch.from_numpy(make_targets(np.array([[15.5, 15.5, 15.5, 10.0]]), 32))[None]
    out = torch.zeros(1, 8, 8, 8, 3, 5)
    loss0, parts0 = detector_loss(out, target)
    out[..., 0] = torch.where(target[..., 0] == 1, 5.0, -5.0)
    out[..., 1:] = target[..., 1:]
    loss1, parts1 = detector_loss(out, target)
    assert parts0["n_pos"] >= 1 and loss1 < loss0 and parts1["reg"] == pytest.approx(0.0, abs=1e-6)


def test_sampler_positive_crops_hold_the_nodule():
    sampler = CropSampler([_sphere_case()], 32, p_positive=1.0)
    rng = np.random.default_rng(1)
    for _ in range(5):
        s = sampler.sample(rng)
        assert s.image.shape == (1, 32, 32, 32) and s.coord.shape == (3, 8, 8, 8)
        assert (s.target[..., 0] == 1).sum() >= 1
        assert s.image.max() > 0.05  # the ball (140 -> 0.09) is in view


def _two_steps(tmp_path: Path, name: str) -> tuple[Path, list[dict]]:
    cfg = TrainConfig(out_dir=tmp_path / name, cache_dir=tmp_path / "cache", seed=3, crop=32, batch=2, steps=2,
                      checkpoint_every=1, threads=2)
    return train_detector(cfg, cases=[_sphere_case()])


def test_two_seeded_steps_are_finite_reproducible_and_loadable(tmp_path):
    last, hist = _two_steps(tmp_path, "a")
    _, hist_b = _two_steps(tmp_path, "b")
    assert len(hist) == 2 and all(math.isfinite(h["loss"]) for h in hist)
    assert [h["loss"] for h in hist] == pytest.approx([h["loss"] for h in hist_b], rel=1e-5)
    assert (tmp_path / "a" / "detector-step00001.pt").is_file()
    ck = load_into(DPN26Detector(), last)
    assert ck.layout == "project" and ck.epoch == 2
    assert ck.model_card["name"] == "dicomnode-dpn26" and "NOT FOR CLINICAL USE" in ck.model_card["warning"]
    # the file is readable with weights_only loading (no foreign objects in the card)
    assert read_checkpoint(last).model_card["config"]["crop"] == 32


def _write_luna(root: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    subset = root / "subset0"
    subset.mkdir(parents=True)
    hu = np.full((40, 64, 64), -850, np.int16)
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((2.0, 2.0, 2.5))  # x, y, z
    img.SetOrigin((-60.0, -70.0, -300.0))
    sitk.WriteImage(img, str(subset / "1.2.3.4.mhd"))
    (root / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3.4,-30.0,-10.0,-250.0,8.0\n")


def test_mhd_volume_geometry(tmp_path):
    _write_luna(tmp_path)
    vol = read_mhd_volume(tmp_path / "subset0" / "1.2.3.4.mhd")
    assert vol.shape == (40, 64, 64)
    np.testing.assert_allclose(vol.spacing, [2.5, 2.0, 2.0])
    np.testing.assert_allclose(vol.voxel_to_world(np.array([2.0, 3.0, 4.0])), [-60 + 8, -70 + 6, -300 + 5])


def test_luna16_folder_needs_its_annotations(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotations.csv"):
        luna16_cases(tmp_path, tmp_path / "cache")


def test_a_fresh_head_starts_at_the_prior_with_its_hidden_units_alive():
    # the failure this guards against: hard negatives killed every hidden ReLU of the head within
    # a few hundred steps, leaving one constant logit everywhere (the first demo weights)
    torch.manual_seed(0)
    model = DPN26Detector().eval()
    init_head(model)
    sample = CropSampler([_sphere_case()], 32).sample(np.random.default_rng(0))
    hidden = {}
    model.output[1].register_forward_hook(lambda mod, inp, out: hidden.setdefault("relu", out))
    with torch.no_grad():
        out = model(torch.from_numpy(sample.image[None]), torch.from_numpy(sample.coord[None]))
    probability = torch.sigmoid(out[..., 0])
    assert float(probability.median()) < 0.1  # negatives are cheap from step one
    assert float((hidden["relu"] > 0).float().mean()) > 0.3


def test_faint_small_and_touching_nodules_are_drawn_more_often_with_a_hard_boost():
    case = _sphere_case()  # a bright 10 mm ball at (30, 34, 28): neither faint nor small nor touching
    zz, yy, xx = np.mgrid[:64, :64, :64]
    case.image[(zz - 12) ** 2 + (yy - 12) ** 2 + (xx - 50) ** 2 <= 9] = 50  # a faint 7 mm ball
    # a bright 9 mm ball on a 4 mm "vessel" running along z: touching, not faint, not small
    case.image[:, 48:52, 8:12] = 160
    case.image[(zz - 50) ** 2 + (yy - 50) ** 2 + (xx - 16) ** 2 <= 20] = 140
    case.nodules = np.vstack([case.nodules, [12.0, 12.0, 50.0, 7.0], [50.0, 50.0, 16.0, 9.0]])
    case.malignant = np.array([1, 0, 0], np.int8)
    assert [nodule_hardness(case, i) for i in range(3)] == [0.0, 2.0, 1.0]
    sampler = CropSampler([case], 32, p_positive=1.0, flip=False, hard_boost=2.0)
    np.testing.assert_allclose(sampler.positive_p, [1 / 9, 5 / 9, 3 / 9])
    assert np.allclose(CropSampler([case], 32).positive_p, [1 / 3, 1 / 3, 1 / 3])  # no boost: uniform
    # the 0.2.0 weights' stage 3 counted faint and small only: the touching ball weighs like the plain one
    assert nodule_hardness(case, 2, ("faint", "small")) == 0.0
    old = CropSampler([case], 32, p_positive=1.0, flip=False, hard_boost=2.0, hard_kinds=("faint", "small"))
    np.testing.assert_allclose(old.positive_p, [1 / 7, 5 / 7, 1 / 7])
    with pytest.raises(ValueError, match="unknown hardness kind"):
        CropSampler([case], 32, hard_boost=1.0, hard_kinds=("tiny",))


def test_the_phantom_cache_builds_in_worker_processes_after_torch_has_run(tmp_path: Path) -> None:
    # `model evaluate --workers 2` loads its engine (torch's OpenMP pool running) before it builds
    # the cache; forked workers then hung forever in their first parallel torch op
    script = f"""
import torch
torch.set_num_threads(2)
torch.nn.functional.interpolate(torch.rand(1, 1, 64, 64, 64), scale_factor=2.0, mode="trilinear")
from inference.training.cases import cached_phantom_cases, Case
paths = cached_phantom_cases([7, 8], {str(tmp_path)!r}, True, workers=2)
print([len(Case.load(p).nodules) for p in paths])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    counts = [len(make_phantom(seed, small=True).nodules) for seed in (7, 8)]
    assert done.stdout.strip() == str(counts)


def test_a_scan_stored_another_way_round_trains_what_the_pipeline_reads():
    """A training case is preprocessed turned to LPS, as the pipeline reads a series (inference.orientation): a
    phantom stored prone (rows and columns reversed) or feet-first (columns and slices) gives the case of the phantom
    in LPS, image and nodule positions alike."""
    from dataclasses import replace

    from inference.training.cases import case_from_volume, volume_from_phantom

    phantom = make_phantom(3, small=True)
    volume = volume_from_phantom(phantom)
    nodules = [(n.center_mm, n.diameter_mm, int(n.malignant)) for n in phantom.nodules]
    lps = case_from_volume("lps", volume, nodules, np.random.default_rng(0))
    for axes in [(1, 2), (0, 2)]:
        last = np.array(volume.shape, float) - 1
        direction = volume.direction.copy()
        for axis in axes:
            direction[:, 2 - axis] *= -1  # the direction's columns are the x, y and z index directions
        stored = replace(volume, hu=np.ascontiguousarray(np.flip(volume.hu, axes)), direction=direction,
                         origin=volume.voxel_to_world(np.where([a in axes for a in range(3)], last, 0.0)))
        turned = case_from_volume("turned", stored, nodules, np.random.default_rng(0))
        assert np.array_equal(turned.image, lps.image), axes
        assert np.allclose(turned.nodules, lps.nodules, atol=1e-6), axes
