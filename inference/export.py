"""ONNX export of the detector/classifier and a pre-flight check against TensorRT 10's ONNX parser.

The check lets CPU-only CI catch an op TensorRT cannot import long before anyone builds an engine
on a GPU machine.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from inference.engines.base import NetworkKind, network_io
from inference.nets.dpn3d import make_coord
from inference.tempfiles import temporary_beside

OPSET = 17
# TensorRT 10.0's parser imports opsets 9..20 (onnx-tensorrt docs/operators.md); later 10.x go higher,
# but we must run on any TensorRT 10.
TRT_MIN_OPSET, TRT_MAX_OPSET = 9, 20

# ONNX ops the TensorRT 10 parser imports natively (onnx-tensorrt docs/operators.md, "Y" rows).
TRT10_SUPPORTED_OPS: frozenset[str] = frozenset(
    """
    Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool
    BatchNormalization BitShift BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant
    ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div
    Dropout DynamicQuantizeLinear Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
    GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
    GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish
    Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu
    Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
    Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu
    QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal
    ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
    ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh
    Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
    Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze STFT Sub Sum Tan Tanh
    ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)
# Ops whose spatial form TensorRT restricts to 2D or 3D (kernel rank 2 or 3).
_SPATIAL_2D_3D = {"Conv", "ConvTranspose", "AveragePool", "MaxPool", "LpPool"}
# Weights of these must be initializers (constants) for the TensorRT importer.
_WEIGHT_INITIALIZER = {"Conv", "ConvTranspose"}
# ONNX TensorProto element types TensorRT 10 accepts (FLOAT, UINT8, INT8, INT32, INT64, BOOL, FLOAT16,
# DOUBLE (cast down), BFLOAT16, FLOAT8E4M3FN, INT4).
_TRT_DTYPES = {1, 2, 3, 6, 7, 9, 10, 11, 16, 17, 22}
_DOUBLE = 11


def _sample_inputs(kind: NetworkKind, side: int) -> tuple[torch.Tensor, ...]:
    x = torch.zeros(1, 1, side, side, side)
    if kind == "detector":
        return x, torch.from_numpy(make_coord((side, side, side)))[None]
    return (x,)


def export_onnx(model: nn.Module, path: str | Path, kind: NetworkKind = "detector", sample_side: int | None = None) -> Path:
    """Write ``model`` as ONNX (opset 17) with dynamic batch and spatial axes; returns the path.

    The trace runs once on a small sample (64^3 detector, 32^3 classifier); the graph itself is
    shape-generic because every axis is marked dynamic.
    """
    io = network_io(kind)
    side = sample_side or (64 if kind == "detector" else 32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dyn: dict[str, dict[int, str]] = {"x": {0: "batch", 2: "depth", 3: "height", 4: "width"}}
    if kind == "detector":
        dyn["coord"] = {0: "batch", 2: "depth4", 3: "height4", 4: "width4"}
        dyn[io.output_name] = {0: "batch", 1: "depth4", 2: "height4", 3: "width4"}
    else:
        dyn[io.output_name] = {0: "batch"}
    was_training = model.training
    model.eval()
    tmp = temporary_beside(path)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated but needs no onnxscript and handles these nets exactly.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                _sample_inputs(kind, side),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=list(io.input_names),
                output_names=[io.output_name],
                dynamic_axes=dyn,
                do_constant_folding=True,
                external_data=False,
            )
        tmp.replace(path)  # atomic: a half-written model is never picked up by an engine cache
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    return path


def check_tensorrt_onnx_support(onnx_path: str | Path) -> list[str]:
    """Problems TensorRT 10's ONNX parser would have with this model; an empty list means none found."""
    import onnx

    model = onnx.load(str(onnx_path))
    problems: list[str] = []
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not TRT_MIN_OPSET <= imp.version <= TRT_MAX_OPSET:
            problems.append(f"opset {imp.version} outside TensorRT 10's range {TRT_MIN_OPSET}..{TRT_MAX_OPSET}")
        elif imp.domain not in ("", "ai.onnx"):
            problems.append(f"custom op domain {imp.domain!r} needs a TensorRT plugin")

    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    constants = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    for init in graph.initializer:
        if init.data_type == _DOUBLE:
            problems.append(f"initializer {init.name!r} is double; TensorRT casts it down to float")
        elif init.data_type not in _TRT_DTYPES:
            problems.append(f"initializer {init.name!r} has element type {init.data_type}, unsupported")
    for value in list(graph.input) + list(graph.output):
        et = value.type.tensor_type.elem_type
        if et not in (1, 10):  # float32 / float16 I/O keeps the engine's buffers simple
            problems.append(f"graph I/O {value.name!r} has element type {et}, expected float32/float16")

    for node in graph.node:
        where = f"{node.op_type} node {node.name or node.output[0]!r}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {node.domain!r}")
            continue
        if node.op_type not in TRT10_SUPPORTED_OPS:
            problems.append(f"{where}: op not supported by the TensorRT 10 ONNX parser")
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in _SPATIAL_2D_3D:
            kernel = attrs.get("kernel_shape")
            if kernel is not None and len(kernel) not in (2, 3):
                problems.append(f"{where}: {len(kernel)}D kernel; TensorRT supports 2D or 3D only")
        if node.op_type in _WEIGHT_INITIALIZER and len(node.input) > 1:
            w = node.input[1]
            if w not in initializers and w not in constants:
                problems.append(f"{where}: weights {w!r} are computed at run time; TensorRT needs an initializer")
        if node.op_type == "ConvTranspose" and attrs.get("group", 1) != 1 and len(attrs.get("kernel_shape", [])) == 3:
            problems.append(f"{where}: grouped 3D ConvTranspose is not supported by TensorRT")
        if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
            problems.append(f"{where}: the Indices output of MaxPool is unsupported")
        if node.op_type == "Cast" and attrs.get("to") == _DOUBLE:
            problems.append(f"{where}: casts to double")
        if node.op_type in ("Squeeze", "Unsqueeze"):
            axes = node.input[1] if len(node.input) > 1 else ""
            if axes and axes not in initializers and axes not in constants:
                problems.append(f"{where}: axes computed at run time; TensorRT needs them constant")
        if node.op_type == "Slice" and len(node.input) > 3 and node.input[3]:
            if node.input[3] not in initializers and node.input[3] not in constants:
                problems.append(f"{where}: axes computed at run time; TensorRT needs them constant")
        if node.op_type == "TopK" and len(node.input) > 1 and node.input[1] not in initializers | constants:
            problems.append(f"{where}: K computed at run time; TensorRT needs it constant")
    return problems
