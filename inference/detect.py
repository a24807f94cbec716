"""Run the DPN26 detector over a preprocessed volume and turn its output into nodule candidates.

Input: the preprocessed uint8 image (z, y, x) at 1 mm (docs/architecture.md, "Flow"), so voxel indices are
millimetres in the preprocessed frame. Two ways to cover the volume:

- "tiled": DeepLung's own scheme: 144^3 tiles with a 32-voxel margin (208^3 crops, edge padding),
  keeping the central 36^3 of each 52^3 output.
- "whole": the network is fully convolutional, so the whole volume goes through in one pass, or
  in as few large tiles as a voxel budget allows. About 3x less work than "tiled".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Literal, Sequence

import numpy as np

from inference.engines.base import DetectorEngine
from inference.nets.dpn3d import ANCHORS_MM, MAX_STRIDE, STRIDE, make_coord

PAD_VALUE = 170  # the preprocessing's "outside the lung" grey value
CANDIDATE_LOGIT = -3.0
REPORT_LOGIT = -2.0
# findings reported per series, most probable first ([clinical] max_findings). DeepLung's classification stage
# looks at the top 5 candidates, but a screening report names every nodule: at 5, a small phantom with six nodules
# of 6 mm or more over the report threshold (seed 9102) lost one. At 10: one more of the 103 nodules >= 6 mm of
# seeds 9000..9019 and 9100..9119 found and 3 more false marks in 40 scans (dicomnode model evaluate); on the
# 60 phantoms of inference.training.findings_audit (README) 8 more false positives, all Lung-RADS 2-3.
# Lesions past the limit are not dropped silently: the exam says how many (pipeline.assess).
MAX_FINDINGS = 10
MIN_DIAMETER_MM = 3.0
NMS_IOU = 0.1
MAX_BOXES_BEFORE_NMS = 20000  # guards NMS time on an untrained or confused network
# LUNA16 scores at most 100 marks per scan and the node reports far fewer; greedy NMS visits boxes
# best first, so stopping at 100 kept gives exactly the top 100 of a full NMS. A full NMS over the
# 20000 boxes of a trained network on LIDC-IDRI-0002 kept 15000 and took 26 s.
MAX_CANDIDATES = 100

Mode = Literal["tiled", "whole"]
Progress = Callable[[int, int], None]  # (tiles done, tiles total)
Int3 = tuple[int, int, int]


def _int3(values: Iterable[int]) -> Int3:
    """Exactly three integers (a shape, a side, tile counts) as a (z, y, x) triple."""
    z, y, x = values
    return (z, y, x)


@dataclass(frozen=True)
class Candidate:
    zyx: tuple[float, float, float]  # preprocessed voxel coordinates == mm in the preprocessed frame
    diameter_mm: float
    logit: float
    probability: float


@dataclass(frozen=True)
class TilePlan:
    """How the stride-4-padded volume is cut: `counts` tiles of `side` per axis, each read with `margin`."""

    shape: Int3  # volume shape after padding to a multiple of 4
    side: Int3
    margin: int
    counts: Int3

    @property
    def crop(self) -> Int3:
        return _int3(s + 2 * self.margin for s in self.side)

    @property
    def n_tiles(self) -> int:
        return math.prod(self.counts)

    def starts(self) -> Iterator[Int3]:
        for i in range(self.counts[0]):
            for j in range(self.counts[1]):
                for k in range(self.counts[2]):
                    yield (i * self.side[0], j * self.side[1], k * self.side[2])


def normalise(image_u8: np.ndarray) -> np.ndarray:
    """DeepLung's network input: (x - 128) / 128 as float32."""
    return (image_u8.astype(np.float32) - 128.0) / 128.0


def pad_to_stride(image: np.ndarray, stride: int = STRIDE, value: int = PAD_VALUE) -> np.ndarray:
    pad = [(0, -s % stride) for s in image.shape]
    return np.pad(image, pad, mode="constant", constant_values=value) if any(p[1] for p in pad) else image


