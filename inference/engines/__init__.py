"""Engines behind one small interface: torch, onnxruntime, TensorRT (imported lazily)."""
from inference.engines.base import (
    ClassifierEngine,
    DetectorEngine,
    Engine,
    EngineUnavailable,
    NetworkIO,
)
from inference.engines.select import make_engine, resolve_kind

__all__ = [
    "ClassifierEngine",
    "DetectorEngine",
    "Engine",
    "EngineUnavailable",
    "NetworkIO",
    "make_engine",
    "resolve_kind",
]
