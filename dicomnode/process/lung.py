"""The lung-nodule pipeline as the node runs it: inference, then DICOM results.

Registered as the built-in "lung-nodule" by dicomnode.process.pipelines. The model is loaded once
per node (the job runner keeps one pipeline object per name).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from dicomnode.config import Settings
from dicomnode.process.follow_up import comparison_overlays, exam_summary_json, follow_up, own_tracking_columns
from dicomnode.process.pipelines import AnalyseSeries, PipelineContext, PipelineOutput
from dicomnode.results import build_results
from dicomnode.results.sr_follow_up import follow_up_context
from inference.findings import ModelIdentity, SeriesResult

if TYPE_CHECKING:
    from inference.engines.triton_engine import TritonOptions


def triton_options(settings: Settings) -> TritonOptions | None:
    """The Triton server of [inference] when the engine is "triton"."""
    from inference.engines.triton_engine import TritonOptions

    cfg = settings.inference
    if cfg.engine != "triton" or not cfg.triton_url:
        return None
    return TritonOptions(cfg.triton_url, timeout_s=cfg.triton_timeout_s,
                         connect_timeout_s=cfg.triton_connect_timeout_s, model_prefix=cfg.triton_model_prefix)


class LungNoduleStage:
    """The node's stage around inference.pipeline.LungNodulePipeline (the model itself)."""

    def __init__(self, settings: Settings) -> None:
        from inference.pipeline import LungNodulePipeline as Model  # torch: only when a route uses it

        cfg = settings.inference
        self.options = settings.results
        self.model = Model(engine=cfg.engine, mode=cfg.mode, threads=cfg.threads, weights=cfg.weights,
                           cache_dir=settings.engine_cache_dir,
                           family_history=settings.clinical.family_history,
                           emphysema_laa950_pct=settings.clinical.emphysema_laa950_pct,
                           max_findings=settings.clinical.max_findings,
                           triton=triton_options(settings),
                           detector_memory_mb=cfg.detector_memory_mb)

    @property
    def identity(self) -> ModelIdentity:
        """Which model, weights and engine this stage runs."""
        return self.model.identity

    @property
    def manifest(self) -> dict[str, Any]:
        """The weights' manifest.json (the model card)."""
        return self.model.bundle.manifest

    def analyse_prior(self, context: PipelineContext) -> AnalyseSeries:
        """The same model on a retrieved prior series (analysed once, in the current exam's job)."""
        def analyse(datasets: list[Dataset]) -> SeriesResult:
            return self.model.analyze(datasets, progress=lambda message: context.progress(f"prior: {message}"))
        return analyse

    def __call__(self, datasets: list[Dataset], context: PipelineContext) -> PipelineOutput:
        started = time.perf_counter()
        baseline = self.model.analyze(datasets, progress=context.progress)
        inferred = time.perf_counter()
        # with [priors]: the prior found, retrieved and analysed, and compared, before the results are encoded
        follow = follow_up(datasets, baseline, context, self.options, self.analyse_prior(context))
        result = baseline if follow is None else follow.result
        compared = time.perf_counter()
        context.progress("encoding results")
        with follow_up_context(None if follow is None else follow.sr):
            objects = build_results(datasets, result, self.options)
            if follow is not None and self.options.send_overlays and result.analysed:
                objects.extend(comparison_overlays(datasets, follow, self.options))
        encoded = time.perf_counter()
        summary: dict[str, Any] = {
            "verdict_probability": result.verdict_probability,
            "exam": exam_summary_json(result, baseline, follow),
            "model": result.model.to_json(),
            "timings_s": {**result.timings_s, "inference": round(inferred - started, 3),
                          "encoding": round(encoded - compared, 3)},
        }
        if follow is not None:
            summary["comparison"] = follow.summary
            summary["timings_s"]["prior_and_comparison"] = round(compared - inferred, 3)
        if result.not_analysed_reason:
            summary["reason"] = result.not_analysed_reason
        return PipelineOutput(objects, verdict=result.verdict.value, findings=list(result.findings), summary=summary,
                              finding_columns=own_tracking_columns(result, self.options) if follow is None
                              else follow.columns)
