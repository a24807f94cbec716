"""Every result object through the real validators: dciodvfy, dcentvfy, dsrdump (docs/architecture.md, "Results encoding")."""
from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.results import ResultOptions, build_results
from tests.results.dicom_validators import (
    MODEL,
    dciodvfy,
    dcentvfy,
    dsrdump,
    empty_result,
    lidc_paths,
    lidc_series,
    not_analysed_result,
    save,
    synthetic_result,
)

ALL_KINDS = ResultOptions(send_seg=True)


@pytest.fixture(scope="module")
def series():
    return lidc_series()


@pytest.fixture(scope="module")
def written(series, tmp_path_factory) -> dict[str, list[Path]]:
    """Result files per scenario; each scenario is one consistent outcome for the series."""
    out: dict[str, list[Path]] = {}
    scenarios = {
        "findings": (synthetic_result(series), ALL_KINDS),
        # the 3D SR with the SEG: its TID 1411 groups reference the segments (IHE AIR)
        "findings3d": (synthetic_result(series),
                       ResultOptions(sop_class="comprehensive3d", roi_graphic="ellipse", send_seg=True)),
        "none": (empty_result(series), ALL_KINDS),
        "not_analysed": (not_analysed_result(series, "only 40 slices, 80 needed"), ALL_KINDS),
    }
    for name, (result, options) in scenarios.items():
        folder = tmp_path_factory.mktemp(name)
        objects = build_results(list(series), result, options)
        out[name] = [save(ds, folder / f"{i:02d}_{ds.Modality}.dcm") for i, ds in enumerate(objects)]
    return out


def test_build_results_kinds(written):
    kinds = {name: [p.name.split("_")[1] for p in paths] for name, paths in written.items()}
    assert kinds["findings"] == ["SR.dcm", "OT.dcm", "OT.dcm", "OT.dcm", "OT.dcm", "SEG.dcm"]
    assert kinds["findings3d"] == ["SR.dcm", "OT.dcm", "OT.dcm", "OT.dcm", "OT.dcm", "SEG.dcm"]
    assert kinds["none"] == ["SR.dcm", "OT.dcm"]  # no SEG without nodules
    assert kinds["not_analysed"] == ["SR.dcm"]


def test_not_analysed_report_can_be_switched_off(series):
    result = not_analysed_result(series, "not a CT")
    assert build_results(list(series), result, ResultOptions(not_analysed_report=False)) == []


@pytest.mark.parametrize("scenario", ["findings", "findings3d", "none", "not_analysed"])
def test_dciodvfy_no_errors(written, scenario):
    for path in written[scenario]:
        report = dciodvfy(path)
        assert report.errors == [], f"{path.name}:\n" + "\n".join(report.errors)
        assert report.warnings == [], f"{path.name} unexpected warnings:\n" + "\n".join(report.warnings)


@pytest.mark.parametrize("scenario", ["findings", "findings3d", "none", "not_analysed"])
def test_dsrdump_clean(written, scenario):
    sr = written[scenario][0]
    report = dsrdump(sr)
    assert report.errors == [] and report.warnings == [], report.output[:2000]
    assert "TID 1500" in report.output
    expected = "Comprehensive 3D SR Document" if scenario == "findings3d" else "Comprehensive SR Document"
    assert report.output.splitlines()[0].strip() == expected


@pytest.mark.parametrize("scenario", ["findings", "findings3d", "none", "not_analysed"])
def test_dcentvfy_consistent_with_ct(written, scenario):
    report = dcentvfy(lidc_paths() + written[scenario])
    assert report.errors == [], "\n".join(report.errors[:20])
    assert report.warnings == [], "\n".join(report.warnings[:20])


def test_dcentvfy_catches_a_wrong_patient(written, series, tmp_path):
    # the check can fail: a result carrying another patient's ID is reported
    sr = build_results(list(series), synthetic_result(series, MODEL, count=1), ResultOptions(send_overlays=False))[0]
    sr.PatientID = "SOMEONE-ELSE"
    bad = save(sr, tmp_path / "bad.dcm")
    report = dcentvfy(lidc_paths() + [bad])
    assert report.errors or report.warnings
