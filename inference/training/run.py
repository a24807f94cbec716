"""The whole training run behind `dicomnode model train`: cache the cases, train the detector, then
the malignancy stage (phantoms only: LUNA16 has no malignancy labels), and write summary.json.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from inference.training.cases import Progress
from inference.training.classifier import train_classifier
from inference.training.detector import TrainConfig, train_detector, training_cases


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
