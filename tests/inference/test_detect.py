"""Detection: tiling vs whole-volume, anchor decoding, cube NMS and candidate filtering."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from inference.detect import (
    MAX_CANDIDATES,
    Candidate,
    cube_iou,
    decode,
    detect,
    nms,
    one_per_lesion,
    plan_tiled,
    plan_whole,
    postprocess,
    run_detector,
)
from inference.engines import make_engine
from inference.nets.dpn3d import DPN26Detector

torch.set_num_threads(2)


class Stride4Probe(nn.Module):
    """Fully convolutional with a receptive field of one 4^3 cell: tiling must reproduce it exactly."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 15, kernel_size=4, stride=4)
        self.coord = nn.Conv3d(3, 15, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        out = self.conv(x) + self.coord(coord)
        n, _, d, h, w = out.shape
        return out.permute(0, 2, 3, 4, 1).reshape(n, d, h, w, 3, 5)


def _volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_tiled_equals_whole_where_the_receptive_field_allows() -> None:
    engine = make_engine("torch", model=Stride4Probe().eval(), max_batch=3)
    image = _volume((70, 45, 90))  # not multiples of 4: exercises the 170 padding and the crop back
    seen: list[tuple[int, int]] = []
    tiled = run_detector(engine, image, "tiled", side=32, margin=8, progress=lambda i, n: seen.append((i, n)))
    whole = run_detector(engine, image, "whole")
    budget = run_detector(engine, image, "whole", max_voxels=40_000)
    assert tiled.shape == whole.shape == budget.shape == (18, 12, 23, 3, 5)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    np.testing.assert_allclose(budget, whole, atol=1e-5)
    a = detect(engine, image, "tiled", side=32, margin=8, threshold=0.5)
    b = detect(engine, image, "whole", threshold=0.5)
    assert a and len(a) == len(b)
    for ca, cb in zip(a, b):
        np.testing.assert_allclose(ca.zyx, cb.zyx, atol=1e-4)
        assert ca.diameter_mm == pytest.approx(cb.diameter_mm, rel=1e-4)
    n_tiles = 3 * 2 * 3
    assert seen[-1] == (n_tiles, n_tiles) and [i for i, _ in seen] == [3, 6, 9, 12, 15, 18]


def test_dpn26_tiled_and_whole_identical_for_a_single_tile(tmp_path: Path) -> None:
    torch.manual_seed(1)
    engine = make_engine("onnxruntime", model=DPN26Detector().eval(), threads=2, cache_dir=tmp_path)
    image = _volume((64, 60, 64), seed=2)
    tiled = run_detector(engine, image, "tiled", side=64, margin=16)
    whole = run_detector(engine, image, "whole", margin=16)
    np.testing.assert_array_equal(tiled, whole)


def test_tile_plans() -> None:
    plan = plan_tiled((240, 192, 288))
    assert plan.crop == (208, 208, 208) and plan.counts == (2, 2, 2) and plan.n_tiles == 8
    assert list(plan.starts())[:2] == [(0, 0, 0), (0, 0, 144)]
    whole = plan_whole((240, 192, 288))
    assert whole.counts == (1, 1, 1) and whole.side == (240, 192, 288)
    split = plan_whole((240, 192, 288), max_voxels=208**3)
    assert all(s % 16 == 0 for s in split.side)
    assert np.prod(split.crop) <= 208**3 and split.n_tiles < plan.n_tiles
    with pytest.raises(ValueError):
        plan_tiled((64, 64, 64), side=30, margin=8)


def _empty_output(shape: tuple[int, int, int] = (8, 8, 8)) -> np.ndarray:
    out = np.zeros((*shape, 3, 5), dtype=np.float32)
    out[..., 0] = -10.0
    return out


def test_decode_centre_and_diameter() -> None:
    out = _empty_output()
    out[2, 3, 4, 1] = [1.5, 0.1, -0.2, 0.3, np.log(0.8)]  # anchor 10 mm
    out[7, 0, 0, 2] = [-2.5, 0.0, 0.0, 0.0, 0.0]  # anchor 20 mm, below -2 but above -3
    boxes = decode(out, threshold=-3.0)
    assert len(boxes) == 2
    b = boxes[np.argmax(boxes[:, 0])]
    np.testing.assert_allclose(b, [1.5, 1.5 + 8 + 1.0, 1.5 + 12 - 2.0, 1.5 + 16 + 3.0, 8.0], rtol=1e-6)
    assert len(decode(out, threshold=-2.0)) == 1


def test_cube_iou_and_nms() -> None:
    a = np.array([10.0, 10.0, 10.0, 4.0])
    others = np.array([[10.0, 10.0, 10.0, 4.0], [12.0, 10.0, 10.0, 4.0], [20.0, 10.0, 10.0, 4.0]])
    np.testing.assert_allclose(cube_iou(a, others), [1.0, 32 / 96, 0.0])
    boxes = np.array(
        [
            [1.0, 10, 10, 10, 4],
            [2.0, 11, 10, 10, 4],  # best; suppresses the first
            [0.5, 30, 30, 30, 6],
            [0.4, 30, 30, 35.5, 6],  # overlaps the third: 18 / 414 < 0.1, kept
        ]
    )
    kept = nms(boxes, 0.1)
    np.testing.assert_array_equal(kept[:, 0], [2.0, 0.5, 0.4])
    assert len(nms(np.zeros((0, 5)), 0.1)) == 0


def _mark(z: float, diameter_mm: float, logit: float) -> Candidate:
    return Candidate((z, 50.0, 50.0), diameter_mm, logit, float(1 / (1 + np.exp(-logit))))


def test_marks_of_one_lesion_are_reported_once() -> None:
    big = _mark(50.0, 24.0, 2.0)
    off_centre = _mark(61.0, 12.0, 1.0)  # 11 mm from the big one's centre: inside its radius; IoU 0.07, NMS keeps it
    beside = _mark(70.0, 6.0, 1.5)  # 20 mm away: beyond the big one's radius plus half its own, its own nodule
    assert cube_iou(np.array([*big.zyx, big.diameter_mm]), np.array([[*off_centre.zyx, off_centre.diameter_mm]]))[0] < 0.1
    assert one_per_lesion([off_centre, beside, big]) == [big, beside]
    # a small, more probable mark whose centre lies within a large mark's radius: the large one goes, the rule being
    # the same whichever of the two is the more probable
    small_first = _mark(58.0, 6.0, 3.0)
    assert one_per_lesion([big, small_first]) == [small_first]
    # the 5 mm mark reaching exactly half its radius into the 24 mm one's sphere is that lesion, just short of it not;
    # 12.3 mm off a 23.7 mm mark (full-size phantom 21004) is past that mark's radius but within this reach
    assert one_per_lesion([big, _mark(63.25, 5.0, 1.0)]) == [big]
    assert one_per_lesion([big, _mark(63.26, 5.0, 1.0)]) == [big, _mark(63.26, 5.0, 1.0)]
    assert one_per_lesion([_mark(50.0, 23.7, 2.0), _mark(62.3, 12.9, 1.0)]) == [_mark(50.0, 23.7, 2.0)]
    # two nodules that touch (centres a radius each apart) are two
    assert one_per_lesion([big, _mark(50.0 + 12.0 + 4.0, 8.0, 1.0)]) == [big, _mark(66.0, 8.0, 1.0)]
    assert one_per_lesion([]) == []


def test_postprocess_filters_small_and_sorts_by_probability() -> None:
    out = _empty_output()
    out[1, 1, 1, 0] = [0.0, 0, 0, 0, np.log(0.5)]  # 2.5 mm: dropped (< 3 mm)
    out[5, 5, 5, 1] = [0.5, 0, 0, 0, 0.0]  # 10 mm
    out[1, 6, 1, 0] = [3.0, 0, 0, 0, 0.0]  # 5 mm, most probable
    out[5, 5, 6, 1] = [0.2, 0, 0, 0, 0.0]  # 4 mm away from the 10 mm box: suppressed
    cands = postprocess(out)
    assert [c.logit for c in cands] == [3.0, 0.5]
    assert cands[0] == Candidate((5.5, 25.5, 5.5), 5.0, 3.0, pytest.approx(1 / (1 + np.exp(-3.0))))
    assert all(c.probability > d.probability for c, d in zip(cands, cands[1:]))
    assert postprocess(out, threshold=1.0) == cands[:1]


def test_nms_stopped_at_k_keeps_exactly_the_top_k_of_a_full_run() -> None:
    rng = np.random.default_rng(0)
    boxes = np.column_stack([rng.normal(size=3000), rng.uniform(0, 120, (3000, 3)), rng.uniform(3, 20, 3000)])
    full = nms(boxes, 0.1)
    assert len(full) > 100
    np.testing.assert_array_equal(nms(boxes, 0.1, max_kept=100), full[:100])
    # postprocess reports at most MAX_CANDIDATES, most probable first
    output = np.full((12, 12, 12, 3, 5), -10.0, np.float32)
    output[..., 0] = rng.normal(size=(12, 12, 12, 3)).astype(np.float32)
    output[..., 4] = 0.0
    cands = postprocess(output)
    assert len(cands) == MAX_CANDIDATES == 100
    assert [c.probability for c in cands] == sorted((c.probability for c in cands), reverse=True)
