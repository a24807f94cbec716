"""Engines: torch and onnxruntime agree, batching, selection errors, TensorRT cache keys (CPU), GPU paths."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from inference.engines import ClassifierEngine, DetectorEngine, EngineUnavailable, make_engine, resolve_kind
from inference.engines.tensorrt_engine import (
    InputProfile,
    classifier_profile,
    detector_profile,
    engine_cache_key,
    engine_cache_path,
    largest_batch,
)
from inference.nets.dpn3d import DPN26Detector, make_coord

torch.set_num_threads(2)
HAS_CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


class TinyFeatures(nn.Module):
    """A small stand-in classifier body: (N,1,32,32,32) -> (N,16)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 16, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm3d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3, 4))


@pytest.fixture(scope="module")
def detector() -> DPN26Detector:
    torch.manual_seed(5)
    return DPN26Detector().eval()


def _inputs(n: int, side: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, side, side, side)).astype(np.float32)
    coord = np.repeat(make_coord((side, side, side))[None], n, axis=0)
    return x, coord


def test_torch_and_onnxruntime_agree_on_detector(detector: DPN26Detector, tmp_path: Path) -> None:
    x, coord = _inputs(2)
    with make_engine("torch", model=detector, threads=2, max_batch=1) as te:
        assert te.name == ("torch-cuda-fp16" if HAS_CUDA else "torch-cpu")
        ref = te.run(x, coord)
    with make_engine("onnxruntime", model=detector, threads=2, cache_dir=tmp_path, max_batch=2) as oe:
        assert isinstance(oe, DetectorEngine) and oe.name == "onnxruntime-cpu"
        got = oe.run(x, coord)
    assert ref.shape == got.shape == (2, 16, 16, 16, 3, 5)
    np.testing.assert_allclose(got, ref, atol=1e-2 if HAS_CUDA else 1e-4)
    assert list(tmp_path.glob("detector-*.onnx"))  # export cached by weights hash


def test_batches_are_split_to_max_batch(detector: DPN26Detector, tmp_path: Path) -> None:
    x, coord = _inputs(3, side=32, seed=1)
    engine = make_engine("onnxruntime", model=detector, threads=2, cache_dir=tmp_path, max_batch=1)
    calls: list[int] = []
    forward = engine.engine._forward
    engine.engine._forward = lambda inputs: (calls.append(len(inputs[0])), forward(inputs))[1]  # type: ignore[method-assign]
    out = engine.run(x, coord)
    assert calls == [1, 1, 1]
    np.testing.assert_allclose(out[2:], engine.run(x[2:], coord[2:]), atol=1e-6)


def test_detector_input_checks(detector: DPN26Detector, tmp_path: Path) -> None:
    engine = make_engine("onnxruntime", model=detector, threads=2, cache_dir=tmp_path)
    x, coord = _inputs(1, side=32)
    with pytest.raises(ValueError, match="coord must be"):
        engine.run(x, coord[:, :, :4])
    with pytest.raises(ValueError, match="multiple of 16"):
        engine.run(np.zeros((1, 1, 40, 32, 32), np.float32), np.zeros((1, 3, 10, 8, 8), np.float32))


