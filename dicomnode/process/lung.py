"""The lung-nodule pipeline as the node runs it: inference, then DICOM results.

Registered as the built-in "lung-nodule" by dicomnode.process.pipelines. The model is loaded once
per node (the job runner keeps one pipeline object per name).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from dicomnode.config import Settings
from dicomnode.process.pipelines import PipelineContext, PipelineOutput
from dicomnode.results import build_results
from inference.findings import ModelIdentity

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

    def __call__(self, datasets: list[Dataset], context: PipelineContext) -> PipelineOutput:
        started = time.perf_counter()
        result = self.model.analyze(datasets, progress=context.progress)
        inferred = time.perf_counter()
        context.progress("encoding results")
        objects = build_results(datasets, result, self.options)
        encoded = time.perf_counter()
        summary: dict[str, Any] = {
            "verdict_probability": result.verdict_probability,
            "exam": result.exam.to_json() if result.exam is not None else None,
            "model": result.model.to_json(),
            "timings_s": {**result.timings_s, "inference": round(inferred - started, 3),
                          "encoding": round(encoded - inferred, 3)},
        }
        if result.not_analysed_reason:
            summary["reason"] = result.not_analysed_reason
        return PipelineOutput(objects, verdict=result.verdict.value, findings=list(result.findings), summary=summary)
