"""Inference on a real Triton Inference Server (issue 14): the `tritonserver` of the nvidia-pytriton
wheel, serving the repository `dicomnode model export-triton --backend python` writes (its Python
backend runs ONNX Runtime), on loopback ports; the node calls it with tritonclient."""
from __future__ import annotations

import importlib.util
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from tests.conftest import LIDC_SERIES
from tests.node.conftest import node_config
from tests.node.helpers import NodeProcess, free_port, storescu, wait_for

pytestmark = [pytest.mark.skipif(
    importlib.util.find_spec("pytriton") is None or importlib.util.find_spec("tritonclient") is None,
    reason="needs nvidia-pytriton (the tritonserver binary) and tritonclient: scripts/install.sh installs both",
), pytest.mark.one_receiver]  # receiving is not this file's subject (tests/conftest.py)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged weights as a Python-backend model repository, through the CLI command."""
    from dicomnode.cli import main

    out = tmp_path_factory.mktemp("triton-repo")
    assert main(["model", "export-triton", str(out), "--backend", "python"]) == 0
    return out


@pytest.fixture(scope="module")
def triton(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from inference.triton_local import LocalTriton

    server = LocalTriton(repository, free_port(), free_port(), free_port(),
                         workdir=tmp_path_factory.mktemp("tritonserver"), threads=1)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        assert server.proc is not None and server.proc.poll() is not None, "tritonserver left running"


@pytest.fixture(scope="module")
def bundle() -> Any:
    from inference.weights_bundle import load_weights_bundle

    return load_weights_bundle(None)


def _triton_engine(triton: Any, bundle: Any, network: str, sha: str | None = None) -> Any:
    from inference.engines.base import network_io
    from inference.engines.triton_engine import TritonEngine, TritonOptions

    role = "detector" if network == "detector" else "classifier_net"
    return TritonEngine(TritonOptions(triton.url, timeout_s=120), network_io(network),  # type: ignore[arg-type]
                        f"dicomnode-{network}", sha or bundle.sha256(role), bundle.version, max_batch=4)


def _lidc_crop() -> np.ndarray:
    """A real CT crop: 64 slices of LIDC-IDRI-0002, 64x64 pixels across the right lung, as DeepLung's
    network input ((u8 - 128) / 128 of the -1200..600 HU window)."""
    files = sorted(LIDC_SERIES.glob("*.dcm"))[100:164]
    if len(files) < 64:
        pytest.skip(f"{LIDC_SERIES}: the LIDC series is not there")
    hu = np.stack([pydicom.dcmread(f).pixel_array[200:264, 120:184].astype(np.float32) - 1024 for f in files])
    u8 = np.clip((hu + 1200) / 1800 * 255, 0, 255).astype(np.uint8)
    return ((u8.astype(np.float32) - 128) / 128)[None, None]


def test_repository_layout_and_identity(repository: Path, bundle: Any) -> None:
    config = (repository / "dicomnode-detector" / "config.pbtxt").read_text()
    assert 'name: "dicomnode-detector"' in config and 'backend: "python"' in config
    assert "max_batch_size: 4" in config and "version_policy: { latest: { num_versions: 1 } }" in config
    # per sample: channel fixed, spatial axes dynamic; the output's anchors x 5 fixed
    assert '{ name: "x" data_type: TYPE_FP32 dims: [ 1, -1, -1, -1 ] }' in config
    assert '{ name: "coord" data_type: TYPE_FP32 dims: [ 3, -1, -1, -1 ] }' in config
    assert '{ name: "out" data_type: TYPE_FP32 dims: [ -1, -1, -1, 3, 5 ] }' in config
    assert f'key: "weights_sha256" value: {{ string_value: "{bundle.sha256("detector")}" }}' in config
    assert f'key: "weights_version" value: {{ string_value: "{bundle.version}" }}' in config
    for network in ("detector", "classifier"):
        assert {p.name for p in (repository / f"dicomnode-{network}" / "1").iterdir()} >= {"model.onnx", "model.py"}


def test_outputs_equal_the_local_onnxruntime_engine(triton: Any, repository: Path, bundle: Any) -> None:
    from inference.engines.base import network_io
    from inference.engines.onnx_engine import OnnxRuntimeEngine
    from inference.nets.dpn3d import make_coord

    x = _lidc_crop()
    coord = make_coord((64, 64, 64))[None].astype(np.float32)
    local = OnnxRuntimeEngine(repository / "dicomnode-detector" / "1" / "model.onnx", network_io("detector"), threads=1)
    remote = _triton_engine(triton, bundle, "detector")
    want, got = local.run(x, coord), remote.run(x, coord)
    assert got.shape == want.shape == (1, 16, 16, 16, 3, 5)
    assert float(np.abs(got - want).max()) < 1e-4
    # the classifier on two 32^3 crops of the same CT, one request
    crops = np.concatenate([x[:, :, :32, :32, :32], x[:, :, 32:, 32:, 32:]])
    local_c = OnnxRuntimeEngine(repository / "dicomnode-classifier" / "1" / "model.onnx", network_io("classifier"),
                                threads=1, max_batch=4)
    remote_c = _triton_engine(triton, bundle, "classifier")
    assert float(np.abs(remote_c.run(crops) - local_c.run(crops)).max()) < 1e-4
    assert remote.name == "triton-http"


def test_grpc_gives_the_same_features(triton: Any, repository: Path, bundle: Any) -> None:
    from inference.engines.base import network_io
    from inference.engines.onnx_engine import OnnxRuntimeEngine
    from inference.engines.triton_engine import TritonEngine, TritonOptions

    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
    crops = _lidc_crop()[:, :, :32, :32, :32]
    remote = TritonEngine(TritonOptions(triton.grpc_url, timeout_s=120), network_io("classifier"),
                          "dicomnode-classifier", bundle.sha256("classifier_net"), bundle.version, max_batch=4)
    local = OnnxRuntimeEngine(repository / "dicomnode-classifier" / "1" / "model.onnx", network_io("classifier"),
                              threads=1)
    assert remote.name == "triton-grpc"
    assert float(np.abs(remote.run(crops) - local.run(crops)).max()) < 1e-4


def test_config_needs_a_valid_triton_url() -> None:
    from pydantic import ValidationError

    from dicomnode.config import InferenceSettings

    with pytest.raises(ValidationError, match=r'engine = "triton" needs triton_url'):
        InferenceSettings(engine="triton")
    for url, why in (("tcp://h:8000", "the scheme must be http:// or grpc://"), ("http://h", "give the port"),
                     ("http://h:8000/v2", "no path")):
        with pytest.raises(ValidationError, match=re.escape(why)):
            InferenceSettings(engine="triton", triton_url=url)
    assert InferenceSettings(engine="triton", triton_url="grpc://triton:8001/").triton_url == "grpc://triton:8001"


def test_other_weights_are_refused_naming_both_hashes(triton: Any, bundle: Any) -> None:
    from inference.remote_engine import EngineModelMismatch

    wrong = "0" * 64
    with pytest.raises(EngineModelMismatch) as refused:
        _triton_engine(triton, bundle, "detector", sha=wrong)
    message = str(refused.value)
    assert f"serves dicomnode-detector with weights sha256 {bundle.sha256('detector')}" in message
    assert f"this node's weights are sha256 {wrong}" in message and "refusing to run" in message


# -- the node ---------------------------------------------------------------------------------------
# a tiny phantom (128 x 128 x 28 at 2.5 mm) the demo weights find nodules in: seconds, not minutes
TINY = dict(matrix=128, pixel_spacing_mm=2.5, n_slices=28, slice_spacing_mm=2.5, n_nodules=2)


def _series(tmp: Path, seed: int) -> Any:
    from inference.phantom import write_phantom_series

    return write_phantom_series(tmp / f"phantom-{seed}", seed, **TINY)


def _events(node: NodeProcess, code: int) -> list[dict[str, Any]]:
    return [e for e in node.audit("events") if e["code"] == code]


def _done(node: NodeProcess, series_uid: str) -> list[dict[str, Any]]:
    return [j for j in node.audit("jobs") if j["series_instance_uid"] == series_uid and j["state"] in ("done", "failed")]


@pytest.fixture(scope="module")
def node(triton: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    config = node_config(pipeline="lung-nodule", stable=0.5, extra=f"""
[inference]
engine = "triton"
triton_url = "{triton.url}"
threads = 1
unreachable_retry_s = 0.5
unreachable_retry_max_s = 2.0
""")
    proc = NodeProcess(tmp_path_factory.mktemp("triton-node") / "node", config).start()
    try:
        yield proc
    finally:
        proc.stop()


def _onnx_cache(repository: Path, cache: Path) -> Path:
    """The local engine's ONNX cache holding the exported models (the same files Triton serves): no second export."""
    from inference.weights_bundle import load_weights_bundle

    bundle = load_weights_bundle(None)
    cache.mkdir(parents=True, exist_ok=True)
    for network, role in (("detector", "detector"), ("classifier", "classifier_net")):
        shutil.copyfile(repository / f"dicomnode-{network}" / "1" / "model.onnx",
                        cache / f"{network}-{bundle.sha256(role)[:24]}.onnx")
    return cache


def test_node_analyses_a_series_through_triton_like_the_local_engine(node: NodeProcess, repository: Path,
                                                                     tmp_path: Path) -> None:
    from inference.pipeline import LungNodulePipeline

    case = _series(tmp_path, 5101)
    storescu(node.port, case.files)
    (job,) = wait_for(lambda: _done(node, case.series_instance_uid), 180, "the job to finish", interval=1.0)
    assert job["state"] == "done", job
    findings = sorted((f for f in node.audit("findings") if f["job_id"] == job["id"]), key=lambda f: f["index"])
    local = LungNodulePipeline(engine="onnxruntime", threads=1, cache_dir=_onnx_cache(repository, tmp_path / "engines"))
    result = local.analyze([pydicom.dcmread(f) for f in case.files])
    assert result.findings, "the phantom has nodules the demo weights find"
    assert [(round(f["probability"], 3), f["lung_rads"]) for f in findings] == \
        [(round(f.probability, 3), f.lung_rads) for f in result.findings]
    assert job["verdict"] == result.verdict.value
    assert job["summary"]["model"]["engine"] == "triton-http"  # the result says where it was computed


def test_triton_down_the_job_waits_and_completes_when_it_is_back(node: NodeProcess, triton: Any, tmp_path: Path) -> None:
    triton.stop()
    case = _series(tmp_path, 5102)
    storescu(node.port, case.files)
    waiting = wait_for(lambda: [e for e in _events(node, 510) if e["series_instance_uid"] == case.series_instance_uid],
                       120, "the job to wait for Triton (event 510)", interval=1.0)
    assert f"Triton at {triton.url} unreachable" in waiting[0]["message"]
    assert "not counted as an attempt" in waiting[0]["message"]
    assert not _done(node, case.series_instance_uid), "the job must not fail while Triton is down"
    triton.start()
    (job,) = wait_for(lambda: _done(node, case.series_instance_uid), 180, "the job to finish after Triton is back", interval=1.0)
    assert job["state"] == "done", job
    assert job["attempts"] == 1, "waiting for the server is not an attempt"
    (restored,) = [e for e in _events(node, 511) if e["series_instance_uid"] == case.series_instance_uid]
    assert "reachable again" in restored["message"]
