"""Registration, matching and growth of the follow-up comparison (inference.compare), without the pipeline."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from pydicom.dataset import Dataset

from inference.compare import ExamInput, Point, compare_exams, growth, match, patient_mismatch, register
from inference.compare.matching import GATE_BASE_MM
from inference.findings import ExamSummary, Finding, KeySlice, ModelIdentity, RiskInputs, SeriesResult, Verdict
from inference.phantom import make_phantom
from inference.preprocess import lung_mask


@dataclass
class _Image:
    hu: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray


def _moved(image: _Image, rotation: np.ndarray, translation: np.ndarray) -> _Image:
    """The same patient after the rigid motion current = R @ prior + t, on the same scanner grid."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(image.hu.astype(np.float32))
    img.SetSpacing([float(s) for s in image.spacing[::-1]])
    img.SetOrigin([float(v) for v in image.origin])
    t = sitk.AffineTransform(3)  # current -> prior: p = R^T (q - t)
    t.SetMatrix([float(v) for v in rotation.T.ravel()])
    t.SetTranslation([float(v) for v in -rotation.T @ translation])
    out = sitk.Resample(img, img, t, sitk.sitkLinear, -1000.0)
    return _Image(sitk.GetArrayFromImage(out), image.origin.copy(), image.spacing.copy(), np.eye(3))


@pytest.fixture(scope="module")
def phantom() -> tuple[_Image, np.ndarray]:
    p = make_phantom(11, small=True, matrix=160, n_nodules=4)
    return _Image(p.hu, p.origin, p.spacing, np.eye(3)), np.array([n.center_mm for n in p.nodules])


def _rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])


@pytest.mark.parametrize("rotation_deg, translation", [(0.0, (32.0, -18.0, 41.0)), (3.0, (-25.0, 12.0, -30.0))])
def test_registration_recovers_a_known_motion_within_2_mm_at_the_nodules(phantom, rotation_deg, translation):
    image, centres = phantom
    rotation, t = _rot_z(rotation_deg), np.array(translation)
    current = _moved(image, rotation, t)
    reg = register(image, current, prior_lungs=lung_mask(image.hu, image.spacing),
                   current_lungs=lung_mask(current.hu, current.spacing))
    truth = centres @ rotation.T + t
    errors = np.linalg.norm(reg.transform.apply(centres) - truth, axis=1)
    assert errors.max() < 2.0, (errors, reg.to_json())
    assert abs(reg.transform.rotation_deg - rotation_deg) < 1.0


def test_matching_is_one_to_one_with_the_smallest_total_distance():
    # two current nodules both near prior 0; greedy nearest would give prior 0 to current 0 and lose current 1
    current = [Point((0.0, 0.0, 0.0), 6.0), Point((7.0, 0.0, 0.0), 6.0)]
    prior = [Point((3.0, 0.0, 0.0), 6.0), Point((14.0, 0.0, 0.0), 6.0)]
    m = match(current, prior)
    assert sorted(m.pairs) == [(0, 0), (1, 1)]
    assert m.new == () and m.resolved == ()


def test_matching_gate_is_size_aware_and_leaves_new_and_resolved():
    far = GATE_BASE_MM + 5.0  # beyond the gate of two 6 mm nodules, inside that of a 30 mm one
    current = [Point((0.0, 0.0, 0.0), 6.0), Point((100.0, 0.0, 0.0), 30.0)]
    prior = [Point((far, 0.0, 0.0), 6.0), Point((100.0 + far, 0.0, 0.0), 30.0)]
    m = match(current, prior)
    assert m.pairs == ((1, 1),)
    assert m.new == (0,) and m.resolved == (0,)
    assert match([], prior).resolved == (0, 1) and match(current, []).new == (0, 1)