def test_classifier_uses_the_same_engines(tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = TinyFeatures().eval()
    x = np.random.default_rng(3).standard_normal((5, 1, 32, 32, 32)).astype(np.float32)
    te = make_engine("torch", network="classifier", model=net)
    oe = make_engine("onnxruntime", network="classifier", model=net, cache_dir=tmp_path, max_batch=2)
    assert isinstance(oe, ClassifierEngine)
    ref, got = te.run(x), oe.run(x)
    assert got.shape == (5, 16)
    np.testing.assert_allclose(got, ref, atol=1e-2 if HAS_CUDA else 1e-5)


def test_project_classifier_network_runs_in_onnxruntime(tmp_path: Path) -> None:
    classifier = pytest.importorskip("inference.nets.classifier", reason="classifier network not written yet")
    torch.manual_seed(4)
    net = classifier.DPNClassifierNet().eval()
    x = np.random.default_rng(4).standard_normal((2, 1, 32, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    got = make_engine("onnxruntime", network="classifier", model=net, cache_dir=tmp_path).run(x)
    np.testing.assert_allclose(got, ref.reshape(2, -1), rtol=1e-3, atol=1e-4)


def test_selection_rules_and_errors(detector: DPN26Detector) -> None:
    with pytest.raises(ValueError, match="unknown engine 'tflite'"):
        make_engine("tflite", model=detector)
    with pytest.raises(ValueError, match="unknown network kind"):
        make_engine("torch", network="segmenter", model=detector)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs the torch model"):
        make_engine("torch", onnx_path="x.onnx")
    if not HAS_CUDA:
        assert resolve_kind("auto") == "onnxruntime"
        assert resolve_kind("torch") == "torch"
        with pytest.raises(EngineUnavailable, match="tensorrt"):
            make_engine("tensorrt", model=detector)


def test_tensorrt_batch_limit_and_profiles() -> None:
    assert largest_batch((208, 208, 208)) == 9  # 24 * 208^3 * 9 < 2^31 <= 24 * 208^3 * 10
    x, coord = detector_profile(max_batch=9, opt_batch=4)
    assert x.min == (1, 1, 64, 64, 64) and x.opt == (4, 1, 208, 208, 208) and x.max == (9, 1, 208, 208, 208)
    assert coord.max == (9, 3, 52, 52, 52) and coord.name == "coord"
    assert x.contains((3, 1, 96, 128, 208)) and not x.contains((10, 1, 208, 208, 208))
    with pytest.raises(ValueError, match="2\\^31"):
        detector_profile(max_batch=10)
    with pytest.raises(ValueError, match="multiples of 16"):
        detector_profile(crop=(200, 208, 208))
    big = detector_profile(max_batch=1, max_spatial=(320, 256, 352), crop=(208, 208, 208))
    assert big[0].max == (1, 1, 320, 256, 352)
    (cx,) = classifier_profile(max_batch=32)
    assert cx.max == (32, 1, 32, 32, 32)


def test_tensorrt_cache_key_covers_everything_that_invalidates_a_plan(tmp_path: Path) -> None:
    prof = detector_profile(max_batch=8)
    base = dict(
        weights_sha256="a" * 64, trt_version="10.3.0", gpu_name="NVIDIA H100", compute_capability=(9, 0),
        profile=prof, fp16=True, kind="detector",
    )
    key = engine_cache_key(**base)  # type: ignore[arg-type]
    assert key == engine_cache_key(**base)  # type: ignore[arg-type]
    variants = [
        {"weights_sha256": "b" * 64},
        {"trt_version": "10.4.0"},
        {"gpu_name": "NVIDIA A100"},
        {"compute_capability": (8, 0)},
        {"profile": detector_profile(max_batch=4)},
        {"profile": (InputProfile("x", (1, 1, 64, 64, 64), (1, 1, 96, 96, 96), (2, 1, 96, 96, 96)), prof[1])},
        {"fp16": False},
        {"kind": "classifier"},
    ]
    keys = {engine_cache_key(**{**base, **v}) for v in variants}  # type: ignore[arg-type]
    assert len(keys) == len(variants) and key not in keys
    path = engine_cache_path(tmp_path, key, "detector", "10.3.0")
    assert path.parent == tmp_path and path.name == f"detector-trt10.3.0-{key[:24]}.plan"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU: torch sees no CUDA device")
def test_torch_cuda_fp16_close_to_fp32(detector: DPN26Detector) -> None:
    x, coord = _inputs(1)
    ref = make_engine("torch", model=detector, fp16=False).run(x, coord)
    got = make_engine("torch", model=detector, fp16=True).run(x, coord)
    np.testing.assert_allclose(got, ref, atol=5e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRT), reason="needs an NVIDIA GPU and the tensorrt package")
def test_tensorrt_builds_caches_and_matches_torch(detector: DPN26Detector, tmp_path: Path) -> None:
    x, coord = _inputs(2)
    prof = detector_profile(crop=(64, 64, 64), max_batch=2, min_spatial=(32, 32, 32))
    engine = make_engine("tensorrt", model=detector, cache_dir=tmp_path, trt_profile=prof)
    assert engine.name == "tensorrt-fp16"
    got = engine.run(x, coord)
    plans = list(tmp_path.glob("detector-trt*.plan"))
    assert len(plans) == 1
    mtime = plans[0].stat().st_mtime_ns
    again = make_engine("tensorrt", model=detector, cache_dir=tmp_path, trt_profile=prof)
    assert plans[0].stat().st_mtime_ns == mtime  # deserialized, not rebuilt
    np.testing.assert_allclose(again.run(x, coord), got, atol=1e-3)
    ref = make_engine("torch", model=detector, fp16=False).run(x, coord)
    np.testing.assert_allclose(got, ref, atol=5e-2)
