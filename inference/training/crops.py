"""Train the DPN26 detector and the malignancy stage (DeepLung recipe, sized for a CPU).

Data: synthetic phantoms (`inference.phantom`, deterministic by seed) or a LUNA16 folder
(subset*/*.mhd + annotations.csv, read with SimpleITK). Every case is preprocessed once
(`inference.preprocess`) and cached as .npz (uint8 image at 1 mm, lung voxel sample, nodules in
preprocessed voxel coordinates), so the training loop only crops arrays and runs the network.

Detector targets follow DeepLung: on the stride-4 grid, per anchor (5, 10, 20 mm), an anchor is
positive when its cube IoU with a nodule exceeds 0.5 (and the best anchor of each nodule always
is), negative when its IoU with every nodule is below 0.02, ignored otherwise. Loss: binary
cross-entropy on positives plus the hardest negatives, and smooth L1 on
(dz, dy, dx) = (c - anchor_centre) / anchor and dd = log(d / anchor) for positives.
"""
from __future__ import annotations

import copy
import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from inference.nets.dpn3d import ANCHORS_MM, STRIDE, DPN26Detector

log = logging.getLogger(__name__)

PAD_VALUE = 170
POS_IOU = 0.5
NEG_IOU = 0.02
Progress = Callable[[str, int, int], None]  # (stage, done, total)


# ---------------------------------------------------------------------------------------------
# Cases: preprocessed images with nodules in preprocessed voxel coordinates
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    image: np.ndarray  # uint8 (z, y, x), 1 mm, DeepLung preprocessing
    nodules: np.ndarray  # (N, 4) float: z, y, x, diameter (preprocessed voxels == mm)
    malignant: np.ndarray  # (N,) int8: 1 malignant, 0 benign, -1 unknown
    lung_points: np.ndarray  # (M, 3) int: a sample of lung voxels, where negative crops centre

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, image=self.image, nodules=self.nodules, malignant=self.malignant,
                            lung_points=self.lung_points, name=np.array(self.name))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "Case":
        with np.load(path) as z:
            return cls(str(z["name"]), z["image"], z["nodules"], z["malignant"], z["lung_points"])


def _volume_from_phantom(ph) -> "object":
    from inference.volume import CT_IMAGE_STORAGE, Volume

    n = ph.hu.shape[0]
    return Volume(
        hu=ph.hu.astype(np.float32), origin=np.asarray(ph.origin, float), spacing=np.asarray(ph.spacing, float),
        direction=np.asarray(ph.direction, float), sop_instance_uids=[f"1.2.3.{ph.seed}.{k}" for k in range(n)],
        sop_class_uid=CT_IMAGE_STORAGE, series_instance_uid=f"1.2.3.{ph.seed}", study_instance_uid=f"1.2.3.{ph.seed}.0",
    )


def case_from_volume(name: str, volume, nodules_world: Sequence[tuple[Sequence[float], float, int]],
                     rng: np.random.Generator, n_lung_points: int = 4000) -> Case:
    """Preprocess `volume` and map nodules ((x, y, z) mm, diameter mm, malignant 1/0/-1) into its frame."""
    from inference.preprocess import preprocess

    pre = preprocess(volume)
    rows = []
    labels = []
    for centre, diameter, malignant in nodules_world:
        src = volume.world_to_voxel(np.asarray(centre, float))
        zyx = pre.from_source_voxel(src)
        rows.append([*zyx, float(diameter)])
        labels.append(int(malignant))
    lung = np.argwhere(pre.mask)
    if len(lung) == 0:
        lung = np.argwhere(np.ones(pre.image.shape, bool)[::4, ::4, ::4]) * 4
    pick = rng.choice(len(lung), size=min(n_lung_points, len(lung)), replace=False)
    return Case(
        name=name, image=pre.image, nodules=np.asarray(rows, float).reshape(-1, 4),
        malignant=np.asarray(labels, np.int8), lung_points=lung[np.sort(pick)].astype(np.int32),
    )


def phantom_case(seed: int, small: bool = True) -> Case:
    """The phantom of `seed`, preprocessed like a real series."""
    from inference.phantom import make_phantom

    ph = make_phantom(seed, small=small)
    nodules = [(n.center_mm, n.diameter_mm, int(n.malignant)) for n in ph.nodules]
    return case_from_volume(f"phantom-{seed}{'-small' if small else ''}", _volume_from_phantom(ph), nodules,
                            np.random.default_rng(seed))


def _build_phantom(args: tuple[int, bool, str]) -> str:
    seed, small, path = args
    phantom_case(seed, small).save(Path(path))
    return path


