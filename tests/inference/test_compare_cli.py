"""`dicomnode analyze CURRENT --prior PRIOR --json` as a user runs it: a phantom follow-up pair with known
growth, and a real LIDC series presented as its own prior after a table shift and a field-of-view crop."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import LIDC_SERIES, REPO_ROOT


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dicomnode.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def phantom_pair(tmp_path_factory) -> tuple[dict, dict]:
    """Phantom 5 (small) and its 12-month follow-up (seed 105), analysed with --prior."""
    root = tmp_path_factory.mktemp("followup")
    assert _cli("phantom", str(root / "prior"), "--seed", "5", "--small").returncode == 0
    proc = _cli("phantom", str(root / "current"), "--seed", "105", "--small", "--follow-up-of", "5", "--months", "12")
    assert proc.returncode == 0, proc.stderr
    truth = json.loads((root / "current" / "truth.json").read_text())
    proc = _cli("analyze", str(root / "current"), "--prior", str(root / "prior"), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), truth


def _nearest(findings: list[dict], centre: list[float]) -> tuple[dict, float]:
    d = [math.dist(f["center_mm"], centre) for f in findings]
    return findings[int(np.argmin(d))], min(d)


def test_phantom_follow_up_has_the_same_patient_and_a_year_between(tmp_path_factory, phantom_pair):
    doc, truth = phantom_pair
    assert truth["interval_days"] == 365 and doc["comparison"]["interval_days"] == 365
    assert doc["comparison"]["performed"] is True
    moved = doc["comparison"]["registration"]["translation_mm"]
    assert np.allclose(moved, truth["prior_to_current"]["translation_mm"], atol=2.0)


def test_phantom_follow_up_growth_new_resolved_and_categories(phantom_pair):
    doc, truth = phantom_pair
    findings = doc["findings"]
    checked = 0
    for n in truth["nodules"]:
        if n["status"] == "resolved":
            # listed beside the findings, at its prior position, and no current finding is there
            assert any(math.dist(r["center_mm"], n["prior_center_mm"]) < 5 for r in doc["resolved"]), n
            continue
        f, dist = _nearest(findings, n["center_mm"])
        if n["status"] == "new":
            assert dist < 5 and f["comparison"]["status"] == "new" and f["comparison"]["prior"] is None
            assert f["comparison"]["lung_rads"] == "4A"  # a new solid 6 to < 8 mm nodule
            continue
        if n["prior_diameter_mm"] < 6:
            continue  # the demo detector may miss a < 6 mm prior: then the nodule looks new
        checked += 1
        c = f["comparison"]
        assert dist < 5 and c["prior"] is not None, (n, f)
        assert math.dist(c["prior"]["center_mm"], n["prior_center_mm"]) < 5
        assert c["status"] == n["status"], (n, c)
        if n["status"] == "growing":
            print(f"\nVDT {c['doubling_time_days']} days, truth {n['doubling_time_days']} ({n['kind']}, "
                  f"{n['prior_diameter_mm']:.1f} -> {n['diameter_mm']:.1f} mm)")
            assert c["doubling_time_days"] == pytest.approx(n["doubling_time_days"], rel=0.15), (n, c)
            assert c["lung_rads_growth"] is True
        else:
            assert c["doubling_time_days"] is None
    assert checked >= 3  # grown x2, grown x3 and the stable one
    by_status = {f["comparison"]["status"]: f for f in findings}
    # growing solid >= 8 mm is 4B; a 4A nodule stable for 12 months steps down to 2 (3- and 6-month LDCT)
    grown_solid = [f for f in findings if f["comparison"]["status"] == "growing" and f["type"] == "solid"]
    assert grown_solid and all(f["comparison"]["lung_rads"] == "4B" for f in grown_solid)
    assert by_status["stable"]["comparison"]["lung_rads"] == "2"
    assert doc["comparison"]["lung_rads"] == "4B"


def _as_prior(src: Path, dst: Path, shift: tuple[float, float, float], crop: int) -> None:
    """The same images as an exam a year earlier: new UIDs, StudyDate - 1 year, the table shifted by `shift`
    mm (ImagePositionPatient), and the field of view cropped by `crop` pixels on each side."""
    dst.mkdir()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for path in sorted(src.iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
            if kw in ds and str(ds.get(kw) or ""):
                ds.data_element(kw).value = f"{int(str(ds.get(kw))[:4]) - 1}{str(ds.get(kw))[4:]}"
        pixels = ds.pixel_array[crop:-crop, crop:-crop]
        row, col = (float(v) for v in ds.PixelSpacing)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        ipp = np.array([float(v) for v in ds.ImagePositionPatient]) + crop * (iop[:3] * col + iop[3:] * row)
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp + np.array(shift)]
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.save_as(dst / path.name, enforce_file_format=True)


@pytest.mark.slow
def test_lidc_series_against_itself_shifted_and_cropped_is_all_stable(tmp_path):
    prior = tmp_path / "prior"
    _as_prior(LIDC_SERIES, prior, shift=(14.0, -9.0, 35.0), crop=24)
    proc = _cli("analyze", str(LIDC_SERIES), "--prior", str(prior), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["comparison"]["performed"] is True and doc["comparison"]["interval_days"] in (365, 366)
    assert doc["findings"], "the LIDC series has nodules"
    statuses = [f["comparison"]["status"] for f in doc["findings"]]
    assert statuses == ["stable"] * len(statuses), [f["comparison"] for f in doc["findings"]]
    assert doc["resolved"] == []
    moved = np.array(doc["comparison"]["registration"]["translation_mm"])
    assert np.allclose(moved, [-14.0, 9.0, -35.0], atol=2.0)
    changes = [f["comparison"]["volume_change_pct"] for f in doc["findings"]]
    print(f"\nlidc-idri-0002 as its own prior: {len(changes)} finding(s) stable, volume changes {changes} %, "
          f"registration {moved.tolist()} mm (truth [-14, 9, -35])")

