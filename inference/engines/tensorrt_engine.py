"""TensorRT 10 engine: build from ONNX with fp16, cache the serialized plan on disk, run on CUDA tensors.

Everything GPU-specific (tensorrt, CUDA) is imported inside functions so this module imports on any
machine; the cache key and profile arithmetic are pure functions tested on CPU.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from inference.engines.base import Engine, EngineUnavailable, NetworkIO, NetworkKind
from inference.tempfiles import temporary_beside

Shape = tuple[int, ...]
# TensorRT rejects any tensor with 2^31 or more elements.
TRT_MAX_ELEMENTS = 2**31 - 1
# The detector's widest activation per input voxel: the 24-channel stem at full resolution.
DETECTOR_CHANNELS_PER_VOXEL = 24


@dataclass(frozen=True)
class InputProfile:
    """One input's (min, opt, max) shapes for a TensorRT optimisation profile."""

    name: str
    min: Shape
    opt: Shape
    max: Shape

    def contains(self, shape: Shape) -> bool:
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))


def largest_batch(spatial: Shape, channels_per_voxel: int = DETECTOR_CHANNELS_PER_VOXEL) -> int:
    """Biggest batch whose widest activation stays under TensorRT's element limit (9 for 208^3)."""
    return TRT_MAX_ELEMENTS // (channels_per_voxel * math.prod(spatial))