def _ceil_to(v: int, m: int) -> int:
    return -(-v // m) * m


def _check_geometry(side: Int3, margin: int) -> None:
    if margin % STRIDE:
        raise ValueError(f"margin {margin} must be a multiple of {STRIDE}")
    for s in side:
        if s <= 0 or s % STRIDE or (s + 2 * margin) % MAX_STRIDE:
            raise ValueError(
                f"tile side {s} with margin {margin}: side must be a multiple of {STRIDE} and side + 2*margin "
                f"a multiple of {MAX_STRIDE}"
            )


def plan_tiled(shape: Sequence[int], side: int = 144, margin: int = 32) -> TilePlan:
    """DeepLung's tiling: cubes of `side`, each crop extended by `margin` on every face."""
    side3 = (side, side, side)
    _check_geometry(side3, margin)
    counts = _int3(max(1, -(-s // side)) for s in shape)
    return TilePlan(_int3(shape), side3, margin, counts)


def plan_whole(shape: Sequence[int], margin: int = 0, max_voxels: int | None = None) -> TilePlan:
    """One tile covering everything, or the fewest large tiles whose crops fit `max_voxels`.

    Splits the axis with the longest tile until the crop fits; tile sides stay multiples of 16 so
    every crop passes the network's four stride-2 stages exactly.
    """
    counts = [1, 1, 1]

    def sides() -> Int3:
        return _int3(_ceil_to(-(-s // n), MAX_STRIDE) for s, n in zip(shape, counts))

    side = sides()
    while max_voxels is not None and math.prod(s + 2 * margin for s in side) > max_voxels:
        axis = int(np.argmax(side))
        if side[axis] <= MAX_STRIDE:
            raise ValueError(f"max_voxels={max_voxels} is too small even for {MAX_STRIDE}-voxel tiles")
        counts[axis] += 1
        side = sides()
    _check_geometry(side, margin)
    return TilePlan(_int3(shape), side, margin, _int3(counts))


def run_detector(
    engine: DetectorEngine,
    image_u8: np.ndarray,
    mode: Mode = "whole",
    *,
    side: int = 144,
    margin: int | None = None,
    max_voxels: int | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Network output for the whole volume: (Z/4, Y/4, X/4, 3, 5) over the stride-4-padded image."""
    if image_u8.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {image_u8.shape}")
    padded = pad_to_stride(image_u8)
    shape = _int3(padded.shape)
    if mode == "tiled":
        plan = plan_tiled(shape, side, 32 if margin is None else margin)
    elif mode == "whole":
        plan = plan_whole(shape, 0 if margin is None else margin, max_voxels)
    else:
        raise ValueError(f"unknown detection mode {mode!r}: 'tiled' or 'whole'")

    m, m4 = plan.margin, plan.margin // STRIDE
    # Edge padding beyond the volume, as DeepLung's split does; coordinates span the 4-padded volume
    # and are edge-padded the same way, so each crop sees where it lies in the scan.
    far = [n * s - v + m for n, s, v in zip(plan.counts, plan.side, shape)]
    image = np.pad(normalise(padded), [(m, f) for f in far], mode="edge")
    coord = np.pad(make_coord(shape), [(0, 0)] + [(m4, f // STRIDE) for f in far], mode="edge")

    side4 = tuple(s // STRIDE for s in plan.side)
    crop = plan.crop
    out = np.empty((*(n * s for n, s in zip(plan.counts, side4)), len(ANCHORS_MM), 5), dtype=np.float32)
    starts = list(plan.starts())
    batch = max(1, engine.max_batch)
    for b in range(0, len(starts), batch):
        group = starts[b : b + batch]
        if len(starts) == 1 and image.shape == crop:  # the whole volume: a view, not a second 77 MB copy
            xs = image[None, None]
        else:
            xs = np.stack([image[z : z + crop[0], y : y + crop[1], x : x + crop[2]] for z, y, x in group])[:, None]
        cs = np.stack(
            [
                coord[:, z // 4 : (z + crop[0]) // 4, y // 4 : (y + crop[1]) // 4, x // 4 : (x + crop[2]) // 4]
                for z, y, x in group
            ]
        )
        pred = engine.run(xs, cs)
        for (z, y, x), p in zip(group, pred):
            z4, y4, x4 = z // 4, y // 4, x // 4
            out[z4 : z4 + side4[0], y4 : y4 + side4[1], x4 : x4 + side4[2]] = p[
                m4 : m4 + side4[0], m4 : m4 + side4[1], m4 : m4 + side4[2]
            ]
        if progress is not None:
            progress(b + len(group), len(starts))
    return out[: shape[0] // 4, : shape[1] // 4, : shape[2] // 4]


def decode(
    output: np.ndarray, threshold: float = CANDIDATE_LOGIT, anchors: Sequence[float] = ANCHORS_MM, stride: int = STRIDE
) -> np.ndarray:
    """Boxes (M, 5) = [logit, z, y, x, diameter] for every anchor whose logit exceeds `threshold`.

    centre = (stride - 1) / 2 + stride * i + delta * anchor per axis; diameter = exp(dd) * anchor.
    """
    anchors_arr = np.asarray(anchors, dtype=np.float64)
    idx = np.nonzero(output[..., 0] > threshold)
    if not idx[0].size:
        return np.zeros((0, 5), dtype=np.float64)
    sel = output[idx].astype(np.float64)  # (M, 5)
    anchor = anchors_arr[idx[3]]
    offset = (stride - 1) / 2.0
    boxes = np.empty((sel.shape[0], 5), dtype=np.float64)
    boxes[:, 0] = sel[:, 0]
    for axis in range(3):
        boxes[:, 1 + axis] = offset + stride * idx[axis] + sel[:, 1 + axis] * anchor
    boxes[:, 4] = np.exp(sel[:, 4]) * anchor
    return boxes


def cube_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of axis-aligned cubes (centre z, y, x; side = diameter): `box` (4,) against `others` (M, 4)."""
    r1, r2 = box[3] / 2.0, others[:, 3] / 2.0
    lo = np.maximum(box[None, :3] - r1, others[:, :3] - r2[:, None])
    hi = np.minimum(box[None, :3] + r1, others[:, :3] + r2[:, None])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=1)
    return inter / (box[3] ** 3 + others[:, 3] ** 3 - inter)


def nms(boxes: np.ndarray, iou_threshold: float = NMS_IOU, max_kept: int | None = None) -> np.ndarray:
    """Greedy NMS by logit: a box survives unless it overlaps a kept, higher-scoring box by >= threshold.

    `max_kept` stops after that many survivors: the same boxes a full run would rank first.
    """
    if len(boxes) == 0:
        return boxes
    order = boxes[np.argsort(-boxes[:, 0], kind="stable")]
    kept: list[np.ndarray] = []
    while len(order) and (max_kept is None or len(kept) < max_kept):
        top = order[0]
        kept.append(top)
        rest = order[1:]
        order = rest[cube_iou(top[1:5], rest[:, 1:5]) < iou_threshold]
    return np.stack(kept)


def one_per_lesion(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates, most probable first, less each one that marks a lesion already kept: a mark is that lesion
    again when the smaller of the two reaches half its radius or more into the larger one's sphere (their centres at
    most the larger radius plus half the smaller apart). Two distinct nodules that touch lie a radius each apart.

    NMS by IoU leaves such marks: a 12 mm box centred 11 mm from the centre of a 24 mm one has an IoU of 0.07 with
    it, under NMS_IOU. The packaged detector marks a 23.7 mm ground-glass nodule of full-size phantom 21004 with
    nine 10-13 mm boxes 6-15 mm from its main mark (the rule drops eight; the ninth, 15.1 mm off, lies on its rim);
    the most probable of them, 12.3 mm from it (more than the main mark's radius) and among the five then reported, read
    1.7 mm from its off-centre point, and each extra finding raises the Brock model's nodule count, which lowers
    every nodule's risk. `python -m inference.training.lesion_marks` counts them on phantoms and checks that no
    painted nodule is lost.
    """
    kept: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: -c.probability):
        if not any(math.dist(c.zyx, k.zyx) <= same_lesion_reach_mm(c, k) for k in kept):
            kept.append(c)
    return kept


def lesions_over_threshold(candidates: Sequence[Candidate], report_logit: float) -> list[Candidate]:
    """The marks over the report threshold, one per lesion (one_per_lesion), most probable first: a node reports
    the first MAX_FINDINGS (or its configured number) of them."""
    return one_per_lesion([c for c in candidates if c.logit > report_logit])


def logit_of(probability: float) -> float:
    """A report threshold given as a probability, as the logit the marks are compared with (clamped off 0 and 1)."""
    p = min(max(probability, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def same_lesion_reach_mm(a: Candidate, b: Candidate) -> float:
    """How near two marks' centres lie when they mark one lesion (see one_per_lesion): the larger radius plus half
    the smaller."""
    return max(a.diameter_mm, b.diameter_mm) / 2 + min(a.diameter_mm, b.diameter_mm) / 4


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large negative logits


def postprocess(
    output: np.ndarray,
    threshold: float = CANDIDATE_LOGIT,
    min_diameter_mm: float = MIN_DIAMETER_MM,
    nms_iou: float = NMS_IOU,
    max_boxes: int = MAX_BOXES_BEFORE_NMS,
    max_candidates: int | None = MAX_CANDIDATES,
) -> list[Candidate]:
    boxes = decode(output, threshold)
    boxes = boxes[boxes[:, 4] >= min_diameter_mm]
    if len(boxes) > max_boxes:
        boxes = boxes[np.argpartition(-boxes[:, 0], max_boxes - 1)[:max_boxes]]
    kept = nms(boxes, nms_iou, max_candidates)
    probs = sigmoid(kept[:, 0]) if len(kept) else np.zeros(0)
    cands = [
        Candidate((float(b[1]), float(b[2]), float(b[3])), float(b[4]), float(b[0]), float(p))
        for b, p in zip(kept, probs)
    ]
    return sorted(cands, key=lambda c: -c.probability)


def detect(
    engine: DetectorEngine,
    image_u8: np.ndarray,
    mode: Mode = "whole",
    *,
    threshold: float = CANDIDATE_LOGIT,
    min_diameter_mm: float = MIN_DIAMETER_MM,
    nms_iou: float = NMS_IOU,
    side: int = 144,
    margin: int | None = None,
    max_voxels: int | None = None,
    progress: Progress | None = None,
) -> list[Candidate]:
    """Candidates in the preprocessed frame, most probable first."""
    output = run_detector(engine, image_u8, mode, side=side, margin=margin, max_voxels=max_voxels, progress=progress)
    return postprocess(output, threshold, min_diameter_mm, nms_iou)
