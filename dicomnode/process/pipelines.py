"""Pipelines: a series' datasets in, result datasets (and findings) out.

A pipeline is named in a route. Built-in names are registered here as `module:callable` entries of
the table below, imported only when a route uses them (loading torch and the weights is only worth
it then); any other name of the form `package.module:callable` is imported the same way, so a site
can plug in its own without touching the node (docs/architecture.md, "Adding a pipeline").
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom.dataset import Dataset

from dicomnode.config import Settings
from inference.findings import Finding, ModelIdentity, SeriesResult

LUNG_NODULE = "lung-nodule"
# built-in pipeline name -> "module:callable" (a class or factory taking the settings)
BUILT_IN: dict[str, str] = {LUNG_NODULE: "dicomnode.process.lung:LungNoduleStage"}
# built-in pipelines that load a model: the console warms them up and reports their model
MODEL_PIPELINES = frozenset({LUNG_NODULE})


@dataclass
class PriorExam:
    """The prior exam a pipeline compares the current series with (issue 12), or why there is none.

    `available`: `result` holds the prior's analysis (findings in index order), `datasets` its images
    (header and volume for the registration), `tracking_uids` / `finding_ids` per prior finding (its
    SR Tracking UID and its `findings` row). `summary`: "prior: ..." or "prior not available: <reason>"."""

    available: bool
    summary: str
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sr_sop_instance_uid: str | None = None  # the prior's SR when the node made (and sent) one
    job_id: int | None = None  # the job whose findings are the prior's
    result: SeriesResult | None = None
    datasets: list[Dataset] = field(default_factory=list)
    tracking_uids: list[str] = field(default_factory=list)
    finding_ids: list[int] = field(default_factory=list)
    others: list[str] = field(default_factory=list)  # the other earlier studies found, not compared ("UID (date, where)")
    exam: dict[str, Any] | None = None  # the prior job's exam summary (ExamSummary JSON), as stored
    # not available: the patient's earlier chest CT that exists and could not be compared ("study UID of date (where)")
    not_compared: str | None = None


# the pipeline's own analysis, for a prior that was retrieved and is analysed once, in the current job
AnalyseSeries = Callable[[list[Dataset]], SeriesResult]


class PriorProvider(Protocol):
    """Finds, retrieves and (once) analyses the prior of a current series; the node gives one to the job
    runner when [priors] is enabled (dicomnode.priors.provider). Never raises for a peer's sake."""

    def __call__(self, series_id: int, analyse: AnalyseSeries) -> PriorExam: ...


@dataclass
class PipelineContext:
    job_id: int
    series_instance_uid: str
    settings: Settings
    progress: Callable[[str], None] = lambda message: None
    series_id: int | None = None
    prior: PriorProvider | None = None  # None: no comparison with priors ([priors] disabled)


@dataclass
class PipelineOutput:
    datasets: list[Dataset]  # result objects to deliver
    verdict: str | None = None
    findings: list[Finding] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    # per finding (same order), the comparison columns of its `findings` row (tracking_uid, comparison_status, ...)
    finding_columns: list[dict[str, Any]] = field(default_factory=list)


class Pipeline(Protocol):
    def __call__(self, datasets: list[Dataset], context: PipelineContext) -> PipelineOutput: ...


PipelineFactory = Callable[[Settings], Pipeline]
_REGISTRY: dict[str, PipelineFactory] = {}


class UnknownPipeline(Exception):
    pass


def register_pipeline(name: str, factory: PipelineFactory) -> None:
    _REGISTRY[name] = factory


def _import(name: str, target_name: str) -> Any:
    module_name, _, attr = target_name.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UnknownPipeline(f"pipeline {name!r} cannot be imported: {exc}") from exc


def resolve_pipeline(name: str, settings: Settings) -> Pipeline:
    if name in _REGISTRY:
        return _REGISTRY[name](settings)
    if name in BUILT_IN:
        factory: PipelineFactory = _import(name, BUILT_IN[name])
        return factory(settings)
    if ":" in name:
        target = _import(name, name)
        # a class or factory taking settings, or a plain function pipeline
        try:
            return target(settings) if isinstance(target, type) else target
        except TypeError as exc:
            raise UnknownPipeline(f"pipeline {name!r}: {exc}") from exc
    known = sorted({*_REGISTRY, *BUILT_IN})
    raise UnknownPipeline(f"unknown pipeline {name!r}; known: {', '.join(known)} or module:callable")


def known_pipeline(name: str) -> bool:
    return name in _REGISTRY or name in BUILT_IN or ":" in name


def _identity_of(holder: object) -> ModelIdentity | None:
    identity = getattr(holder, "identity", None)
    return identity if isinstance(identity, ModelIdentity) else None


def model_identity(pipeline: object) -> dict[str, Any] | None:
    """The model a loaded pipeline runs (name, version, weights SHA-256, engine) as JSON, or None
    for a pipeline without one. A pipeline that runs a model says so with an `identity` attribute
    (an inference.findings.ModelIdentity), on itself or on its `model`."""
    identity = _identity_of(pipeline) or _identity_of(getattr(pipeline, "model", None))
    return identity.to_json() if identity is not None else None


def model_manifest(pipeline: object) -> dict[str, Any] | None:
    """The weights manifest (model card) of a loaded pipeline's model, or None: its `manifest`
    attribute, on itself or on its `model`."""
    for holder in (pipeline, getattr(pipeline, "model", None)):
        manifest = getattr(holder, "manifest", None)
        if isinstance(manifest, dict):
            return manifest
    return None