def cached_phantom_cases(seeds: Sequence[int], cache_dir: str | Path, small: bool = True,
                         progress: Progress | None = None, workers: int = 1) -> list[Path]:
    """Build (once) and return the .npz paths of the phantoms of `seeds`; `workers` > 1 builds in processes."""
    cache = Path(cache_dir)
    paths = [cache / f"phantom-{seed}{'-small' if small else ''}.npz" for seed in seeds]
    todo = [(seed, small, str(p)) for seed, p in zip(seeds, paths) if not p.is_file()]
    done = len(paths) - len(todo)
    if progress:
        progress("phantoms", done, len(paths))
    if workers > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: a forked child of a process that already ran torch's OpenMP pool (an
        # engine loaded before the cache was built) hangs in its first parallel torch op
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for _ in pool.map(_build_phantom, todo):
                done += 1
                if progress:
                    progress("phantoms", done, len(paths))
    else:
        for item in todo:
            _build_phantom(item)
            done += 1
            if progress:
                progress("phantoms", done, len(paths))
    return paths


# ---------------------------------------------------------------------------------------------
# LUNA16
# ---------------------------------------------------------------------------------------------


class MissingPackage(RuntimeError):
    """An optional package the requested data needs is not installed; the message says which."""


def _sitk():
    try:
        import SimpleITK as sitk  # noqa: N813
    except ImportError:
        raise MissingPackage("reading LUNA16 .mhd files needs SimpleITK: pip install -c constraints.txt SimpleITK") from None
    return sitk


def read_mhd_volume(path: str | Path):
    """A .mhd/.raw CT as an `inference.volume.Volume` (HU float32, LPS geometry as ITK stores it)."""
    from inference.volume import CT_IMAGE_STORAGE, Volume

    sitk = _sitk()
    img = sitk.ReadImage(str(path))
    hu = sitk.GetArrayFromImage(img).astype(np.float32)  # (z, y, x)
    spacing = np.asarray(img.GetSpacing(), float)[::-1]  # ITK gives x, y, z
    direction = np.asarray(img.GetDirection(), float).reshape(3, 3)  # columns: x, y, z axes
    uid = Path(path).stem
    return Volume(
        hu=hu, origin=np.asarray(img.GetOrigin(), float), spacing=spacing, direction=direction,
        sop_instance_uids=[f"{uid}.{k}" for k in range(hu.shape[0])], sop_class_uid=CT_IMAGE_STORAGE,
        series_instance_uid=uid, study_instance_uid=uid,
    )


def luna16_cases(folder: str | Path, cache_dir: str | Path, limit: int | None = None,
                 progress: Progress | None = None) -> list[Path]:
    """Cache every scan of a LUNA16 folder (subset*/*.mhd + annotations.csv) as a training case."""
    folder = Path(folder)
    ann = folder / "annotations.csv"
    if not ann.is_file():
        raise FileNotFoundError(f"{folder}: no annotations.csv (LUNA16 layout: subset*/*.mhd + annotations.csv)")
    scans = sorted(folder.glob("subset*/*.mhd"))
    if not scans:
        raise FileNotFoundError(f"{folder}: no subset*/*.mhd scans")
    _sitk()
    by_uid: dict[str, list[tuple[tuple[float, float, float], float, int]]] = {}
    with ann.open(newline="") as f:
        for row in csv.DictReader(f):
            centre = (float(row["coordX"]), float(row["coordY"]), float(row["coordZ"]))
            by_uid.setdefault(row["seriesuid"], []).append((centre, float(row["diameter_mm"]), -1))
    scans = scans[:limit] if limit else scans
    cache = Path(cache_dir)
    paths = []
    for i, mhd in enumerate(scans):
        path = cache / f"luna16-{mhd.stem}.npz"
        if not path.is_file():
            case_from_volume(mhd.stem, read_mhd_volume(mhd), by_uid.get(mhd.stem, []),
                             np.random.default_rng(i)).save(path)
        paths.append(path)
        if progress:
            progress("luna16", i + 1, len(scans))
    return paths


# ---------------------------------------------------------------------------------------------
# Crops and targets
# ---------------------------------------------------------------------------------------------


def _crop(image: np.ndarray, start: np.ndarray, size: int) -> np.ndarray:
    out = np.full((size,) * 3, PAD_VALUE, np.uint8)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + size, image.shape)
    if np.all(hi > lo):
        out[tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))] = image[tuple(slice(a, b) for a, b in zip(lo, hi))]
    return out


