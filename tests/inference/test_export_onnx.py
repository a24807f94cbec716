"""ONNX export of DPN26: TensorRT-importable op set, and ONNX Runtime agrees with PyTorch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from inference.export import OPSET, check_tensorrt_onnx_support, export_onnx
from inference.nets.dpn3d import DPN26Detector, make_coord

pytestmark = pytest.mark.one_receiver  # receiving is not this file's subject (tests/conftest.py)

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[DPN26Detector, Path]:
    torch.manual_seed(11)
    model = DPN26Detector().eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "dpn26.onnx", kind="detector")
    return model, path


def test_export_has_dynamic_axes_and_supported_ops(exported: tuple[DPN26Detector, Path]) -> None:
    _, path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    x = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in x] == ["batch", "", "depth", "height", "width"]
    assert {n.op_type for n in model.graph.node} >= {"Conv", "ConvTranspose", "Concat"}
    assert check_tensorrt_onnx_support(path) == []


def test_onnxruntime_matches_torch_on_96_cube(exported: tuple[DPN26Detector, Path]) -> None:
    model, path = exported
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 96, 96, 96)).astype(np.float32)
    coord = make_coord((96, 96, 96))[None]
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(coord)).numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"x": x, "coord": coord})
    assert got.shape == (1, 24, 24, 24, 3, 5)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_checker_reports_what_tensorrt_cannot_import(tmp_path: Path) -> None:
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 1, 3], np.ones(12, np.float32))
    dbl = helper.make_tensor("d", TensorProto.DOUBLE, [1], [1.0])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3]),  # 1D conv
        helper.make_node("Unique", ["c"], ["u"]),
        helper.make_node("Cast", ["u"], ["y"], to=TensorProto.DOUBLE),
    ]
    graph = helper.make_graph(
        nodes,
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
        initializer=[w, dbl],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    problems = "\n".join(check_tensorrt_onnx_support(path))
    assert "opset 21" in problems
    assert "Unique" in problems and "not supported" in problems
    assert "1D kernel" in problems
    assert "casts to double" in problems
    assert "initializer 'd' is double" in problems
    assert "'y' has element type 11" in problems
