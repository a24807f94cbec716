"""One series in, one `SeriesResult` out: load -> preprocess -> detect -> classify -> verdict.

The node keeps one `LungNodulePipeline` per model: the networks and engines load once in
`__init__`; `analyze` is then called per series. Weights come from a folder holding
`manifest.json` (file names, SHA-256s, version, report threshold), read by
`inference.weights_bundle`; the packaged demo weights live in `inference/weights/`. Every file's
SHA-256 is checked against the manifest before loading.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from pydicom.dataset import Dataset

from inference.detect import REPORT_LOGIT, Candidate, Mode, detect
from inference.findings import (
    Finding,
    KeySlice,
    ModelIdentity,
    NotAnalysable,
    SeriesResult,
    Verdict,
    lung_rads_category,
)
from inference.volume import Volume, VolumeLimits, load_volume
from inference.weights_bundle import load_weights_bundle

if TYPE_CHECKING:
    from inference.preprocess import Preprocessed

log = logging.getLogger(__name__)

MODEL_NAME = "dicomnode-dpn26"
MAX_FINDINGS = 5  # DeepLung's classification stage looks at the top 5 candidates
SUSPICIOUS_AT = 0.5  # malignancy probability from which the study verdict is "suspicious"

ProgressFn = Callable[[str], None]


def _detection_mode(mode: str) -> Mode:
    if mode == "whole":
        return "whole"
    if mode == "tiled":
        return "tiled"
    raise ValueError(f"unknown detection mode {mode!r}: 'whole' or 'tiled'")


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


class LungNodulePipeline:
    """DICOM series -> findings and verdict with one detector + malignancy model, loaded once."""

    def __init__(
        self,
        engine: str = "auto",
        mode: str = "whole",
        threads: int = 0,
        weights: str | Path | None = None,
        cache_dir: str | Path | None = None,
        report_threshold: float | None = None,
        max_findings: int = MAX_FINDINGS,
        limits: VolumeLimits | None = None,
    ) -> None:
        """`report_threshold` is a detection probability; None takes the manifest's calibrated one,
        else DeepLung's report logit -2. `threads` 0 leaves the engine's default."""
        import torch

        from inference.classify import MalignancyClassifier
        from inference.engines import make_engine
        from inference.nets.checkpoint import load_into
        from inference.nets.classifier import DPNClassifierNet
        from inference.nets.dpn3d import DPN26Detector

        detection_mode = _detection_mode(mode)
        self.bundle = load_weights_bundle(weights)
        self.mode = detection_mode
        self.max_findings = max_findings
        self.limits = limits
        n_threads = threads or None
        if n_threads:
            torch.set_num_threads(n_threads)
        if report_threshold is None:
            report_threshold = self.bundle.manifest.get("report_threshold_probability")
        self.report_logit = REPORT_LOGIT if report_threshold is None else _logit(float(report_threshold))

        detector = DPN26Detector()
        load_into(detector, self.bundle.detector)
        detector.eval()
        det_sha = self.bundle.sha256("detector")
        self.detector = make_engine(engine, network="detector", model=detector, weights_sha256=det_sha,
                                    threads=n_threads, cache_dir=cache_dir)
        self.classifier: MalignancyClassifier | None = None
        if self.bundle.malignancy_gbm is not None:
            features_fn = None
            if self.bundle.classifier_net is not None:
                net = DPNClassifierNet()
                load_into(net, self.bundle.classifier_net)
                net.eval()
                self.classifier_engine = make_engine(
                    engine, network="classifier", model=net, weights_sha256=self.bundle.sha256("classifier_net"),
                    threads=n_threads, cache_dir=cache_dir,
                )
                features_fn = self.classifier_engine.run
            self.classifier = MalignancyClassifier.load(
                self.bundle.malignancy_gbm, features_fn=features_fn,
                expected_sha256=self.bundle.sha256("malignancy_gbm"),
            )
        self.identity = ModelIdentity(
            name=str(self.bundle.manifest.get("name", MODEL_NAME)), version=self.bundle.version,
            weights_sha256=det_sha, engine=self.detector.name,
        )

    # -----------------------------------------------------------------------------------------

    def analyze(self, datasets: Sequence[Dataset], progress: ProgressFn | None = None) -> SeriesResult:
        """Analyse one series; a series the model cannot read gives verdict NOT_ANALYSED with the reason."""
        say = progress or (lambda _msg: None)
        timings: dict[str, float] = {}
        t_all = time.perf_counter()
        series_uid = next((str(ds.get("SeriesInstanceUID", "")) for ds in datasets if "SeriesInstanceUID" in ds), "")
        try:
            say("loading images")
            t = time.perf_counter()
            volume = load_volume(datasets, self.limits)
            timings["load"] = time.perf_counter() - t
        except NotAnalysable as exc:
            timings["total"] = time.perf_counter() - t_all
            return SeriesResult(series_uid, Verdict.NOT_ANALYSED, 0.0, self.identity, [], str(exc), timings)
        result = self.analyze_volume(volume, progress=say)
        result.timings_s = {**timings, **result.timings_s, "total": time.perf_counter() - t_all}
        return result

    def analyze_volume(self, volume: Volume, progress: ProgressFn | None = None) -> SeriesResult:
        from inference.preprocess import preprocess

        say = progress or (lambda _msg: None)
        timings: dict[str, float] = {}
        say("preprocessing (lung mask, 1 mm resampling)")
        t = time.perf_counter()
        pre = preprocess(volume)
        timings["preprocess"] = time.perf_counter() - t

        say(f"detecting nodules ({self.detector.name}, {self.mode})")
        t = time.perf_counter()
        candidates = detect(
            self.detector, pre.image, mode=self.mode,
            progress=lambda done, total: say(f"detecting: tile {done}/{total}"),
        )
        timings["detect"] = time.perf_counter() - t
        reported = [c for c in candidates if c.logit > self.report_logit][: self.max_findings]

        say(f"classifying {len(reported)} finding(s)")
        t = time.perf_counter()
        findings = self._findings(volume, pre, reported)
        timings["classify"] = time.perf_counter() - t

        if not findings:
            verdict, prob = Verdict.NO_NODULE, 0.0
        else:
            prob = max(f.malignancy for f in findings)
            verdict = Verdict.SUSPICIOUS if prob >= SUSPICIOUS_AT else Verdict.BENIGN
        result = SeriesResult(volume.series_instance_uid, verdict, float(prob), self.identity, findings, None, timings)
        if volume.warnings:
            log.info("series %s: %s", volume.series_instance_uid, "; ".join(volume.warnings))
        return result

    def _findings(self, volume: Volume, pre: Preprocessed, cands: list[Candidate]) -> list[Finding]:
        from inference.classify import estimate_volume_mm3, long_axis_diameter_mm

        if not cands:
            return []
        centres = np.array([c.zyx for c in cands], dtype=np.float64)
        diam = [c.diameter_mm for c in cands]
        if self.classifier is not None:
            malignancy = self.classifier.predict_image(pre.image, centres, diam)
        else:
            malignancy = np.zeros(len(cands))
        findings = []
        for cand, zyx, mal in zip(cands, centres, malignancy):
            # size from a segmentation of the 1 mm image; the detector's diameter when that fails
            long_axis = long_axis_diameter_mm(pre.image, zyx, cand.diameter_mm)
            mean_diameter = 0.5 * (long_axis + cand.diameter_mm)
            volume_mm3 = estimate_volume_mm3(pre.image, zyx, cand.diameter_mm)
            src = pre.to_source_voxel(zyx[None])[0]
            x_mm, y_mm, z_mm = volume.voxel_to_world(src)
            findings.append(
                Finding(
                    center_mm=(float(x_mm), float(y_mm), float(z_mm)),
                    diameter_mm=float(mean_diameter),
                    volume_mm3=float(volume_mm3),
                    probability=float(cand.probability),
                    malignancy=float(mal),
                    lung_rads=lung_rads_category(mean_diameter),
                    key_slice=key_slice(volume, src),
                    radius_px=(mean_diameter / 2 / float(volume.spacing[1]), mean_diameter / 2 / float(volume.spacing[2])),
                )
            )
        return findings

    def close(self) -> None:
        self.detector.close()
        engine = getattr(self, "classifier_engine", None)
        if engine is not None:
            engine.close()


def key_slice(volume: Volume, src_zyx: np.ndarray) -> KeySlice:
    """The source slice nearest a (fractional) voxel position, with its pixel row and column."""
    k = int(np.clip(np.rint(src_zyx[0]), 0, volume.shape[0] - 1))
    uid, _frame = volume.slice_reference(k)
    return KeySlice(sop_instance_uid=uid, sop_class_uid=volume.sop_class_uid, row=float(src_zyx[1]), column=float(src_zyx[2]))
