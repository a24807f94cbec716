"""Training loops: `TrainConfig` and the DPN26 detector's training (DeepLung recipe, sized for a CPU)."""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from inference.nets.dpn3d import DPN26Detector
from inference.training.cases import Case, Progress, cached_phantom_cases
from inference.training.crops import HARDNESS_KINDS, CropSampler
from inference.training.loss import detector_loss
from inference.training.luna16 import luna16_cases


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
    hidden_bias, _ = _conv_bias(model.output[0])
    torch.nn.init.constant_(hidden_bias, 0.1)
    logit_bias, out_channels = _conv_bias(model.output[2])
    with torch.no_grad():
        logit_bias.zero_()
        logit_bias[0 :: out_channels // model.n_anchors] = math.log(LOGIT_PRIOR / (1 - LOGIT_PRIOR))


def _conv_bias(layer: torch.nn.Module) -> tuple[torch.Tensor, int]:
    """A head layer's bias and output channels; nn.Sequential indexes to plain Modules, so check it is a Conv3d."""
    if not isinstance(layer, torch.nn.Conv3d) or layer.bias is None:
        raise TypeError(f"the detector head should hold biased Conv3d layers, found {type(layer).__name__}")
    return layer.bias, layer.out_channels


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
    model = model.to(memory_format=torch.channels_last_3d).train()  # type: ignore[call-overload]  # torch: Module.to takes memory_format at run time, its typed overloads omit it
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
