"""Evaluation on held-out phantoms: FROC of a detector engine and ROC of the malignancy stage on
cached cases (the metrics themselves live in `inference.training.metrics`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from inference.detect import MAX_FINDINGS
from inference.training.cases import Case, Progress

if TYPE_CHECKING:
    from inference.classify import MalignancyClassifier
    from inference.detect import Candidate, Mode
    from inference.engines.base import DetectorEngine
    from inference.training.metrics import CaseMatch, FrocResult, RocResult


@dataclass
class PhantomEvaluation:
    n_scans: int
    n_nodules_6mm: int
    sensitivity_6mm_at_1fp: float  # real operating point (threshold), nodules >= 6 mm
    threshold_6mm_at_1fp: float  # detection probability of that operating point
    cpm_6mm: float
    cpm_all: float
    froc_6mm: FrocResult
    froc_all: FrocResult
    malignancy_auc: float | None
    malignancy_roc: RocResult | None
    seconds_per_scan: float
    # what the node delivers at the weights' calibrated report threshold (None: not calibrated)
    report_threshold: float | None = None
    sensitivity_6mm_at_report_threshold: float | None = None
    fps_per_scan_at_report_threshold: float | None = None
    # each case's marks (at most MAX_MARKS_PER_SCAN, in the preprocessed frame), in the order of the cases:
    # the characterisation at the detector's centres takes them instead of detecting again
    marks: list[list[Candidate]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "n_scans": self.n_scans,
            "n_nodules_6mm": self.n_nodules_6mm,
            "sensitivity_6mm_at_1fp_per_scan": round(self.sensitivity_6mm_at_1fp, 4),
            "threshold_6mm_at_1fp_per_scan": round(self.threshold_6mm_at_1fp, 5),
            "cpm_6mm": round(self.cpm_6mm, 4),
            "cpm_all": round(self.cpm_all, 4),
            "froc_6mm_sensitivities": [round(float(v), 4) for v in self.froc_6mm.sensitivities],
            "froc_all_sensitivities": [round(float(v), 4) for v in self.froc_all.sensitivities],
            "malignancy_auc": None if self.malignancy_auc is None else round(self.malignancy_auc, 4),
            "malignancy_confusion_tn_fp_fn_tp": None if self.malignancy_roc is None
            else [int(v) for v in self.malignancy_roc.confusion.ravel()],
            "seconds_per_scan": round(self.seconds_per_scan, 2),
            "report_threshold_probability": self.report_threshold,
            "sensitivity_6mm_at_report_threshold": _rounded(self.sensitivity_6mm_at_report_threshold),
            "fps_per_scan_at_report_threshold": _rounded(self.fps_per_scan_at_report_threshold),
        }


def _rounded(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def evaluate_detector_on_cases(
    detector_engine: DetectorEngine, cases: Sequence[Case], *, mode: Mode = "whole",
    classifier: MalignancyClassifier | None = None, min_diameter_mm: float = 6.0,
    progress: Progress | None = None, report_threshold: float | None = None, max_fps_per_scan: float = 1.0,
    max_findings: int = MAX_FINDINGS,
) -> PhantomEvaluation:
    """FROC (LUNA16 hit rule, in the 1 mm preprocessed frame) and malignancy ROC on labelled cases.

    Nodules under `min_diameter_mm` are 'excluded' findings in the >= 6 mm FROC: a mark on them is
    neither a hit nor a false positive, as LUNA16 treats its irrelevant findings.
    `threshold_6mm_at_1fp` is the lowest threshold keeping `max_fps_per_scan` among all marks: on calibration
    phantoms it is the report threshold to ship. `report_threshold` scores a shipped one on the findings a node
    reports with it (detect.lesions_over_threshold: one per lesion; the `max_findings` most probable), not on every mark.
    """
    from inference.detect import detect, lesions_over_threshold, logit_of
    from inference.training.metrics import (
        MAX_MARKS_PER_SCAN, froc_from_matches, match_findings, operating_point, roc, sensitivity_at_max_fps,
    )

    matches_big, matches_all, matches_reported = [], [], []
    y_true: list[int] = []
    y_score: list[float] = []
    marks: list[list[Candidate]] = []
    report_logit = None if report_threshold is None else logit_of(report_threshold)
    t0 = time.time()
    for i, case in enumerate(cases):
        cands = detect(detector_engine, case.image, mode=mode)
        cands = cands[:MAX_MARKS_PER_SCAN]  # LUNA16 keeps at most this many marks per scan
        marks.append(cands)
        centres = np.array([c.zyx for c in cands]).reshape(-1, 3)
        probs = np.array([c.probability for c in cands])
        nod = case.nodules
        big = nod[:, 3] >= min_diameter_mm

        def against_big(found: Sequence[Candidate]) -> CaseMatch:
            return match_findings([c.zyx for c in found], [c.probability for c in found], nod[big, :3], nod[big, 3],
                                  nod[~big, :3], nod[~big, 3])

        matches_big.append(against_big(cands))
        matches_all.append(match_findings(centres, probs, nod[:, :3], nod[:, 3]))
        if report_logit is not None:
            matches_reported.append(against_big(lesions_over_threshold(cands, report_logit)[:max_findings]))
        if classifier is not None and len(nod):
            known = case.malignant >= 0
            if known.any():
                y_score.extend(classifier.predict_image(case.image, nod[known, :3], nod[known, 3]).tolist())
                y_true.extend(case.malignant[known].astype(int).tolist())
        if progress:
            progress("evaluate", i + 1, len(cases))
    sens, thr = sensitivity_at_max_fps(matches_big, max_fps_per_scan)
    # every reported finding is over the threshold already
    at_report = operating_point(matches_reported, 0.0) if report_threshold is not None else (None, None)
    froc_big = froc_from_matches(matches_big, title=f"phantoms, nodules >= {min_diameter_mm:g} mm")
    froc_all = froc_from_matches(matches_all, title="phantoms, all nodules")
    r = roc(y_true, y_score) if len(set(y_true)) == 2 else None
    return PhantomEvaluation(
        n_scans=len(cases), n_nodules_6mm=int(sum(m.n_truth for m in matches_big)),
        sensitivity_6mm_at_1fp=sens, threshold_6mm_at_1fp=thr, cpm_6mm=froc_big.cpm, cpm_all=froc_all.cpm,
        froc_6mm=froc_big, froc_all=froc_all, malignancy_auc=None if r is None else r.auc, malignancy_roc=r,
        seconds_per_scan=(time.time() - t0) / max(1, len(cases)),
        report_threshold=report_threshold, sensitivity_6mm_at_report_threshold=at_report[0],
        fps_per_scan_at_report_threshold=at_report[1], marks=marks,
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
