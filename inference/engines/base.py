"""One small interface for every engine (torch, onnxruntime, TensorRT) and both networks.

A backend (`Engine`) only knows how to run a batch of named float32 arrays through one network.
`DetectorEngine` and `ClassifierEngine` put the network's contract on top: shapes checked,
batches split to what the backend allows, one float32 array out.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from inference.remote_engine import EngineModelMismatch, EngineUnreachable  # noqa: F401 (re-exported)

NetworkKind = Literal["detector", "classifier"]


class EngineUnavailable(RuntimeError):
    """The requested engine cannot run here (package missing, no GPU); the message says which."""



@dataclass(frozen=True)
class NetworkIO:
    kind: NetworkKind
    input_names: tuple[str, ...]
    output_name: str


DETECTOR_IO = NetworkIO("detector", ("x", "coord"), "out")
CLASSIFIER_IO = NetworkIO("classifier", ("x",), "features")


def network_io(kind: NetworkKind) -> NetworkIO:
    if kind == "detector":
        return DETECTOR_IO
    if kind == "classifier":
        return CLASSIFIER_IO
    raise ValueError(f"unknown network kind {kind!r}: expected 'detector' or 'classifier'")


class Engine(ABC):
    """Runs one network; subclasses implement `_forward` for a batch of at most `max_batch`."""

    name: str  # identity reported with results: "torch-cpu", "onnxruntime-cpu", "tensorrt-fp16", ...
    max_batch: int
    io: NetworkIO

    @abstractmethod
    def _forward(self, inputs: Sequence[np.ndarray]) -> np.ndarray: ...

    def run(self, *inputs: np.ndarray) -> np.ndarray:
        if len(inputs) != len(self.io.input_names):
            raise ValueError(f"{self.io.kind} takes {len(self.io.input_names)} inputs, got {len(inputs)}")
        arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in inputs]
        n = arrays[0].shape[0]
        if any(a.shape[0] != n for a in arrays):
            raise ValueError("all inputs must have the same batch size")
        outs = [
            self._forward([a[i : i + self.max_batch] for a in arrays]) for i in range(0, n, max(1, self.max_batch))
        ]
        return np.concatenate(outs, axis=0) if len(outs) > 1 else outs[0]

    def ensure_ready(self) -> None:
        """Raise EngineUnreachable now if a remote engine cannot run (cheap: before a job's
        preprocessing, not after it); a local engine is always ready."""

    def close(self) -> None:
        """Release sessions and device memory; the engine is unusable afterwards."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _NetworkEngine:
    """What every network's engine shares: a backend of the right kind, its name and batch size."""

    kind = ""

    def __init__(self, engine: Engine) -> None:
        if engine.io.kind != self.kind:
            raise ValueError(f"a {self.kind} engine needs a {self.kind} backend, got {engine.io.kind}")
        self.engine = engine

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def max_batch(self) -> int:
        return self.engine.max_batch

    def ensure_ready(self) -> None:
        self.engine.ensure_ready()

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> "_NetworkEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DetectorEngine(_NetworkEngine):
    """run(x (N,1,D,H,W), coord (N,3,D/4,H/4,W/4)) -> (N, D/4, H/4, W/4, 3, 5) float32."""

    kind = "detector"

    def run(self, x: np.ndarray, coord: np.ndarray) -> np.ndarray:
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"x must be (N,1,D,H,W), got {x.shape}")
        if any(s % 16 for s in x.shape[2:]):
            raise ValueError(f"x spatial shape {x.shape[2:]} must be a multiple of 16 (four stride-2 stages)")
        want = (x.shape[0], 3, *(s // 4 for s in x.shape[2:]))
        if coord.shape != want:
            raise ValueError(f"coord must be {want}, got {coord.shape}")
        return self.engine.run(x, coord)


class ClassifierEngine(_NetworkEngine):
    """run(x (N,1,32,32,32)) -> (N, F) float32 features."""

    kind = "classifier"

    def run(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"x must be (N,1,D,H,W), got {x.shape}")
        out = self.engine.run(x)
        return out.reshape(out.shape[0], -1)

