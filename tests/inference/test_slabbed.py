"""The slabbed detector engine (stem and layer2 in z-slabs + trunk) gives the whole-graph pass's output."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inference.engines import make_engine
from inference.engines import slabbed as slabbed_mod
from inference.engines.slabbed import (
    LAYER2_BYTES_PER_VOXEL,
    LAYER2_HALO,
    STEM_HALO,
    SlabbedDetectorEngine,
    slab_depth,
    slabs,
)
from inference.nets.dpn3d import DPN26Detector, make_coord


@pytest.mark.parametrize("depth, slab, halo", [(96, 32, 4), (64, 18, 4), (48, 48, 4), (32, 64, 4), (80, 40, 4),
                                               (320, 88, 4), (160, 100, 4), (40, 16, 4)])
def test_slabs_tile_the_volume_with_a_halo_and_one_shape(depth: int, slab: int, halo: int) -> None:
    plan = slabs(depth, slab, halo)
    kept = [k for _, _, lo, hi in plan for k in range(lo, hi)]
    assert kept == list(range(depth))  # every slice kept exactly once
    assert len({b - a for a, b, _, _ in plan}) == 1  # one read shape: one arena block, reused
    read = plan[0][1] - plan[0][0]
    assert read <= slab  # within the memory budget
    # as few slabs as the budget allows, kept ranges balanced: the recomputed halos are as small as they can be
    assert len(plan) == (1 if depth <= slab else -(-depth // (slab - 2 * halo)))
    assert len(plan) * read <= depth + (2 * halo + 2) * len(plan)  # + 2: kept ranges are even
    for read_from, read_to, keep_from, keep_to in plan:
        assert read_from % 2 == 0 and 0 <= read_from and read_to <= depth
        assert read_from == 0 or keep_from - read_from >= halo
        assert read_to == depth or read_to - keep_to >= halo


def test_slab_depth_follows_the_budget() -> None:
    assert slab_depth(208, 288, 512) > slab_depth(208, 288, 256) >= 16
    assert slab_depth(208, 288, 512) % 2 == 0
    assert slab_depth(208, 288, 1) == 16  # never below the minimum
    assert slab_depth(104, 144, 512, LAYER2_BYTES_PER_VOXEL) % 2 == 0


def test_slab_budget_is_at_least_what_the_trunk_needs(tmp_path: Path) -> None:
    detector = DPN26Detector().eval()
    engine = make_engine("onnxruntime", model=detector, threads=1, cache_dir=tmp_path, slab_memory_mb=512).engine
    assert isinstance(engine, SlabbedDetectorEngine)
    assert engine.budget_mb((64, 64, 64)) == 512  # a small volume: the configured budget
    # lidc-idri-0002's lung box: the trunk alone needs more, so the stem's slabs may use as much (fewer halos)
    lidc = engine.budget_mb((320, 208, 288))
    assert lidc > 1000
    assert len(slabs(320, slab_depth(208, 288, lidc), STEM_HALO)) < len(slabs(320, slab_depth(208, 288, 512), STEM_HALO))


def test_slabbed_engine_matches_the_whole_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(7)
    detector = DPN26Detector().eval()
    rng = np.random.default_rng(7)
    shape = (80, 32, 48)
    x = rng.standard_normal((1, 1, *shape)).astype(np.float32)
    coord = make_coord(shape)[None]
    whole = make_engine("onnxruntime", model=detector, threads=2, cache_dir=tmp_path)
    # a budget this small (and no floor from the trunk's need) cuts both slabbed stages into 16-slice slabs
    monkeypatch.setattr(slabbed_mod, "TRUNK_BYTES_PER_VOXEL", 0)
    slabbed = make_engine("onnxruntime", model=detector, threads=2, cache_dir=tmp_path, slab_memory_mb=1)
    assert isinstance(slabbed.engine, SlabbedDetectorEngine) and slabbed.name == whole.name
    assert slabbed.engine.budget_mb(shape) == 1
    assert len(slabs(shape[0], slab_depth(shape[1], shape[2], 1), STEM_HALO)) > 3
    assert len(slabs(shape[0] // 2, slab_depth(shape[1] // 2, shape[2] // 2, 1, LAYER2_BYTES_PER_VOXEL),
                     LAYER2_HALO)) > 1
    ref, got = whole.run(x, coord), slabbed.run(x, coord)
    assert got.shape == ref.shape == (1, 20, 8, 12, 3, 5)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    again = slabbed.run(x, coord)  # the shared arena, shrunk after the first run, serves a second one the same
    np.testing.assert_array_equal(again, got)
    with torch.no_grad():  # and the split graphs are still the torch network
        net = detector(torch.from_numpy(x), torch.from_numpy(coord)).numpy()
    np.testing.assert_allclose(got, net, rtol=1e-3, atol=1e-4)
