"""Pipelines: a series' datasets in, result datasets (and findings) out.

A pipeline is named in a route. Built-in names are registered here; any other name of the form
`package.module:callable` is imported, so a site can plug in its own without touching the node.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom.dataset import Dataset

from dicomnode.config import Settings
from inference.findings import Finding


@dataclass
class PipelineContext:
    job_id: int
    series_instance_uid: str
    settings: Settings
    progress: Callable[[str], None] = lambda message: None


@dataclass
class PipelineOutput:
    datasets: list[Dataset]  # result objects to deliver
    verdict: str | None = None
    findings: list[Finding] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


class Pipeline(Protocol):
    def __call__(self, datasets: list[Dataset], context: PipelineContext) -> PipelineOutput: ...


PipelineFactory = Callable[[Settings], Pipeline]
_REGISTRY: dict[str, PipelineFactory] = {}


class UnknownPipeline(Exception):
    pass


def register_pipeline(name: str, factory: PipelineFactory) -> None:
    _REGISTRY[name] = factory


def _lung_nodule_factory(settings: Settings) -> Pipeline:
    # imported lazily: loading torch and the weights is only worth it when a route uses it
    from dicomnode.process.lung import LungNodulePipeline

    return LungNodulePipeline(settings)


register_pipeline("lung-nodule", _lung_nodule_factory)


def resolve_pipeline(name: str, settings: Settings) -> Pipeline:
    if name in _REGISTRY:
        return _REGISTRY[name](settings)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UnknownPipeline(f"pipeline {name!r} cannot be imported: {exc}") from exc
        # a class or factory taking settings, or a plain function pipeline
        try:
            return target(settings) if isinstance(target, type) else target
        except TypeError as exc:
            raise UnknownPipeline(f"pipeline {name!r}: {exc}") from exc
    raise UnknownPipeline(f"unknown pipeline {name!r}; known: {', '.join(sorted(_REGISTRY))} or module:callable")


def known_pipeline(name: str) -> bool:
    return name in _REGISTRY or ":" in name
