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


@pytest.fixture(scope="module")
def phantom_5(tmp_path_factory) -> Path:
    """`dicomnode phantom DIR --seed 5 --small`, drawn once for the analyze tests of this module."""
    out = tmp_path_factory.mktemp("phantom") / "ph"
    proc = _cli("phantom", str(out), "--seed", "5", "--small")
    assert proc.returncode == 0, proc.stderr
    return out


def test_phantom_then_analyze_json(tmp_path, phantom_5):
    out = phantom_5
    truth = json.loads((out / "truth.json").read_text())
    files = sorted(out.glob("*.dcm"))
    assert len(files) == truth["shape_zyx"][0] and truth["nodules"]

    proc = _cli("analyze", str(out), "--json", "--engine", "onnxruntime", "--cache-dir", str(tmp_path / "cache"),
                "--family-history", "yes")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) >= {"series_instance_uid", "verdict", "verdict_probability", "findings", "model", "timings_s",
                           "exam"}
    assert result["series_instance_uid"] == truth["series_instance_uid"]
    assert result["model"]["name"] == "dicomnode-dpn26" and result["model"]["engine"] == "onnxruntime-cpu"
    assert result["findings"]
    for f in result["findings"]:
        assert set(f) >= {"center_mm", "diameter_mm", "probability", "model_score", "lung_rads", "sop_instance_uid",
                          "row", "column", "type", "calcified", "margin", "location", "mean_diameter_mm",
                          "solid_component_mm", "brock_risk"}
        assert f["type"] in ("solid", "part_solid", "ground_glass") and isinstance(f["calcified"], bool)
        assert f["margin"] in ("smooth", "lobulated", "spiculated", None)  # None: not assessed
        assert f["location"]["lung"] in ("right", "left") and f["location"]["zone"] in ("upper", "middle", "lower")
        assert 0 < f["brock_risk"] < 1 and 0 <= f["model_score"] <= 1 and f["mean_diameter_mm"] > 0
        assert f["lung_rads"] in ("1", "2", "3", "4A", "4B", "4X")
        assert (f["solid_component_mm"] is not None) == (f["type"] == "part_solid")
    exam = result["exam"]
    categories = ["0", "1", "2", "3", "4A", "4B", "4X"]
    assert exam["lung_rads"] == max((f["lung_rads"] for f in result["findings"]), key=categories.index)
    assert exam["recommendation"] and 0 <= exam["laa950_pct"] < 100
    inputs = exam["risk_inputs"]
    # the phantom's header has PatientAge and PatientSex; the flag gives the family history
    import pydicom

    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert inputs["age_years"] == int(str(header.PatientAge)[:3])
    assert inputs["sex"] == {"F": "female", "M": "male"}[header.PatientSex]
    assert inputs["family_history"] == "yes" and inputs["missing"] == []
    assert result["verdict_probability"] == max(f["brock_risk"] for f in result["findings"])


