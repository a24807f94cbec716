"""The slabbed detector engine (stem in z-slabs + trunk) gives the whole-graph pass's output."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inference.engines import make_engine
from inference.engines.slabbed import STEM_HALO, SlabbedDetectorEngine, slab_depth, slabs
from inference.nets.dpn3d import DPN26Detector, make_coord


@pytest.mark.parametrize("depth, slab", [(96, 32), (64, 18), (48, 48), (32, 64), (80, 40)])
def test_slabs_tile_the_volume_with_a_halo_and_one_shape(depth: int, slab: int) -> None:
    plan = slabs(depth, slab)
    kept = [k for _, _, lo, hi in plan for k in range(lo, hi)]
    assert kept == list(range(depth))  # every slice kept exactly once
    assert len({b - a for a, b, _, _ in plan}) == 1  # one read shape: one arena, reused
    for read_from, read_to, keep_from, keep_to in plan:
        assert read_from % 2 == 0 and 0 <= read_from and read_to <= depth
        assert read_from == 0 or keep_from - read_from >= STEM_HALO
        assert read_to == depth or read_to - keep_to >= STEM_HALO


def test_slab_depth_follows_the_budget() -> None:
    assert slab_depth(208, 288, 512) > slab_depth(208, 288, 256) >= 16
    assert slab_depth(208, 288, 512) % 2 == 0
    assert slab_depth(208, 288, 1) == 16  # never below the minimum


def test_slabbed_engine_matches_the_whole_pass(tmp_path: Path) -> None:
    torch.manual_seed(7)
    detector = DPN26Detector().eval()
    rng = np.random.default_rng(7)
    shape = (80, 32, 48)
    x = rng.standard_normal((1, 1, *shape)).astype(np.float32)
    coord = make_coord(shape)[None]
    whole = make_engine("onnxruntime", model=detector, threads=2, cache_dir=tmp_path)
    # a budget this small cuts the 80 slices into several 16-slice slabs
    slabbed = make_engine("onnxruntime", model=detector, threads=2, cache_dir=tmp_path, slab_memory_mb=1)
    assert isinstance(slabbed.engine, SlabbedDetectorEngine) and slabbed.name == whole.name
    assert len(slabs(shape[0], slab_depth(shape[1], shape[2], 1))) > 3
    ref, got = whole.run(x, coord), slabbed.run(x, coord)
    assert got.shape == ref.shape == (1, 20, 8, 12, 3, 5)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # and the split graphs are still the torch network
        net = detector(torch.from_numpy(x), torch.from_numpy(coord)).numpy()
    np.testing.assert_allclose(got, net, rtol=1e-3, atol=1e-4)
