"""Pick and build an engine: auto = TensorRT on an NVIDIA GPU, else torch CUDA, else ONNX Runtime, else torch."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence, overload

from torch import nn

from inference.engines.base import (
    ClassifierEngine,
    DetectorEngine,
    Engine,
    EngineUnavailable,
    NetworkKind,
    network_io,
)

if TYPE_CHECKING:
    from typing import TypeGuard

    from inference.nets.dpn3d import DPN26Detector
    from inference.engines.tensorrt_engine import InputProfile
    from inference.engines.triton_engine import TritonOptions

EngineKind = Literal["auto", "torch", "onnxruntime", "tensorrt", "triton"]
KINDS: tuple[str, ...] = ("auto", "torch", "onnxruntime", "tensorrt", "triton")


def default_cache_dir() -> Path:
    return Path(os.environ.get("DICOMNODE_ENGINE_CACHE", Path.home() / ".cache" / "dicomnode" / "engines"))


def _has(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_kind(kind: str) -> str:
    """The concrete engine `kind` means here: 'tensorrt', 'torch-cuda', 'onnxruntime' or 'torch'."""
    if kind not in KINDS:
        raise ValueError(f"unknown engine {kind!r}: choose one of {', '.join(KINDS)}")
    if kind == "auto":
        if _cuda():
            return "tensorrt" if _has("tensorrt") else "torch-cuda"
        return "onnxruntime" if _has("onnxruntime") else "torch"
    if kind == "tensorrt":
        if not _has("tensorrt"):
            raise EngineUnavailable("engine 'tensorrt' asked for but the tensorrt package is not installed")
        if not _cuda():
            raise EngineUnavailable("engine 'tensorrt' asked for but there is no CUDA GPU")
    if kind == "triton" and not _has("tritonclient"):
        raise EngineUnavailable("engine 'triton' asked for but the tritonclient package is not installed "
                                "(pip install 'dicomnode[triton]')")
    if kind == "onnxruntime" and not _has("onnxruntime"):
        raise EngineUnavailable("engine 'onnxruntime' asked for but the onnxruntime package is not installed")
    if kind == "torch":
        return "torch-cuda" if _cuda() else "torch"
    return kind


def _onnx_for(model: nn.Module | None, onnx_path: str | Path | None, network: NetworkKind, cache_dir: Path, sha: str | None) -> Path:
    if onnx_path is not None:
        return Path(onnx_path)
    if model is None:
        raise ValueError("give a model or an ONNX file")
    from inference.export import export_onnx
    from inference.nets.checkpoint import state_dict_sha256

    sha = sha or state_dict_sha256(model)
    path = cache_dir / f"{network}-{sha[:24]}.onnx"
    if not path.is_file():  # exports are deterministic per weights, so reuse one from an earlier run
        export_onnx(model, path, kind=network)
    return path


def _splittable(model: nn.Module | None) -> "TypeGuard[DPN26Detector]":
    """Only the DPN26 detector has the stem/layer2/trunk split the slabbed engine exports."""
    from inference.nets.dpn3d import DPN26Detector

    return isinstance(model, DPN26Detector)


# The network picks the wrapper type: callers that name it get a DetectorEngine or ClassifierEngine.
@overload
def make_engine(
    kind: str = ...,
    *,
    network: Literal["detector"] = ...,
    model: nn.Module | None = ...,
    onnx_path: str | Path | None = ...,
    weights_sha256: str | None = ...,
    threads: int | None = ...,
    max_batch: int | None = ...,
    fp16: bool = ...,
    cache_dir: str | Path | None = ...,
    trt_profile: Sequence[InputProfile] | None = ...,
    triton: TritonOptions | None = ...,
    weights_version: str | None = ...,
    slab_memory_mb: int | None = ...,
) -> DetectorEngine: ...


@overload
def make_engine(
    kind: str = ...,
    *,
    network: Literal["classifier"],
    model: nn.Module | None = ...,
    onnx_path: str | Path | None = ...,
    weights_sha256: str | None = ...,
    threads: int | None = ...,
    max_batch: int | None = ...,
    fp16: bool = ...,
    cache_dir: str | Path | None = ...,
    trt_profile: Sequence[InputProfile] | None = ...,
    triton: TritonOptions | None = ...,
    weights_version: str | None = ...,
    slab_memory_mb: int | None = ...,
) -> ClassifierEngine: ...


@overload
def make_engine(
    kind: str = ...,
    *,
    network: NetworkKind,
    model: nn.Module | None = ...,
    onnx_path: str | Path | None = ...,
    weights_sha256: str | None = ...,
    threads: int | None = ...,
    max_batch: int | None = ...,
    fp16: bool = ...,
    cache_dir: str | Path | None = ...,
    trt_profile: Sequence[InputProfile] | None = ...,
    triton: TritonOptions | None = ...,
    weights_version: str | None = ...,
    slab_memory_mb: int | None = ...,
) -> DetectorEngine | ClassifierEngine: ...


def make_engine(
    kind: str = "auto",
    *,
    network: NetworkKind = "detector",
    model: nn.Module | None = None,
    onnx_path: str | Path | None = None,
    weights_sha256: str | None = None,
    threads: int | None = None,
    max_batch: int | None = None,
    fp16: bool = True,
    cache_dir: str | Path | None = None,
    trt_profile: Sequence[InputProfile] | None = None,
    triton: TritonOptions | None = None,
    weights_version: str | None = None,
    slab_memory_mb: int | None = None,
) -> DetectorEngine | ClassifierEngine:
    """Build the engine for `network` from a torch module and/or its ONNX export.

    kind: "auto" | "torch" | "onnxruntime" | "tensorrt" | "triton". The torch engine needs `model`;
    the local others take `onnx_path` or export `model` into `cache_dir` once (keyed by the weights'
    SHA-256); "triton" needs `triton` (the server) and the weights' SHA-256 and version to check.
    `slab_memory_mb`: for the onnxruntime detector built from a DPN26Detector, run its full-resolution
    layers in z-slabs sized to this budget (inference.engines.slabbed: same output, bounded memory).
    """
    io = network_io(network)
    concrete = resolve_kind(kind)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    engine: Engine
    if concrete == "triton":
        engine = _triton_engine(network, triton, weights_sha256, weights_version, max_batch)
    elif concrete in ("torch", "torch-cuda"):
        if model is None:
            raise ValueError("the torch engine needs the torch model, not only an ONNX file")
        from inference.engines.torch_engine import TorchEngine

        cuda = concrete == "torch-cuda"
        batch = max_batch or (16 if network == "classifier" else (4 if cuda else 1))
        engine = TorchEngine(model, io, device="cuda" if cuda else "cpu", fp16=fp16, max_batch=batch, threads=threads)
    elif concrete == "onnxruntime":
        from inference.engines.onnx_engine import OnnxRuntimeEngine

        if network == "detector" and slab_memory_mb and onnx_path is None and _splittable(model):
            from inference.engines.slabbed import SlabbedDetectorEngine, export_split
            from inference.nets.checkpoint import state_dict_sha256

            graphs = export_split(model, cache, weights_sha256 or state_dict_sha256(model))
            engine = SlabbedDetectorEngine(*graphs, threads=threads, memory_mb=slab_memory_mb)
        else:
            path = _onnx_for(model, onnx_path, network, cache, weights_sha256)
            batch = max_batch or (16 if network == "classifier" else 1)
            engine = OnnxRuntimeEngine(path, io, threads=threads, max_batch=batch)
    else:
        from inference.engines.tensorrt_engine import TensorRTEngine, classifier_profile, detector_profile

        path = _onnx_for(model, onnx_path, network, cache, weights_sha256)
        if trt_profile is None:
            if network == "detector":
                trt_profile = detector_profile(max_batch=min(max_batch or 8, 9))
            else:
                trt_profile = classifier_profile(max_batch=max_batch or 64)
        engine = TensorRTEngine(path, io, trt_profile, cache, weights_sha256=weights_sha256, fp16=fp16)
    return DetectorEngine(engine) if network == "detector" else ClassifierEngine(engine)


def _triton_engine(network: NetworkKind, triton: TritonOptions | None, sha: str | None, version: str | None,
                   max_batch: int | None) -> Engine:
    from inference.engines.triton_engine import TritonEngine

    if triton is None:
        raise ValueError("engine 'triton' needs the server: set [inference] triton_url")
    if not sha or not version:
        raise ValueError("engine 'triton' needs the weights' SHA-256 and version, to check the server's model")
    # the batch limits of the exported model config (inference.export_triton.MAX_BATCH)
    batch = max_batch or (64 if network == "classifier" else 1)
    return TritonEngine(triton, network_io(network), f"{triton.model_prefix}-{network}", sha, version, batch)
