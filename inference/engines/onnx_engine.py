"""ONNX Runtime engine (CPU): about 3-4x faster than PyTorch on this network on CPU (docs/architecture.md, "Adding an engine")."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from inference.engines.base import Engine, EngineUnavailable, NetworkIO


_shared_arena_registered = False


def _register_shared_arena(ort: Any) -> None:
    """Register, once per process, the CPU arena that sessions built with `shared_arena` allocate from.

    It grows only by what is requested (kSameAsRequested; the default doubles, up to twice the need), and
    being one arena for several sessions, what one graph freed serves the next without a page fault."""
    global _shared_arena_registered
    if _shared_arena_registered:
        return
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    # max_mem 0: no limit; arena_extend_strategy 1: kSameAsRequested; -1: ONNX Runtime's defaults
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
    _shared_arena_registered = True


def cpu_session(onnx_path: str | Path, threads: int | None, arena: bool = True, mem_pattern: bool = True,
                shared_arena: bool = False) -> Any:
    """An ONNX Runtime CPU session as the engines use it: all graph optimisations, sequential execution,
    `threads` intra-op threads (None: ONNX Runtime's default), one inter-op thread; `arena` and
    `mem_pattern` are ONNX Runtime's CPU memory arena and memory-pattern planning; `shared_arena`: allocate
    from the process's one shared CPU arena (_register_shared_arena) instead of a session's own."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency
        raise EngineUnavailable("onnxruntime engine: the onnxruntime package is not installed") from exc
    opts = ort.SessionOptions()
    if shared_arena:
        _register_shared_arena(ort)
        opts.add_session_config_entry("session.use_env_allocators", "1")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_cpu_mem_arena = arena
    opts.enable_mem_pattern = mem_pattern
    return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxRuntimeEngine(Engine):
    def __init__(
        self,
        onnx_path: str | Path,
        io: NetworkIO,
        threads: int | None = None,
        max_batch: int = 1,
        memory_arena: bool = True,
    ) -> None:
        # The arena keeps peak memory allocated between runs; for one whole-volume pass, off is leaner.
        self.session = cpu_session(onnx_path, threads, arena=memory_arena)
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
