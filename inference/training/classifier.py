"""Malignancy stage: DPNClassifierNet on benign/malignant nodule crops, then the GBM on its features."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from inference.training.cases import Case
from inference.training.detector import _seed_all


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
    net = DPNClassifierNet(dropout=0.3).to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # torch: Module.to takes memory_format at run time, its typed overloads omit it
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