def test_growth_doubling_time_and_measurement_error():
    g = growth(100.0, 200.0, 5.8, 7.3, 90)  # doubled in 90 days
    assert g.status == "growing" and g.doubling_time_days == pytest.approx(90.0)
    assert g.volume_change_pct == pytest.approx(100.0)
    assert g.diameter_change_mm == 1.5 and g.lung_rads_growth is False  # 1.5 is not > 1.5
    g = growth(300.0, 900.0, 8.0, 11.6, 365)
    assert g.doubling_time_days == pytest.approx(365 * math.log(2) / math.log(3))
    assert g.lung_rads_growth is True
    within = growth(100.0, 124.0, 6.0, 6.4, 365)  # +24 %: measurement error
    assert within.status == "stable" and within.doubling_time_days is None
    shrunk = growth(100.0, 70.0, 6.0, 5.3, 365)
    assert shrunk.status == "shrinking" and shrunk.doubling_time_days is None
    # a 30 mm nodule up 1.6 mm grows < 25 % in volume but is Lung-RADS growth
    big = growth(14137.0, 14137.0 * (31.6 / 30.0) ** 3, 30.0, 31.6, 365)
    assert big.status == "growing" and big.lung_rads_growth and big.doubling_time_days is not None


def _header(pid: str = "P1", name: str = "DOE^JANE", birth: str = "19550101", study: str = "1.2.3",
            date: str = "20250101", issuer: str | None = None) -> Dataset:
    ds = Dataset()
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.StudyInstanceUID, ds.StudyDate = pid, name, birth, study, date
    ds.SOPInstanceUID = study + ".1"
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    return ds


def test_patient_mismatch_rules():
    cur = _header()
    assert patient_mismatch(cur, _header(study="1.2.4", date="20240101")) is None
    assert patient_mismatch(cur, _header(name="doe^jane^^")) is None  # same name, other formatting
    assert "PatientID differs" in patient_mismatch(cur, _header(pid="P2"))
    assert "PatientName differs" in patient_mismatch(cur, _header(name="DOE^JOHN"))
    assert "PatientBirthDate differs" in patient_mismatch(cur, _header(birth="19560101"))
    assert "IssuerOfPatientID differs" in patient_mismatch(_header(issuer="A"), _header(issuer="B"))
    assert patient_mismatch(_header(issuer="A"), _header()) is None  # only one carries an issuer
    assert patient_mismatch(cur, _header(name="", birth="")) is None  # not both carry them: not compared
    assert "PatientID missing" in patient_mismatch(cur, _header(pid=""))


def _result(centres: list[tuple[float, float, float]]) -> SeriesResult:
    findings = [Finding(center_mm=c, diameter_mm=8.0, volume_mm3=268.0, probability=0.9, model_score=0.1,
                        lung_rads="4A", key_slice=KeySlice("1.2", "1.2.840.10008.5.1.4.1.1.2", 1.0, 1.0))
                for c in centres]
    exam = ExamSummary("4A", "", True, RiskInputs(None, None, "unknown", False))
    return SeriesResult("9.9", Verdict.SUSPICIOUS if findings else Verdict.NEGATIVE, 0.1,
                        ModelIdentity("m", "1", "x", "torch-cpu"), findings, None, {}, exam)


def test_no_comparison_across_patients():
    blank = _Image(np.zeros((4, 4, 4), np.int16), np.zeros(3), np.ones(3), np.eye(3))
    current = ExamInput(_result([(0.0, 0.0, 0.0)]), _header(), blank)
    prior = ExamInput(_result([(0.0, 0.0, 0.0)]), _header(pid="OTHER", study="1.2.4", date="20240101"), blank)
    c = compare_exams(current, prior)
    assert c.performed is False and "not this patient's exam" in c.reason and "PatientID differs" in c.reason
    doc = c.apply_to_json(current.result.to_json())
    assert doc["findings"][0]["comparison"] is None and doc["resolved"] == []
    assert doc["comparison"]["performed"] is False and "PatientID" in doc["comparison"]["reason"]


def test_analyze_refuses_another_patients_prior_before_analysing_it():
    from dicomnode.cli.analyze import _prior_refusal

    current = [_header(), _header()]
    assert _prior_refusal(current, [_header(study="1.2.4", date="20240101")]) is None
    refused = _prior_refusal(current, [_header(pid="P9", study="1.2.4")])
    assert refused is not None and refused.performed is False and "PatientID differs" in refused.reason
    mixed = _prior_refusal(current, [_header(study="1.2.4"), _header(pid="P9", study="1.2.4")])
    assert mixed is not None and "several patients" in mixed.reason
    doc = refused.apply_to_json({"findings": [{"center_mm": [0, 0, 0]}]})
    assert doc["findings"][0]["comparison"] is None and doc["resolved"] == []


