"""A Triton Inference Server model repository for the packaged (or given) weights.

One model per network, named `dicomnode-detector` and `dicomnode-classifier`:

    DIR/dicomnode-detector/config.pbtxt
    DIR/dicomnode-detector/1/model.onnx        (backend onnxruntime, or python + model.py)
    DIR/dicomnode-detector-trt/1/model.plan    (where TensorRT and a GPU are here)

The weights' SHA-256 and version go into each config's `parameters`, so the node can check that
the server runs the weights it was configured with (inference.engines.triton_engine).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from inference.engines.base import NetworkKind, network_io
from inference.weights_bundle import WeightsBundle

TritonBackend = Literal["onnxruntime", "python"]
BACKENDS: tuple[str, ...] = ("onnxruntime", "python")

# the names the node asks the server for (config [inference] triton_model_prefix + network)
MODEL_PREFIX = "dicomnode"
# the largest batch a request may carry: the detector runs one lung box or a few 208^3 tiles,
# the classifier a batch of 32^3 crops
MAX_BATCH: dict[NetworkKind, int] = {"detector": 4, "classifier": 64}
# which manifest file holds each network's weights
WEIGHTS_ROLE: dict[NetworkKind, str] = {"detector": "detector", "classifier": "classifier_net"}
PARAM_SHA = "weights_sha256"
PARAM_VERSION = "weights_version"
PARAM_NAME = "weights_name"


def model_name(network: NetworkKind, prefix: str = MODEL_PREFIX) -> str:
    return f"{prefix}-{network}"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dims: tuple[int, ...]  # without the batch axis; -1 where the axis is dynamic


@dataclass(frozen=True)
class TritonModel:
    name: str
    network: NetworkKind
    directory: Path
    backend: str
    weights_sha256: str


def onnx_io(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX graph with their per-sample dims (-1 for a named, dynamic axis)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initialisers = {i.name for i in graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
        return TensorSpec(value.name, tuple(dims[1:]))  # axis 0 is the batch: Triton adds it

    return ([spec(v) for v in graph.input if v.name not in initialisers], [spec(v) for v in graph.output])


def config_pbtxt(name: str, backend: str, max_batch: int, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 parameters: dict[str, str], platform: str | None = None) -> str:
    """config.pbtxt text: FP32 tensors, the latest version only, one CPU/GPU instance."""

    def tensors(kind: str, specs: list[TensorSpec]) -> str:
        body = ",\n".join(f'  {{ name: "{s.name}" data_type: TYPE_FP32 dims: [ {", ".join(map(str, s.dims))} ] }}'
                          for s in specs)
        return f"{kind} [\n{body}\n]\n"

    kind_line = f'platform: "{platform}"\n' if platform else f'backend: "{backend}"\n'
    params = "".join(f'parameters: {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in parameters.items())
    return (f'name: "{name}"\n{kind_line}max_batch_size: {max_batch}\n'
            f"version_policy: {{ latest: {{ num_versions: 1 }} }}\n"
            + tensors("input", inputs) + tensors("output", outputs) + params)


# The Python-backend model: ONNX Runtime inside Triton (the nvidia-pytriton wheel's tritonserver has
# the Python backend but no onnxruntime backend). The server's Python must have onnxruntime + numpy.
PYTHON_MODEL = '''"""Triton Python backend: runs model.onnx (beside this file) with ONNX Runtime on the CPU.

Written by `dicomnode model export-triton --backend python`.
"""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.inputs = [i["name"] for i in config["input"]]
        self.output = config["output"][0]["name"]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        opts = ort.SessionOptions()
        # the same options as the node's local onnxruntime engine, so the numbers match
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        threads = int(os.environ.get("DICOMNODE_TRITON_THREADS", "0"))
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            # through DLPack, not as_numpy()/Tensor(name, array): the stub's built-in numpy bridge
            # is compiled against numpy 1 and hands numpy 2 arrays over empty
            feeds = {n: np.from_dlpack(pb_utils.get_input_tensor_by_name(request, n)) for n in self.inputs}
            (out,) = self.session.run([self.output], feeds)
            tensor = pb_utils.Tensor.from_dlpack(self.output, np.ascontiguousarray(out, dtype=np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self):
        self.session = None
'''


def write_model(out: Path, network: NetworkKind, onnx_path: Path, bundle: WeightsBundle,
                backend: TritonBackend = "onnxruntime", prefix: str = MODEL_PREFIX) -> TritonModel:
    """One model folder (config.pbtxt, 1/model.onnx, and 1/model.py for the Python backend)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown Triton backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    name = model_name(network, prefix)
    directory = out / name
    version_dir = directory / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, version_dir / "model.onnx")
    if backend == "python":
        (version_dir / "model.py").write_text(PYTHON_MODEL)
    inputs, outputs = onnx_io(onnx_path)
    expected = network_io(network)
    if tuple(i.name for i in inputs) != expected.input_names:
        raise ValueError(f"{onnx_path}: inputs {[i.name for i in inputs]}, expected {list(expected.input_names)}")
    sha = bundle.sha256(WEIGHTS_ROLE[network])
    params = {PARAM_SHA: sha, PARAM_VERSION: bundle.version, PARAM_NAME: str(bundle.manifest.get("name", ""))}
    (directory / "config.pbtxt").write_text(config_pbtxt(name, backend, MAX_BATCH[network], inputs, outputs, params))
    return TritonModel(name, network, directory, backend, sha)


def write_tensorrt_model(out: Path, network: NetworkKind, onnx_path: Path, bundle: WeightsBundle,
                         cache_dir: Path, prefix: str = MODEL_PREFIX) -> TritonModel:
    """A `tensorrt_plan` model built here with TensorRT's Python API (the GPU it is built on must be the
    kind Triton runs on: plans are specific to the GPU and the TensorRT version)."""
    from inference.engines.tensorrt_engine import TensorRTEngine, classifier_profile, detector_profile

    io = network_io(network)
    profile = (detector_profile(max_batch=MAX_BATCH[network]) if network == "detector"
               else classifier_profile(max_batch=MAX_BATCH[network]))
    sha = bundle.sha256(WEIGHTS_ROLE[network])
    engine = TensorRTEngine(onnx_path, io, profile, cache_dir, weights_sha256=sha, fp16=True)
    try:
        name = model_name(network, prefix) + "-trt"
        directory = out / name
        (directory / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(engine.plan_path, directory / "1" / "model.plan")
    finally:
        engine.close()
    inputs, outputs = onnx_io(onnx_path)
    params = {PARAM_SHA: sha, PARAM_VERSION: bundle.version, PARAM_NAME: str(bundle.manifest.get("name", ""))}
    (directory / "config.pbtxt").write_text(
        config_pbtxt(name, "tensorrt", engine.max_batch, inputs, outputs, params, platform="tensorrt_plan"))
    return TritonModel(name, network, directory, "tensorrt", sha)
