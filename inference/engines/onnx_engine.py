"""ONNX Runtime engine (CPU): about 3-4x faster than PyTorch on this network on CPU (docs/architecture.md, "Adding an engine")."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from inference.engines.base import Engine, EngineUnavailable, NetworkIO


class OnnxRuntimeEngine(Engine):
    def __init__(
        self,
        onnx_path: str | Path,
        io: NetworkIO,
        threads: int | None = None,
        max_batch: int = 1,
        memory_arena: bool = True,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency
            raise EngineUnavailable("onnxruntime engine: the onnxruntime package is not installed") from exc
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # The arena keeps peak memory allocated between runs; for one whole-volume pass, off is leaner.
        opts.enable_cpu_mem_arena = memory_arena
        self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
        names = tuple(i.name for i in self.session.get_inputs())
        if names != io.input_names:
            raise ValueError(f"{onnx_path}: inputs {names}, expected {io.input_names} for a {io.kind}")
        self.io = io
        self.max_batch = max_batch
        self.name = "onnxruntime-cpu"

    def _forward(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        feeds = dict(zip(self.io.input_names, inputs))
        (out,) = self.session.run([self.io.output_name], feeds)
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self.session = None