def _finding(kind: str, mean: float, solid: float | None) -> Finding:
    return Finding(center_mm=(0.0, 0.0, 0.0), diameter_mm=mean, volume_mm3=math.pi / 6 * mean**3, probability=0.9,
                   model_score=0.1, lung_rads="3", key_slice=KeySlice("1", "1", 0.0, 0.0), nodule_type=kind,
                   solid_component_mm=solid)


def test_part_solid_growth_is_graded_on_the_solid_component():
    from inference.clinical.types import Change
    from inference.compare.compare import _change

    def change(cur: Finding, pri: Finding) -> Change:
        return _change("stable", growth(pri.volume_mm3, cur.volume_mm3, pri.diameter_mm, cur.diameter_mm, 365),
                       cur, pri)

    # total unchanged, solid component 3.0 -> 4.6 mm (+1.6): growing; 3.0 -> 4.5 (+1.5): not
    assert change(_finding("part_solid", 12.0, 4.6), _finding("part_solid", 12.0, 3.0)) is Change.GROWING
    assert change(_finding("part_solid", 12.0, 4.5), _finding("part_solid", 12.0, 3.0)) is Change.STABLE
    # a solid component appearing in a ground-glass nodule is growth
    assert change(_finding("part_solid", 12.0, 3.0), _finding("ground_glass", 12.0, None)) is Change.GROWING
    # a solid nodule: the mean diameter decides
    assert change(_finding("solid", 7.6, None), _finding("solid", 6.0, None)) is Change.GROWING
    assert change(_finding("solid", 7.5, None), _finding("solid", 6.0, None)) is Change.STABLE


def test_follow_up_phantom_options_are_checked(tmp_path):
    from dicomnode.cli import build_parser
    from dicomnode.cli.common import UserError

    for argv, message in ((["phantom", str(tmp_path / "a"), "--months", "12"], "--months needs --follow-up-of"),
                          (["phantom", str(tmp_path / "b"), "--seed", "5", "--follow-up-of", "5", "--months", "12"],
                           "--seed must differ"),
                          (["phantom", str(tmp_path / "c"), "--seed", "6", "--follow-up-of", "5"], "needs --months")):
        args = build_parser().parse_args(argv)
        with pytest.raises(UserError, match=message):
            args.func(args)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_an_airway_nodule_at_follow_up_is_graded_by_the_airway_rules():
    """A segmental airway nodule still there at follow-up (stable or growing) is 4B, for bronchoscopy (v2022): not
    stepped down to 3 as a stable 4A nodule in the lung is."""
    from dataclasses import replace

    from inference.clinical import classify_nodule
    from inference.clinical.types import Change
    from inference.compare.compare import _clinical

    polyp = replace(_finding("solid", 5.0, None), airway="segmental_or_proximal")
    assert classify_nodule(_clinical(polyp, Change.STABLE, 3.0, "4A")).category.value == "4B"
    assert classify_nodule(_clinical(polyp, Change.GROWING, None, "4A")).category.value == "4B"
    assert classify_nodule(_clinical(replace(polyp, airway=None), Change.STABLE, 3.0, "4A")).category.value == "3"


def test_a_cyst_at_follow_up_is_graded_by_the_cyst_rules():
    """A thick-walled cyst of 16 mm that grew by more than 1.5 mm is a growing atypical cyst (4B); stable at 3 months
    it steps down to 3; a thin-walled one stays 1 whatever its size; a cavity is graded as the nodule it is."""
    from dataclasses import replace

    from inference.clinical import classify_nodule
    from inference.clinical.types import Change
    from inference.compare.compare import _clinical

    cyst = replace(_finding("solid", 16.0, None), cyst="thick_walled")
    assert classify_nodule(_clinical(cyst, Change.GROWING, None, "4A")).category.value == "4B"
    assert classify_nodule(_clinical(cyst, Change.STABLE, 3.0, "4A")).category.value == "3"
    thin = replace(cyst, cyst="thin_walled")
    assert classify_nodule(_clinical(thin, Change.GROWING, None, "1")).category.value == "1"
    cavity = replace(cyst, cyst="cavity")
    assert classify_nodule(_clinical(cavity, Change.STABLE, 3.0, "4B")).category.value == "4B"  # a solid 16 mm nodule
