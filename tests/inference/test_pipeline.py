"""LungNodulePipeline: the contract, not-analysable series, weights checks, and key-slice geometry."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from inference.classify import MalignancyClassifier
from inference.findings import SeriesResult, Verdict
from inference.nets.checkpoint import save_project_checkpoint
from inference.nets.dpn3d import DPN26Detector
from inference.phantom import write_phantom_series
from inference.pipeline import LungNodulePipeline, key_slice
from inference.preprocess import preprocess
from inference.training.packaging import package_weights
from inference.volume import load_volume, read_series
from inference.weights_bundle import WeightsError, load_weights_bundle
from tests.conftest import TRANSFER_SYNTAXES

TINY = dict(matrix=128, pixel_spacing_mm=2.5, n_slices=28, slice_spacing_mm=2.5, n_nodules=2)


@pytest.fixture(scope="module")
def quiet_weights(tmp_path_factory) -> Path:
    """Random detector whose logits sit far below any threshold (no findings), plus a tiny pixel GBM."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    det = DPN26Detector()
    with torch.no_grad():
        det.output[2].bias.view(3, 5)[:, 0] = -20.0
    save_project_checkpoint(det, root / "raw.pt", {"name": "test"})
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (12, 32, 32, 32), dtype=np.uint8)
    gbm = MalignancyClassifier(n_estimators=5).fit(crops, rng.uniform(4, 20, 12), [0, 1] * 6)
    gbm.save(root / "gbm.joblib")
    package_weights(root / "bundle", root / "raw.pt", malignancy_gbm=root / "gbm.joblib", version="test-1")
    return root / "bundle"


@pytest.fixture(scope="module")
def quiet_pipeline(quiet_weights, tmp_path_factory) -> LungNodulePipeline:
    # onnxruntime: about 4x faster than torch on CPU for the whole-volume pass
    return LungNodulePipeline(engine="onnxruntime", threads=2, weights=quiet_weights,
                              cache_dir=tmp_path_factory.mktemp("engines"))


@pytest.fixture(scope="module")
def tiny_series(tmp_path_factory):
    case = write_phantom_series(tmp_path_factory.mktemp("tiny"), 3, patient_position="FFS", **TINY)
    return case, read_series(case.files)


def test_no_pixel_data_is_not_analysed_with_reason(quiet_pipeline):
    ds = pydicom.dcmread(TRANSFER_SYNTAXES / "no-pixel-data.dcm")
    result = quiet_pipeline.analyze([ds])
    assert result.verdict is Verdict.NOT_ANALYSED and not result.analysed
    assert result.not_analysed_reason == "modality is SR, not CT"
    assert result.findings == [] and result.model.version == "test-1"
    assert json.loads(json.dumps(result.to_json()))["verdict"] == "not_analysed"


def test_slice_without_pixels_is_not_analysed(quiet_pipeline, tiny_series):
    import copy

    _, datasets = tiny_series
    broken = [copy.deepcopy(ds) for ds in datasets]
    del broken[5].PixelData
    result = quiet_pipeline.analyze(broken)
    assert result.verdict is Verdict.NOT_ANALYSED
    assert "no pixel data" in result.not_analysed_reason and broken[5].SOPInstanceUID in result.not_analysed_reason


def test_contract_on_a_phantom_without_findings(quiet_pipeline, quiet_weights, tiny_series):
    case, datasets = tiny_series
    messages: list[str] = []
    result = quiet_pipeline.analyze(datasets, progress=messages.append)
    assert isinstance(result, SeriesResult) and result.analysed
    assert result.verdict is Verdict.NO_NODULE and result.verdict_probability == 0.0 and result.findings == []
    assert result.series_instance_uid == case.series_instance_uid
    assert set(result.timings_s) >= {"load", "preprocess", "detect", "classify", "total"}
    manifest = json.loads((quiet_weights / "manifest.json").read_text())
    assert result.model.name == "dicomnode-dpn26" and result.model.version == "test-1"
    assert result.model.weights_sha256 == manifest["files"]["detector"]["sha256"]
    assert result.model.engine == "onnxruntime-cpu"
    assert any("detect" in m for m in messages)


def test_changed_weights_file_is_refused(quiet_weights, tmp_path):
    import shutil

    copy = tmp_path / "w"
    shutil.copytree(quiet_weights, copy)
    with open(copy / "detector.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(WeightsError, match="SHA-256"):
        load_weights_bundle(copy)
    with pytest.raises(WeightsError, match="manifest"):
        load_weights_bundle(tmp_path / "nothing-here")


def _dicom_row_col(ds: pydicom.Dataset, xyz: np.ndarray) -> tuple[float, float, float]:
    """(row, column, distance to the plane) of a world point on one slice, straight from the header."""
    ipp = np.array(ds.ImagePositionPatient, float)
    iop = np.array(ds.ImageOrientationPatient, float)
    row_cos, col_cos = iop[:3], iop[3:]
    ps = [float(v) for v in ds.PixelSpacing]
    d = xyz - ipp
    return float(d @ col_cos / ps[0]), float(d @ row_cos / ps[1]), abs(float(d @ np.cross(row_cos, col_cos)))


def test_key_slice_of_a_truth_nodule_matches_the_dicom_header(tiny_series):
    case, datasets = tiny_series
    volume = load_volume(datasets)
    pre = preprocess(volume)
    for nodule in case.phantom.nodules:
        xyz = np.array(nodule.center_mm)
        # through the preprocessed frame and back, as a detection travels
        p = pre.from_source_voxel(volume.world_to_voxel(xyz)[None])
        src = pre.to_source_voxel(p)[0]
        ks = key_slice(volume, src)
        nearest = min(datasets, key=lambda ds: _dicom_row_col(ds, xyz)[2])
        assert ks.sop_instance_uid == nearest.SOPInstanceUID
        row, col, _ = _dicom_row_col(nearest, xyz)
        assert ks.row == pytest.approx(row, abs=1e-3) and ks.column == pytest.approx(col, abs=1e-3)
        np.testing.assert_allclose(volume.voxel_to_world(src), xyz, atol=1e-6)