def crop_coord(start: np.ndarray, size: int, image_shape: Sequence[int]) -> np.ndarray:
    """The coordinate input for a crop: its slice of make_coord over the stride-4-padded image."""
    n4 = [max(2, -(-s // STRIDE)) for s in image_shape]
    axes = [(-0.5 + (st / STRIDE + np.arange(size // STRIDE)) / (n - 1)).astype(np.float32) for st, n in zip(start, n4)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=0)


def _cube_iou(a_centre: np.ndarray, a_side: np.ndarray, b_centre: np.ndarray, b_side: float) -> np.ndarray:
    lo = np.maximum(a_centre - a_side[..., None] / 2, b_centre - b_side / 2)
    hi = np.minimum(a_centre + a_side[..., None] / 2, b_centre + b_side / 2)
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    return inter / (a_side**3 + b_side**3 - inter)


def make_targets(nodules: np.ndarray, size: int, anchors: Sequence[float] = ANCHORS_MM) -> np.ndarray:
    """(S/4, S/4, S/4, A, 5) float32: field 0 is 1 positive / 0 negative / -1 ignore, then dz, dy, dx, dd.

    `nodules` (N, 4) z, y, x, diameter in crop voxel coordinates.
    """
    g = size // STRIDE
    a = np.asarray(anchors, float)
    centres = (STRIDE - 1) / 2 + STRIDE * np.stack(np.meshgrid(*[np.arange(g)] * 3, indexing="ij"), -1)  # (g,g,g,3)
    target = np.zeros((g, g, g, len(a), 5), np.float32)
    best_iou = np.zeros((g, g, g, len(a)))
    grid = np.broadcast_to(centres[..., None, :], (g, g, g, len(a), 3))
    sides = np.broadcast_to(a, (g, g, g, len(a)))
    for z, y, x, d in nodules:
        if d <= 0:
            continue
        c = np.array([z, y, x])
        iou = _cube_iou(grid, sides, c, d)
        pos = iou > POS_IOU
        best = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[best] > 0:
            pos[best] = True
        for idx in zip(*np.nonzero(pos)):
            anchor = a[idx[3]]
            target[idx] = [1.0, *((c - grid[idx]) / anchor), math.log(d / anchor)]
        best_iou = np.maximum(best_iou, np.where(pos, 0.0, iou))
    ignore = (target[..., 0] == 0) & (best_iou >= NEG_IOU)
    target[..., 0][ignore] = -1.0
    return target


@dataclass
class Sample:
    image: np.ndarray  # (1, S, S, S) float32 normalised
    coord: np.ndarray  # (3, S/4, S/4, S/4)
    target: np.ndarray  # (S/4, S/4, S/4, A, 5)


HARDNESS_KINDS = ("faint", "small", "touching")
# "touching": more than TOUCH_SHARE of a shell 1.5..4 mm outside the nodule is brighter than
# TOUCH_GREY. On phantoms 1000..1039 this marks 78 % of the vessel-attached and 57 % of the pleural
# nodules, and 11 % of the free ones (a small vessel passing close by).
TOUCH_SHELL_MM = (1.5, 4.0)
TOUCH_GREY = 120
TOUCH_SHARE = 0.05


def check_hardness_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """`kinds` as a tuple, or ValueError naming the unknown ones."""
    unknown = sorted(set(kinds) - set(HARDNESS_KINDS))
    if unknown:
        raise ValueError(f"unknown hardness kind(s) {', '.join(unknown)} (known: {', '.join(HARDNESS_KINDS)})")
    return tuple(kinds)


def nodule_hardness(case: Case, index: int, kinds: Sequence[str] = HARDNESS_KINDS) -> float:
    """0..3: of the `kinds`, one point for a faint nodule (mean grey level within 30 of its
    surroundings, as ground-glass ones are), one for a small one (under 8 mm), one for a nodule
    touching a bright structure (a vessel, the pleura). These are the nodules a detector trained
    with uniform sampling missed on held-out phantoms. Measured on the image, so LUNA16 cases are
    graded the same way."""
    z, y, x, d = case.nodules[index]
    r = math.ceil(max(d, d / 2 + TOUCH_SHELL_MM[1])) + 1  # room for both shells
    box = tuple(slice(max(int(round(c)) - r, 0), int(round(c)) + r + 1) for c in (z, y, x))
    sub = case.image[box].astype(np.float32)
    grid = np.stack(np.meshgrid(*[np.arange(b.start, b.start + n) for b, n in zip(box, sub.shape)], indexing="ij"), -1)
    dist = np.linalg.norm(grid - np.array([z, y, x]), axis=-1)
    ball, shell = sub[dist < d / 2], sub[(dist >= d / 2) & (dist < d)]
    faint = ball.size > 0 and shell.size > 0 and float(ball.mean() - shell.mean()) < 30.0
    # just outside the nodule's blurred edge: aerated lung is dark (< 120, about -350 HU), so a
    # bright share there is a vessel, the pleura or the chest wall it sits on
    outside = sub[(dist >= d / 2 + TOUCH_SHELL_MM[0]) & (dist < d / 2 + TOUCH_SHELL_MM[1])]
    touching = outside.size > 0 and float((outside > TOUCH_GREY).mean()) > TOUCH_SHARE
    points = {"faint": faint, "small": d < 8.0, "touching": touching}
    return float(sum(points[kind] for kind in kinds))


class CropSampler:
    """Random training crops: around a nodule with probability `p_positive`, else at a random lung voxel."""

    def __init__(self, cases: Sequence[Case], size: int, p_positive: float = 0.6, flip: bool = True,
                 hard_boost: float = 0.0, hard_kinds: Sequence[str] = HARDNESS_KINDS) -> None:
        if size % 16:
            raise ValueError(f"crop size {size} must be a multiple of 16")
        self.cases = list(cases)
        self.size = size
        self.p_positive = p_positive
        self.flip = flip
        self.positives = [(i, j) for i, c in enumerate(self.cases) for j in range(len(c.nodules))]
        if not self.cases:
            raise ValueError("no training cases")
        hard_kinds = check_hardness_kinds(hard_kinds)
        # hard nodules (faint, small, touching) are drawn 1 + hard_boost times as often per point
        weights = np.array([1.0 + hard_boost * nodule_hardness(self.cases[i], j, hard_kinds) if hard_boost else 1.0
                            for i, j in self.positives])
        self.positive_p = weights / weights.sum() if len(weights) else weights

    def sample(self, rng: np.random.Generator) -> Sample:
        s = self.size
        if self.positives and rng.random() < self.p_positive:
            ci, ni = self.positives[int(rng.choice(len(self.positives), p=self.positive_p))]
            case = self.cases[ci]
            z, y, x, d = case.nodules[ni]
            # keep the nodule's centre at least a radius (or a quarter crop) inside the crop
            room = max(0.0, s / 2 - max(d / 2, s / 8) - 2)
            centre = np.array([z, y, x]) + rng.uniform(-room, room, 3)
        else:
            case = self.cases[int(rng.integers(len(self.cases)))]
            centre = case.lung_points[int(rng.integers(len(case.lung_points)))].astype(float)
        start = np.rint(centre - s / 2).astype(int)
        crop = _crop(case.image, start, s)
        nod = case.nodules.copy()
        nod[:, :3] -= start
        coord = crop_coord(start, s, case.image.shape)
        if self.flip:
            for axis in range(3):
                if rng.random() < 0.5:
                    crop = np.flip(crop, axis)
                    nod[:, axis] = s - 1 - nod[:, axis]
        # only nodules whose centre is in the crop can own an anchor
        inside = np.all((nod[:, :3] >= 0) & (nod[:, :3] <= s - 1), axis=1)
        target = make_targets(nod[inside], s)
        # nodules cut by the edge: never call their anchors negative
        for z, y, x, d in nod[~inside]:
            if np.all((np.array([z, y, x]) > -d / 2) & (np.array([z, y, x]) < s - 1 + d / 2)):
                near = make_targets(np.array([[z, y, x, d]]), s)
                target[..., 0][(near[..., 0] != 0) & (target[..., 0] == 0)] = -1.0
        image = ((np.ascontiguousarray(crop).astype(np.float32) - 128.0) / 128.0)[None]
        return Sample(image, coord, target)


def detector_loss(out: torch.Tensor, target: torch.Tensor, hard_per_sample: int = 16) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE on positives + hardest negatives (half each) + smooth L1 on positive regressions."""
    n = out.shape[0]
    out = out.reshape(n, -1, 5)
    target = target.reshape(n, -1, 5)
    logits, labels = out[..., 0], target[..., 0]
    pos = labels > 0.5
    neg = labels == 0
    neg_logits = logits.masked_fill(~neg, -1e4).reshape(-1)
    k = min(int(neg.sum()), hard_per_sample * n)
    hard = torch.topk(neg_logits, k).values if k else neg_logits[:0]
    neg_loss = F.binary_cross_entropy_with_logits(hard, torch.zeros_like(hard)) if k else logits.sum() * 0
    parts = {"neg": float(neg_loss.detach())}
    if pos.any():
        pl = logits[pos]
        pos_loss = F.binary_cross_entropy_with_logits(pl, torch.ones_like(pl))
        reg = F.smooth_l1_loss(out[..., 1:][pos], target[..., 1:][pos], reduction="none").mean(dim=0)
        loss = 0.5 * pos_loss + 0.5 * neg_loss + reg.sum()
        parts.update(pos=float(pos_loss.detach()), reg=float(reg.sum().detach()), n_pos=int(pos.sum()))
    else:
        loss = neg_loss
        parts.update(pos=float("nan"), reg=float("nan"), n_pos=0)
    parts["loss"] = float(loss.detach())
    return loss, parts


# ---------------------------------------------------------------------------------------------
# Training loops
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    out_dir: Path
    cache_dir: Path
    seed: int = 0
    train_seeds: tuple[int, int] = (1000, 1080)  # phantom seeds [a, b)
    small: bool = True
    luna16: Path | None = None
    crop: int = 48
    batch: int = 4
    steps: int = 3000
    lr: float = 5e-4
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    dropout: float = 0.2
    p_positive: float = 0.7
    hard_boost: float = 0.0  # extra draws of faint, small or touching nodules (nodule_hardness)
    hard_kinds: tuple[str, ...] = HARDNESS_KINDS  # which of those count
    hard_per_sample: int = 16
    checkpoint_every: int = 20
    threads: int = 2
    init: Path | None = None  # continue from these detector weights
    workers: int = 2  # processes building the phantom cache

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def model_card(cfg: TrainConfig, step: int, extra: dict | None = None) -> dict:
    card = {
        "name": "dicomnode-dpn26",
        "architecture": "DPN26 3D detector (DeepLung), anchors 5/10/20 mm, stride 4",
        "training_data": (f"LUNA16 folder {cfg.luna16}" if cfg.luna16 else
                          f"synthetic phantoms seeds {cfg.train_seeds[0]}..{cfg.train_seeds[1] - 1} (small={cfg.small})"),
        "steps": step,
        "config": cfg.to_json(),
        "loss": "BCE (positives + hard negatives) + smooth L1 on dz, dy, dx, log(d/anchor)",
        "torch": str(torch.__version__),  # TorchVersion would not pass weights_only loading
        "warning": "NOT FOR CLINICAL USE: demonstration weights trained on synthetic phantoms",
    }
    card.update(extra or {})
    return card


def training_cases(cfg: TrainConfig, progress: Progress | None = None) -> list[Case]:
    if cfg.luna16 is not None:
        paths = luna16_cases(cfg.luna16, cfg.cache_dir, progress=progress)
    else:
        paths = cached_phantom_cases(list(range(*cfg.train_seeds)), cfg.cache_dir, cfg.small, progress=progress,
                                     workers=cfg.workers)
    return [Case.load(p) for p in paths]


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


LOGIT_PRIOR = 0.02  # the starting detection probability of every anchor


def init_head(model: DPN26Detector) -> None:
    """Start the head where hard-negative mining cannot kill it.

    With logits starting near 0, the hardest negatives carry the largest gradient and push every
    logit down; the cheapest way there is to drive the head's hidden pre-activations below zero,
    and dead ReLUs never recover (250 steps left every unit dead at nodules, all logits equal to
    the bias). Starting the logit bias at a small prior (as RetinaNet does) makes negatives cheap
    from step one, so the positives' gradient leads; a small positive hidden bias adds margin.
    """
    torch.nn.init.constant_(model.output[0].bias, 0.1)
    last = model.output[2]
    with torch.no_grad():
        last.bias.zero_()
        last.bias[0 :: last.out_channels // model.n_anchors] = math.log(LOGIT_PRIOR / (1 - LOGIT_PRIOR))


def train_detector(cfg: TrainConfig, cases: Sequence[Case] | None = None, progress: Progress | None = None,
                   log_fn: Callable[[str], None] | None = None) -> tuple[Path, list[dict]]:
    """Train; checkpoints every `checkpoint_every` steps and at the end. Returns (last checkpoint, history)."""
    from inference.nets.checkpoint import load_into, save_project_checkpoint

    torch.set_num_threads(cfg.threads)
    _seed_all(cfg.seed)
    cases = list(cases) if cases is not None else training_cases(cfg, progress)
    sampler = CropSampler(cases, cfg.crop, cfg.p_positive, hard_boost=cfg.hard_boost, hard_kinds=cfg.hard_kinds)
    rng = np.random.default_rng(cfg.seed)
    model = DPN26Detector(dropout=cfg.dropout)
    if cfg.init is not None:
        load_into(model, cfg.init)
    else:
        init_head(model)
    # channels-last 3D lets oneDNN pick fast grouped-conv kernels: about 4x faster training on CPU
    model = model.to(memory_format=torch.channels_last_3d).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # cosine decay to 10% of the rate: a short run still ends on a small step
    def rate(s: int) -> float:  # linear warm-up, then cosine decay to 10%
        warm = min(1.0, (s + 1) / max(1, cfg.warmup_steps))
        return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    last = out_dir / "detector-last.pt"
    t0 = time.time()
    for step in range(1, cfg.steps + 1):
        batch = [sampler.sample(rng) for _ in range(cfg.batch)]
        x = torch.from_numpy(np.stack([b.image for b in batch])).to(memory_format=torch.channels_last_3d)
        c = torch.from_numpy(np.stack([b.coord for b in batch]))
        t = torch.from_numpy(np.stack([b.target for b in batch]))
        out = model(x, c)
        loss, parts = detector_loss(out, t, cfg.hard_per_sample)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        parts.update(step=step, lr=opt.param_groups[0]["lr"], elapsed_s=round(time.time() - t0, 1))
        history.append(parts)
        if log_fn:
            log_fn(json.dumps(parts))
        if progress:
            progress("train", step, cfg.steps)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            card = model_card(cfg, step)
            # a contiguous copy, so the file does not depend on the training memory format
            plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
            save_project_checkpoint(plain, out_dir / f"detector-step{step:05d}.pt", card, epoch=step)
            save_project_checkpoint(plain, last, card, epoch=step)
    return last, history


# ---------------------------------------------------------------------------------------------
# Malignancy stage
# ---------------------------------------------------------------------------------------------


def nodule_crops(cases: Sequence[Case], jitter_mm: float = 0.0, copies: int = 1,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """32^3 crops of every labelled nodule: (crops uint8, diameters, labels)."""
    from inference.classify import extract_crop

    rng = rng or np.random.default_rng(0)
    crops, diam, labels = [], [], []
    for case in cases:
        for (z, y, x, d), m in zip(case.nodules, case.malignant):
            if m < 0:
                continue
            for k in range(copies):
                shift = rng.uniform(-jitter_mm, jitter_mm, 3) if (jitter_mm and k) else np.zeros(3)
                crops.append(extract_crop(case.image, np.array([z, y, x]) + shift))
                diam.append(d)
                labels.append(int(m))
    return (np.stack(crops) if crops else np.zeros((0, 32, 32, 32), np.uint8),
            np.asarray(diam, np.float32), np.asarray(labels, np.int64))


@dataclass
class ClassifierResult:
    net_path: Path | None  # None when the GBM uses pixels and diameter only (epochs=0)
    gbm_path: Path
    gbm_sha256: str
    history: list[dict] = field(default_factory=list)


def train_classifier(cases: Sequence[Case], out_dir: str | Path, *, seed: int = 0, epochs: int = 6,
                     batch: int = 16, lr: float = 1e-3, threads: int = 2,
                     log_fn: Callable[[str], None] | None = None) -> ClassifierResult:
    """Train DPNClassifierNet with its head on benign/malignant crops, then the GBM on its features.

    `epochs=0` skips the network: the GBM then sees the central 17^3 pixels and the diameter only.
    The packaged demo weights use 12 epochs (inference/weights/MODEL_CARD.md).
    """
    from inference.classify import MalignancyClassifier, normalise_crops, torch_features_fn
    from inference.nets.checkpoint import save_project_checkpoint
    from inference.nets.classifier import DPNClassifierNet

    torch.set_num_threads(threads)
    _seed_all(seed)
    rng = np.random.default_rng(seed)
    crops, diam, labels = nodule_crops(cases, jitter_mm=2.0, copies=2, rng=rng)
    if len(set(labels.tolist())) < 2:
        raise ValueError("the classifier needs both benign and malignant nodules in the training cases")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gbm_path = out / "malignancy-gbm.joblib"
    if epochs == 0:
        gbm = MalignancyClassifier(random_state=seed).fit(crops, diam, labels)
        return ClassifierResult(None, gbm_path, gbm.save(gbm_path), [])
    net = DPNClassifierNet(dropout=0.3).to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    x_all = torch.from_numpy(normalise_crops(crops))
    y_all = torch.from_numpy(labels)
    history = []
    for epoch in range(epochs):
        net.train()
        order = torch.from_numpy(rng.permutation(len(labels)))
        total = 0.0
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            x = x_all[idx].contiguous(memory_format=torch.channels_last_3d)
            # flips are free augmentation for round-ish nodules
            for axis in (2, 3, 4):
                if rng.random() < 0.5:
                    x = x.flip(axis)
            loss = F.cross_entropy(net.logits(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append({"epoch": epoch + 1, "loss": total / len(labels)})
        if log_fn:
            log_fn(json.dumps({"classifier": history[-1]}))
    net_path = out / "classifier.pt"
    card = {"name": "dicomnode-dpn-classifier", "epochs": epochs, "n_crops": int(len(labels)),
            "warning": "NOT FOR CLINICAL USE"}
    net = net.to(memory_format=torch.contiguous_format).eval()
    net_sha = save_project_checkpoint(net, net_path, card, epoch=epochs)
    # the GBM sees un-jittered crops only once per nodule plus the jittered copies
    gbm = MalignancyClassifier(features_fn=torch_features_fn(net.eval()), features_id=net_sha, random_state=seed)
    gbm.fit(crops, diam, labels)
    digest = gbm.save(gbm_path)
    return ClassifierResult(net_path, gbm_path, digest, history)


def run_training(cfg: TrainConfig, *, classifier_epochs: int = 0, progress: Progress | None = None,
                 log_fn: Callable[[str], None] | None = None) -> dict:
    """Cache the data, train the malignancy stage, then the detector; returns a summary dict."""
    t0 = time.time()
    cases = training_cases(cfg, progress)
    summary: dict = {"n_cases": len(cases), "n_nodules": int(sum(len(c.nodules) for c in cases))}
    # the detector first: it is the stage the node cannot work without
    last, history = train_detector(cfg, cases, progress, log_fn)
    summary["detector"] = str(last)
    summary["final_loss"] = float(np.mean([h["loss"] for h in history[-20:]]))
    labelled = [c for c in cases if (c.malignant >= 0).any()]
    if labelled:
        cls = train_classifier(labelled, cfg.out_dir, seed=cfg.seed, epochs=classifier_epochs, threads=cfg.threads,
                               log_fn=log_fn)
        summary["classifier"] = {"net": cls.net_path and str(cls.net_path), "gbm": str(cls.gbm_path),
                                 "history": cls.history}
    else:
        summary["classifier"] = None  # LUNA16 has no malignancy labels
    summary["elapsed_s"] = round(time.time() - t0, 1)
    (Path(cfg.out_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# ---------------------------------------------------------------------------------------------
# Evaluation on held-out phantoms and packaging
# ---------------------------------------------------------------------------------------------


@dataclass
class PhantomEvaluation:
    n_scans: int
    n_nodules_6mm: int
    sensitivity_6mm_at_1fp: float  # real operating point (threshold), nodules >= 6 mm
    threshold_6mm_at_1fp: float  # detection probability of that operating point
    cpm_6mm: float
    cpm_all: float
    froc_6mm: object  # evaluate.FrocResult
    froc_all: object
    malignancy_auc: float | None
    malignancy_roc: object | None  # evaluate.RocResult
    seconds_per_scan: float
    # what the node delivers at the weights' calibrated report threshold (None: not calibrated)
    report_threshold: float | None = None
    sensitivity_6mm_at_report_threshold: float | None = None
    fps_per_scan_at_report_threshold: float | None = None

    def to_json(self) -> dict:
        return {
            "n_scans": self.n_scans,
            "n_nodules_6mm": self.n_nodules_6mm,
            "sensitivity_6mm_at_1fp_per_scan": round(self.sensitivity_6mm_at_1fp, 4),
            "threshold_6mm_at_1fp_per_scan": round(self.threshold_6mm_at_1fp, 5),
            "cpm_6mm": round(self.cpm_6mm, 4),
            "cpm_all": round(self.cpm_all, 4),
            "froc_6mm_sensitivities": [round(float(v), 4) for v in self.froc_6mm.sensitivities],  # type: ignore[attr-defined]
            "froc_all_sensitivities": [round(float(v), 4) for v in self.froc_all.sensitivities],  # type: ignore[attr-defined]
            "malignancy_auc": None if self.malignancy_auc is None else round(self.malignancy_auc, 4),
            "malignancy_confusion_tn_fp_fn_tp": None if self.malignancy_roc is None
            else [int(v) for v in self.malignancy_roc.confusion.ravel()],  # type: ignore[attr-defined]
            "seconds_per_scan": round(self.seconds_per_scan, 2),
            "report_threshold_probability": self.report_threshold,
            "sensitivity_6mm_at_report_threshold": _rounded(self.sensitivity_6mm_at_report_threshold),
            "fps_per_scan_at_report_threshold": _rounded(self.fps_per_scan_at_report_threshold),
        }


def _rounded(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def evaluate_detector_on_cases(
    detector_engine, cases: Sequence[Case], *, mode: str = "whole", classifier=None, min_diameter_mm: float = 6.0,
    progress: Progress | None = None, report_threshold: float | None = None, max_fps_per_scan: float = 1.0,
) -> PhantomEvaluation:
    """FROC (LUNA16 hit rule, in the 1 mm preprocessed frame) and malignancy ROC on labelled cases.

    Nodules under `min_diameter_mm` are 'excluded' findings in the >= 6 mm FROC: a mark on them is
    neither a hit nor a false positive, as LUNA16 treats its irrelevant findings.
    `threshold_6mm_at_1fp` is the lowest threshold keeping `max_fps_per_scan`: on calibration
    phantoms it is the report threshold to ship; `report_threshold` scores a shipped one.
    """
    from inference.detect import detect
    from inference.training.metrics import froc_from_matches, match_findings, operating_point, roc, sensitivity_at_max_fps

    matches_big, matches_all = [], []
    y_true: list[int] = []
    y_score: list[float] = []
    t0 = time.time()
    for i, case in enumerate(cases):
        cands = detect(detector_engine, case.image, mode=mode)  # type: ignore[arg-type]
        # LUNA16 keeps at most 100 marks per scan
        cands = cands[:100]
        centres = np.array([c.zyx for c in cands]).reshape(-1, 3)
        probs = np.array([c.probability for c in cands])
        nod = case.nodules
        big = nod[:, 3] >= min_diameter_mm
        matches_big.append(match_findings(centres, probs, nod[big, :3], nod[big, 3], nod[~big, :3], nod[~big, 3]))
        matches_all.append(match_findings(centres, probs, nod[:, :3], nod[:, 3]))
        if classifier is not None and len(nod):
            known = case.malignant >= 0
            if known.any():
                y_score.extend(classifier.predict_image(case.image, nod[known, :3], nod[known, 3]).tolist())
                y_true.extend(case.malignant[known].astype(int).tolist())
        if progress:
            progress("evaluate", i + 1, len(cases))
    sens, thr = sensitivity_at_max_fps(matches_big, max_fps_per_scan)
    at_report = operating_point(matches_big, report_threshold) if report_threshold is not None else (None, None)
    froc_big = froc_from_matches(matches_big, title=f"phantoms, nodules >= {min_diameter_mm:g} mm")
    froc_all = froc_from_matches(matches_all, title="phantoms, all nodules")
    r = roc(y_true, y_score) if len(set(y_true)) == 2 else None
    return PhantomEvaluation(
        n_scans=len(cases), n_nodules_6mm=int(sum(m.n_truth for m in matches_big)),
        sensitivity_6mm_at_1fp=sens, threshold_6mm_at_1fp=thr, cpm_6mm=froc_big.cpm, cpm_all=froc_all.cpm,
        froc_6mm=froc_big, froc_all=froc_all, malignancy_auc=None if r is None else r.auc, malignancy_roc=r,
        seconds_per_scan=(time.time() - t0) / max(1, len(cases)),
        report_threshold=report_threshold, sensitivity_6mm_at_report_threshold=at_report[0],
        fps_per_scan_at_report_threshold=at_report[1],
    )


def plot_confusion_png(confusion: np.ndarray, path: str | Path, title: str = "malignancy at 0.5") -> Path:
    import matplotlib

    from inference.training.metrics import save_png

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.8, 3.4), dpi=100)
    ax.imshow(confusion, cmap="Blues")
    for (i, j), v in np.ndenumerate(confusion):
        ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=14)
    ax.set_xticks([0, 1], ["benign", "malignant"])
    ax.set_yticks([0, 1], ["benign", "malignant"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(title)
    return save_png(fig, path)


def package_weights(
    out_dir: str | Path, detector: str | Path, *, classifier_net: str | Path | None = None,
    malignancy_gbm: str | Path | None = None, version: str, report_threshold_probability: float | None = None,
    extra: dict | None = None, half: bool = True,
) -> Path:
    """Write a weights folder the pipeline reads: the files plus manifest.json with their SHA-256s.

    `half` stores the detector's floating tensors as float16 (half the size; they load back into
    the float32 model with a rounding error far below the network's own noise).
    """
    import shutil

    from inference.classify import MalignancyClassifier  # noqa: F401  (the GBM file format lives there)
    from inference.nets.checkpoint import file_sha256, read_checkpoint
    from inference.weights_bundle import write_manifest

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ck = read_checkpoint(detector)
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in ck.state_dict.items()}
    det_path = out / "detector.pt"
    torch.save({"state_dict": state, "model_card": ck.model_card, "epoch": ck.epoch}, det_path)
    files = {"detector": {"path": det_path.name, "sha256": file_sha256(det_path)}}
    if classifier_net is not None:
        dst = out / "classifier.pt"
        if Path(classifier_net).resolve() != dst.resolve():
            shutil.copyfile(classifier_net, dst)
        files["classifier_net"] = {"path": dst.name, "sha256": file_sha256(dst)}
    if malignancy_gbm is not None:
        dst = out / "malignancy-gbm.joblib"
        if Path(malignancy_gbm).resolve() != dst.resolve():
            shutil.copyfile(malignancy_gbm, dst)
        files["malignancy_gbm"] = {"path": dst.name, "sha256": file_sha256(dst)}
    manifest = {
        "name": "dicomnode-dpn26",
        "version": version,
        "files": files,
        "report_threshold_probability": report_threshold_probability,
        "warning": "NOT FOR CLINICAL USE",
        **(extra or {}),
    }
    return write_manifest(out, manifest)
