"""`dicomnode model froc|info`, `phantom` and `analyze` as a user runs them (subprocesses)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LUNA16_EVAL, REPO_ROOT


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dicomnode.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_froc_golden_prints_cpm_last(tmp_path):
    proc = _cli("model", "froc", "--annotations", str(LUNA16_EVAL / "newannotations.csv"),
                "--excluded", str(LUNA16_EVAL / "newannotations_excluded.csv"),
                "--seriesuids", str(LUNA16_EVAL / "newseriesuids.csv"),
                "--candidates", str(LUNA16_EVAL / "dpn26bs32.csv"), "--png", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "CPM 0.842"
    assert lines[0] == "FPs/scan 0.125: sensitivity 0.692"
    assert (tmp_path / "froc.png").read_bytes()[:4] == b"\x89PNG"


def test_froc_missing_file_is_a_message(tmp_path):
    proc = _cli("model", "froc", "--annotations", str(tmp_path / "nope.csv"), "--excluded", "x", "--seriesuids", "y",
                "--candidates", "z")
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_phantom_then_analyze_json(tmp_path):
    out = tmp_path / "ph"
    proc = _cli("phantom", str(out), "--seed", "5", "--small")
    assert proc.returncode == 0, proc.stderr
    truth = json.loads((out / "truth.json").read_text())
    files = sorted(out.glob("*.dcm"))
    assert len(files) == truth["shape_zyx"][0] and truth["nodules"]

    proc = _cli("analyze", str(out), "--json", "--engine", "onnxruntime", "--cache-dir", str(tmp_path / "cache"),
                "--out", str(tmp_path / "results"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) >= {"series_instance_uid", "verdict", "verdict_probability", "findings", "model", "timings_s"}
    assert result["series_instance_uid"] == truth["series_instance_uid"]
    assert result["model"]["name"] == "dicomnode-dpn26" and result["model"]["engine"] == "onnxruntime-cpu"
    for f in result["findings"]:
        assert set(f) >= {"center_mm", "diameter_mm", "probability", "malignancy", "lung_rads", "sop_instance_uid",
                          "row", "column"}
    written = list((tmp_path / "results").glob("*.dcm"))
    assert any(p.name.startswith("SR-") for p in written)


def test_analyze_missing_path_is_a_message(tmp_path):
    proc = _cli("analyze", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "no such file or folder" in proc.stderr


def test_model_info_names_the_packaged_weights():
    manifest = json.loads((REPO_ROOT / "inference" / "weights" / "manifest.json").read_text())
    proc = _cli("model", "info")
    assert proc.returncode == 0, proc.stderr
    assert manifest["files"]["detector"]["sha256"] in proc.stdout
    assert "engine   auto -> " in proc.stdout and "NOT FOR CLINICAL USE" in proc.stdout
    assert f"report   detection probability > {manifest['report_threshold_probability']}" in proc.stdout


def test_a_reader_that_goes_away_is_not_a_traceback():
    # `dicomnode model info | head -1`: the reader closes before the command prints
    proc = subprocess.Popen([sys.executable, "-m", "dicomnode.cli", "model", "info"], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_train_with_a_folder_that_is_not_luna16_is_a_message(tmp_path):
    proc = _cli("model", "train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path))
    assert proc.returncode == 2 and "annotations.csv" in proc.stderr


def test_train_from_a_missing_checkpoint_is_a_message(tmp_path):
    proc = _cli("model", "train", "--init", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o"),
                "--cache-dir", str(tmp_path))
    assert proc.returncode == 2 and "--init" in proc.stderr and "no such checkpoint" in proc.stderr


def test_train_with_an_unknown_hardness_kind_is_a_message(tmp_path):
    proc = _cli("model", "train", "--hard-kinds", "faint,tiny", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path))
    assert proc.returncode == 2 and "--hard-kinds: unknown hardness kind(s) tiny" in proc.stderr and "touching" in proc.stderr
    assert not (tmp_path / "train").exists()  # refused before any phantom was built


@pytest.mark.parametrize("args", [["model", "export", "--help"], ["model", "evaluate", "--help"]])
def test_subcommands_exist(args):
    assert _cli(*args).returncode == 0


def test_calibrate_writes_the_threshold_that_evaluate_then_delivers(tmp_path):
    # a copy of the packaged weights, so the test can write its manifest
    weights = tmp_path / "weights"
    shutil.copytree(REPO_ROOT / "inference" / "weights", weights)
    common = ["--weights", str(weights), "--engine", "onnxruntime", "--cache-dir", str(tmp_path / "cache"),
              "--count", "3", "--first-seed", "8000", "--workers", "1"]
    proc = _cli("model", "calibrate", *common, "--write")
    assert proc.returncode == 0, proc.stderr
    calibration = json.loads(proc.stdout)
    threshold = calibration["report_threshold_probability"]
    manifest = json.loads((weights / "manifest.json").read_text())
    assert manifest["report_threshold_probability"] == threshold and 0 < threshold < 1
    assert manifest["calibration"]["phantom_seeds"] == [8000, 8002]
    # the weight files themselves are untouched: their hashes still verify
    proc = _cli("model", "evaluate", *common)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["report_threshold_probability"] == threshold
    assert report["fps_per_scan_at_report_threshold"] <= 1.0
    assert report["sensitivity_6mm_at_report_threshold"] == calibration["sensitivity_6mm"] > 0