def detector_profile(
    crop: Shape = (208, 208, 208),
    max_batch: int = 8,
    opt_batch: int | None = None,
    min_spatial: Shape = (64, 64, 64),
    max_spatial: Shape | None = None,
) -> tuple[InputProfile, ...]:
    """Profile for x (N,1,D,H,W) and coord (N,3,D/4,H/4,W/4); spatial axes dynamic in [min, max]."""
    max_spatial = max_spatial or crop
    for s in (*crop, *min_spatial, *max_spatial):
        if s % 16:
            raise ValueError(f"detector spatial sizes must be multiples of 16, got {s}")
    limit = largest_batch(max_spatial)
    if max_batch > limit:
        raise ValueError(
            f"max_batch {max_batch} at {max_spatial} exceeds TensorRT's 2^31-element limit (at most {limit})"
        )
    if max_batch < 1:
        raise ValueError(f"max_batch at {max_spatial} would be {max_batch}: TensorRT cannot hold even one crop")
    opt_batch = min(opt_batch or max(1, max_batch // 2), max_batch)

    def quarter(s: Shape) -> Shape:
        return tuple(v // 4 for v in s)

    return (
        InputProfile("x", (1, 1, *min_spatial), (opt_batch, 1, *crop), (max_batch, 1, *max_spatial)),
        InputProfile(
            "coord", (1, 3, *quarter(min_spatial)), (opt_batch, 3, *quarter(crop)), (max_batch, 3, *quarter(max_spatial))
        ),
    )


def classifier_profile(side: int = 32, max_batch: int = 64, opt_batch: int = 16) -> tuple[InputProfile, ...]:
    shape = (side, side, side)
    return (InputProfile("x", (1, 1, *shape), (min(opt_batch, max_batch), 1, *shape), (max_batch, 1, *shape)),)


def engine_cache_key(
    weights_sha256: str,
    trt_version: str,
    gpu_name: str,
    compute_capability: tuple[int, int],
    profile: Sequence[InputProfile],
    fp16: bool,
    kind: NetworkKind,
) -> str:
    """A plan is only valid for the same weights, TensorRT version, GPU model and input profile."""
    doc = {
        "weights_sha256": weights_sha256,
        "tensorrt": trt_version,
        "gpu": gpu_name,
        "sm": list(compute_capability),
        "profile": [asdict(p) for p in profile],
        "fp16": fp16,
        "kind": kind,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def engine_cache_path(cache_dir: str | Path, key: str, kind: NetworkKind, trt_version: str) -> Path:
    return Path(cache_dir) / f"{kind}-trt{trt_version}-{key[:24]}.plan"


def _write_atomic(path: Path, data: bytes) -> None:
    # Two workers building at once must never leave a half-written plan for the next to load.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class TensorRTEngine(Engine):
    def __init__(
        self,
        onnx_path: str | Path,
        io: NetworkIO,
        profile: Sequence[InputProfile],
        cache_dir: str | Path,
        weights_sha256: str | None = None,
        fp16: bool = True,
        workspace_bytes: int = 4 << 30,
        device: int = 0,
    ) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise EngineUnavailable("tensorrt engine: the tensorrt package is not installed (pip install 'dicomnode[gpu]')") from exc
        import torch

        if not torch.cuda.is_available():
            raise EngineUnavailable("tensorrt engine: needs an NVIDIA GPU, and torch sees no CUDA device")
        if tuple(p.name for p in profile) != io.input_names:
            raise ValueError(f"profile inputs {[p.name for p in profile]} do not match {io.input_names}")
        self._trt = trt
        self._torch = torch
        self.io = io
        self.profile = tuple(profile)
        self.max_batch = min(p.max[0] for p in profile)
        self.fp16 = fp16
        self.name = "tensorrt-fp16" if fp16 else "tensorrt-fp32"
        self.device = torch.device("cuda", device)
        self._logger = trt.Logger(trt.Logger.WARNING)

        onnx_path = Path(onnx_path)
        if weights_sha256 is None:
            from inference.hashing import file_sha256

            weights_sha256 = file_sha256(onnx_path)  # the ONNX file holds the weights, so it identifies them
        key = engine_cache_key(
            weights_sha256,
            trt.__version__,
            torch.cuda.get_device_name(device),
            torch.cuda.get_device_capability(device),
            self.profile,
            fp16,
            io.kind,
        )
        self.plan_path = engine_cache_path(cache_dir, key, io.kind, trt.__version__)
        self._runtime = trt.Runtime(self._logger)
        # tensorrt ships no types: the ICudaEngine once loaded, None after close()
        self.engine: Any = None
        if self.plan_path.is_file():
            # A plan from a crashed write or another TensorRT build deserializes to None: rebuild then.
            self.engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:
            plan = self._build(onnx_path, workspace_bytes)
            _write_atomic(self.plan_path, plan)
            self.engine = self._runtime.deserialize_cuda_engine(plan)
            if self.engine is None:
                raise RuntimeError(f"TensorRT could not deserialize the plan it just built from {onnx_path}")
        self.context = self.engine.create_execution_context()

    def _build(self, onnx_path: Path, workspace_bytes: int) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # TensorRT 10 networks are always explicit-batch
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
        if self.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        opt_profile = builder.create_optimization_profile()
        for p in self.profile:
            opt_profile.set_shape(p.name, p.min, p.opt, p.max)
        config.add_optimization_profile(opt_profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
        return bytes(serialized)

    def _torch_dtype(self, name: str) -> Any:
        np_dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
        return {np.dtype(np.float32): self._torch.float32, np.dtype(np.float16): self._torch.float16}[np_dtype]

    def _forward(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        torch = self._torch
        keep = []  # device buffers must outlive the asynchronous execution
        for p, arr in zip(self.profile, inputs):
            if not p.contains(arr.shape):
                raise ValueError(f"input {p.name} shape {arr.shape} is outside the engine profile {p.min}..{p.max}")
            t = torch.from_numpy(arr).to(self.device).to(self._torch_dtype(p.name)).contiguous()
            keep.append(t)
            self.context.set_input_shape(p.name, tuple(t.shape))
            self.context.set_tensor_address(p.name, t.data_ptr())
        out_name = self.io.output_name
        out = torch.empty(tuple(self.context.get_tensor_shape(out_name)), dtype=self._torch_dtype(out_name), device=self.device)
        self.context.set_tensor_address(out_name, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return out.float().cpu().numpy()

    def close(self) -> None:
        self.context = None
        self.engine = None