def test_analyze_out_writes_the_sr_with_the_clinical_settings_from_the_config(tmp_path, phantom_5):
    config = tmp_path / "node.toml"
    # threshold 0 %: any LAA-950 counts as emphysema for Brock, so the setting's effect is visible
    config.write_text('[clinical]\nfamily_history = "no"\nemphysema_laa950_pct = 0.0\n')
    proc = _cli("analyze", str(phantom_5), "--engine", "onnxruntime", "--cache-dir", str(tmp_path / "cache"),
                "--config", str(config), "--out", str(tmp_path / "results"))
    assert proc.returncode == 0, proc.stderr
    assert "Lung-RADS" in proc.stdout and "Brock" in proc.stdout
    # the phantom's header gives age and sex (nothing missing); the config the family history and emphysema
    inputs = next(line for line in proc.stdout.splitlines() if "Brock inputs:" in line)
    assert inputs.endswith("family history no, emphysema yes") and "missing" not in inputs, inputs
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
    # a copy of the packaged weights, so the test can write its manifest; one phantom (its nodules >= 6 mm
    # make the sensitivity and the characterisation's counts): calibrate and evaluate each detect on it
    weights = tmp_path / "weights"
    shutil.copytree(REPO_ROOT / "inference" / "weights", weights)
    common = ["--weights", str(weights), "--engine", "onnxruntime", "--cache-dir", str(tmp_path / "cache"),
              "--count", "1", "--first-seed", "8000", "--workers", "1"]
    proc = _cli("model", "calibrate", *common, "--write")
    assert proc.returncode == 0, proc.stderr
    calibration = json.loads(proc.stdout)
    threshold = calibration["report_threshold_probability"]
    manifest = json.loads((weights / "manifest.json").read_text())
    assert manifest["report_threshold_probability"] == threshold and 0 < threshold < 1
    assert manifest["calibration"]["phantom_seeds"] == [8000, 8000]  # first and last
    # the weight files themselves are untouched: their hashes still verify. `model evaluate` printed as a
    # user reads it (its --json dumps the same report: its detection part is built by the code calibrate
    # ran above, its characterisation block is checked in tests/inference/test_characterize_phantoms.py)
    # the site's config sets how many findings per series the threshold is scored on
    config = tmp_path / "node.toml"
    config.write_text("[clinical]\nmax_findings = 9\n")
    proc = _cli("model", "evaluate", *common, "--characterize-at", "detector", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    at_threshold = next(i for i, line in enumerate(lines) if line.startswith("at the report threshold"))
    delivered = lines[at_threshold]
    assert "one per lesion, at most 9 per series ([clinical] max_findings)" in lines[at_threshold + 1]
    # "at the report threshold T: sensitivity S with F FPs/scan"
    words = delivered.replace(":", "").split()
    assert float(words[4]) == threshold
    assert float(words[6]) == calibration["sensitivity_6mm"] > 0 and float(words[8]) <= 1.0, delivered
    assert "detection:" in proc.stdout
    # the characterisation of the same phantoms: the nodule type's confusion matrix, then margin, calcification, volume
    at = next(i for i, line in enumerate(lines) if line.startswith("type: accuracy"))
    assert lines[at + 1].split() == ["solid", "part_solid", "ground_glass"]
    rows = [line.split() for line in lines[at + 2: at + 5]]
    assert [row[0] for row in rows] == ["solid", "part_solid", "ground_glass"]
    assert sum(int(v) for row in rows for v in row[1:]) > 0  # the phantoms' nodules >= 6 mm were counted
    assert any(line.startswith("margin: accuracy") for line in lines)
    assert any(line.startswith("calcified: accuracy") for line in lines)
    assert any(line.startswith("volume error:") for line in lines)
    # measured at the detector's centres (--characterize-at detector): how many it hit, and how far off it was
    hit = next(line for line in lines if line.startswith("centres and diameters from the detector:"))
    assert " nodules >= 6 mm hit " in hit
    assert any(line.strip().startswith("centre offset (mm): median") for line in lines)


def test_analyze_refuses_an_unknown_family_history(tmp_path):
    proc = _cli("analyze", str(tmp_path), "--family-history", "maybe")
    assert proc.returncode == 2 and "--family-history" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("key, value", [("family_history", '"perhaps"'), ("max_findings", "0")])
def test_analyze_with_a_bad_clinical_setting_is_a_message(tmp_path, key, value):
    config = tmp_path / "node.toml"
    config.write_text(f'[clinical]\n{key} = {value}\n')
    proc = _cli("analyze", str(tmp_path), "--config", str(config))
    assert proc.returncode == 2 and f"clinical.{key}" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_with_a_bad_clinical_setting_is_a_message_before_any_phantom(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text("[clinical]\nmax_findings = 101\n")
    proc = _cli("model", "evaluate", "--config", str(config), "--cache-dir", str(tmp_path / "cache"), "--count", "1")
    assert proc.returncode == 2 and "clinical.max_findings" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()
